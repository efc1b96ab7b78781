"""data_prep.extract throughput on the CPU: where the decode time goes, the two resize paths, the backbones.

    python benchmarks/extract_throughput.py [--seconds 10] [--width 640 --height 360 --fps 30]

1. Writes one synthetic h264 .mp4 at HowTo100M's typical size (640x360, 30 fps; moving
   gradients plus noise, so the encoder makes real P-frames) on tmpfs.
2. The decoder's own rate, the baseline: PyAV decoding every frame with no conversion, one
   thread (`thread_count=1`) and FFmpeg's automatic threading.
3. The stage's decode, split into its parts: `iter_samples` with the howto100m plans (ResNet-152
   at 1/s + R(2+1)D-18 16-frame clips at 1.5/s), i.e. decode + picking + RGB conversion of the
   sampled frames, with `--resize torch` (full-size RGB; the default) and `--resize ffmpeg`
   (swscale resizes to each backbone's size while converting); then `Preprocess` on the CPU
   (resize + crop + normalise of the full-size frames: what the default path costs a CPU-only run;
   on a GPU it runs there) and its crop + normalise alone (what remains after FFmpeg resized); and the
   batching before it (np.stack + the pinned copy), full-size and resized.
4. What `--resize ffmpeg` changes: the pixels (grey levels, after resize + crop) and the full-size
   backbones' features (random weights, seed 0; cosine similarity to the default path's), on
   frames of this video.
5. The backbones at full size (random weights; the cost does not depend on them), fp32 on the
   CPU: features/s for ResNet-152 (224x224 images) and R(2+1)D-18 (16x112x112 clips), batch 8.
6. From these, per core (CPU time of this process, all its threads: on shared cores other jobs stretch the
   wall time, much less the CPU time), the time to extract all of HowTo100M (134,472 h of video, 1.22M
   videos) on N nodes of 16 cores: CPU only, and the CPU's share on nodes whose GPU does the
   models (and, with `--resize torch`, the resize): decode-bound. Writes benchmarks/RESULTS.md
   "## data_prep.extract".
"""

from __future__ import annotations

import argparse
import math
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


def best_of(fn, repeats: int = 2) -> tuple[object, float, float]:
    """(fn's result, best wall s, best CPU s of this process: every thread's, so core-s) over `repeats` runs.
    CPU time is what the per-core rates use: other jobs on shared cores stretch the wall time, not it."""
    out, wall, cpu = None, math.inf, math.inf
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return out, wall, cpu


def raw_decode(path: str, threads: str) -> tuple[int, float, float]:
    """(frames, wall s, CPU s) of PyAV decoding every frame, no conversion; `threads`: "one" or "auto"."""
    import av

    def run() -> int:
        with av.open(path) as c:
            s = c.streams.video[0]
            if threads == "one":
                s.codec_context.thread_count = 1
            else:
                s.thread_type = "AUTO"
            return sum(1 for _ in c.decode(s))

    return best_of(run)  # type: ignore[return-value]


def stage_decode(path: str, resize: str) -> tuple[list, float, float]:
    """(iter_samples' output: the samples then the decoded-frame count, wall s, CPU s), howto100m plans."""
    from data_prep import extract as X

    return best_of(lambda: list(X.iter_samples(path, PLANS(), resize)))  # type: ignore[return-value]


def PLANS() -> list:  # noqa: N802 (a constant, built lazily)
    from data_prep import extract as X

    return X.plans_for("howto100m", [X.BACKBONES["resnet152"], X.BACKBONES["r2plus1d_18"]], 1.5)


def preprocess_per_video_s(samples: list, resized: bool) -> tuple[float, float]:
    """(wall s, CPU s) of Preprocess (resize unless `resized`, crop, normalise) on the CPU per second of
    video (1 2D image and 1.5 3D clips), from the stage's own samples (2 of each kind)."""
    per_s = {0: 1.0, 1: 1.5}  # samples per video second: ResNet-152, R(2+1)D-18
    wall = cpu = 0.0
    for p, plan in enumerate(PLANS()):
        mine = [s for s in samples if s.plan == p][:2]
        frames = np.stack([f for s in mine for f in s.frames])
        pre = plan.backbone.preprocess
        pre(frames, resized=resized)  # warm-up
        _, w, c = best_of(lambda: pre(frames, resized=resized))  # noqa: B023
        wall, cpu = wall + w / len(mine) * per_s[p], cpu + c / len(mine) * per_s[p]
    return wall, cpu


def batching_per_video_s(samples: list) -> float:
    """CPU s per second of video of what Extractor._run does to the frames before Preprocess: np.stack of
    a batch's frames, plus one copy (on a GPU, the pinned copy the frames go to the device from)."""
    per_s = {0: 1.0, 1: 1.5}
    cpu = 0.0
    for p in per_s:
        mine = [s for s in samples if s.plan == p][:2]
        _, _, c = best_of(lambda: np.stack([f for s in mine for f in s.frames]).copy(), 3)  # noqa: B023
        cpu += c / len(mine) * per_s[p]
    return cpu


def resize_effect(torch_samples: list, ffmpeg_samples: list, n: int = 4) -> list[dict]:
    """Per backbone: grey-level difference of the preprocessed inputs and cosine similarity of the full-size
    backbone's features (random weights, seed 0), --resize ffmpeg against the default, on n samples."""
    import torch

    out = []
    for p, plan in enumerate(PLANS()):
        b = plan.backbone
        a = [s for s in torch_samples if s.plan == p][:n]
        f = [s for s in ffmpeg_samples if s.plan == p][:n]
        xa = b.preprocess(np.stack([x for s in a for x in s.frames]))
        xf = b.preprocess(np.stack([x for s in f for x in s.frames]), resized=True)
        std = torch.tensor(b.preprocess.std).view(1, 3, 1, 1)
        grey = ((xa - xf) * std).abs() * 255  # back to grey levels
        if b.frames > 1:
            xa, xf = (x.view(len(a), b.frames, *x.shape[1:]).transpose(1, 2) for x in (xa, xf))
        model = b.build(None, tiny=False)
        with torch.no_grad():
            fa, ff = model(xa), model(xf)
        cos = torch.nn.functional.cosine_similarity(fa, ff, dim=1)
        out.append({"name": b.name, "samples": len(a), "grey_mean": grey.mean().item(),
                    "grey_p99": torch.quantile(grey.flatten()[::7], 0.99).item(), "grey_max": grey.max().item(),
                    "cos_min": cos.min().item(), "cos_mean": cos.mean().item(),
                    "rel_l2": ((fa - ff).norm(dim=1) / fa.norm(dim=1)).max().item()})  # fmt: skip
    return out


def model_rate(name: str, batch: int, repeats: int) -> tuple[float, float]:
    """(features per wall s, features per CPU s) of one full-size backbone on the CPU, preprocessed inputs."""
    import torch

    from data_prep import extract as X

    b = X.BACKBONES[name]
    model = b.build(None, tiny=False)
    c = b.preprocess.crop
    x = torch.randn(batch, 3, b.frames, c, c) if b.frames > 1 else torch.randn(batch, 3, c, c)
    with torch.no_grad():
        model(x)  # warm-up
        _, wall, cpu = best_of(lambda: model(x), repeats)
    return batch / wall, batch / cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0)
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
        _, raw1, raw1_cpu = raw_decode(path, "one")
        _, rawa, rawa_cpu = raw_decode(path, "auto")
        out_torch, st_torch, st_torch_cpu = stage_decode(path, "torch")
        out_ffmpeg, st_ffmpeg, st_ffmpeg_cpu = stage_decode(path, "ffmpeg")
    decoded, torch_samples, ffmpeg_samples = out_torch[-1], out_torch[:-1], out_ffmpeg[:-1]
    pre_full, pre_full_cpu = preprocess_per_video_s(torch_samples, resized=False)
    pre_crop, pre_crop_cpu = preprocess_per_video_s(ffmpeg_samples, resized=True)
    stack_torch, stack_ffmpeg = batching_per_video_s(torch_samples), batching_per_video_s(ffmpeg_samples)
    effect = resize_effect(torch_samples, ffmpeg_samples)
    r2d, r2d_cpu = model_rate("resnet152", args.batch, args.repeats)
    r3d, r3d_cpu = model_rate("r2plus1d_18", args.batch, args.repeats)

    video_s = HOWTO100M_HOURS * 3600
    node_cores = 16
    per_s = 1.0 / args.seconds  # -> per second of video
    rows = [  # (what, wall s per video s, CPU core-s per video s)
        ("PyAV raw decode, 1 thread, no conversion (baseline)", raw1 * per_s, raw1_cpu * per_s),
        ("PyAV raw decode, FFmpeg AUTO threads, no conversion", rawa * per_s, rawa_cpu * per_s),
        ("stage decode, `--resize torch`: + full-size RGB of the sampled frames", st_torch * per_s,
         st_torch_cpu * per_s),
        ("stage decode, `--resize ffmpeg`: + swscale resize + RGB of the sampled frames", st_ffmpeg * per_s,
         st_ffmpeg_cpu * per_s),
        ("batching, full-size frames: np.stack + the (pinned) copy", stack_torch, stack_torch),
        ("batching, FFmpeg-resized frames: np.stack + the (pinned) copy", stack_ffmpeg, stack_ffmpeg),
        ("Preprocess on the CPU, full-size frames: resize + crop + normalise (torch)", pre_full, pre_full_cpu),
        ("Preprocess on the CPU, FFmpeg-resized frames: crop + normalise", pre_crop, pre_crop_cpu),
        (f"ResNet-152 + R(2+1)D-18, fp32 CPU, batch {args.batch} (1 image + 1.5 clips)", 1 / r2d + 1.5 / r3d,
         1 / r2d_cpu + 1.5 / r3d_cpu),
    ]  # fmt: skip
    base_cpu = rows[0][2]  # the stage's CPU side below: decode + RGB (+ resize) + batching
    dec_torch, dec_ffmpeg, model_cpu = rows[2][2] + stack_torch, rows[3][2] + stack_ffmpeg, rows[8][2]
    paths = [  # (what, CPU core-s per video s on a node whose GPU runs the models, the same on a CPU-only node)
        ("before (issue 17's stage: resize on the CPU even with a GPU)", dec_torch + pre_full_cpu,
         dec_torch + pre_full_cpu),
        ("`--resize torch` (default): resize on the GPU", dec_torch, dec_torch + pre_full_cpu),
        ("`--resize ffmpeg`", dec_ffmpeg, dec_ffmpeg + pre_crop_cpu),
    ]  # fmt: skip

    def hours(core_s_per_video_s: float, nodes: int) -> float:
        return video_s * core_s_per_video_s / (node_cores * nodes) / 3600

    def goal(core_s: float) -> str:
        return "met" if hours(core_s, args.nodes) < 24 else "not met"

    lines = [
        SECTION,
        "",
        *header(info, "python benchmarks/extract_throughput.py"),
        f"- load averages (1/5/15 min) at the end: {load()} (the cores are shared with other jobs: the per-core "
        "figures use this process's CPU time, which they stretch far less than the wall time)",
        f"- input: one synthetic h264 .mp4, {args.width}x{args.height}, {args.fps} fps, {args.seconds:.0f} s "
        f"({n} frames), on tmpfs; torch threads: {cores}; per second of video the howto100m layout samples "
        f"24 frames for 1.5 R(2+1)D clips and 1 for ResNet-152 ({decoded / args.seconds:.0f} frames decoded)",
        "",
        "Where the time goes, per second of video (core-s: the process's CPU time, all its threads):",
        "",
        "| part | wall s | core-s | decoded frames per core-s | core-s vs raw decode (1 thread) |",
        "|---|---|---|---|---|",
        *(
            f"| {what} | {wall:.4f} | {cpu:.4f} | {args.fps / cpu:.0f} | {cpu / base_cpu:.2f} |"
            for what, wall, cpu in rows
        ),
        "",
        "What `--resize ffmpeg` changes against the default, on this video's frames (full-size backbones, random "
        "weights seed 0; grey levels 0-255 of the resized + cropped input):",
        "",
        "| backbone | samples | grey mean abs | grey p99 | grey max | feature cosine min / mean | max relative L2 |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {e['name']} | {e['samples']} | {e['grey_mean']:.2f} | {e['grey_p99']:.1f} | {e['grey_max']:.0f} | "
            f"{e['cos_min']:.5f} / {e['cos_mean']:.5f} | {e['rel_l2']:.4f} |"
            for e in effect
        ),
        "",
        f"All of HowTo100M ({HOWTO100M_HOURS:,} h, {HOWTO100M_VIDEOS:,} videos) on {args.nodes} nodes of "
        f"{node_cores} cores, from the core-s above (every core busy; per-core rates as measured here):",
        "",
        f"| path | CPU core-s / video s | {args.nodes} nodes, a GPU each that keeps up | "
        f"CPU only (+ models), {args.nodes} nodes |",
        "|---|---|---|---|",
        *(
            f"| {what} | {gpu:.3f} | {hours(gpu, args.nodes):.1f} h | "
            f"{hours(cpu + model_cpu, args.nodes) / 24:.0f} days |"
            for what, gpu, cpu in paths
        ),
        "",
        f"One-day goal (CPU side, a GPU per node doing the models): {goal(dec_torch)} by the default path, "
        f"{goal(dec_ffmpeg)} by `--resize ffmpeg`. Whether one GPU keeps up is not measured here (no GPU in this "
        f"session): for a one-day run a node's GPU must take {video_s / (args.nodes * 86400):.0f} video-s/s, i.e. "
        "that many ResNet-152 images/s plus 1.5x that in R(2+1)D clips (and with `--resize torch` the resize of "
        "24 full-size frames per video second).",
    ]
    write_section(SECTION, "\n".join(lines) + "\n", args.results)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
