"""Peak memory per rank for ZeRO stages 0-3 at the base preset, two CPU ranks (gloo).

    python benchmarks/zero_memory.py [--stages 0 1 2 3] [--steps 2] [--batch 1] [--write]

What it measures, for each ZeRO stage, in two fresh processes (ranks 0 and 1 of a gloo group,
started the way torchrun starts them: RANK/LOCAL_RANK/WORLD_SIZE/MASTER_* in the environment;
OMP_NUM_THREADS=1, DS_ACCELERATOR=cpu): the project's path of pretrain/train.py with the base
preset built without downloading weights (`ModelConfig(preset="base", text_pretrained=False)`:
RoBERTa-base architecture, 768 hidden, 6 cross layers, 4352-d frames), fp32:
`build_model` -> `runtime.build_engine` (torch AdamW, the given ZeRO stage) -> `--steps`
calls of `Trainer._micro_step` (all five objectives through the Combiner, TACo negatives
gathered from both ranks) on a synthetic batch per rank (`--batch` clips, 16 frames, 32 tokens).

Per rank it records:
- peak RSS per phase (VmHWM from /proc/self/status, reset through /proc/self/clear_refs at the
  start of the phase): building the model, building the engine, each training step; the
  process peak (getrusage ru_maxrss) and the RSS after each phase;
- the tensors alive just before the last optimizer step (after its backward: weights,
  gradients, optimizer state, DeepSpeed's buffers, no activations), found by walking
  Python's garbage collector, each storage counted once, split into: model parameters as the
  module holds them (ZeRO-3: its partition, `ds_tensor`), gradients on the parameters
  (`.grad`), the optimizer's state (exp_avg, exp_avg_sq), fp32 master copies the ZeRO
  optimizer keeps (the parameters of the torch optimizer that are not the module's), the
  ZeRO optimizer's other tensor attributes (named: gradient partitions, buckets, flat
  buffers), and the rest;
- seconds per step.
A stage that fails is recorded with the end of its error output, not hidden. `--write` puts the
table under "## pretrain: ZeRO memory per rank (base preset, CPU)" in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for `python benchmarks/x.py`
import torch  # noqa: E402

from benchmarks._results import header, load, machine, write_section  # noqa: E402
from benchmarks.pretrain_step import STACK, make_batch  # noqa: E402
from launch.pipeline import free_port  # noqa: E402

SECTION = "## pretrain: ZeRO memory per rank (base preset, CPU)"
WORLD = 2
MiB = 2**20


# ---------------------------------------------------------------- in each rank


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


class Phases:
    """Peak RSS (VmHWM, reset at each phase's start) and RSS at each phase's end, in MiB."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def start(self) -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := current VmRSS
        self._t = time.perf_counter()

    def end(self, name: str) -> None:
        self.rows.append(
            {
                "phase": name,
                "peak_mib": _status_kb("VmHWM") / 1024,
                "rss_after_mib": _status_kb("VmRSS") / 1024,
                "seconds": time.perf_counter() - self._t,
            }
        )


def _storages(obj: Any, depth: int = 0) -> dict[int, int]:
    """{storage data_ptr: bytes} of the tensors in obj: a tensor, or lists/tuples/dicts of them or DeepSpeed
    objects holding them (e.g. ZeRO-3's gradient buckets), 3 levels deep."""
    out: dict[int, int] = {}
    if isinstance(obj, torch.Tensor):
        st = obj.untyped_storage()
        if st.data_ptr() and st.nbytes():
            out[st.data_ptr()] = st.nbytes()
    elif depth < 3 and isinstance(obj, (list, tuple)):
        for x in obj:
            out.update(_storages(x, depth + 1))
    elif depth < 3 and isinstance(obj, dict):
        for x in obj.values():
            out.update(_storages(x, depth + 1))
    elif depth < 3 and type(obj).__module__.startswith("deepspeed") and hasattr(obj, "__dict__"):
        for x in vars(obj).values():
            out.update(_storages(x, depth + 1))
    return out


def held_tensors(model: torch.nn.Module, engine: Any) -> dict[str, Any]:
    """Bytes of the live tensors by owner (see the module docstring), each storage once."""
    live: dict[int, int] = {}
    example: dict[int, str] = {}  # storage -> the shape and dtype of a tensor on it
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                for k, v in _storages(obj).items():
                    live[k] = v
                    example.setdefault(k, f"{tuple(obj.shape)} {str(obj.dtype).removeprefix('torch.')}")
        except Exception:  # noqa: BLE001 - objects whose isinstance check fails are not tensors
            continue
    params = list(model.parameters())
    parts: dict[str, dict[int, int]] = {"parameters": {}, "gradients (.grad)": {}}
    for p in params:  # ZeRO-3: p.data is empty, the rank's partition is p.ds_tensor
        parts["parameters"].update({**_storages(p.data), **_storages(getattr(p, "ds_tensor", None))})
        parts["gradients (.grad)"].update(_storages(p.grad))
    zero = engine.optimizer
    inner = getattr(zero, "optimizer", zero)  # the torch AdamW (ZeRO 0: the engine's optimizer itself)
    parts["optimizer state"] = {k: v for s in inner.state.values() for k, v in _storages(s).items()}
    masters = {k: v for g in inner.param_groups for k, v in _storages(g["params"]).items()}
    parts["fp32 master copies"] = {k: v for k, v in masters.items() if k not in parts["parameters"]}
    counted = set().union(*parts.values())
    attrs: dict[str, int] = {}
    if zero is not inner:
        for name, value in vars(zero).items():
            found = {k: v for k, v in _storages(value).items() if k not in counted and k in live}
            if found:
                attrs[name] = sum(found.values())
                counted |= set(found)
    out = {name: sum(v for k, v in d.items() if k in live) for name, d in parts.items()}
    out["ZeRO optimizer attributes"] = sum(attrs.values())
    other = sorted(((v, k) for k, v in live.items() if k not in counted), reverse=True)
    out["other"] = sum(v for v, _ in other)
    out["total"] = sum(live.values())
    out["attributes"] = dict(sorted(attrs.items(), key=lambda kv: -kv[1])[:4])
    out["other_largest"] = [f"{example[k]} {v / MiB:.0f} MiB" for v, k in other[:4]]
    return out


def rank_main(args: argparse.Namespace) -> None:
    """One rank: build, engine, steps; writes its record to args.out/rank<r>.json."""
    rank = int(os.environ["RANK"])
    record: dict[str, Any] = {"rank": rank, "stage": args.stage}
    phases = Phases()
    try:
        torch.set_num_threads(1)
        from pretrain import runtime
        from pretrain.loop import Trainer, TrainState
        from pretrain.model import ModelConfig, build_model, count_parameters
        from pretrain.objectives import Combiner, ObjectivesConfig

        rt = runtime.RuntimeConfig(zero_stage=args.stage)
        runtime.init_distributed(rt)
        record["rss_start_mib"] = _status_kb("VmRSS") / 1024
        phases.start()
        torch.manual_seed(0)
        model = build_model(ModelConfig(preset="base", text_pretrained=False))
        model.train()
        record["params"] = count_parameters(model)
        phases.end("build model")
        phases.start()
        engine = runtime.build_engine(model, rt, runtime.OptimConfig(), args.batch, max_steps=100, world=WORLD)
        phases.end("build engine")
        batch = make_batch(args.batch, args.frames, args.tokens, model.config.frame_dim, model.vocab_size, seed=rank)
        trainer = Trainer(
            engine,
            None,
            Combiner(ObjectivesConfig()),
            None,
            TrainState(),
            args.out,
            max_steps=10**9,
            rank=rank,
            world=WORLD,
        )
        step = engine.step
        held: dict[str, Any] = {}

        def step_and_measure() -> None:  # the last step: what is held after backward, before the update
            t = time.perf_counter()
            held.update(held_tensors(model, engine))
            held["scan_seconds"] = time.perf_counter() - t  # not part of the step: subtracted from its time
            phases._t += held["scan_seconds"]
            step()

        for i in range(args.steps):
            if i == args.steps - 1:
                engine.step = step_and_measure
            torch.manual_seed(100 + i)
            phases.start()
            trainer._micro_step(batch)
            phases.end(f"step {i + 1}")
        engine.step = step
        record["held_before_last_update"] = held
        record["loss"] = trainer._window["loss"]
        runtime.barrier()
    except Exception:  # noqa: BLE001 - the failure is the result
        record["error"] = traceback.format_exc()[-1500:]
    record["phases"] = phases.rows
    record["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
    if "error" in record:
        print(record["error"], file=sys.stderr)
        os._exit(1)  # a peer may hang in a collective; the parent's timeout ends it
    from pretrain import runtime

    runtime.shutdown()


# ---------------------------------------------------------------- the launcher


def run_stage(stage: int, args: argparse.Namespace) -> dict[str, Any]:
    """Two ranks of `stage` in fresh processes; their records, or the failure."""
    out = tempfile.mkdtemp(prefix=f"zero{stage}-")
    env = {
        **os.environ,
        "WORLD_SIZE": str(WORLD),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "OMP_NUM_THREADS": "1",
        "DS_ACCELERATOR": "cpu",
        "HF_HUB_OFFLINE": "1",
        "PYTHONWARNINGS": "ignore",
    }
    cmd = [
        sys.executable,
        __file__,
        "--rank-main",
        "--stage",
        str(stage),
        "--out",
        out,
        "--steps",
        str(args.steps),
        "--batch",
        str(args.batch),
        "--frames",
        str(args.frames),
        "--tokens",
        str(args.tokens),
    ]
    t = time.perf_counter()
    procs = [
        subprocess.Popen(
            cmd,
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(out, f"stderr{r}.txt"), "w"),
        )
        for r in range(WORLD)
    ]
    timed_out = False
    for p in procs:
        try:
            p.wait(timeout=max(1.0, args.timeout - (time.perf_counter() - t)))
        except subprocess.TimeoutExpired:
            timed_out = True
    for p in procs:
        if p.poll() is None:
            p.kill()  # only the ranks started here
            p.wait()
    res: dict[str, Any] = {"stage": stage, "wall": time.perf_counter() - t, "ranks": []}
    for r in range(WORLD):
        path = os.path.join(out, f"rank{r}.json")
        rec = json.load(open(path)) if os.path.exists(path) else {"rank": r}
        if "error" not in rec and procs[r].returncode != 0:
            with open(os.path.join(out, f"stderr{r}.txt")) as f:
                tail = f.read()[-1500:]
            prefix = f"timed out after {args.timeout:.0f} s; " if timed_out else ""
            rec["error"] = f"{prefix}exit code {procs[r].returncode}; stderr: {tail}"
        res["ranks"].append(rec)
    print(
        f"ZeRO {stage}: {res['wall']:.0f} s, "
        + "; ".join(
            f"rank {r['rank']}: "
            + (
                f"FAILED {r['error'].strip().splitlines()[-1][:200]}"
                if "error" in r
                else f"peak {r['maxrss_mib']:.0f} MiB"
            )
            for r in res["ranks"]
        ),
        flush=True,
    )
    shutil.rmtree(out, ignore_errors=True)
    return res


def _gib(x: float) -> str:
    return f"{x / 1024:.2f}"


def tables(results: list[dict[str, Any]]) -> str:
    """Per stage and rank: peaks by phase, held tensors, step time; failures with their text."""
    lines = [
        "| ZeRO | rank | peak RSS GiB (process) | peak RSS GiB: build model / build engine / step 1 / step 2 | RSS GiB "
        "after the last step | s/step | parameters GiB | .grad GiB | optimizer state GiB | fp32 master GiB "
        "| ZeRO optimizer buffers GiB | other tensors GiB | all live tensors GiB |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    failures, buffers = [], []
    for res in results:
        for r in res["ranks"]:
            if "error" in r:
                failures.append((res["stage"], r["rank"], r["error"]))
            ph = {p["phase"]: p for p in r.get("phases", [])}
            peaks = " / ".join(
                _gib(ph[k]["peak_mib"]) if k in ph else "-" for k in ("build model", "build engine", "step 1", "step 2")
            )
            steps = [p["seconds"] for k, p in ph.items() if k.startswith("step")]
            h = r.get("held_before_last_update", {})
            held = [
                f"{h[k] / 2**30:.2f}" if k in h else "-"
                for k in (
                    "parameters",
                    "gradients (.grad)",
                    "optimizer state",
                    "fp32 master copies",
                    "ZeRO optimizer attributes",
                    "other",
                    "total",
                )
            ]
            last = r["phases"][-1]["rss_after_mib"] if r.get("phases") else float("nan")
            s_step = (
                f"{sum(steps[1:]) / len(steps[1:]):.1f}" if len(steps) > 1 else (f"{steps[0]:.1f}" if steps else "-")
            )
            lines.append(
                f"| {res['stage']} | {r['rank']} | {_gib(r.get('maxrss_mib', float('nan')))} | {peaks} | "
                f"{_gib(last)} | {s_step} | " + " | ".join(held) + " |"
            )
            if h and r["rank"] == 0:
                attrs = ", ".join(f"`{k}` {v / 2**30:.2f} GiB" for k, v in h["attributes"].items()) or "none"
                buffers.append(
                    f"- ZeRO {res['stage']}: optimizer attributes: {attrs}; largest other tensors: "
                    + (", ".join(h["other_largest"]) or "none")
                )
    text = "\n".join(lines)
    if buffers:
        text += "\n\nWhat the tensor columns hold beyond parameters, gradients and optimizer state (rank 0):\n\n"
        text += "\n".join(buffers)
    for stage, rank, err in failures:
        text += f"\n\nZeRO {stage}, rank {rank} FAILED:\n\n```\n{err.strip()}\n```"
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--steps", type=int, default=2, help="training steps (2: the peak with optimizer state allocated)")
    p.add_argument("--batch", type=int, default=1, help="clips per rank")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--timeout", type=float, default=240.0, help="seconds per stage before its ranks are killed")
    p.add_argument("--write", action="store_true", help=f'put the results under "{SECTION}" in RESULTS.md')
    p.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--stage", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rank_main:
        rank_main(args)
        return
    torch.set_num_threads(1)  # as in the ranks (OMP_NUM_THREADS=1), for the header; this process only waits
    info, load_before, t0 = machine(*STACK), load(), time.time()
    results = [run_stage(s, args) for s in args.stages]
    body = tables(results)
    print("\n" + body)
    print(f"wall {time.time() - t0:.0f} s")
    if args.write:
        ok = [r for res in results for r in res["ranks"] if "params" in r]
        n = ok[0]["params"] if ok else 0
        command = "python benchmarks/zero_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
        lines = [
            SECTION,
            "",
            *header(info, command.strip()),
            f"- load average (1, 5, 15 min) before: {load_before}; after: {load()}",
            f"- base preset, `text_pretrained=False` (RoBERTa-base architecture, random weights), {n / 1e6:.1f}M "
            f"parameters, fp32; 2 ranks (separate processes, gloo, OMP_NUM_THREADS=1); {args.steps} training "
            f"steps (`Trainer._micro_step`, all five objectives) of {args.batch} clip(s) x {args.frames} frames "
            f"(4352-d) x {args.tokens} tokens per rank",
            "- peak RSS = VmHWM of the phase (reset at its start); process = getrusage maxrss; tensor columns "
            "= live tensors found through the garbage collector just before the last optimizer update "
            "(after its backward), each storage once; GiB = 2^30 bytes",
            "- this is host memory with fp32 everywhere and tiny activations: on an H100 run (bf16, real "
            "batches) GPU memory will differ (bf16 weights and gradients, activations dominating); no GPU "
            "was available in this session",
            "",
            body,
            "",
        ]
        write_section(SECTION, "\n".join(lines))


if __name__ == "__main__":
    main()
