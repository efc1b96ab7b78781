"""TACo's inference (section 3.4) on an MSR-VTT-style test set: the exact sum of the three scores over every
query x video pair against the `task.rerank` approximation, recall and cost.

    python benchmarks/taco_inference.py [--workdir /tmp/taco_inference] [--queries 200] [--steps 60] [--write]

200 queries (the main job's test size) by default; `--queries 1000` is 1k-A's size (the exact sum over
its 10^6 pairs: about 8.5 min on a 2-core CPU at the measured 510 µs per pair, plus the finetuning).

1. Data: the synthetic corpus (`data_prep.synthetic`, seed 0) with an MSR-VTT test of
   `--queries` videos, one caption each (`eval_queries`), converted like the main job does it.
2. Model: the tiny preset finetuned from scratch on train_9k for `--steps` steps with the MSR-VTT
   recipe (finetune/msrvtt.py, TACo's L1 + 0.5 L2 + L3; the default of every other setting), so
   that the fusion score is trained; its final evaluation is a cheap rerank, and its export is used.
3. Inference, in this process, through the recipe's own path (`VideoRetrievalTask.predict`): the
   exact sum (`task.rerank=0`, `fusion_all_pairs` in chunks of `task.fusion_chunk`) and the
   approximation with K = 8, 16, 32: R@1/5/10 and MedR, wall seconds, and the fusion module's cost
   per pair; the exact run's seconds per pair, its pairs and an estimate for MSR-VTT 1k-A with the base
   preset on one H200 (analytic FLOPs per pair at an assumed 40% of the bf16 peak: an estimate, not a
   measurement). `--write` puts the table under "## finetune: TACo inference" in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for `python benchmarks/x.py`
import torch  # noqa: E402

from benchmarks._results import REPO, header, load, machine, write_section  # noqa: E402
from benchmarks.pretrain_step import STACK  # noqa: E402

SECTION = "## finetune: TACo inference"
RERANKS = (0, 8, 16, 32)
H200_BF16 = 989e12  # dense bf16 FLOP/s (NVIDIA's H200 SXM figure)
UTILISATION = 0.4  # assumed


def make_data(work: Path, queries: int) -> Path:
    """The main job's data stages with a `queries`-video test_1ka split; returns the shards folder."""
    from launch import main_job

    code = main_job.main([f"workdir={work}", f"eval_queries={queries}", "until=data", "workers=2"])
    if code:
        raise SystemExit(f"data stages failed ({code})")
    return work / "shards"


def finetune(work: Path, shards: Path, steps: int) -> Path:
    """The MSR-VTT recipe from scratch on train_9k; returns its export."""
    run_dir = work / "msrvtt-scratch"
    if not (run_dir / "export" / "model.safetensors").exists():
        cmd = [sys.executable, "finetune/msrvtt.py", "--config", "configs/finetune/msrvtt.yaml",
               f"run.output_dir={run_dir}", f"data.root={shards / 'msrvtt'}", f"run.max_steps={steps}",
               "model.preset=tiny", "runtime.precision=fp32", "data.batch_size=8", "data.num_workers=0",
               "data.streams=2", "data.max_frames=16", "optim.lr=3e-4", "optim.warmup_steps=4", "checkpoint.every=0",
               "eval.every=0", "task.rerank=1", f"data.toi_df={shards / 'howto100m' / 'toi_df.json'}",
               "tracking.system_metrics=false"]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    return run_dir / "export"


class Engine:
    """What the recipe's predict needs of the DeepSpeed engine: call `fn(model, batch)` in eval mode."""

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()

    def __call__(self, fn, batch):
        return fn(self.model, batch)


def fusion_flops(cfg: Any, frames: int, tokens: int) -> float:
    """FLOPs of one fusion-score pair: the cross-modal layers over frames + tokens (matmuls, x2 for multiply-add)."""
    d, ffn, n = cfg.hidden, cfg.ffn, frames + tokens
    per_layer = 2 * n * (4 * d * d + 2 * d * ffn) + 2 * 2 * n * n * d  # projections + FFN, scores + weighted sum
    return cfg.cross_layers * per_layer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/taco_inference"))
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()

    from safetensors.torch import load_file

    from finetune.datasets import DATASETS
    from finetune.model import TaskModel
    from finetune.video_retrieval import VideoRetrievalTask
    from pretrain import config
    from pretrain.model import build_model, load_tokenizer, resolve

    info = machine(*STACK)
    shards = make_data(args.workdir, args.queries)
    export = finetune(args.workdir, shards, args.steps)
    cfg = config.load(str(export / "config.yaml"), [], DATASETS["msrvtt"].schema)
    backbone = build_model(cfg.model)
    model = TaskModel(backbone, VideoRetrievalTask(cfg.task).build_head(backbone))
    model.load_state_dict(load_file(str(export / "model.safetensors")), strict=True)  # the finetuned backbone + head
    engine, tokenizer = Engine(model), load_tokenizer(cfg.model)
    rows, exact_seconds = [], None
    for rerank in RERANKS:
        task_cfg = cfg.task
        task_cfg.rerank = rerank
        task = VideoRetrievalTask(task_cfg)
        start = time.perf_counter()
        with torch.no_grad():
            out = task.predict(engine, cfg.data, cfg.data.eval_split, tokenizer, torch.device("cpu"), with_gt=True)
        seconds = time.perf_counter() - start
        exact_seconds = exact_seconds or seconds
        m = out.metrics
        label = "exact: every pair" if rerank == 0 else f"rerank K = {rerank}"
        rows.append(f"| {label} | {m['R@1']:.1f} | {m['R@5']:.1f} | {m['R@10']:.1f} | {m['MedR']:.0f} | "
                    f"{seconds:.1f} |")  # fmt: skip
        print(rows[-1], flush=True)
    q, v = len(out.queries), out.info["videos"]
    frames, tokens = cfg.data.max_frames, cfg.data.max_query_len
    tiny_flops = fusion_flops(resolve(cfg.model), frames, tokens)
    base = resolve(type(cfg.model)(preset="base"))
    base_flops = fusion_flops(base, 48, 30)  # TACo's MSR-VTT lengths: 48 video tokens, 30 text tokens
    per_pair = exact_seconds / (q * v)
    gpu_seconds = 1000 * 1000 * base_flops / (H200_BF16 * UTILISATION)
    lines = [SECTION, "", *header(info, "python benchmarks/taco_inference.py --write"), f"- load average {load()}", "",
             f"Synthetic MSR-VTT-style test: {q} queries x {v} videos ({q * v:,} pairs), tiny preset finetuned "
             f"from scratch for {args.steps} steps on train_9k (the recipe's defaults), inference through "
             "`VideoRetrievalTask.predict` (encoding included), fp32, one process:", "",
             "| inference | R@1 | R@5 | R@10 | MedR | wall s |", "|---|---|---|---|---|---|", *rows, "",
             f"Exact inference: {per_pair * 1e6:.0f} µs per pair on this CPU, all of it but the encoders in the "
             f"fusion module ({tiny_flops / 1e6:.0f} MFLOP a pair at {frames} frames + {tokens} tokens, "
             f"task.fusion_chunk={cfg.task.fusion_chunk}). Estimate for MSR-VTT 1k-A (1,000 x 1,000 pairs) with "
             f"the base preset (6 cross layers, 768 hidden; {base_flops / 1e9:.2f} GFLOP a pair at TACo's 48 + 30 "
             f"tokens) on one H200: {gpu_seconds:.0f} s at {UTILISATION:.0%} of the {H200_BF16 / 1e12:.0f} TFLOP/s "
             "bf16 peak (not measured: no GPU in this session)."]  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
