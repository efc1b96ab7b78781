"""Loader throughput: shards -> padded, masked batches, against reading the same tars with tarfile.

    python benchmarks/loader_throughput.py [--videos 200] [--hero-videos 120] [--repeats 3]
        [--frames-dtypes float32,float16] [--write]

1. Writes a synthetic HowTo100M corpus (`data_prep.synthetic`, 64-d features) and a variant
   of its HERO features at the real HERO size, 4352-d (the 64 dims tiled 68 times), and
   converts both with `data_prep.howto100m` (60 s clips, heuristic tagger, 25 clips a shard).
2. Baselines, in this process: every tar member read with `tarfile` (bytes only), and the
   same plus `np.load` of the features and `json.loads` of the metadata.
3. The training loader (`pretrain.loader.build_train_loader`: sharded reading, validation,
   block shuffle, tokenisation with TACo weights, MLM + MFM masks, crop, padding collate), one
   epoch per repeat, with 0 DataLoader workers (all in this process) and with 1 and 2, once per
   frames dtype of the batches (`LoaderConfig.frames_dtype`: float32, the old batches, and
   float16, the default); a repeat's time includes starting its workers. Samples/s counts the
   epoch's samples (fill included); the ratio is loader samples/s over the tarfile bytes+decode
   rate; MB a batch is what crosses from a worker (every tensor of a full batch).
4. Where the loader's time goes, per sample, in this process: read + validate a block,
   tokenise + TACo weights, masks, frames (crop), collate (per frames dtype).
Results print as a table; `--write` puts them under "## loader" in benchmarks/RESULTS.md
(other sections are kept). Storage IO is not measured: the work folder is on tmpfs when
/dev/shm exists, and the page cache is warm.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for `python benchmarks/x.py`
from benchmarks._results import machine, write_section  # noqa: E402

HERO_DIM = 4352  # ResNet-152 2048 + SlowFast 2304
SECTION = "## loader"
SHARD_SIZE = 25
BATCH = 32
STREAMS = 2  # divisible by every worker count measured (0, 1, 2)


@dataclass
class Row:
    name: str
    features: str
    samples: int
    seconds: list[float]
    first: list[float] = field(default_factory=list)  # seconds to the first batch (loader runs)
    batch_mb: float = 0.0  # the tensors of a full batch (loader runs)

    @property
    def rate(self) -> float:
        return self.samples / min(self.seconds)

    @property
    def spread(self) -> str:
        return f"{self.samples / max(self.seconds):.0f}-{self.rate:.0f}"

    @property
    def steady(self) -> str:
        """Samples/s after the first batch (best repeat), excluding start-up and the first block."""
        if not self.first:
            return ""
        return f"{max((self.samples - BATCH) / (s - f) for s, f in zip(self.seconds, self.first)):.0f}"


def make_shards(work: Path, videos: int, hero_videos: int) -> dict[str, Path]:
    """64-d and 4352-d shard folders of the same synthetic corpus (the 4352-d one from `hero_videos`)."""
    from data_prep import howto100m, synthetic

    synthetic.generate(work / "corpus", videos=videos, seed=0)
    root = work / "corpus" / "howto100m"
    captions = json.loads((root / "raw_caption.json").read_text())
    ids = sorted(captions)[:hero_videos]
    big = work / "hero4352"
    big.mkdir()
    for vid in ids:
        with np.load(root / "features" / "hero" / f"{vid}.npz") as z:
            feats = z["features"]  # (T, 64)
        np.savez(big / f"{vid}.npz", features=np.tile(feats, (1, HERO_DIM // feats.shape[1])))  # (T, 4352)
    (work / "captions_hero.json").write_text(json.dumps({v: captions[v] for v in ids}))
    inputs = {
        "64-d": (root / "raw_caption.json", root / "features" / "hero"),
        "4352-d": (work / "captions_hero.json", big),
    }
    out = {}
    for features, (caps, feats) in inputs.items():
        out[features] = work / f"shards-{features}"
        howto100m.main([
            "--captions", str(caps), "--features", str(feats), "--out", str(out[features]),
            "--shard-size", str(SHARD_SIZE), "--tagger", "heuristic",
        ])  # fmt: skip
    return out


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def read_tars(folder: Path, decode: bool) -> int:
    """Every member of every shard, read with tarfile (and decoded); returns the samples."""
    samples = 0
    for path in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                data = tar.extractfile(member).read()
                if member.name.endswith(".json"):
                    samples += 1
                    if decode:
                        json.loads(data)
                elif decode:
                    np.load(io.BytesIO(data), allow_pickle=False)
    return samples


def loader_epoch(
    folder: Path,
    workers: int,
    streams: int = STREAMS,
    batch: int = BATCH,
    max_frames: int = 64,
    frames_dtype: str = "float16",
) -> tuple[Any, Callable[[], tuple[int, float]]]:
    """A training loader over `folder` and a function running one epoch: (samples, seconds to the first batch).
    The loader's `batch_bytes` is then the largest batch's tensors, in bytes."""
    from pretrain.loader import LoaderConfig, build_train_loader

    cfg = LoaderConfig(train=str(folder), batch_size=batch, max_text_len=64, max_frames=max_frames,
                       shuffle_buffer=100, num_workers=workers, streams=streams, frames_dtype=frames_dtype)  # fmt: skip
    loader = build_train_loader(cfg, rank=0, world_size=1)
    loader.batch_bytes = 0

    def run() -> tuple[int, float]:
        t0, first, samples = time.perf_counter(), 0.0, 0
        for batch in loader:
            first = first or time.perf_counter() - t0
            samples += len(batch["keys"])
            size = sum(v.nbytes for v in batch.values() if hasattr(v, "nbytes"))
            loader.batch_bytes = max(loader.batch_bytes, size)
        return samples, first

    return loader, run


def components(folder: Path, repeats: int) -> dict[str, float]:
    """Milliseconds per sample of each step of the loader's per-sample work, in this process (median)."""
    from pretrain import loader as L
    from pretrain import text

    corpus = L.resolve_shards(str(folder))
    proc = loader_epoch(folder, 0)[0].proc
    raws, _ = L.read_block(corpus.urls, corpus.endpoint, corpus.feature_dim)
    n, out = len(raws), {}

    def step(name: str, fn: Callable[[], Any]) -> None:
        out[name] = statistics.median(timed(fn, repeats)[0]) / n * 1e3

    step("read + group + validate (fsspec, webdataset)", lambda: L.read_block(corpus.urls, corpus.endpoint, None))
    step("tokenise + TACo weights", lambda: [text.encode(r.meta["text"], r.meta["toi"], proc.tokenizer, 64, proc.idf)
                                             for r in raws])  # fmt: skip
    step("frames: crop (a view; collate copies)", lambda: [proc.frames(r, None) for r in raws])
    step("whole sample: tokenise, masks, frames", lambda: [proc(r, 0) for r in raws])
    whole = out["whole sample: tokenise, masks, frames"]
    out["of which masks (MLM + MFM; by difference)"] = (
        whole - out["tokenise + TACo weights"] - out["frames: crop (a view; collate copies)"]
    )
    samples = [proc(r, 0) for r in raws]
    batches = [samples[i : i + BATCH] for i in range(0, n, BATCH)]
    for dtype in ("float32", "float16"):  # not kept
        step(f"collate (pad to the batch, frames {dtype})", lambda d=dtype: [len(L.collate(b, 0, d)) for b in batches])
    return out


def measure(folder: Path, features: str, repeats: int, dtypes: list[str]) -> list[Row]:
    """Tar baselines and loader epochs over one shard folder (the loader's once per frames dtype, interleaved)."""
    rows = []
    for name, decode in (("tarfile: bytes", False), ("tarfile: bytes + np.load + json.loads", True)):
        times, n = timed(lambda d=decode: read_tars(folder, d), repeats)
        rows.append(Row(name, features, n, times))
    for workers in (0, 1, 2):
        for dtype in dtypes:
            loader, run = loader_epoch(folder, workers, frames_dtype=dtype)
            run()  # warm-up epoch (page cache, tokenizer caches)
            times, firsts = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                n, first = run()
                times.append(time.perf_counter() - t0)
                firsts.append(first)
            name = f"loader, {workers} workers, frames {dtype} ({STREAMS} streams, batch {BATCH})"
            rows.append(Row(name, features, n, times, firsts, loader.batch_bytes / 1e6))
    return rows


def table(rows: list[Row], parts: dict[str, dict[str, float]]) -> str:
    base = {r.features: r.rate for r in rows if r.name.startswith("tarfile: bytes +")}
    lines = [
        "| features | reader | samples | samples/s (best) | range over repeats | x tarfile+decode "
        "| first batch s | samples/s after the first batch | MB a batch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        first = f"{min(r.first):.2f}" if r.first else ""
        mb = f"{r.batch_mb:.2f}" if r.batch_mb else ""
        lines.append(f"| {r.features} | {r.name} | {r.samples} | {r.rate:.0f} | {r.spread} | "
                     f"{r.rate / base[r.features]:.3f} | {first} | {r.steady} | {mb} |")  # fmt: skip
    lines += ["", "Per sample, in one process (median):", "", "| step | " + " | ".join(parts) + " |",
              "|---|" + "---:|" * len(parts)]  # fmt: skip
    for step in next(iter(parts.values())):
        lines.append(f"| {step} | " + " | ".join(f"{p[step]:.3f} ms" for p in parts.values()) + " |")
    return "\n".join(lines)


def section(info: dict[str, str], args: argparse.Namespace, body: str, load: tuple[float, float]) -> str:
    return "\n".join([
        SECTION, "",
        f"Measured {info['date']} by `python benchmarks/loader_throughput.py --videos {args.videos} "
        f"--hero-videos {args.hero_videos} --repeats {args.repeats} --frames-dtypes {args.frames_dtypes}`.", "",
        f"- machine: `{info['uname']}`",
        f"- CPU: {info['cpu']}, {info['cores']} cores",
        f"- {info['versions']}",
        "- input: synthetic HowTo100M shards (60 s clips, 25 a shard, heuristic tags); 64-d = the synthetic "
        f"HERO features, 4352-d = the same tiled to {HERO_DIM} dims (HERO size), float16 in the shards; tmpfs, "
        "warm page cache: storage IO is not measured",
        f"- loader: one epoch per repeat (after a warm-up epoch), worker start-up included; batch {BATCH}, "
        "max 64 tokens, max 64 frames, shuffle buffer 100 samples; samples counted as delivered (fill included)",
        f"- load average {load[0]:.1f} at the start, {load[1]:.1f} at the end, on {info['cores']} cores shared with "
        "other jobs: read single numbers to about +-50%",
        "- with workers, every batch crosses to the main process through shared memory (torch's DataLoader; "
        "collated straight into it). frames float16 (the default, `LoaderConfig.frames_dtype`) halves the frames' "
        "bytes against float32 (the batches before it), losslessly: the shards hold float16; the training loop "
        "makes them float32 on the device. On a node with cores to spare, set num_workers = streams",
        "", body, "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=200, help="synthetic HowTo100M videos (64-d shards)")
    p.add_argument("--hero-videos", type=int, default=120, help="of those, how many get 4352-d features")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--frames-dtypes", default="float32,float16", help="frames dtypes of the batches to measure")
    p.add_argument("--write", action="store_true", help='put the results under "## loader" in benchmarks/RESULTS.md')
    args = p.parse_args(argv)
    dtypes = args.frames_dtypes.split(",")
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = Path(tempfile.mkdtemp(prefix="loader-bench-", dir=base))
    load_start = os.getloadavg()[0]
    try:
        folders = make_shards(work, args.videos, args.hero_videos)
        rows = [row for feats, folder in folders.items() for row in measure(folder, feats, args.repeats, dtypes)]
        parts = {features: components(folder, args.repeats) for features, folder in folders.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = machine("torch", "webdataset", "transformers", "numpy")
    text = section(info, args, table(rows, parts), (load_start, os.getloadavg()[0]))
    print(text)
    if args.write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
