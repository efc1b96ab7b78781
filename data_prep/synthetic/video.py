"""The synthetic corpus's videos as video files (`--with-video`), for data_prep.extract: HowTo100M's and
every finetune set's (`<dataset>/videos/<id>.mp4`).

Each video is its HERO features drawn as pictures: row k of `features/hero/<id>.npz` (the finetune
sets': `features/<id>.npz`) (the 1.5 s
window [1.5k, 1.5(k+1))) becomes one 64x48 image, shown for the whole window; the image is a
fixed random projection of the row (seeded, the same for every video) to a 12x16 RGB grid,
squashed to [16, 240] and enlarged 4x. Whatever a backbone makes of these pictures is a function
of the planted features, so the concepts stay recoverable. 4 fps, h264 in .mp4, deterministic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .world import keyed_rng

FPS = 4
WINDOW = 1.5  # seconds per hero row
GRID = (12, 16)  # (h, w) cells of 4x4 pixels: 48x64 frames


def picture(rows: np.ndarray, seed: int) -> np.ndarray:
    """[T, D] features -> [T, 48, 64, 3] uint8 pictures (see the module docstring)."""
    t, d = rows.shape
    proj = keyed_rng(seed, "video", "projection", d).standard_normal((d, GRID[0] * GRID[1] * 3)) / np.sqrt(d)
    z = rows.astype(np.float64) @ proj  # (T, 12*16*3)
    z = (z - z.mean()) / (z.std() + 1e-9)
    cells = np.round(128 + 112 * np.tanh(z)).astype(np.uint8).reshape(t, *GRID, 3)  # (T, 12, 16, 3)
    return cells.repeat(4, axis=1).repeat(4, axis=2)  # (T, 48, 64, 3)


def write_video(path: Path, pictures: np.ndarray) -> None:
    """Each picture for WINDOW seconds at FPS frames per second."""
    import av

    per = round(WINDOW * FPS)  # frames per window: 6
    with av.open(str(path), "w") as c:
        s = c.add_stream("h264", rate=FPS)
        s.width, s.height, s.pix_fmt = pictures.shape[2], pictures.shape[1], "yuv420p"
        s.options = {"threads": "1"}  # one encoding thread: the same bytes every run
        for img in pictures:
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for _ in range(per):
                for p in s.encode(frame):
                    c.mux(p)
        for p in s.encode():
            c.mux(p)


def write_videos(root: Path, seed: int) -> list[Path]:
    """videos/<id>.mp4 under a dataset folder, one per HERO feature file (features/hero/*.npz, else
    features/*.npz); returns the files."""
    hero = root / "features" / "hero"
    npzs = sorted((hero if hero.is_dir() else root / "features").glob("*.npz"))
    out = root / "videos"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for npz in npzs:
        with np.load(npz) as z:
            rows = z["features"]
        path = out / f"{npz.stem}.mp4"
        write_video(path, picture(rows, seed))
        written.append(path)
    return written
