"""data_prep.extract throughput on the CPU: raw decode, decode + sampling, and the backbones.

    python benchmarks/extract_throughput.py [--seconds 20] [--width 640 --height 360 --fps 30]

1. Writes one synthetic h264 .mp4 at HowTo100M's typical size (640x360, 30 fps; moving
   gradients plus noise, so the encoder makes real P-frames) on tmpfs.
2. The decoder's own rate, the baseline: PyAV decoding every frame with no conversion, one
   thread (`thread_count=1`) and FFmpeg's automatic threading.
3. The stage's decode: `iter_samples` with the howto100m plans (ResNet-152 at 1/s + R(2+1)D-18
   16-frame clips at 1.5/s), i.e. decode + picking + RGB conversion of the sampled frames;
   reported as decoded frames/s and its ratio to the raw rate.
4. The backbones at full size (random weights; the cost does not depend on them), fp32 on the
   CPU: features/s for ResNet-152 (224x224 images) and R(2+1)D-18 (16x112x112 clips),
   preprocessing included, batch 8.
5. From these, per core, the time to extract all of HowTo100M (134,472 h of video, 1.22M
   videos) on N nodes of 16 cores, CPU only; and the decode-only bound, which is what a node
   with a GPU doing the model work approaches (the GPU rate itself is not measured here unless
   a GPU is present). Writes benchmarks/RESULTS.md "## data_prep.extract".
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for `python benchmarks/x.py`
from benchmarks._results import RESULTS, header, load, machine, write_section  # noqa: E402

SECTION = "## data_prep.extract"
HOWTO100M_HOURS = 134_472
HOWTO100M_VIDEOS = 1_220_000


def write_video(path: str, seconds: float, w: int, h: int, fps: int) -> int:
    import av

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    n = int(seconds * fps)
    with av.open(path, "w") as c:
        s = c.add_stream("h264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            base = ((xx + 4 * i) % 256 + (yy + 2 * i) % 256) // 2  # (h, w), moving diagonally
            img = np.stack([base, (base + 85) % 256, (base + 170) % 256], -1).astype(np.int16)
            img += rng.integers(-8, 9, img.shape, dtype=np.int16)
            f = av.VideoFrame.from_ndarray(img.clip(0, 255).astype(np.uint8), format="rgb24")
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return n


def raw_decode(path: str, threads: str) -> tuple[int, float]:
    import av

    best = None
    for _ in range(2):
        t0 = time.perf_counter()
        with av.open(path) as c:
            s = c.streams.video[0]
            if threads == "one":
                s.codec_context.thread_count = 1
            else:
                s.thread_type = "AUTO"
            n = sum(1 for _ in c.decode(s))
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return n, best


def stage_decode(path: str) -> tuple[int, int, float]:
    from data_prep import extract as X

    plans = X.plans_for("howto100m", [X.BACKBONES["resnet152"], X.BACKBONES["r2plus1d_18"]], 1.5)
    best, samples, decoded = None, 0, 0
    for _ in range(2):
        t0 = time.perf_counter()
        out = list(X.iter_samples(path, plans))
        dt = time.perf_counter() - t0
        decoded, samples = out[-1], len(out) - 1
        best = dt if best is None else min(best, dt)
    return decoded, samples, best


def model_rate(name: str, batch: int, repeats: int) -> float:
    """Features/s of one full-size backbone on the CPU, preprocessing from decoded 640x360 frames included."""
    import torch

    from data_prep import extract as X

    b = X.BACKBONES[name]
    model = b.build(None, tiny=False)
    frames = np.random.default_rng(0).integers(0, 256, (batch * b.frames, 360, 640, 3), dtype=np.uint8)
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        x = b.preprocess(frames)
        if b.frames > 1:
            x = x.view(batch, b.frames, *x.shape[1:]).transpose(1, 2)
        with torch.no_grad():
            model(x)
        if r:  # the first is warm-up
            times.append(time.perf_counter() - t0)
    return batch / min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--nodes", type=int, default=32)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    import torch

    info = machine("torch", "av", "transformers")
    cores = torch.get_num_threads()
    tmp = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=tmp) as d:
        path = os.path.join(d, "bench.mp4")
        n = write_video(path, args.seconds, args.width, args.height, args.fps)
        _, raw1 = raw_decode(path, "one")
        _, rawa = raw_decode(path, "auto")
        decoded, samples, stage = stage_decode(path)
    r2d = model_rate("resnet152", args.batch, args.repeats)
    r3d = model_rate("r2plus1d_18", args.batch, args.repeats)

    raw1_fps, rawa_fps, stage_fps = n / raw1, n / rawa, decoded / stage
    # per second of video: fps frames decoded, 1 ResNet-152 image, 1.5 R(2+1)D clips
    decode_s = args.fps / stage_fps  # wall s per video s, on `cores` cores
    model_s = 1.0 / r2d + 1.5 / r3d
    video_s = HOWTO100M_HOURS * 3600
    node_cores = 16

    def days(core_s_per_video_s: float, nodes: int) -> float:
        return video_s * core_s_per_video_s / (node_cores * nodes) / 86400

    cpu_core_s = (decode_s + model_s) * cores  # core-seconds per video second, CPU only
    decode_core_s = decode_s * cores
    lines = [
        SECTION,
        "",
        *header(info, "python benchmarks/extract_throughput.py"),
        f"- load averages (1/5/15 min) at the end: {load()} (the cores are shared with other jobs)",
        f"- input: one synthetic h264 .mp4, {args.width}x{args.height}, {args.fps} fps, {args.seconds:.0f} s "
        f"({n} frames), on tmpfs; torch threads: {cores}",
        "",
        "| what | rate | per core | vs raw decode (1 thread) |",
        "|---|---|---|---|",
        f"| PyAV raw decode, 1 thread (baseline) | {raw1_fps:.0f} frames/s | {raw1_fps:.0f} | 1.00 |",
        f"| PyAV raw decode, FFmpeg AUTO threads | {rawa_fps:.0f} frames/s | {rawa_fps / cores:.0f} | "
        f"{rawa_fps / raw1_fps:.2f} |",
        f"| stage decode + sampling + RGB ({samples} samples) | {stage_fps:.0f} decoded frames/s | "
        f"{stage_fps / cores:.0f} | {stage_fps / raw1_fps:.2f} |",
        f"| ResNet-152 224x224, fp32 CPU, batch {args.batch} | {r2d:.2f} features/s | {r2d / cores:.2f} | |",
        f"| R(2+1)D-18 16x112x112, fp32 CPU, batch {args.batch} | {r3d:.2f} features/s | {r3d / cores:.2f} | |",
        "",
        f"Per second of video (howto100m layout: {args.fps} frames decoded, 1 ResNet-152 image, 1.5 R(2+1)D clips): "
        f"decode {decode_core_s:.3f} core-s, models {model_s * cores:.2f} core-s on the CPU.",
        "",
        f"All of HowTo100M ({HOWTO100M_HOURS:,} h, {HOWTO100M_VIDEOS:,} videos) on nodes of {node_cores} cores:",
        f"- CPU only (decode + both models): {days(cpu_core_s, 1):.0f} days on 1 node, "
        f"{days(cpu_core_s, args.nodes):.1f} days on {args.nodes} nodes — the models dominate; a CPU-only "
        "cluster is not the way.",
        f"- decode-bound (the models on a GPU that keeps up): {days(decode_core_s, 1):.1f} days on 1 node, "
        f"{days(decode_core_s, args.nodes) * 24:.1f} h on {args.nodes} nodes. Whether one GPU keeps up is "
        "not measured here (no GPU in this session): it needs "
        f"{video_s / (args.nodes * 86400):.0f} video-s/s per node for a one-day run, i.e. that many "
        "ResNet-152 images/s plus 1.5x that in R(2+1)D clips.",
    ]
    write_section(SECTION, "\n".join(lines) + "\n", args.results)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
