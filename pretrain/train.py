"""Pretraining entry point.

    deepspeed --num_gpus 8 pretrain/train.py --config configs/pretrain/howto100m.yaml [key=value ...]
    torchrun --nproc_per_node 2 pretrain/train.py --config configs/pretrain/tiny_cpu.yaml
    srun python pretrain/train.py --config ...        (launch/pretrain_howto100m.sh)

Resumes from the run directory's latest complete checkpoint (checkpoint.resume=auto), also
at another world size (through DeepSpeed's universal checkpoint). SIGUSR1 checkpoints after the
current step and exits with code 3 (launch/pretrain_howto100m.sh then requeues the job).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys

if __package__ in (None, ""):  # run as a script (`deepspeed pretrain/train.py`): import the package
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import torch

from pretrain import checkpoint, config, runtime, zeroshot
from pretrain.loader import build_eval_loader, build_train_loader
from pretrain.loop import PREEMPTED_EXIT, NonFiniteLoss, Preempted, Trainer, TrainState
from pretrain.model import build_model, load_tokenizer
from pretrain.objectives import Combiner
from pretrain.tracking import Tracker

log = logging.getLogger("pretrain.train")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (see configs/pretrain/)")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # appended by the launcher
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. run.max_steps=10")
    return p.parse_args(argv)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def truncate_metrics(run_dir: str, step: int) -> None:
    """Drop metrics.jsonl lines past the resumed step: the log never repeats a step."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            keep = [line for line in f if json.loads(line)["step"] <= step]
        with open(path, "w") as f:
            f.writelines(keep)


_EARLY_STOP = {"requested": False}  # a SIGUSR1 that arrives before the Trainer exists


def main(argv: list[str] | None = None) -> TrainState:
    signal.signal(signal.SIGUSR1, lambda *_: _EARLY_STOP.update(requested=True))  # first: a warning may come early
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    cfg = config.load(args.config, args.overrides)
    config.validate(cfg, int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1"))))
    rank, _, world = runtime.init_distributed(cfg.runtime)
    try:
        return train(cfg, rank, world)
    finally:
        runtime.shutdown()


def train(cfg: config.PretrainConfig, rank: int, world: int) -> TrainState:
    run_dir, device = cfg.run.output_dir, runtime.device()
    seed_everything(cfg.run.seed)  # the same initial weights on every rank
    tokenizer = load_tokenizer(cfg.model)
    model = build_model(cfg.model)
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    resume = checkpoint.find_resume(cfg.checkpoint, ckpt_dir)
    same_world = resume is None or checkpoint.saved_world_size(*resume) == world
    engine = runtime.build_engine(model, cfg.runtime, cfg.optim, cfg.data.batch_size, cfg.run.max_steps, world,
                                  load_universal=not same_world)
    seed_everything(cfg.run.seed + rank)  # dropout differs across ranks
    loader = build_train_loader(cfg.data, tokenizer, rank, world)
    state = TrainState()
    if resume is not None:
        src_dir, tag = resume
        if not same_world:
            tag = checkpoint.prepare_universal(src_dir, tag, rank)
        runtime.load(engine, src_dir, tag)
        saved = checkpoint.load_train_state(src_dir, tag, rank, same_world)
        state = TrainState(**{k: v for k, v in saved.items() if k in TrainState.__dataclass_fields__})
        loader.load_state_dict(state.loader, strict=same_world)  # another world size: same epoch fraction
        if rank == 0:
            truncate_metrics(run_dir, state.step)
        log.info("resumed from %s/%s at step %d (world size %d)", src_dir, tag, state.step, world)
    tracker = Tracker(cfg.tracking, run_dir, rank)
    state.mlflow_run_id = tracker.start(config.to_dict(cfg), config.to_yaml(cfg), state.mlflow_run_id)
    evaluate = None
    if cfg.eval.held_out:
        held_out = build_eval_loader(cfg.eval.held_out, cfg.data, tokenizer, cfg.eval.batch_size)
        evaluate = lambda step: zeroshot.evaluate(engine, held_out, device, cfg.eval.max_samples)  # noqa: E731
    combiner = Combiner(cfg.objectives)
    trainer = Trainer(engine, loader, combiner, tracker, state, run_dir, cfg.run.max_steps, cfg.run.log_every,
                      cfg.run.max_bad_steps, cfg.checkpoint.every, cfg.checkpoint.keep_last, evaluate,
                      cfg.eval.every, rank, world, device)
    trainer.stop_requested = _EARLY_STOP["requested"]
    signal.signal(signal.SIGUSR1, trainer.request_stop)  # Slurm's warning before the time limit
    try:
        state = trainer.fit()
    except NonFiniteLoss:
        tracker.end("FAILED")
        raise
    except Preempted:
        tracker.end("KILLED")  # a resumed job sets it running again
        raise
    if cfg.checkpoint.export:
        tag = checkpoint.tag_for(state.step)
        checkpoint.export(engine, ckpt_dir, tag, os.path.join(run_dir, "export"), config.to_yaml(cfg),
                          tokenizer, cfg.runtime.zero_stage, rank)
        tracker.log_artifact(os.path.join(run_dir, "export", "config.yaml"), "export")
    tracker.end()
    return state


if __name__ == "__main__":
    try:
        main()
    except config.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except Preempted as e:
        log.warning("%s", e)
        raise SystemExit(PREEMPTED_EXIT) from None
