"""data_prep.extract on small videos the tests write with PyAV (64x48, a few seconds, tiny random
backbones): the sampling rule, features against an independent decode, resume after SIGKILL, the
reject log, and the way through data_prep.howto100m into shards the pretraining loader reads.

Each video's frame i is a flat grey of level 16 * i mod 256 (planted), so a decoded frame tells its index.
"""

from __future__ import annotations

import fractions
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import REPO, cli_env

from data_prep import extract as X
from data_prep.errors import DataPrepError

TINY = ["--random-weights", "--tiny"]
PLANS = [X.Plan(X.BACKBONES["resnet152"], 1.0), X.Plan(X.BACKBONES["r2plus1d_18"], 1.0 / 1.5)]


def write_video(path: Path, codec: str, fps: int, n: int, pts_ms: list[int] | None = None) -> list[float]:
    """n frames of 64x48 grey level 16*i (mod 256); returns each frame's time in seconds.
    `pts_ms` gives explicit (variable-rate) timestamps in milliseconds."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps if pts_ms is None else 1000)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        if pts_ms is not None:
            s.codec_context.time_base = s.time_base = fractions.Fraction(1, 1000)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), (16 * i) % 256, np.uint8), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], fractions.Fraction(1, 1000)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return [t / 1000 for t in pts_ms] if pts_ms is not None else [i / fps for i in range(n)]


def shown_at(times: list[float], t: float) -> int:
    """The index of the frame on screen at t: the last one with time <= t (the first before it)."""
    return max([i for i, s in enumerate(times) if s <= t + 1e-9], default=0)


def level_index(img: np.ndarray) -> int:
    """The planted index of a decoded frame, modulo 16 (the grey level wraps at 256)."""
    return round(float(img.mean()) / 16) % 16


VFR_MS = [0, 40, 80, 300, 340, 700, 1000, 1100, 1500, 1550, 1600, 2100, 2500, 2600, 2900, 3300, 3400, 3800, 3900, 4100]
VIDEOS = {  # name: (codec, fps, frames, pts_ms)
    "h264.mp4": ("h264", 10, 40, None),
    "vp9.webm": ("libvpx-vp9", 12, 48, None),
    "mpeg4.mkv": ("mpeg4", 25, 100, None),
    "vfr.mkv": ("h264", 10, len(VFR_MS), VFR_MS),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[float]]]:
    root = tmp_path_factory.mktemp("videos")
    times = {name: write_video(root / name, *spec) for name, spec in VIDEOS.items()}
    return root, times


@pytest.mark.parametrize("resize", X.RESIZES)
@pytest.mark.parametrize("name", sorted(VIDEOS))
def test_frame_times_and_counts_follow_the_sampling_rule(videos, name, resize):
    """The same frames at the same times whoever resizes; `--resize ffmpeg` hands them over at the backbone's size."""
    root, times = videos
    _, _, duration = X.probe(str(root / name))
    samples = list(X.iter_samples(str(root / name), PLANS, resize))
    assert isinstance(samples.pop(), int)  # the decoded-frame count comes last
    for p, plan in enumerate(PLANS):
        mine = sorted((s for s in samples if s.plan == p), key=lambda s: s.index)
        n = math.floor(duration / plan.interval + 1e-6)
        assert n > 0 and [s.index for s in mine] == list(range(n)), (name, p)
        size = (48, 64) if resize == "torch" else plan.backbone.preprocess.size(48, 64)
        for s in mine:
            assert len(s.frames) == plan.backbone.frames
            assert all(img.shape == (*size, 3) and img.dtype == np.uint8 for img in s.frames)
            c = (s.index + 0.5) * plan.interval
            want = [c + (j - (plan.backbone.frames - 1) / 2) / 24.0 for j in range(plan.backbone.frames)]
            if plan.backbone.frames == 1:
                want = [c]
            expected = [shown_at(times[name], t) for t in want]
            assert [level_index(img) for img in s.frames] == [i % 16 for i in expected], (name, p, s.index)
            assert s.pts == pytest.approx([times[name][i] for i in expected], abs=1e-3)


def test_features_equal_the_backbone_on_independently_decoded_frames(videos, tmp_path, device):
    root, times = videos
    out = tmp_path / "feats"
    res = X.main(["--videos", str(root), "--out", str(out), *TINY, "--batch-size", "3", "--device", device.type])
    assert sorted(res["done"]) == sorted(Path(n).stem for n in VIDEOS) and not res["rejected"]
    models = [p.backbone.build(None, tiny=True) for p in PLANS]
    for name in VIDEOS:
        with av.open(str(root / name)) as c:  # every frame, decoded here, in display order
            decoded = [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
            c.seek(0)
            dur = c.duration / 1e6
        frame_times = [t for t, _ in decoded]
        for plan, model, kind in zip(PLANS, models, ("2d", "3d")):
            got = np.load(out / kind / f"{Path(name).stem}.npy")
            n = math.floor(dur / plan.interval + 1e-6)
            assert got.shape == (n, 64) and got.dtype == np.float32
            clips = []
            for k in range(n):
                c = (k + 0.5) * plan.interval
                ts = [c + (j - 7.5) / 24.0 for j in range(16)] if kind == "3d" else [c]
                clips.append(np.stack([decoded[shown_at(frame_times, t)][1] for t in ts]))
            x = plan.backbone.preprocess(np.concatenate(clips))
            if kind == "3d":
                x = x.view(n, 16, *x.shape[1:]).transpose(1, 2)
            with torch.no_grad():
                want = model(x).numpy()
            tol = {"rtol": 1e-4, "atol": 1e-5} if device.type == "cpu" else {"rtol": 0.05, "atol": 0.02}  # bf16
            np.testing.assert_allclose(got, want, err_msg=f"{name} {kind}", **tol)


# --------------------------------------------------------------------------- resize: default and --resize ffmpeg


def write_textured(path: Path, w: int = 480, h: int = 360, n: int = 30, fps: int = 10) -> None:
    """n frames of h264 with detail a resize can get wrong: colour gradients, stripes of 9 to 14 px that
    alias under a point sampler, a sharp-edged square, all moving; and mild noise (seed 0)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    with av.open(str(path), "w") as c:
        s = c.add_stream("h264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            r = 255 * xx / w
            g = 128 + 100 * np.sin(2 * np.pi * (xx + 3 * i) / 14) * np.sin(2 * np.pi * (yy + 2 * i) / 9)
            b = 255 * yy / h
            img = np.stack([r, g, b], -1)  # (h, w, 3)
            x0 = 40 + 8 * i
            img[100:220, x0 : x0 + 120] = (240, 30, 60)
            img += rng.normal(0, 4, img.shape)
            f = av.VideoFrame.from_ndarray(img.clip(0, 255).astype(np.uint8), format="rgb24")
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def reference_preprocess(frames: np.ndarray, b: X.Backbone) -> torch.Tensor:
    """The backbone's trained preprocessing written out here, not through X.Preprocess: torchvision's
    tensor Resize (antialiased interpolate of float RGB in [0, 1]) to the size the backbone's rule gives
    the 480x360 frames, centre crop, normalise. [N, H, W, 3] uint8 -> [N, 3, crop, crop]."""
    size = {"resnet152": (256, 341), "r2plus1d_18": (128, 171)}[b.name]  # short side 256; (128, 171)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    c = b.preprocess.crop
    top, left = (size[0] - c) // 2, (size[1] - c) // 2
    x = x[..., top : top + c, left : left + c].clamp(0, 1)
    return (x - torch.tensor(b.preprocess.mean).view(1, 3, 1, 1)) / torch.tensor(b.preprocess.std).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def textured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    """A 3 s 480x360 textured video and its tiny-backbone features, default path and --resize ffmpeg."""
    root = tmp_path_factory.mktemp("textured")
    (root / "videos").mkdir()
    write_textured(root / "videos" / "tex.mp4")
    feats = {}
    for resize in X.RESIZES:
        out = root / resize
        X.main(["--videos", str(root / "videos"), "--out", str(out), *TINY, "--device", "cpu", "--resize", resize])
        feats[resize] = {kind: np.load(out / kind / "tex.npy") for kind in ("2d", "3d")}
    return root, feats


def test_default_resize_features_are_the_trained_preprocessing_unchanged(textured):
    """The default path's features equal the tiny backbones on the test's own decode and preprocessing."""
    root, feats = textured
    path = str(root / "videos" / "tex.mp4")
    with av.open(path) as c:
        decoded = [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    frame_times = [t for t, _ in decoded]
    for plan, kind in zip(PLANS, ("2d", "3d")):
        n = feats["torch"][kind].shape[0]
        ts = [t for k in range(n) for t in plan.times(k)]
        x = reference_preprocess(np.stack([decoded[shown_at(frame_times, t)][1] for t in ts]), plan.backbone)
        if kind == "3d":
            x = x.view(n, 16, *x.shape[1:]).transpose(1, 2)
        with torch.no_grad():
            want = plan.backbone.build(None, tiny=True)(x).numpy()
        np.testing.assert_allclose(feats["torch"][kind], want, rtol=1e-4, atol=1e-5, err_msg=kind)
    manifest = json.loads((root / "torch" / X.MANIFEST_FILE).read_text())
    assert manifest["decoder"]["resize"] == "torch"
    assert "torch F.interpolate bilinear" in manifest["backbones"][0]["preprocessing"]["interpolation"]


# Measured on write_textured's video (docs/feature_extraction.md "Resize"): swscale BILINEAR is 2.7 (2D) and
# 2.3 (3D) grey levels from the default on average, feature cosine >= 0.99988 with the tiny backbones. Broken
# resizes fail: POINT (no antialiasing) 7.2 / 10.3 grey levels, cosine 0.9957; FAST_BILINEAR 4.3 / 12.4, 0.9981;
# BICUBIC where bilinear was trained 3.9 / 5.1; AREA 2.9 / 3.6; a wrong size is an error in Preprocess.
FFMPEG_GREY_MEAN, FFMPEG_COSINE = 3.5, 0.9995


def test_resize_ffmpeg_is_close_to_the_default(textured):
    """--resize ffmpeg: the same frames, resized by swscale with the backbone's filter; inputs within
    FFMPEG_GREY_MEAN grey levels of the default's on average and features within FFMPEG_COSINE."""
    root, feats = textured
    path = str(root / "videos" / "tex.mp4")
    by = {r: [s for s in X.iter_samples(path, PLANS, r) if not isinstance(s, int)] for r in X.RESIZES}
    for p, plan in enumerate(PLANS):
        pre = plan.backbone.preprocess
        a, f = ([s for s in by[r] if s.plan == p] for r in X.RESIZES)
        assert [s.pts for s in a] == [s.pts for s in f]
        xa = pre(np.stack([img for s in a for img in s.frames]))
        xf = pre(np.stack([img for s in f for img in s.frames]), resized=True)
        grey = ((xa - xf) * torch.tensor(pre.std).view(1, 3, 1, 1)).abs().mean().item() * 255
        assert grey < FFMPEG_GREY_MEAN, (plan.backbone.name, grey)
    for kind in ("2d", "3d"):
        d, f = (torch.from_numpy(feats[r][kind]) for r in X.RESIZES)
        assert d.shape == f.shape and not torch.equal(d, f)  # close, not the same pixels
        cos = torch.nn.functional.cosine_similarity(d, f, dim=1)
        assert cos.min().item() > FFMPEG_COSINE, (kind, cos)
    manifest = json.loads((root / "ffmpeg" / X.MANIFEST_FILE).read_text())
    assert manifest["decoder"]["resize"] == "ffmpeg"
    assert "FFmpeg swscale BILINEAR" in manifest["backbones"][1]["preprocessing"]["interpolation"]


def test_preprocess_resizes_the_short_side_crops_the_centre_and_normalises():
    img = np.zeros((1, 48, 96, 3), np.uint8)
    img[:, :, 48 - 12 : 48 + 12] = 255  # a white band in the middle third of the width, 24 px
    pre = X.Preprocess(24, 24, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = pre(img)  # resized to 24x48, the centre 24x24 = the band's 12 px +/- 6
    assert x.shape == (1, 3, 24, 24)
    assert x[0, :, :, 9:15].min().item() == pytest.approx(2.0, abs=1e-4)  # (1 - 0.5) / 0.25
    assert x[0, :, :, :3].max().item() == pytest.approx(-2.0, abs=1e-4)  # (0 - 0.5) / 0.25


# --------------------------------------------------------------------------- accounting


def make_bad_inputs(root: Path) -> dict[str, str]:
    """One file per kind of bad input -> the reject reason expected."""
    (root / "garbage.mp4").write_bytes(os.urandom(4000))
    with av.open(str(root / "audio_only.mkv"), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for p in [*s.encode(frame), *s.encode()]:
            c.mux(p)
    write_video(root / "zero.ts", "mpeg2video", 10, 1)  # MPEG-TS with one frame: no duration
    write_video(root / "short.mp4", "h264", 10, 5)  # 0.5 s < one 1 s window
    write_video(root / "long.mkv", "mpeg4", 10, 100)
    data = (root / "long.mkv").read_bytes()
    (root / "long.mkv").unlink()
    (root / "truncated.mkv").write_bytes(data[: len(data) // 2])
    damaged = bytearray(data)
    damaged[len(data) // 3 : len(data) // 3 + 3000] = os.urandom(3000)
    (root / "damaged.mkv").write_bytes(bytes(damaged))
    write_video(root / "cut.mp4", "h264", 10, 100)  # the index (moov) is at the end: cut, unreadable
    data = (root / "cut.mp4").read_bytes()
    (root / "cut.mp4").write_bytes(data[: len(data) // 2])
    return {
        "garbage": "unreadable",
        "audio_only": "no_video_stream",
        "zero": "zero_duration",
        "short": "too_short",
        "truncated": "truncated",
        "damaged": "truncated",  # the demuxer stops at the damage: the frames end early
        "cut": "unreadable",
    }


def test_every_bad_input_lands_in_the_reject_log_and_good_videos_land(tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    expected = make_bad_inputs(src)
    write_video(src / "good1.mp4", "h264", 10, 30)
    write_video(src / "good2.webm", "libvpx-vp9", 10, 30)
    out = tmp_path / "feats"
    res = X.main(["--videos", str(src), "--out", str(out), *TINY])
    assert sorted(res["done"]) == ["good1", "good2"]
    rejects = [
        json.loads(line) for f in (out / X.STATE_DIR).glob("rejects.*.jsonl") for line in f.read_text().splitlines()
    ]
    assert {r["video_id"]: r["reason"] for r in rejects} == expected
    assert all(r["detail"] for r in rejects)
    files = {p.relative_to(out).as_posix() for p in out.rglob("*.npy")}
    assert files == {"2d/good1.npy", "3d/good1.npy", "2d/good2.npy", "3d/good2.npy"}  # nothing partial
    assert not list(out.rglob("*.tmp"))


def test_missing_weights_error_names_the_expected_file(tmp_path):
    write_video(tmp_path / "v.mp4", "h264", 10, 20)
    with pytest.raises(DataPrepError, match=r"r2plus1d_18-91a641e6\.pth.*--weights r2plus1d_18=PATH"):
        X.main(["--videos", str(tmp_path), "--out", str(tmp_path / "o"), "--weights", f"resnet152={tmp_path}"])
    with pytest.raises(DataPrepError, match=r"weights not found at /nowhere/w\.pth"):
        X.main(["--videos", str(tmp_path), "--out", str(tmp_path / "o"), "--backbone", "resnet152,r2plus1d_18",
                "--weights", f"resnet152={tmp_path},r2plus1d_18=/nowhere/w.pth"])  # fmt: skip


def test_r2plus1d_has_torchvisions_parameter_names():
    """The names of torchvision's r2plus1d_18 state dict (its Kinetics weights load strictly)."""
    keys = set(X.R2Plus1D18().state_dict())
    names = ["stem.0.weight", "stem.1.running_mean", "stem.3.weight", "stem.4.bias", "layer1.0.conv1.0.0.weight",
             "layer1.0.conv1.0.1.weight", "layer1.0.conv1.0.3.weight", "layer1.0.conv1.1.weight",
             "layer2.0.downsample.0.weight", "layer4.1.conv2.1.bias", "fc.weight"]  # fmt: skip
    for k in names:
        assert k in keys, k
    assert sum(v.numel() for v in X.R2Plus1D18().parameters()) == 31505325  # torchvision's r2plus1d_18


def test_shards_split_the_list_deterministically_and_slurm_picks_the_index(tmp_path, monkeypatch):
    videos = [(f"v{i:02d}", f"/x/v{i:02d}.mp4") for i in range(10)]
    parts = [X.shard_of(videos, 3, i) for i in range(3)]
    assert sorted(v for p in parts for v in p) == videos and sum(map(len, parts)) == 10
    for name in ("a.mp4", "b.mp4", "c.webm"):
        write_video(tmp_path / name, "h264" if name.endswith("mp4") else "libvpx-vp9", 10, 12)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    res = X.main(["--videos", str(tmp_path), "--out", str(tmp_path / "o"), *TINY, "--num-shards", "2"])
    assert res["done"] == ["b"]


def test_resume_after_sigkill_redoes_only_unfinished_videos(tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    for i in range(4):
        write_video(src / f"v{i}.mp4", "h264", 10, 40)  # 4 s each
    out = tmp_path / "feats"
    args = ["--videos", str(src), "--out", str(out), *TINY, "--batch-size", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "data_prep.extract", *args], cwd=REPO, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 90
    while not list(out.glob("3d/*.npy")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)  # 3d/ is renamed last: a video is complete when its 3d file is there
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.stem: p.stat().st_mtime_ns for p in out.glob("2d/*.npy") if (out / "3d" / p.name).exists()}
    assert finished and len(finished) < 4, f"the kill should land part-way ({len(finished)} of 4 finished)"
    res = X.main(args)
    assert sorted(res["skipped"]) == sorted(finished)
    assert sorted(res["done"]) == sorted({f"v{i}" for i in range(4)} - set(finished))
    assert {p.stem: p.stat().st_mtime_ns for p in out.glob("2d/*.npy") if p.stem in finished} == finished
    assert len(list(out.glob("3d/*.npy"))) == 4 and not list(out.rglob("*.tmp"))


# --------------------------------------------------------------------------- into shards and the loader


def test_extracted_features_go_through_howto100m_into_shards_the_loader_reads(tmp_path):
    from data_prep import howto100m
    from pretrain import loader as L
    from pretrain import text

    src = tmp_path / "videos"
    src.mkdir()
    captions = {}
    for i in range(4):
        write_video(src / f"vid{i}.mp4", "h264", 10, 80)  # 8 s
        captions[f"vid{i}"] = {"start": [0.5, 3.0, 5.0], "end": [2.5, 4.5, 7.5],
                               "text": [f"peel the apple {i}", "cut it in half", "serve it cold"]}  # fmt: skip
    (tmp_path / "raw_caption.json").write_text(json.dumps(captions))
    feats = tmp_path / "feats"
    X.main(["--videos", str(src), "--out", str(feats), *TINY])
    shards = tmp_path / "shards"
    manifest = howto100m.main(["--captions", str(tmp_path / "raw_caption.json"), "--features", str(feats),
                               "--feature-layout", "howto100m", "--clip-seconds", "4", "--out", str(shards),
                               "--shard-size", "4", "--tagger", "heuristic"])  # fmt: skip
    assert manifest["counts"]["videos_sharded"] == 4 and manifest["counts"]["videos_rejected"] == 0
    assert manifest["extraction"] == json.loads((feats / X.MANIFEST_FILE).read_text())
    assert [b["name"] for b in manifest["extraction"]["backbones"]] == ["resnet152", "r2plus1d_18"]
    cfg = L.LoaderConfig(train=str(shards), batch_size=2, max_text_len=16, max_frames=8, shuffle_buffer=4,
                         num_workers=0, streams=1)  # fmt: skip
    batch = next(iter(L.build_train_loader(cfg, text.load_tokenizer(), rank=0, world_size=1)))
    assert batch["frames"].shape[-1] == 128  # 64 (tiny 2D) + 64 (tiny 3D), per 1.5 s frame
    assert torch.isfinite(batch["frames"].float()).all()


def test_hero_layout_with_local_weights_folders_records_their_sha256(videos, tmp_path):
    """--layout hero: <id>.npz key `features`, every backbone at 1.5 s, concatenated; the weights are
    Hugging Face folders on local disk (tiny ones saved here), their sha256 in the provenance."""
    from data_prep.features import FeatureReader

    root, _ = videos
    folders = {}
    for name in ("resnet152", "clip_vit_b32"):
        folders[name] = tmp_path / name
        X.BACKBONES[name].build(None, tiny=True).model.save_pretrained(folders[name])
    out = tmp_path / "hero"
    weights = ",".join(f"{k}={v}" for k, v in folders.items())
    res = X.main(["--videos", str(root), "--out", str(out), "--layout", "hero", "--backbone", "resnet152,clip_vit_b32",
                  "--weights", weights])  # fmt: skip
    assert not res["rejected"]
    manifest = json.loads((out / X.MANIFEST_FILE).read_text())
    for b in manifest["backbones"]:
        assert b["weights"] == X.weights_digest(str(folders[b["name"]])) and len(b["weights"]["sha256"]) == 64
        assert b["interval_s"] == 1.5
    assert manifest["backbones"][1]["preprocessing"]["mean"] == list(X.CLIP_MEAN)
    reader = FeatureReader(str(out), "hero", 1.5, 1.5)
    for name in VIDEOS:
        vid = Path(name).stem
        feats, _ = reader.read(vid)
        _, _, duration = X.probe(str(root / name))
        assert feats.shape == (math.floor(duration / 1.5 + 1e-6), 64 + 16)
        with np.load(out / f"{vid}.npz") as z:
            assert z.files == ["features"]


def test_r2plus1d_weights_load_strictly_from_pth_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    ref = X.R2Plus1D18((8, 16, 32, 64), 6).eval()
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    save_file(ref.state_dict(), str(tmp_path / "w.safetensors"))
    x = torch.randn(2, 3, 16, 112, 112)
    for name in ("w.pth", "w.safetensors"):
        with torch.no_grad():
            assert torch.equal(X.BACKBONES["r2plus1d_18"].build(str(tmp_path / name), tiny=True)(x), ref(x))
    with pytest.raises(RuntimeError, match="size mismatch"):  # the tiny state dict is not the full model's
        X.BACKBONES["r2plus1d_18"].build(str(tmp_path / "w.pth"), tiny=False)


def test_a_decode_error_part_way_is_a_reject_not_a_partial_file(videos, tmp_path, monkeypatch):
    """FFmpeg raising after some frames (a real decoder error; the files above make FFmpeg stop or
    conceal rather than raise, so the error is injected into PyAV's decode loop)."""
    root, _ = videos
    real_open = av.open

    class Failing:  # the container, whose decode raises after 5 frames
        def __init__(self, path: str):
            self.c = real_open(path)

        def __getattr__(self, name: str):
            return getattr(self.c, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.c.close()

        def decode(self, stream):
            for i, frame in enumerate(self.c.decode(stream)):
                if i == 5:
                    raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
                yield frame

    src = tmp_path / "v"
    src.mkdir()
    (src / "h264.mp4").write_bytes((root / "h264.mp4").read_bytes())
    monkeypatch.setattr(av, "open", Failing)
    res = X.main(["--videos", str(src), "--out", str(tmp_path / "o"), *TINY])
    assert res["rejected"] == ["h264"] and not list((tmp_path / "o").rglob("*.npy"))
    (line,) = (tmp_path / "o" / X.STATE_DIR).glob("rejects.*.jsonl")
    reject = json.loads(line.read_text())
    assert reject["reason"] == "decode_error" and "after 5 frames" in reject["detail"]


def test_prefetch_keeps_order_raises_the_producers_error_and_stops_when_closed():
    import threading

    def failing():
        yield from range(50)
        raise ValueError("decoder broke")

    assert list(X.prefetched(iter(range(10)), 2)) == list(range(10))
    got = []
    with pytest.raises(ValueError, match="decoder broke"):
        for item in X.prefetched(failing(), 3):
            got.append(item)
    assert got == list(range(50))
    it = X.prefetched(failing(), 2)
    assert next(it) == 0
    it.close()  # the consumer goes early: the producer thread ends instead of blocking on a full queue
    assert not [t for t in threading.enumerate() if t.name == "extract-decode"]


def test_synthetic_corpus_with_video_extracts_and_shards(tmp_path):
    """`generate(with_video=True)`: howto100m/videos/<id>.mp4 show the HERO features drawn as pictures
    (one per 1.5 s window), and each finetune set has one video per feature file; extracted (2D only: the
    tiny 3D model takes ~1 min on 400 s of video) and converted, every video lands in the shards."""
    from data_prep import howto100m, synthetic
    from data_prep.synthetic.video import picture

    synthetic.generate(tmp_path / "raw", videos=2, seed=0, with_video=True)
    howto = tmp_path / "raw" / "howto100m"
    files = sorted((howto / "videos").glob("*.mp4"))
    assert [f.stem for f in files] == sorted(p.stem for p in (howto / "features" / "hero").glob("*.npz"))
    for name in ("tvr", "didemo", "how2r", "how2qa", "msrvtt", "activitynet"):  # every finetune set's videos too
        stems = sorted(p.stem for p in (tmp_path / "raw" / name / "videos").glob("*.mp4"))
        assert stems and stems == sorted(p.stem for p in (tmp_path / "raw" / name / "features").glob("*.npz")), name
    with np.load(howto / "features" / "hero" / f"{files[0].stem}.npz") as z:
        want = picture(z["features"], seed=0)  # (T, 48, 64, 3)
    plan = X.Plan(X.BACKBONES["resnet152"], 1.5)
    shown = [s.frames[0] for s in X.iter_samples(str(files[0]), [plan]) if not isinstance(s, int)]
    assert len(shown) == len(want) or len(shown) == len(want) - 1
    err = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(shown, want)]
    assert max(err) < 12, max(err)  # h264 at 64x48: the planted picture, up to compression
    feats = tmp_path / "feats"
    res = X.main(["--videos", str(howto / "videos"), "--out", str(feats), "--layout", "hero",
                  "--backbone", "resnet152", *TINY])  # fmt: skip
    assert sorted(res["done"]) == [f.stem for f in files]
    manifest = howto100m.main(["--captions", str(howto / "raw_caption.json"), "--csv", str(howto / "HowTo100M_v1.csv"),
                               "--features", str(feats), "--out", str(tmp_path / "shards"),
                               "--tagger", "heuristic"])  # fmt: skip
    assert manifest["counts"]["videos_sharded"] == 2 and manifest["extraction"]["layout"] == "hero"
