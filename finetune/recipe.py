"""The finetune recipe shared by every entry script in finetune/ (one per dataset of
finetune/datasets.py): the dataset's record names its config schema and task, the task brings its
head, loss and evaluation (the `Task` protocol, finetune/task.py), and everything else is
pretraining's (pretrain/session.py: engine, resume, preemption; pretrain/loop.py: the one training
loop; MLflow tracking; checkpoints).

Outputs under run.output_dir, besides checkpoints/, metrics.jsonl and the MLflow store (the task's
`Predictions` write each evaluation folder):

    eval/<split>/step_<N>/metrics.json     the official metrics (TVR's keys; R@K/MedR/MeanR; accuracy)
                          eval_info.json   counts: queries, videos, videos cut to max_frames, ...
                          per_query.json   what the metrics average, per query, under the same keys
                          <name>_<split>_submission.json   moment tasks: TVR's submission format
                          how2r_<val|test_public>_predictions.json   How2R: VALUE's submission format
                          predictions.json                 retrieval: the best videos per query; QA: the scores
                          recall_at_k.png, similarity.png
    results.json                           the final evaluation's metrics and file paths
    <name>_submission.zip                  eval.codalab_zip: the leaderboard's upload (val + test): TVR's
                                           Codalab layout; How2R: VALUE's (finetune/value_submission.py)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from finetune import data, datasets
from finetune.config import FinetuneConfig
from finetune.model import TaskModel, load_backbone, resolve_checkpoint
from finetune.task import Predictions, Task, dump, gc_paused
from pretrain import config, runtime, session
from pretrain.config import ConfigError
from pretrain.distributed import rank_info
from pretrain.loader import check_world, read_manifest
from pretrain.loop import Trainer, TrainState
from pretrain.model import build_model, load_tokenizer
from pretrain.tracking import Tracker

log = logging.getLogger("finetune")


def validate(cfg: FinetuneConfig, world: int) -> None:
    """Checks beyond types, before any work: task options, batch arithmetic, paths, feature dims."""
    try:
        cfg.task.validate()
        cfg.data.loader_config(cfg.data.train_split, cfg.data.batch_size).validate()  # idf, workers, sizes
    except ValueError as e:
        raise ConfigError(str(e)) from None
    model = config.validate_run(cfg, world)
    if not cfg.data.root:
        raise ConfigError("data.root is empty: give the folder written by data_prep (e.g. shards/tvr)")
    splits = [("data.train_split", cfg.data.train_split), ("data.eval_split", cfg.data.eval_split)]
    splits += [("data.test_split", cfg.data.test_split)] if cfg.data.test_split else []
    for key, split in splits:
        folder = cfg.data.split_dir(split)
        if not data.exists(f"{folder}/sizes.json", cfg.data.s3_endpoint):
            raise ConfigError(f"{key}: {folder} is not a converted split (no sizes.json)")
    train_dir = cfg.data.split_dir(cfg.data.train_split)
    try:
        check_world(list(data.read_json(f"{train_dir}/sizes.json", cfg.data.s3_endpoint).values()), world)
    except ValueError as e:
        raise ConfigError(f"data.train_split {train_dir}: {e}") from None
    manifest = read_manifest(train_dir, cfg.data.s3_endpoint)
    if manifest["feature_spec"]["dim"] != model.frame_dim:
        raise ConfigError(f"model.frame_dim {model.frame_dim} != the shards' feature dim "
                          f"{manifest['feature_spec']['dim']} ({cfg.data.root})")  # fmt: skip
    if cfg.init.checkpoint:
        try:
            resolve_checkpoint(cfg.init.checkpoint)
        except FileNotFoundError as e:
            raise ConfigError(str(e)) from None


def parse_args(name: str, argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"finetune/{name}.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--config", default=None, help=f"YAML config (configs/finetune/{name}.yaml)")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # appended by the launcher
    p.add_argument(
        "--check",
        action="store_true",
        help="check the config (keys, types, paths, feature dims, batch sizes), exit 0 or 2 and one line",
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. init.checkpoint=runs/pretrain/export")
    return p.parse_args(argv)


def main(name: str, argv: list[str] | None = None) -> dict[str, Any]:
    """Entry of `finetune/<name>.py`: finetune, evaluate, write predictions; the final results."""
    session.install_early_stop()
    args = parse_args(name, argv)
    dataset = datasets.get(name)
    cfg = config.load(args.config, args.overrides, dataset.schema)
    validate(cfg, runtime.launch_world_size())
    if args.check:  # what the sbatch scripts run before srun: a config error ends the job with this one line
        print(f"config ok: {args.config} {' '.join(args.overrides)}".rstrip())
        raise SystemExit(0)
    session.lock_run_dir(cfg.run.output_dir, rank_info()[0])  # before the rendezvous: a refusal ends the job
    rank, _, world = runtime.init_distributed(cfg.runtime)
    return runtime.run_then_shutdown(lambda: finetune(name, cfg, dataset.task(cfg.task), rank, world))


def finetune(name: str, cfg: FinetuneConfig, task: Task, rank: int, world: int) -> dict[str, Any]:
    run_dir, device = cfg.run.output_dir, runtime.device()
    session.seed_everything(cfg.run.seed)  # the same initial weights on every rank
    tokenizer = load_tokenizer(cfg.model)
    backbone = build_model(cfg.model)
    taken = load_backbone(backbone, cfg.init.checkpoint, cfg.init.reinit_frame_input) if cfg.init.checkpoint else 0
    if taken < len(backbone.state_dict()):  # from scratch, or a fresh frame input: this set's frame statistics
        session.standardize_frames(backbone, cfg.data.loader_config(cfg.data.train_split, cfg.data.batch_size))
    run = session.Resumable(TaskModel(backbone, task.build_head(backbone)), cfg, rank, world)
    session.seed_everything(cfg.run.seed + rank)  # dropout differs across ranks
    loader = data.build_loader(cfg.data, cfg.data.train_split, tokenizer, rank, world, True, task.uniform_frames,
                               task.row_options)  # fmt: skip
    state = run.restore(loader, rank, world)
    tracker = Tracker(replace(cfg.tracking, run_name=cfg.tracking.run_name or cfg.run.name), run_dir, rank)
    state.mlflow_run_id = tracker.start(config.to_dict(cfg), config.to_yaml(cfg), state.mlflow_run_id)
    reporter = Reporter(name, cfg, task, run.engine, tokenizer, device, tracker, rank)
    trainer = Trainer.from_config(cfg, run.engine, loader, task.loss, tracker, state, rank, world, device,
                                  evaluate=reporter.evaluate, mirror=run.mirror)  # fmt: skip
    state = session.fit(trainer, tracker)
    if cfg.checkpoint.export:  # the finetuned model (backbone + head) as one fp32 file
        run.export(cfg, state.step, tokenizer, rank)
    results = reporter.finish(state)
    tracker.end()
    return results


@dataclass
class Reporter:
    """Evaluates on the eval split (all ranks take part, rank 0 writes and logs) and predicts the test split."""

    name: str
    cfg: FinetuneConfig
    task: Task
    engine: Any
    tokenizer: Any
    device: torch.device
    tracker: Any
    rank: int
    last: dict[str, Any] = field(default_factory=dict)

    def out_dir(self, *parts: str) -> str:
        path = os.path.join(self.cfg.run.output_dir, *parts)
        if self.rank == 0:
            os.makedirs(path, exist_ok=True)
        return path

    def predict(self, split: str, with_gt: bool) -> Predictions:
        """The task's predictions on a split, the engine in eval mode meanwhile (dropout off)."""
        was_training = self.engine.training
        self.engine.eval()
        try:
            with gc_paused():  # millions of small lists at TVR's size: no collections over them meanwhile
                return self.task.predict(self.engine, self.cfg.data, split, self.tokenizer, self.device, with_gt)
        finally:
            self.engine.train(was_training)

    def evaluate(self, step: int) -> dict[str, float]:
        split = self.cfg.data.eval_split
        out = self.predict(split, with_gt=True)
        folder = self.out_dir("eval", split, f"step_{step:08d}")
        files = self.write(out, split, folder) if self.rank == 0 else {}
        self.last = {"step": step, "split": split, "metrics": out.metrics, "files": files}
        if self.rank == 0:
            log.info("step %d %s: %s", step, split, json.dumps(out.metrics))
        return flatten_metrics(split, out.metrics)

    def write(self, out: Predictions, split: str, folder: str) -> dict[str, str]:
        """The predictions' files (metrics.json, eval_info.json, predictions, plots), logged to MLflow."""
        with gc_paused():  # validating and writing them: no collections over millions of lists either
            files = out.write(folder, self.name, split, self.cfg.eval.heatmap_queries)
        for path in files.values():
            self.tracker.log_artifact(path, os.path.relpath(folder, self.cfg.run.output_dir))
        return files

    def finish(self, state: TrainState) -> dict[str, Any]:
        """The test split's predictions (no metrics), the Codalab zip, results.json."""
        results = {"recipe": self.name, "steps": state.step, **self.last}
        test = self.cfg.data.test_split
        if test:
            out = self.predict(test, with_gt=False)
            folder = self.out_dir("eval", test, f"step_{state.step:08d}")
            if self.rank == 0:
                results["test_files"] = self.write(out, test, folder)
                if self.cfg.eval.codalab_zip and self.last.get("files"):  # the evaluation's files: the val split's
                    upload = os.path.join(self.cfg.run.output_dir, f"{self.name}_submission.zip")
                    if out.leaderboard_zip(upload, self.name, self.last["files"], results["test_files"]):
                        results["codalab_zip"] = upload
                        self.tracker.log_artifact(upload, "submission")
        if self.rank == 0:
            dump(os.path.join(self.cfg.run.output_dir, "results.json"), results)
        return results


def flatten_metrics(split: str, metrics: dict[str, Any]) -> dict[str, float]:
    """{'VCMR': {'0.5-r1': x}} -> {'val/VCMR/0.5-r1': x}, numbers only (MLflow)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update({f"{split}/{k}/{kk}": float(vv) for kk, vv in v.items() if isinstance(vv, (int, float))})
        elif isinstance(v, (int, float)):
            out[f"{split}/{k}"] = float(v)
    return out
