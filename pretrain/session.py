"""What every training entry point shares: seeding, the engine with its resume, the signal
handling, and the run's ending. pretrain/train.py and the finetune recipes (finetune/recipe.py)
both go through it, so a finetune job checkpoints, resumes and requeues exactly as pretraining.

A config here is any tree with `run` (output_dir, seed, max_steps, ...), `runtime`, `optim`,
`checkpoint`, `tracking` and `data.batch_size` (PretrainConfig, finetune's configs).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import random
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pretrain import checkpoint, runtime
from pretrain.config import ConfigError
from pretrain.loop import PREEMPTED_EXIT, Preempted, Trainer, TrainState

log = logging.getLogger(__name__)

_EARLY_STOP = {"requested": False}  # a SIGUSR1 that arrives before the Trainer exists


class Terminated(SystemExit):
    """SIGTERM (a launcher stopping its workers, `scancel`): raised so the MLflow run ends KILLED."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(128 + signum)


def install_early_stop() -> None:
    """First thing an entry point does: Slurm's warning signal may come before the Trainer exists;
    SIGTERM becomes an exception, so that the run's bookkeeping (MLflow status) happens on the way out."""
    signal.signal(signal.SIGUSR1, lambda *_: _EARLY_STOP.update(requested=True))
    signal.signal(signal.SIGTERM, _terminate)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")


_LOCKS: list[Any] = []  # the open lock files: held until the process exits (the kernel drops them then)


def lock_run_dir(run_dir: str, rank: int) -> None:
    """Global rank 0 takes an exclusive lock on <run dir>/.lock for the life of the process: a second job
    on the same run dir (say, a relaunch while the workers of a killed launcher still train) is refused
    with a message naming the holder. The kernel releases the lock when its process dies, so a killed run
    leaves no stale lock."""
    if rank != 0:
        return
    os.makedirs(run_dir, exist_ok=True)
    f = open(os.path.join(run_dir, ".lock"), "a+")  # noqa: SIM115 - held open on purpose
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise ConfigError(f"run.output_dir {run_dir} is in use by {holder}: stop that run, or use another "
                          "run.output_dir") from None  # fmt: skip
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {datetime.datetime.now():%Y-%m-%d %H:%M:%S}")
    f.flush()
    _LOCKS.append(f)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def standardize_frames(model: torch.nn.Module, loader_cfg: Any) -> None:
    """A fresh model's frame statistics from its training data (feature_stats.json, pretrain/loader/),
    when `model.standardize_frames`; a resumed run or a loaded export brings its own."""
    from pretrain.loader import load_feature_stats

    if model.config.standardize_frames and (stats := load_feature_stats(loader_cfg)) is not None:
        model.set_frame_stats(*stats)


def truncate_metrics(run_dir: str, step: int) -> None:
    """Drop metrics.jsonl lines past the resumed step: the log never repeats a step."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            keep = [line for line in f if json.loads(line)["step"] <= step]
        with open(path, "w") as f:
            f.writelines(keep)


class Resumable:
    """The engine of a run, built to resume from the run dir's latest complete checkpoint."""

    def __init__(self, model: torch.nn.Module, cfg: Any, rank: int, world: int):
        self.run_dir = cfg.run.output_dir
        self.ckpt_dir = os.path.join(self.run_dir, "checkpoints")
        self.mirror = checkpoint.mirror_for(cfg.checkpoint)
        if self.mirror and self.mirror.node_local and cfg.checkpoint.resume == "auto":
            self.resume = self._pull_own_files(rank)
        else:
            if self.mirror and cfg.checkpoint.resume == "auto" and not checkpoint.complete_tags(self.ckpt_dir):
                if rank == 0:  # a fresh run dir: continue from the mirror's latest checkpoint, if it has one
                    self.mirror.pull_latest(self.ckpt_dir)
                runtime.barrier()
            self.resume = checkpoint.find_resume(cfg.checkpoint, self.ckpt_dir)
        self.same_world = self.resume is None or checkpoint.saved_world_size(*self.resume) == world
        if self.mirror and self.mirror.node_local and not self.same_world:
            raise ConfigError(
                f"checkpoint.node_local: {self.mirror.url}'s checkpoint {self.resume[1]} was saved by "
                f"{checkpoint.saved_world_size(*self.resume)} ranks, this run has {world}: another world size needs "
                "every rank's partitions on one node (resume once with a shared run.output_dir and "
                "checkpoint.node_local=false, or keep the world size)"
            )
        self.engine = runtime.build_engine(model, cfg.runtime, cfg.optim, cfg.data.batch_size, cfg.run.max_steps,
                                           world, load_universal=not self.same_world)  # fmt: skip

    def _pull_own_files(self, rank: int) -> tuple[str, str] | None:
        """Node-local run dirs: the mirror's latest complete checkpoint (rank 0 lists it, every rank gets
        the same tag), each rank downloading the files it reads: its own partitions, the shared files, COMPLETE."""
        tags = self.mirror.remote_tags() if rank == 0 else None
        holder = [tags[-1] if tags else None]
        if torch.distributed.is_initialized():
            torch.distributed.broadcast_object_list(holder, src=0)
        tag = holder[0]
        if tag is not None:
            count = self.mirror.pull(self.ckpt_dir, tag, lambda name: checkpoint.file_owner(name) in (None, rank))
            log.info("rank %d on %s pulled its %d files of checkpoint %s from %s", rank, socket.gethostname(), count,
                     tag, self.mirror.url)  # fmt: skip
        runtime.barrier()
        return (self.ckpt_dir, tag) if tag is not None else None

    def restore(self, loader: Any, rank: int, world: int) -> TrainState:
        """Load the checkpoint (if any) into the engine and loader; the train state to continue from."""
        if self.resume is None:
            return TrainState()
        src_dir, tag = self.resume
        if not self.same_world:
            tag = checkpoint.prepare_universal(src_dir, tag, rank)
        runtime.load(self.engine, src_dir, tag)
        saved = checkpoint.load_train_state(src_dir, tag, rank, self.same_world)
        state = TrainState(**{k: v for k, v in saved.items() if k in TrainState.__dataclass_fields__})
        loader.load_state_dict(state.loader, strict=self.same_world)  # another world size: same epoch fraction
        if rank == 0:
            if self.mirror:  # a node that never saw the steps before the checkpoint (node-local, a fresh disk)
                self.mirror.pull_metrics(self.run_dir, state.step)
            truncate_metrics(self.run_dir, state.step)
        log.info("resumed from %s/%s at step %d (world size %d)", src_dir, tag, state.step, world)
        return state

    def export(self, cfg: Any, step: int, tokenizer: Any, rank: int) -> None:
        """The consolidated export of the final step (and its upload to the mirror)."""
        out_dir = os.path.join(self.run_dir, "export")
        if self.mirror and self.mirror.node_local and cfg.runtime.zero_stage > 0 and rank == 0:
            local = os.path.join(self.ckpt_dir, checkpoint.tag_for(step))  # the other nodes' partitions too
            self.mirror.pull(
                self.ckpt_dir, checkpoint.tag_for(step), lambda name: not os.path.exists(os.path.join(local, name))
            )
        checkpoint.export(self.engine, self.ckpt_dir, checkpoint.tag_for(step), out_dir, config_yaml(cfg), tokenizer,
                          cfg.runtime.zero_stage, rank)  # fmt: skip
        if self.mirror and rank == 0:
            self.mirror.push_export(out_dir)


def config_yaml(cfg: Any) -> str:
    """The export's config.yaml: the run's config with every model field resolved from its preset."""
    from dataclasses import replace

    from omegaconf import OmegaConf

    from pretrain.model import resolve

    return OmegaConf.to_yaml(OmegaConf.structured(replace(cfg, model=resolve(cfg.model))))


def fit(trainer: Trainer, tracker: Any) -> TrainState:
    """Train with Slurm's warning signal handled; the MLflow run ends FAILED or KILLED on the way out."""
    trainer.stop_requested = _EARLY_STOP["requested"]
    signal.signal(signal.SIGUSR1, trainer.request_stop)  # Slurm's warning before the time limit
    try:
        return trainer.fit()
    except Preempted:
        tracker.end("KILLED")  # a resumed job sets it running again
        raise
    except (Terminated, KeyboardInterrupt) as e:
        tracker.set_tags({"error": f"{type(e).__name__}: stopped by a signal"})
        tracker.end("KILLED")
        raise
    except BaseException as e:  # a crash (disk full, bad data, a bug) is FAILED, with its error
        tracker.set_tags({"error": f"{type(e).__name__}: {e}"[:5000]})
        tracker.end("FAILED")
        raise


def run_entry(main: Callable[[], Any]) -> None:
    """`if __name__ == "__main__"` of an entry point: a config error exits 2 with one line, a
    preemption exits PREEMPTED_EXIT (the sbatch scripts requeue on it)."""
    try:
        main()
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except checkpoint.DiskFull as e:
        print(f"error: {e.strerror}", file=sys.stderr)
        raise SystemExit(1) from None
    except Preempted as e:
        log.warning("%s", e)
        raise SystemExit(PREEMPTED_EXIT) from None
