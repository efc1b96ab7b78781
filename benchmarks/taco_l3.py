"""TACo's L3 with cascade sampling against L3 over all K^2 pairs: time and peak memory of forward + backward.

    python benchmarks/taco_l3.py [--batch 64] [--frames 16] [--tokens 32] [--k-neg 8] [--repeats 1] [--write]

What it measures, for a batch of K clips (default 64; world size 1) on the tiny preset's
fusion module (`VideoLanguageModel.fusion_score`: the 2-layer, 384-wide cross encoder and the
w . z_cls head, in training mode, fp32), with the video tokens x (K, M, d) and text tokens
y (K, N, d) given (computed by the model's encoders without gradient, then leaves with
gradient, so the encoders are not part of the comparison but the gradients reaching them are):

- cascade (the project's L3): `choose_negatives` (the L1 + L2 scores of every text-video
  pair, the K' best-scoring negatives per text and per video), `cascade_pairs` and
  `taco_l3_loss`: 2K(K'+1) pairs through the fusion module, forward and backward;
- all pairs: `l3_all_pairs`, all K^2 pairs through the fusion module, forward and backward.

Every measured forward + backward runs in a fresh process (one torch thread by default, so
that other processes on the machine slow it down without distorting its CPU time), after a
small warm-up of the same code on 4 clips (kernels initialised, little heap kept), and gives:
- wall and CPU seconds;
- peak bytes allocated through torch's CPU allocator, from the profiler's memory events
  (`torch.profiler`, profile_memory=True): the largest "Total Allocated" inside the region,
  i.e. the peak of the tensors allocated in it and still alive (activations saved for
  backward, gradients, temporaries); weights, x and y, which existed before, are excluded;
- peak RSS minus RSS just before (VmHWM, reset through /proc/self/clear_refs): what the
  process really took from the OS, allocator slack and memory outside torch's allocator
  (oneDNN scratch) included.
The runs go cascade, then (all pairs, cascade) x `--repeats`: each all-pairs run is compared
with the mean of the cascade runs before and after it. `--write` puts the result under
"## pretrain: TACo L3, cascade vs all pairs" in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for `python benchmarks/x.py`
import torch  # noqa: E402

from benchmarks._results import header, load, machine, write_section  # noqa: E402
from benchmarks.pretrain_step import STACK, make_batch, med_range  # noqa: E402

SECTION = "## pretrain: TACo L3, cascade vs all pairs"
VARIANTS = ("cascade", "all pairs")
MiB = 2**20


def setup(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The tiny preset model (training mode) and the L3 inputs: x, y as leaves with gradient, masks, TOI weights."""
    from pretrain.model import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig())
    model.train()
    batch = make_batch(args.batch, args.frames, args.tokens, model.config.frame_dim, model.vocab_size, seed=1)
    with torch.no_grad():
        x = model.embed_video(batch["frames"], batch["frame_mask"])  # (K, M, d)
        y = model.embed_text(batch["input_ids"], batch["attention_mask"])  # (K, N, d)
    return model, {
        "x": x.requires_grad_(), "y": y.requires_grad_(), "frame_mask": batch["frame_mask"],
        "text_mask": batch["attention_mask"], "toi_weight": batch["toi_weight"],
    }  # fmt: skip


def step_fn(variant: str, model: torch.nn.Module, inp: dict[str, torch.Tensor], k_neg: int) -> Callable[[], float]:
    """One forward + backward of the variant's L3 (gradients must be None before); returns the loss."""
    from pretrain.objectives.taco import TacoConfig, Texts, cascade_pairs, choose_negatives, l3_all_pairs, taco_l3_loss

    x, y, fm, tm, toi = inp["x"], inp["y"], inp["frame_mask"], inp["text_mask"], inp["toi_weight"]
    k = x.shape[0]
    k_neg = min(k_neg, k - 1)
    rows, targets, cfg = slice(0, k), torch.arange(k), TacoConfig(k_neg=k_neg)

    def cascade() -> torch.Tensor:
        negs = choose_negatives(x, fm, Texts(y, model.sentence(y, tm), tm, toi), rows, k_neg, cfg)  # (K, K'), (K, K')
        pairs = cascade_pairs(*negs, targets)  # 2K(K'+1) pairs
        return taco_l3_loss(model.fusion_score, x, fm, y, tm, pairs, k_neg + 1)

    def all_pairs() -> torch.Tensor:
        return l3_all_pairs(model.fusion_score, x, fm, y, tm)

    loss_fn = cascade if variant == "cascade" else all_pairs

    def run() -> float:
        loss = loss_fn()
        loss.backward()
        return float(loss.detach())

    return run


def profiled(run: Callable[[], float]) -> tuple[float, int]:
    """(loss, peak bytes allocated and alive through torch's CPU allocator during `run`, from the profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss = run()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = [e for e in json.load(f)["traceEvents"] if e.get("name") == "[memory]"]
    return loss, max(e["args"]["Total Allocated"] for e in events if e["args"].get("Device Type", 0) == 0)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def child(args: argparse.Namespace) -> None:
    """In a fresh process: warm up on 4 clips, then one measured forward + backward; prints JSON."""
    import gc

    model, inp = setup(args)
    small = {k: v[:4].detach().requires_grad_(v.requires_grad) for k, v in inp.items()}
    step_fn(args.child, model, small, args.k_neg)()  # kernels initialised, little memory kept
    model.zero_grad(set_to_none=True)
    run = step_fn(args.child, model, inp, args.k_neg)
    del small
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := current VmRSS
    before = _status_kb("VmRSS")
    t, c = time.perf_counter(), time.process_time()
    loss, peak = profiled(run)
    cpu, wall = time.process_time() - c, time.perf_counter() - t
    print(
        json.dumps(
            {
                "variant": args.child,
                "loss": loss,
                "wall": wall,
                "cpu": cpu,
                "alloc_peak": peak,
                "rss_before_kb": before,
                "rss_peak_kb": _status_kb("VmHWM"),
            }
        )
    )


def run_child(variant: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--batch",
        str(args.batch),
        "--frames",
        str(args.frames),
        "--tokens",
        str(args.tokens),
        "--k-neg",
        str(args.k_neg),
        "--threads",
        str(args.threads),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode:
        raise RuntimeError(f"{variant!r} run failed ({out.returncode}): {out.stderr[-2000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["rss_delta"] = (res["rss_peak_kb"] - res["rss_before_kb"]) * 1024
    print(
        f"{variant}: {res['wall']:.1f} s wall, {res['cpu']:.1f} s CPU, allocated peak "
        f"{res['alloc_peak'] / MiB:.0f} MiB, RSS +{res['rss_delta'] / MiB:.0f} MiB",
        flush=True,
    )
    return res


def measure(args: argparse.Namespace) -> list[dict]:
    runs = [run_child("cascade", args)]
    for _ in range(args.repeats):
        runs += [run_child("all pairs", args), run_child("cascade", args)]
    return runs


def table(runs: list[dict], pairs: dict[str, int]) -> str:
    by = {v: [r for r in runs if r["variant"] == v] for v in VARIANTS}
    lines = [
        "| L3 variant | pairs through the fusion module | runs | fwd+bwd wall s | fwd+bwd CPU s | peak allocated "
        "through torch, MiB | peak RSS - RSS before, MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v in VARIANTS:
        rs = by[v]
        cols = [med_range([r[k] for r in rs], "{:.1f}") for k in ("wall", "cpu")]
        cols += [med_range([r[k] / MiB for r in rs], "{:.0f}") for k in ("alloc_peak", "rss_delta")]
        lines.append(f"| {v} | {pairs[v]} | {len(rs)} | " + " | ".join(cols) + " |")
    ratios: dict[str, list[float]] = {k: [] for k in ("wall", "cpu", "alloc_peak", "rss_delta")}
    for i in range(1, len(runs) - 1, 2):  # all pairs at odd positions, between two cascade runs
        for k in ratios:
            ratios[k].append(runs[i][k] / statistics.mean([runs[i - 1][k], runs[i + 1][k]]))
    cols = [med_range(ratios[k], "{:.2f}") for k in ratios]
    lines.append(f"| **all / cascade** | {pairs['all pairs'] / pairs['cascade']:.2f} | | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64, help="K: clips in the batch")
    p.add_argument("--frames", type=int, default=16, help="M")
    p.add_argument("--tokens", type=int, default=32, help="N")
    p.add_argument("--k-neg", type=int, default=8, help="K': hard negatives per text and per video")
    p.add_argument("--repeats", type=int, default=1, help="(all pairs, cascade) runs after the first cascade run")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: robust to other processes)")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--write", action="store_true", help=f'put the results under "{SECTION}" in RESULTS.md')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    info, load_before, t0 = machine(*STACK), load(), time.time()
    k1 = min(args.k_neg, args.batch - 1) + 1
    pairs = {"cascade": 2 * args.batch * k1, "all pairs": args.batch**2}
    runs = measure(args)
    body = table(runs, pairs)
    print("\n" + body)
    losses = {v: sorted({round(r["loss"], 4) for r in runs if r["variant"] == v}) for v in VARIANTS}
    print(f"losses: {losses}; wall {time.time() - t0:.0f} s")
    if args.write:
        command = "python benchmarks/taco_l3.py " + " ".join(argv if argv is not None else sys.argv[1:])
        lines = [
            SECTION,
            "",
            *header(info, command.strip()),
            f"- load average (1, 5, 15 min) before: {load_before}; after: {load()}; other processes (test "
            "runs) shared the 2 cores",
            f"- K = {args.batch} clips, M = {args.frames} frames (64-d), N = {args.tokens} tokens, "
            f"K' = {args.k_neg}: cascade = 2K(K'+1) = {pairs['cascade']} pairs, all = K^2 = {pairs['all pairs']}; "
            "tiny preset fusion module (2 cross layers, d = 384, sequences of M + N = "
            f"{args.frames + args.tokens}), training mode, fp32, {args.threads} torch thread(s); the cascade "
            "time includes choosing the negatives (`choose_negatives`)",
            "- each run: a fresh process, a warm-up on 4 clips, then one measured forward + backward; order "
            f"cascade, then (all pairs, cascade) x {args.repeats}; ratios: each all-pairs run over the mean of "
            "the cascade runs around it",
            '- memory: "peak allocated through torch" = peak of the bytes allocated through torch\'s CPU '
            "allocator inside the forward + backward and still alive (torch.profiler memory events: "
            "activations, gradients, temporaries; weights and inputs excluded); RSS = peak resident set "
            "(VmHWM) minus the resident set just before",
            f"- losses: cascade {losses['cascade']}, all pairs {losses['all pairs']}",
            "",
            body,
            "",
        ]
        write_section(SECTION, "\n".join(lines))


if __name__ == "__main__":
    main()
