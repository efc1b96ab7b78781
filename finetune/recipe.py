"""The finetune recipe shared by every entry script in finetune/ (tvr.py, didemo.py, how2r.py,
msrvtt.py, activitynet.py, how2qa.py): the dataset names a task, the task brings its head, loss and
evaluation, and everything else is pretraining's (pretrain/session.py: engine, resume,
preemption; pretrain/loop.py: the one training loop; MLflow tracking; checkpoints).

Outputs under run.output_dir, besides checkpoints/, metrics.jsonl and the MLflow store:

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

from finetune import data, moment_eval, plots, value_submission
from finetune.model import InitConfig, TaskModel, load_backbone, resolve_checkpoint
from finetune.moment import MomentConfig, MomentTask
from finetune.qa import QAConfig, QATask
from finetune.video_retrieval import VideoRetrievalConfig, VideoRetrievalTask
from pretrain import checkpoint, config, runtime, session
from pretrain.config import ConfigError
from pretrain.distributed import rank_info
from pretrain.loader import check_world, read_manifest
from pretrain.loop import Trainer, TrainState
from pretrain.model import ModelConfig, build_model, load_tokenizer
from pretrain.runtime import OptimConfig, RuntimeConfig
from pretrain.tracking import Tracker, TrackingConfig

log = logging.getLogger("finetune")


@dataclass
class FinetuneRunConfig:
    name: str = "finetune"
    output_dir: str = "runs/finetune"
    seed: int = 0
    max_steps: int = 1000  # optimizer steps
    log_every: int = 10
    max_bad_steps: int = 3


@dataclass
class FinetuneEvalConfig:
    every: int = 0  # steps between evaluations of data.eval_split; 0: at the end only
    heatmap_queries: int = 16  # queries in the similarity heatmap (readable at the width of MLflow's viewer)
    codalab_zip: bool = False  # moment tasks with a test split: also write the upload zip (TVR's; How2R: VALUE's)


@dataclass
class FinetuneConfig:
    run: FinetuneRunConfig = field(default_factory=FinetuneRunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    data: data.FinetuneDataConfig = field(default_factory=data.FinetuneDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    checkpoint: checkpoint.CheckpointConfig = field(default_factory=checkpoint.CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: FinetuneEvalConfig = field(default_factory=FinetuneEvalConfig)


@dataclass
class MomentFinetuneConfig(FinetuneConfig):
    task: MomentConfig = field(default_factory=MomentConfig)


@dataclass
class RetrievalFinetuneConfig(FinetuneConfig):
    task: VideoRetrievalConfig = field(default_factory=VideoRetrievalConfig)


@dataclass
class QAFinetuneConfig(FinetuneConfig):
    task: QAConfig = field(default_factory=QAConfig)


# recipe name -> (config schema, task); the entry scripts only name their recipe
RECIPES: dict[str, tuple[type, type]] = {
    "tvr": (MomentFinetuneConfig, MomentTask),
    "didemo": (MomentFinetuneConfig, MomentTask),
    "how2r": (MomentFinetuneConfig, MomentTask),
    "msrvtt": (RetrievalFinetuneConfig, VideoRetrievalTask),
    "activitynet": (RetrievalFinetuneConfig, VideoRetrievalTask),
    "how2qa": (QAFinetuneConfig, QATask),
}


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
    p.add_argument("--check", action="store_true",
                   help="check the config (keys, types, paths, feature dims, batch sizes), exit 0 or 2 and one line")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. init.checkpoint=runs/pretrain/export")
    return p.parse_args(argv)


def main(name: str, argv: list[str] | None = None) -> dict[str, Any]:
    """Entry of `finetune/<name>.py`: finetune, evaluate, write predictions; the final results."""
    session.install_early_stop()
    args = parse_args(name, argv)
    schema, task_cls = RECIPES[name]
    cfg = config.load(args.config, args.overrides, schema)
    validate(cfg, runtime.launch_world_size())
    if args.check:  # what the sbatch scripts run before srun: a config error ends the job with this one line
        print(f"config ok: {args.config} {' '.join(args.overrides)}".rstrip())
        raise SystemExit(0)
    session.lock_run_dir(cfg.run.output_dir, rank_info()[0])  # before the rendezvous: a refusal ends the job
    rank, _, world = runtime.init_distributed(cfg.runtime)
    return runtime.run_then_shutdown(lambda: finetune(name, cfg, task_cls(cfg.task), rank, world))


def finetune(name: str, cfg: FinetuneConfig, task: Any, rank: int, world: int) -> dict[str, Any]:
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
    trainer = Trainer(run.engine, loader, task.loss, tracker, state, run_dir, cfg.run.max_steps, cfg.run.log_every,
                      cfg.run.max_bad_steps, cfg.checkpoint.every, cfg.checkpoint.keep_last, reporter.evaluate,
                      cfg.eval.every, rank, world, device, run.mirror)  # fmt: skip
    state = session.fit(trainer, tracker)
    if cfg.checkpoint.export:  # the finetuned model (backbone + head) as one fp32 file
        run.export(cfg, state.step, tokenizer, rank)
    results = reporter.finish(state)
    tracker.end()
    return results


@dataclass
class Reporter:
    """Evaluates on the eval split (all ranks compute, rank 0 writes and logs) and predicts the test split."""

    name: str
    cfg: FinetuneConfig
    task: Any
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

    def predict(self, split: str, with_gt: bool) -> dict[str, Any]:
        """The task's predictions on a split, the engine in eval mode meanwhile (dropout off)."""
        was_training = self.engine.training
        self.engine.eval()
        try:
            return self.task.predict(self.engine, self.cfg.data, split, self.tokenizer, self.device, with_gt)
        finally:
            self.engine.train(was_training)

    def evaluate(self, step: int) -> dict[str, float]:
        split = self.cfg.data.eval_split
        out = self.predict(split, with_gt=True)
        folder = self.out_dir("eval", split, f"step_{step:08d}")
        files = self.write(out, split, folder) if self.rank == 0 else {}
        self.last = {"step": step, "split": split, "metrics": out["metrics"], "files": files}
        flat = flatten_metrics(split, out["metrics"])
        if self.rank == 0:
            log.info("step %d %s: %s", step, split, json.dumps(out["metrics"]))
        return flat

    def write(self, out: dict[str, Any], split: str, folder: str) -> dict[str, str]:
        """metrics.json (official keys), eval_info.json, predictions, plots; logged to MLflow."""
        files = {"metrics": os.path.join(folder, "metrics.json"), "info": os.path.join(folder, "eval_info.json")}
        if "metrics" in out:
            dump(files["metrics"], out["metrics"])
            files["per_query"] = os.path.join(folder, "per_query.json")  # each query's share of the metrics
            dump(files["per_query"], out["per_query"])
        else:
            files.pop("metrics")
        gt_rows = out["gt_rows"]
        dump(files["info"], {"recipe": self.name, "split": split, "queries": len(out["queries"]),
                             "queries_without_video": int((gt_rows < 0).sum()), **out["info"]})  # fmt: skip
        if "submission" in out:
            files["submission"] = os.path.join(folder, f"{self.name}_{split}_submission.json")
            moment_eval.write_submission(files["submission"], out["submission"]["video2idx"],
                                         {k: v for k, v in out["submission"].items() if k != "video2idx"})  # fmt: skip
            if self.name == "how2r":  # what How2R's leaderboard reads: VALUE's format (idx: data_prep --video2dur)
                files["value_submission"] = os.path.join(folder, value_submission.file_name(split))
                value_submission.write(files["value_submission"], value_submission.from_tvr(out["submission"]),
                                       out["submission"]["video2idx"].values())  # fmt: skip
        else:
            files["predictions"] = os.path.join(folder, "predictions.json")
            dump(files["predictions"], out["predictions"])
        if "metrics" in out:
            task_plots = getattr(self.task, "plots", None)  # a task's own plots, else recall and similarity
            files.update(task_plots(out, folder, f"{self.name} {split}") if task_plots else self.plots(out, folder))
        for path in files.values():
            self.tracker.log_artifact(path, os.path.relpath(folder, self.cfg.run.output_dir))
        return files

    def plots(self, out: dict[str, Any], folder: str) -> dict[str, str]:
        sim, gt_rows, queries = out["vr_scores"], out["gt_rows"], out["queries"]
        ranks = vr_ranks(out)
        recall = os.path.join(folder, "recall_at_k.png")
        plots.recall_curve({"video retrieval": ranks}, recall, f"{self.name} {self.cfg.data.eval_split}")
        heat = os.path.join(folder, "similarity.png")
        rows, cols, z, gt, labels = heatmap_sample(sim, gt_rows, queries, self.cfg.eval.heatmap_queries)
        videos = [str(queries[i]["video_id"]) for i in rows]
        plots.similarity_heatmap(z[:, cols], labels, list(dict.fromkeys(videos)), heat,
                                 f"{self.name} {self.cfg.data.eval_split}: query-video scores, per query",
                                 gt=gt, colorbar="z-score over all videos, per query",
                                 caption=HEATMAP_CAPTION.format(videos=sim.shape[1]))  # fmt: skip
        return {"recall_plot": recall, "heatmap": heat}

    def finish(self, state: TrainState) -> dict[str, Any]:
        """The test split's predictions (no metrics), the Codalab zip, results.json."""
        results = {"recipe": self.name, "steps": state.step, **self.last}
        test = self.cfg.data.test_split
        if test:
            out = self.predict(test, with_gt=False)
            folder = self.out_dir("eval", test, f"step_{state.step:08d}")
            if self.rank == 0:
                results["test_files"] = self.write(out, test, folder)
                sub = results["test_files"].get("submission")
                if self.cfg.eval.codalab_zip and sub and "submission" in self.last.get("files", {}):
                    results["codalab_zip"] = os.path.join(self.cfg.run.output_dir, f"{self.name}_submission.zip")
                    if self.name == "how2r":
                        value_submission.value_zip(results["codalab_zip"], self.last["files"]["value_submission"],
                                                   results["test_files"]["value_submission"])  # fmt: skip
                    else:
                        moment_eval.codalab_zip(results["codalab_zip"], self.last["files"]["submission"], sub)
                    self.tracker.log_artifact(results["codalab_zip"], "submission")
        if self.rank == 0:
            dump(os.path.join(self.cfg.run.output_dir, "results.json"), results)
        return results


HEATMAP_CAPTION = ("Each row is one query: its scores against the sampled queries' own videos, as standard deviations "
                   "from that query's mean score over all {videos} videos of the split (so rows compare). The red box "
                   "is the query's own video; '[rank k]' is that video's rank among all {videos}. A good model: every "
                   "box is the brightest cell of its row (rank 1), and no column is bright in every row (a video that "
                   "wins every query is a hub, not a match).")


def heatmap_sample(sim: torch.Tensor, gt_rows: torch.Tensor, queries: list[dict], n: int) -> tuple:
    """Up to n queries with a video, spread over the split; their scores standardised per query over all
    videos; the columns (each sampled query's own video, in order), each row's box and label with its rank.
    Returns (rows, cols, z (rows, all videos), gt column per row, labels)."""
    have = [i for i in range(sim.shape[0]) if gt_rows[i] >= 0]
    rows = [have[round(j * (len(have) - 1) / max(n - 1, 1))] for j in range(min(n, len(have)))] if have else []
    rows = list(dict.fromkeys(rows))
    cols = list(dict.fromkeys(int(gt_rows[i]) for i in rows))
    s = sim[rows].float()  # (R, V)
    z = (s - s.mean(dim=1, keepdim=True)) / s.std(dim=1, keepdim=True).clamp_min(1e-12)
    own = torch.tensor([int(gt_rows[i]) for i in rows], dtype=torch.long)
    ranks = 1 + (s > s.gather(1, own[:, None])).sum(dim=1)  # (R,)
    labels = [f"[rank {int(r)}] {queries[i]['text']}" for i, r in zip(rows, ranks)]
    return rows, cols, z, [cols.index(int(c)) for c in own], labels


def vr_ranks(out: dict[str, Any]) -> torch.Tensor:
    """1-based rank of each query's video in its VR list (moment tasks) or similarity row; 10**9 if absent."""
    gt_rows = out["gt_rows"]
    ranks = torch.full(gt_rows.shape, 10**9, dtype=torch.long)  # (Q,)
    if "submission" in out:
        sub = out["submission"]
        idx = sub["video2idx"]
        for i, (q, entry) in enumerate(zip(out["queries"], sub["VR"])):
            videos = [p[0] for p in entry["predictions"]]
            target = idx.get(q["video_id"])
            if target in videos:
                ranks[i] = videos.index(target) + 1
        return ranks
    for i, (q, entry) in enumerate(zip(out["queries"], out["predictions"])):
        videos = [p[0] for p in entry["predictions"]]
        if q["video_id"] in videos:
            ranks[i] = videos.index(q["video_id"]) + 1
    return ranks


def flatten_metrics(split: str, metrics: dict[str, Any]) -> dict[str, float]:
    """{'VCMR': {'0.5-r1': x}} -> {'val/VCMR/0.5-r1': x}, numbers only (MLflow)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update({f"{split}/{k}/{kk}": float(vv) for kk, vv in v.items() if isinstance(vv, (int, float))})
        elif isinstance(v, (int, float)):
            out[f"{split}/{k}"] = float(v)
    return out


def dump(path: str, obj: Any) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)
