"""Communication per training step at the base preset, and what it costs across two nodes vs one.

    python benchmarks/multinode_collectives.py [--sizes-mib 5 64 200] [--reps 5] [--rounds 3] [--write]  # root

Two parts:

1. The payload per rank per optimizer step at the base preset (configs/pretrain/howto100m.yaml:
   32 clips per rank, 40 frames, 64 tokens, 768 hidden, bf16), computed from the parameter count
   (`build_model(ModelConfig(preset="base", text_pretrained=False))`) and the ZeRO stage, with
   ring collectives over W ranks (each rank sends (W-1)/W of the tensor for a reduce-scatter or an
   all-gather, twice that for an all-reduce):
   - ZeRO 0-2: the gradients reduced (reduce-scatter; an all-reduce at stage 0/1, same bytes) and
     the updated parameters all-gathered: 2 x P x bytes x (W-1)/W;
   - ZeRO 3: the parameters all-gathered for the forward and again for the backward, the
     gradients reduce-scattered: 3 x P x bytes x (W-1)/W;
   - the TACo features gathered with gradient (pretrain/distributed.py: video (B, 40, 768) and
     text (B, 64, 768) of every rank in the forward, the same volume back in the backward):
     2 x B x (40 + 64) x 768 x bytes x (W-1); the masks and weights gathered without gradient
     are bytes per token, left out.
   One optimizer step is one micro step at the preset (1024 = 32 x 8 GPUs x 4 nodes); with
   accumulation, ZeRO-2 reduces the gradients at every micro step.

2. The time of an all-reduce and an all-gather of the same sizes (gloo, fp32 tensors, 2 ranks, one
   thread each), once between two processes on one node (127.0.0.1) and once between node1 and
   node2 of tests/multinode.py (network namespaces joined by a veth bridge on this machine): the
   median of `--reps` after one warm-up, and the ratio two nodes / one node. The namespaces add
   the veth and bridge hops of the kernel's (here: the sandbox's) network stack, not a real wire:
   the ratio is the cost of leaving loopback, a lower bound for real nodes.

`--write` puts the tables under "## pretrain: communication per step, two nodes vs one" in
benchmarks/RESULTS.md.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for `python benchmarks/x.py`
from benchmarks._results import REPO, header, load, machine, write_section  # noqa: E402

SECTION = "## pretrain: communication per step, two nodes vs one"
BASE = {"batch": 32, "frames": 40, "tokens": 64, "hidden": 768}  # configs/pretrain/howto100m.yaml, base preset


def base_parameters() -> int:
    from pretrain.model import ModelConfig, build_model

    model = build_model(ModelConfig(preset="base", text_pretrained=False))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def payload_rows(params: int, worlds: tuple[int, ...] = (2, 8, 32), elem_bytes: int = 2) -> list[str]:
    """Markdown rows: MB sent per rank per step for ZeRO-2, ZeRO-3 and the feature gather."""
    feat = BASE["batch"] * (BASE["frames"] + BASE["tokens"]) * BASE["hidden"] * elem_bytes  # bytes per rank
    rows = []
    for w in worlds:
        share = (w - 1) / w
        z2, z3, gather = 2 * params * elem_bytes * share, 3 * params * elem_bytes * share, 2 * feat * (w - 1)
        rows.append(f"| {w} | {z2 / 1e6:.0f} | {z3 / 1e6:.0f} | {gather / 1e6:.1f} | {(z2 + gather) / 1e6:.0f} |")
    return rows


def worker(sizes_mib: list[float], reps: int) -> None:
    """One rank (RANK/WORLD_SIZE/MASTER_* in the environment): time the collectives, rank 0 prints JSON."""
    import datetime

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    out = {}
    for mib in sizes_mib:
        x = torch.ones(int(mib * 2**20 / 4))
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        ops = {"all_reduce": lambda x=x: dist.all_reduce(x), "all_gather": lambda x=x, p=parts: dist.all_gather(p, x)}
        for name, op in ops.items():
            times = []
            for i in range(reps + 1):
                dist.barrier()
                start = time.perf_counter()
                op()
                if i:  # the first is the warm-up
                    times.append(time.perf_counter() - start)
            out[f"{name} {mib:g}"] = statistics.median(times)
    dist.destroy_process_group()
    if os.environ["RANK"] == "0":
        print(json.dumps(out))


def _worker_cmd(args: argparse.Namespace) -> list[str]:
    return [sys.executable, __file__, "--worker", "--reps", str(args.reps), "--sizes-mib", *map(str, args.sizes_mib)]


def _env(rank: int, addr: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": addr, "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}  # fmt: skip


def _collect(procs: list[subprocess.Popen]) -> dict[str, float]:
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"a rank failed ({p.returncode}): {err[-3000:]}")
    return json.loads(outs[0][0].strip().splitlines()[-1])


def one_node(args: argparse.Namespace) -> dict[str, float]:
    procs = [subprocess.Popen(_worker_cmd(args), env=_env(r, "127.0.0.1", 29671), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]  # fmt: skip
    return _collect(procs)


def two_nodes(args: argparse.Namespace) -> dict[str, float]:
    sys.path.insert(0, str(REPO / "tests"))
    import multinode

    with tempfile.TemporaryDirectory() as tmp, multinode.MultiNodeCluster(Path(tmp)) as cluster:
        procs = [cluster.popen(f"node{r + 1}", *_worker_cmd(args), env=_env(r, "node1", 29671),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]  # fmt: skip
        return _collect(procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes-mib", type=float, nargs="+", default=[5, 64, 200])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="alternated one-node/two-node rounds, best kept")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.sizes_mib, args.reps)

    info = machine("torch")
    params = base_parameters()
    # Alternated rounds, the best of each: other processes on the cores slow one round or the other.
    rounds = [(one_node(args), two_nodes(args)) for _ in range(args.rounds)]
    local = {k: min(r[0][k] for r in rounds) for k in rounds[0][0]}
    multi = {k: min(r[1][k] for r in rounds) for k in rounds[0][1]}
    lines = [SECTION, "", *header(info, "python benchmarks/multinode_collectives.py"), f"- load: {load()}", ""]
    lines += [f"Payload per rank per optimizer step at the base preset ({params / 1e6:.1f} M trainable parameters, "
              "bf16, 32 clips x (40 frames + 64 tokens) x 768 per rank), ring collectives:", "",
              "| ranks W | ZeRO-2 grads + params (MB) | ZeRO-3 (MB) | TACo feature gather, fwd + bwd (MB) | "
              "ZeRO-2 total (MB) |", "|---|---|---|---|---|", *payload_rows(params), ""]  # fmt: skip
    lines += [f"Gloo collectives, 2 ranks, fp32, median of {args.reps}, best of {args.rounds} alternated rounds "
              "(seconds; GB/s = tensor size / time):", "",
              "| collective | size (MiB) | one node (s) | two nodes (s) | two nodes GB/s | ratio two / one |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for key in local:
        name, mib = key.split()
        gbs = float(mib) * 2**20 / multi[key] / 1e9
        lines.append(
            f"| {name} | {mib} | {local[key]:.4f} | {multi[key]:.4f} | {gbs:.2f} | {multi[key] / local[key]:.2f} |"
        )
    big = f"all_reduce {max(args.sizes_mib):g}"
    rate = max(args.sizes_mib) * 2**20 / multi[big]  # bytes/s across the namespaces
    ring = 2 * params * 2 * 0.5  # ZeRO-2, W=2, bf16: bytes one rank sends per step
    lines += ["", f"Sizing: at the two-node all-reduce rate measured here ({rate / 1e9:.2f} GB/s), the ZeRO-2 "
              f"payload of one step at W=2 ({ring / 1e6:.0f} MB) takes ~{ring / rate:.1f} s; a node link must carry "
              "the ZeRO column per step in well under the step's compute time."]  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
