"""The device check: what one GPU must show, in one command of under 8 minutes (issue 19).

    bash benchmarks/device_check.sh [--dry-run] [--out DIR]      (this script: python benchmarks/device_check.py)

Five steps, each in its own process group with its own time limit (and all within `--budget` seconds): a step
that fails or runs out of time is recorded with the end of its output, and the next one starts.

1. tests: the test suite's device paths (model, the Combiner's objectives, the loop moving a batch to the
   device) with `pytest --device cuda` (tests/conftest.py; cpu in a dry run);
2. train_zero0..3: the base preset (RoBERTa-base architecture without its weights, 4352-d frames) in bf16 at
   the batch of configs/pretrain/howto100m.yaml (32 clips, 40 frames, 64 tokens), world size 1 (NCCL on a
   GPU, gloo on the CPU), one process per ZeRO stage, activation checkpointing off then on: `Trainer._micro_step`
   with all five objectives (benchmarks/pretrain_step.py's batch and TimedEngine, on a synchronised wall clock):
   samples/s, the step split into data wait (the batch's copy to the device and the loop's own work: the rest
   of the step), forward, finite check, backward and step, peak memory (torch.cuda.max_memory_allocated; on the
   CPU the process's peak RSS) and MFU = FLOPs of one step (torch.utils.flop_counter, forward and backward of all
   five objectives, counted once without checkpointing) / step time / peak bf16 FLOP/s (989e12 for an H100 or
   H200; another device: a bf16 matmul's measured rate, named as such);
3. loader: the training loader's delivery rate over 4352-d shards with a worker per core
   (benchmarks/loader_throughput.py), against the samples/s of step 2 at howto100m.yaml's settings (ZeRO 2,
   checkpointing on): above 1 the GPU never waits on data;
4. vcmr: corpus moment retrieval at TVR val size (10,895 queries x 2,179 videos x 100 frames, d 768) with the
   model side on the device (benchmarks/vcmr_search.py);
5. end_to_end: the main job (launch/main_job.py) at tiny sizes on the device: a synthetic corpus, 20
   pretraining steps, zero-shot retrieval, TVR finetuned (3 steps) from the export and from scratch, and their
   evaluation.

`--dry-run` runs the same steps at tiny sizes on the CPU (about 3 minutes on 2 cores; step 2 with a 1-layer tiny
model in fp32, since CPUs without bf16 units run its matmuls ten times slower): tests/e2e/test_device_check.py runs it
in CI. Writes <out>/device_check.json (every step: status ok | failed | timeout | skipped, seconds,
results) after each step, and <out>/device_check.md, a RESULTS.md section ("## device check"); `--write` also
puts that section into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for `python benchmarks/x.py`
from benchmarks._results import REPO, header, machine, write_section  # noqa: E402

SECTION = "## device check"
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 FLOP/s (no sparsity) by device name
MiB = 2**20


@dataclass(frozen=True)
class Sizes:
    """What each step runs at: the device check's sizes, or a dry run's."""

    model: dict[str, Any]  # ModelConfig fields (always without the text encoder's pretrained weights)
    precision: str  # bf16 on the device; fp32 in a dry run (bf16 matmuls are ten times slower on most CPUs)
    batch: int
    frames: int
    tokens: int
    warmup: int
    steps: int
    videos: int  # loader: synthetic videos; their 4352-d shards
    queries: int  # vcmr
    search_videos: int
    search_frames: int
    search_dim: int


DEVICE = Sizes({"preset": "base"}, "bf16", 32, 40, 64, 3, 10, 200, 10895, 2179, 100, 768)
DRY = Sizes({"preset": "tiny", "text_layers": 1, "cross_layers": 1}, "fp32", 2, 6, 12, 1, 1, 8, 64, 16, 20, 64)
TESTS = [
    "tests/unit/test_model.py",
    "tests/unit/test_objectives.py",
    "tests/unit/test_loop_and_metrics.py",
    "tests/unit/test_gpu_habits.py",
    "-k",
    "test_model or combiner or non_finite or accumulation or gpu_habits",
]
E2E = [
    "videos=16",
    "tagger=heuristic",
    "workers=2",
    "until=finetune",
    "pretrain.steps=20",
    "pretrain.ranks=1",
    "pretrain.held_out_shards=1",
    "pretrain.overrides=[data.batch_size=4,data.max_frames=8,data.max_text_len=16,objectives.taco.k_neg=2,"
    "checkpoint.every=0,eval.every=0,run.log_every=5]",
    "finetune.recipes=[tvr]",
    "finetune.seeds=[0]",
    "finetune.steps=3",
    "finetune.parallel=1",
]


@dataclass(frozen=True)
class Step:
    name: str
    timeout: float  # seconds; less when the budget has less left
    argv: Callable[[argparse.Namespace], list[str]]  # the command, from the repository root


def child(name: str, *extra: str) -> Callable[[argparse.Namespace], list[str]]:
    """The command of a step that runs in this file (`--step NAME`)."""

    def argv(args: argparse.Namespace) -> list[str]:
        dry = ["--dry-run"] if args.dry_run else []
        return [sys.executable, __file__, "--step", name, "--work", str(args.work), *dry, *extra]

    return argv


def pytest_argv(args: argparse.Namespace) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--timeout",
        "120",
        "--device",
        args.device,
        f"--junitxml={args.work / 'tests.xml'}",
        *TESTS,
    ]


STEPS = [
    Step("tests", 90, pytest_argv),
    *(Step(f"train_zero{s}", 75, child("train", "--stage", str(s))) for s in range(4)),
    Step("loader", 75, child("loader")),
    Step("vcmr", 60, child("vcmr")),
    Step("end_to_end", 150, child("end_to_end")),
    Step("extract", 60, child("extract")),
]


# ---------------------------------------------------------------- the driver


def run_step(step: Step, args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    """Run one step in its own process group, killed at its limit; its record (status, seconds, results)."""
    left = deadline - time.monotonic()
    if left < 5:
        return {"status": "skipped", "seconds": 0.0, "error": f"{max(left, 0):.0f} s left in the budget"}
    limit = min(step.timeout * args.slack, left)
    log = args.work / f"{step.name}.log"
    result = args.work / f"{step.name}.json"
    t = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(step.argv(args), cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the step's whole process group (pytest's, torchrun's children)
            proc.wait()
            code = None
    record: dict[str, Any] = {"seconds": round(time.monotonic() - t, 1)}
    if step.name == "tests" and (args.work / "tests.xml").exists():
        record["results"] = junit_counts(args.work / "tests.xml")
    elif result.exists():
        record["results"] = json.loads(result.read_text())
    if code is None:
        record.update(status="timeout", error=f"killed after {limit:.0f} s; " + tail(log))
    elif code != 0:
        record.update(status="failed", error=f"exit code {code}; " + tail(log))
    else:
        record["status"] = "ok" if "results" in record else "failed"
    print(f"{step.name}: {record['status']} in {record['seconds']:.0f} s", flush=True)
    return record


def tail(log: Path, chars: int = 1500) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def junit_counts(path: Path) -> dict[str, float]:
    """Tests run, failed (errors included) and skipped, and their seconds, from pytest's JUnit XML."""
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return {
        "tests": n["tests"],
        "failed": n["failures"] + n["errors"],
        "skipped": n["skipped"],
        "seconds": float(suite.get("time", 0.0)),
    }


def loader_vs_step(steps: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The loader's samples/s over the training step's at howto100m.yaml's settings (ZeRO 2, checkpointing)."""
    loader = steps.get("loader", {}).get("results", {})
    train = steps.get("train_zero2", {}).get("results", {}).get("checkpointing on", {})
    if "samples_per_s" not in loader or "samples_per_s" not in train:
        return {}
    return {
        "loader_over_step": loader["samples_per_s"] / train["samples_per_s"],
        "steady_loader_over_step": loader["steady_samples_per_s"] / train["samples_per_s"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (CI)")
    p.add_argument("--out", type=Path, default=None, help="where the JSON and markdown go (default: $OUT, else .)")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for all steps together")
    p.add_argument(
        "--slack",
        type=float,
        default=None,
        help="multiply every step's limit and the budget (default: 1, 4 in a dry run)",
    )
    p.add_argument("--only", nargs="+", default=None, help="run these steps only (names as in the JSON)")
    p.add_argument("--write", action="store_true", help=f'put the section "{SECTION}" into benchmarks/RESULTS.md')
    p.add_argument("--step", help=argparse.SUPPRESS)
    p.add_argument("--stage", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.step:
        results = STEP_MAIN[args.step](args)
        name = f"train_zero{args.stage}" if args.step == "train" else args.step
        (args.work / f"{name}.json").write_text(json.dumps(results, indent=1))
        return 0
    import torch

    args.device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    os.environ["DS_ACCELERATOR"] = args.device  # the steps' processes, and the runs the main job starts
    out = Path(args.out or os.environ.get("OUT") or ".").resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.work = Path(tempfile.mkdtemp(prefix="device-check-"))
    report: dict[str, Any] = {
        "machine": machine("torch", "deepspeed", "transformers"),
        "dry_run": args.dry_run,
        "device": args.device,
        "sizes": vars(DRY if args.dry_run else DEVICE),
        "steps": {},
    }
    # The limits are sized for the device machine; a dry run shares CI's two cores with whatever else runs.
    args.slack = args.slack or (4.0 if args.dry_run else 1.0)
    deadline = time.monotonic() + args.budget * args.slack
    try:
        for step in STEPS:
            if args.only and step.name not in args.only:
                continue
            report["steps"][step.name] = run_step(step, args, deadline)
            report["loader_vs_step"] = loader_vs_step(report["steps"])
            (out / "device_check.json").write_text(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    command = "bash benchmarks/device_check.sh" + (" --dry-run" if args.dry_run else "")
    text = section(report, command)
    (out / "device_check.md").write_text(text + "\n")
    if args.write:
        write_section(SECTION, text)
    print(f"wrote {out / 'device_check.json'} and {out / 'device_check.md'}")
    return 0 if all(s["status"] == "ok" for s in report["steps"].values()) else 1


# ---------------------------------------------------------------- step 2: the base preset's training step


def synced_clock() -> float:
    """Wall seconds after the GPU's queued work (on the CPU: plain wall seconds)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def peak_memory_mib() -> float:
    """The GPU's peak allocated memory since the last reset; on the CPU the process's peak RSS."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / MiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_flops(dev: Any, precision: str) -> tuple[float, str]:
    """The device's peak dense FLOP/s at `precision` and where the number comes from: the datasheet's bf16 rate
    of a known GPU, else a matmul's measured rate."""
    import torch

    if dev.type == "cuda" and precision == "bf16":
        name = torch.cuda.get_device_name(dev)
        known = next((v for k, v in PEAK_BF16.items() if k in name), None)
        if known:
            return known, f"{name}: {known / 1e12:.0f} TFLOP/s dense bf16 (datasheet)"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(512, 512, dtype=dtype, device=dev)
    (a @ a).sum().item()
    t, n = synced_clock(), 20
    for _ in range(n):
        a = a @ a / 512
    rate = n * 2 * 512**3 / (synced_clock() - t)
    return rate, f"{dev.type}: a 512x512 {precision} matmul's measured {rate / 1e12:.3f} TFLOP/s"


def step_flops(model: Any, combiner: Any, batch: dict[str, Any]) -> float:
    """FLOPs of one training step (forward and backward, all objectives) counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss, _ = combiner(model, batch, 0)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def train_config(args: argparse.Namespace, sizes: Sizes, checkpointing: bool, dev: Any) -> dict[str, Any]:
    """One engine (ZeRO args.stage, the sizes' precision, checkpointing on or off): warm-up, then timed steps."""
    import torch

    from benchmarks.pretrain_step import PHASES, TimedEngine, make_batch
    from pretrain import runtime
    from pretrain.loop import Trainer, TrainState
    from pretrain.model import ModelConfig, build_model, count_parameters
    from pretrain.objectives import Combiner, ObjectivesConfig

    torch.manual_seed(0)
    model = (
        build_model(ModelConfig(**sizes.model, text_pretrained=False, activation_checkpointing=checkpointing))
        .train()
        .to(dev)
    )
    batch = make_batch(sizes.batch, sizes.frames, sizes.tokens, model.config.frame_dim, model.vocab_size)
    if dev.type == "cuda":
        batch = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in batch.items()}
    combiner = Combiner(ObjectivesConfig())
    res: dict[str, Any] = {"params": count_parameters(model)}
    if not checkpointing:  # the model's FLOPs: checkpointing's recomputation is not useful work
        res["flops_per_step"] = step_flops(
            model, combiner, {k: v.to(dev) if torch.is_tensor(v) else v for k, v in batch.items()}
        )
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rt = runtime.RuntimeConfig(zero_stage=args.stage, precision=sizes.precision)
    engine = runtime.build_engine(model, rt, runtime.OptimConfig(), sizes.batch, max_steps=10**6, world=1)
    timed = TimedEngine(engine, clock=synced_clock)
    trainer = Trainer(timed, None, combiner, None, TrainState(), str(args.work / "run"), max_steps=10**9, device=dev)
    for _ in range(sizes.warmup):
        trainer._micro_step(batch)
    timed.times.update(dict.fromkeys(PHASES, 0.0))
    t = synced_clock()
    for _ in range(sizes.steps):
        trainer._micro_step(batch)
    wall = (synced_clock() - t) / sizes.steps
    phases = {k: v / sizes.steps for k, v in timed.times.items()}
    res.update(
        step_s=wall,
        samples_per_s=sizes.batch / wall,
        peak_memory_mib=peak_memory_mib(),
        loss=trainer._window["loss"][-1],
        phases_s={"data wait": wall - sum(phases.values()), **phases},
    )
    del trainer, timed, engine, model
    gc.collect()
    return res


def train_main(args: argparse.Namespace) -> dict[str, Any]:
    """Step 2 for one ZeRO stage: checkpointing off, then on, in this process (one rank)."""
    from pretrain import runtime

    sizes = DRY if args.dry_run else DEVICE
    runtime.init_distributed(runtime.RuntimeConfig(zero_stage=args.stage, precision=sizes.precision))
    dev = runtime.device()
    rate, source = peak_flops(dev, sizes.precision)
    memory = "torch.cuda.max_memory_allocated" if dev.type == "cuda" else "the process's peak RSS"
    out: dict[str, Any] = {
        "stage": args.stage,
        "precision": sizes.precision,
        "peak_flops": rate,
        "peak_flops_source": source,
        "peak_memory_source": memory,
    }
    for checkpointing in (False, True):
        out[f"checkpointing {'on' if checkpointing else 'off'}"] = train_config(args, sizes, checkpointing, dev)
    flops = out["checkpointing off"]["flops_per_step"]
    for key in ("checkpointing off", "checkpointing on"):
        out[key]["mfu"] = flops / out[key]["step_s"] / rate
    runtime.shutdown()
    return out


# ---------------------------------------------------------------- steps 3 to 5


def loader_main(args: argparse.Namespace) -> dict[str, Any]:
    """Step 3: one warm-up epoch, then one timed epoch, of the loader over 4352-d shards, a worker per core."""
    from benchmarks import loader_throughput as lt

    sizes = DRY if args.dry_run else DEVICE
    folder = lt.make_shards(args.work / "loader", sizes.videos, sizes.videos)["4352-d"]
    workers = os.cpu_count() or 1
    _, epoch = lt.loader_epoch(folder, workers, streams=workers, batch=sizes.batch, max_frames=sizes.frames)
    epoch()
    t = time.perf_counter()
    samples, first = epoch()
    seconds = time.perf_counter() - t
    return {
        "workers": workers,
        "samples": samples,
        "seconds": seconds,
        "samples_per_s": samples / seconds,
        "steady_samples_per_s": (samples - sizes.batch) / (seconds - first),
        "first_batch_s": first,
    }


def vcmr_main(args: argparse.Namespace) -> dict[str, Any]:
    """Step 4: benchmarks/vcmr_search.py's measurement (its `child`) with the model side on the device."""
    import torch

    from benchmarks import vcmr_search

    sizes = DRY if args.dry_run else DEVICE
    ns = argparse.Namespace(
        queries=sizes.queries,
        videos=sizes.search_videos,
        frames=sizes.search_frames,
        min_frames=max(2, sizes.search_frames * 3 // 10),
        dim=sizes.search_dim,
        scale=1.0,
        subset=min(512, sizes.queries),
        device=os.environ["DS_ACCELERATOR"],
    )
    if ns.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    res = vcmr_search.child(ns)
    return {
        "queries": res["queries"],
        "videos": res["videos"],
        "dim": res["dim"],
        "device": ns.device,
        "search_s": res["search"]["wall"],
        "ms_per_query": 1e3 * res["search"]["wall"] / res["queries"],
        "vr_stage_s": res["vr_only"]["wall"],
        "gpu_peak_mib": res["search"]["gpu_peak"],
        "rss_peak_mib": res["search"]["rss_peak"],
        "moments_per_query": res["per_query"][0],
    }


def end_to_end_main(args: argparse.Namespace) -> dict[str, Any]:
    """Step 5: the main job at tiny sizes (DS_ACCELERATOR, set by the driver, puts its runs on the device)."""
    from finetune.recipe import flatten_metrics
    from launch import main_job, stages

    work = args.work / "main"
    code = main_job.main([f"workdir={work}", *E2E])
    if code != 0:
        raise SystemExit(f"the main job exited with {code}")
    runs = work / "runs"
    metrics = [json.loads(x) for x in (runs / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    out: dict[str, Any] = {
        "pretrain_steps": metrics[-1]["step"],
        "pretrain_first_loss": metrics[0]["loss"],
        "pretrain_last_loss": metrics[-1]["loss"],
    }
    for init in stages.INITS:
        results = json.loads((runs / "finetune" / f"tvr-{init}-seed0" / "results.json").read_text())
        out.update(flatten_metrics(f"tvr_{init}", results["metrics"]))  # 'tvr_pretrained/VCMR/0.5-r1': x
    return out


HOWTO100M_VIDEO_S = 134_472 * 3600  # all of HowTo100M (benchmarks/extract_throughput.py)


def extract_main(args: argparse.Namespace) -> dict[str, Any]:
    """Step 6: data_prep.extract's models on the device: full-size uint8 frames (640x360) in, resized, cropped and
    normalised there (the default `--resize torch`), the backbone in bf16 autocast; per backbone its samples/s,
    and from them the GPU time of all of HowTo100M on 32 nodes of one GPU (ResNet-152 at 1 image per second of
    video, R(2+1)D-18 at 1.5 clips per second: the howto100m layout). Random weights: the cost does not depend
    on them. The CPU side (decoding) is benchmarks/extract_throughput.py's."""
    import numpy as np
    import torch

    from data_prep import extract as X

    dev = torch.device(os.environ["DS_ACCELERATOR"])
    batch, h, w, steps = (2, 36, 64, 1) if args.dry_run else (32, 360, 640, 5)
    per_video_s = {"resnet152": 1.0, "r2plus1d_18": 1.5}  # samples per second of video
    out: dict[str, Any] = {"device": dev.type, "batch": batch, "frame_hw": [h, w]}
    gpu_s = 0.0
    for name, rate in per_video_s.items():
        b = X.BACKBONES[name]
        ex = X.Extractor([X.Plan(b, 1.0)], [b.build(None, tiny=args.dry_run).to(dev)], dev, batch)
        frames = np.random.default_rng(0).integers(0, 256, (b.frames, h, w, 3), dtype=np.uint8)
        samples = [X.Sample(0, 0, list(frames), [0.0] * b.frames) for _ in range(batch)]
        ex._run(0, samples)  # warm-up (cuDNN's algorithm search)
        t = synced_clock()
        for _ in range(steps):
            ex._run(0, samples)
        per_s = batch * steps / (synced_clock() - t)
        out[f"{name}_per_s"] = per_s
        gpu_s += HOWTO100M_VIDEO_S * rate / per_s
    out["howto100m_gpu_hours_32_nodes"] = gpu_s / 32 / 3600
    out["gpu_peak_mib"] = peak_memory_mib()
    return out


STEP_MAIN: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "train": train_main,
    "loader": loader_main,
    "vcmr": vcmr_main,
    "end_to_end": end_to_end_main,
    "extract": extract_main,
}


# ---------------------------------------------------------------- the report


def section(report: dict[str, Any], command: str) -> str:
    """The RESULTS.md section: the machine, each step's status and time, and the tables."""
    steps = report["steps"]
    lines = [
        SECTION,
        "",
        *header(report["machine"], command),
        f"- sizes: {report['sizes']}",
        "",
        "| step | status | seconds |",
        "|---|---|---:|",
    ]
    lines += [f"| {name} | {s['status']} | {s['seconds']:.0f} |" for name, s in steps.items()]
    tests = steps.get("tests", {}).get("results")
    if tests:
        lines += [
            "",
            f"Tests on `{report['device']}`: {tests['tests']} run, {tests['failed']} failed, "
            f"{tests['skipped']} skipped, {tests['seconds']:.0f} s.",
        ]
    lines += train_table(steps)
    if report.get("loader_vs_step"):
        lo = steps["loader"]["results"]
        r = report["loader_vs_step"]
        lines += [
            "",
            f"Loader, 4352-d, {lo['workers']} workers: {lo['samples_per_s']:.0f} samples/s "
            f"({lo['steady_samples_per_s']:.0f} after the first batch); loader / training step (ZeRO 2, "
            f"checkpointing on) = {r['loader_over_step']:.2f} ({r['steady_loader_over_step']:.2f} steady): "
            "below 1 the device waits on data.",
        ]
    vc = steps.get("vcmr", {}).get("results")
    if vc:
        lines += [
            "",
            f"VCMR corpus search, {vc['queries']} queries x {vc['videos']} videos, d {vc['dim']}, on "
            f"{vc['device']}: {vc['search_s']:.1f} s ({vc['ms_per_query']:.2f} ms/query), VR stage alone "
            f"{vc['vr_stage_s']:.1f} s, peak memory {vc['gpu_peak_mib'] or vc['rss_peak_mib']:.0f} MiB "
            f"({'GPU' if vc['gpu_peak_mib'] else 'RSS above the start'}).",
        ]
    e2e = steps.get("end_to_end", {}).get("results")
    if e2e:
        shown = {k: v for k, v in e2e.items() if k.startswith("pretrain") or k.endswith(("0.5-r1", "VR/r1"))}
        lines += ["", "End to end (tiny): " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()) + "."]
    ex = steps.get("extract", {}).get("results")
    if ex:
        lines += [
            "",
            f"Feature extraction's models on {ex['device']} (batch {ex['batch']}, {ex['frame_hw']} uint8 frames "
            f"resized there, bf16 on a GPU): ResNet-152 {ex['resnet152_per_s']:.0f} images/s, R(2+1)D-18 "
            f"{ex['r2plus1d_18_per_s']:.0f} clips/s; all of HowTo100M on 32 such GPUs: "
            f"{ex['howto100m_gpu_hours_32_nodes']:.1f} h of GPU time (the CPU side: `## data_prep.extract`).",
        ]
    failed = [(name, s) for name, s in steps.items() if s["status"] != "ok"]
    for name, s in failed:
        lines += ["", f"{name} {s['status'].upper()}:", "", "```", s.get("error", "").strip()[-1500:], "```"]
    return "\n".join(lines)


def train_table(steps: dict[str, dict[str, Any]]) -> list[str]:
    rows = [
        (s["results"], key)
        for name, s in steps.items()
        if name.startswith("train_zero") and "results" in s
        for key in ("checkpointing off", "checkpointing on")
    ]
    if not rows:
        return []
    first = rows[0][0]
    lines = [
        "",
        f"Training step, {first['precision']}, world size 1; MFU against {first['peak_flops_source']}; "
        f"{first['checkpointing off']['params'] / 1e6:.1f}M parameters, "
        f"{first['checkpointing off']['flops_per_step'] / 1e12:.3f} TFLOP per step; peak memory: "
        f"{first['peak_memory_source']}:",
        "",
        "| ZeRO | checkpointing | samples/s | step s | data wait | forward | finite check | backward | step "
        "| peak memory MiB | MFU |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res, key in rows:
        r = res[key]
        phases = " | ".join(f"{v:.4f}" for v in r["phases_s"].values())
        lines.append(
            f"| {res['stage']} | {key.split()[-1]} | {r['samples_per_s']:.1f} | {r['step_s']:.4f} | "
            f"{phases} | {r['peak_memory_mib']:.0f} | {r['mfu']:.3f} |"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
