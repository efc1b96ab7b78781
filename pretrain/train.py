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
import logging
import os
import sys
from dataclasses import replace

if __package__ in (None, ""):  # run as a script (`deepspeed pretrain/train.py`): import the package
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from pretrain import config, runtime, session, zeroshot
from pretrain.distributed import rank_info
from pretrain.flops import PretrainFlops, TextEncoder
from pretrain.loader import build_eval_loader, build_train_loader
from pretrain.loop import Trainer, TrainState
from pretrain.model import build_model, load_tokenizer
from pretrain.objectives import Combiner
from pretrain.tracking import Tracker

log = logging.getLogger("pretrain.train")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (see configs/pretrain/)")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # appended by the launcher
    p.add_argument(
        "--check",
        action="store_true",
        help="check the config (keys, types, paths, feature dims, batch sizes), exit 0 or 2 and one line",
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. run.max_steps=10")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> TrainState:
    session.install_early_stop()
    args = parse_args(argv)
    cfg = config.load(args.config, args.overrides)
    config.validate(cfg, runtime.launch_world_size())
    if args.check:  # what the sbatch scripts run before srun: a config error ends the job with this one line
        print(f"config ok: {args.config} {' '.join(args.overrides)}".rstrip())
        raise SystemExit(0)
    session.lock_run_dir(cfg.run.output_dir, rank_info()[0])  # before the rendezvous: a refusal ends the job
    rank, _, world = runtime.init_distributed(cfg.runtime)
    return runtime.run_then_shutdown(lambda: train(cfg, rank, world))


def train(cfg: config.PretrainConfig, rank: int, world: int) -> TrainState:
    run_dir, device = cfg.run.output_dir, runtime.device()
    session.seed_everything(cfg.run.seed)  # the same initial weights on every rank
    tokenizer = load_tokenizer(cfg.model)
    model = build_model(cfg.model)
    session.standardize_frames(model, cfg.data)  # a resumed run's checkpoint brings them back as they were
    run = session.Resumable(model, cfg, rank, world)
    engine = run.engine
    session.seed_everything(cfg.run.seed + rank)  # dropout differs across ranks
    loader = build_train_loader(cfg.data, tokenizer, rank, world)
    state = run.restore(loader, rank, world)
    tracker = Tracker(replace(cfg.tracking, run_name=cfg.tracking.run_name or cfg.run.name), run_dir, rank)
    state.mlflow_run_id = tracker.start(config.to_dict(cfg), config.to_yaml(cfg), state.mlflow_run_id)
    evaluate = None
    if cfg.eval.held_out:
        held_out = build_eval_loader(cfg.eval.held_out, cfg.data, tokenizer, cfg.eval.batch_size)
        evaluate = lambda step: zeroshot.evaluate(
            engine,
            held_out,
            device,
            cfg.eval.max_samples,  # noqa: E731
            cfg.objectives.taco,
        )
    flops = PretrainFlops(model.config, cfg.objectives, TextEncoder.of(model.text.config), world)
    trainer = Trainer.from_config(cfg, engine, loader, Combiner(cfg.objectives), tracker, state, rank, world, device,
                                  evaluate=evaluate, mirror=run.mirror, flops=flops)  # fmt: skip
    state = session.fit(trainer, tracker)
    if cfg.checkpoint.export:
        run.export(cfg, state.step, tokenizer, rank)
        tracker.log_artifact(os.path.join(run_dir, "export", "config.yaml"), "export")
    tracker.end()
    return state


if __name__ == "__main__":
    session.run_entry(main)
