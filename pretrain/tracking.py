"""MLflow tracking: the only module that imports mlflow. Global rank 0 logs; other ranks no-op.

The tracking URI comes from config, else MLFLOW_TRACKING_URI, else a sqlite store inside the
run directory (MLflow 3's file store refuses to start without an opt-in). Params: the
flattened resolved config within MLflow's limits (100 per batch, 6000 characters a value);
the full resolved YAML is logged as an artifact. A resumed run passes the run id kept in
its checkpoint and continues the same MLflow run, logging each metric's steps once: the steps
between the checkpoint and the interruption, already in the store, are not logged again (a resume
is exact, so they would carry the same values). A run id the store does not know (a copied
checkpoint, a lost mlflow.db, another tracking URI) continues in a new run, tagged
`resumed_from_run_id`, with a warning.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_CHARS = 6000


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # None: MLFLOW_TRACKING_URI, else sqlite:///<run dir>/mlflow.db
    experiment: str = "vlpretrain"
    run_name: str | None = None
    system_metrics: bool = True
    parent_run_id: str | None = None  # nest this run under another (the main job's, an ablation's)


def _mlflow() -> Any:
    """The mlflow module, imported here on first use only: every rank imports this module (through
    pretrain.config), and only rank 0 with tracking on should pay for importing mlflow."""
    import mlflow
    import mlflow.exceptions  # noqa: F401 (Tracker._known catches its MlflowException)

    return mlflow


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a.b': '1'}; values cut to MLflow's limit."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:MAX_PARAM_CHARS]
    return out


def metric_name(key: str) -> str:
    """MLflow accepts [A-Za-z0-9_-. :/] in names: 'R@1' becomes 'R_1'. The per-kind skip counters go under
    'data_skipped/' (MLflow's charts group a prefix in its own section, so they do not lead the losses)."""
    key = re.sub(r"^data_skipped_", "data_skipped/", key)
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", key)


def tracking_uri(cfg: TrackingConfig, run_dir: str) -> str:
    if cfg.uri:
        return cfg.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{os.path.abspath(os.path.join(run_dir, 'mlflow.db'))}"


class Tracker:
    """Logs to MLflow from global rank 0; every call is a no-op elsewhere or when disabled."""

    def __init__(self, cfg: TrackingConfig, run_dir: str, rank: int):
        self.active = cfg.enabled and rank == 0
        self.cfg, self.run_dir, self.run_id = cfg, run_dir, None
        self.uri = tracking_uri(cfg, run_dir)
        self.logged: dict[str, int] = {}  # a continued run: metric -> the last step already in the store

    def start(self, params: dict[str, Any], config_yaml: str, run_id: str | None = None) -> str | None:
        """Start a run (or continue `run_id`); log params once and the YAML as an artifact."""
        if not self.active:
            return None
        mlflow = _mlflow()
        os.makedirs(self.run_dir, exist_ok=True)
        before = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.uri)
        # MLflow also exports the URI to the environment for subprocesses; a driver (the main job)
        # tracking in process must not send the runs it starts to its own store that way.
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
        if run_id is not None and not self._known(run_id):
            log.warning("MLflow run %s of the checkpoint is not in %s: continuing in a new run", run_id, self.uri)
            lost, run_id = run_id, None
        else:
            lost = None
        if run_id is None:
            self._set_experiment()
            tags = {"mlflow.parentRunId": self.cfg.parent_run_id} if self.cfg.parent_run_id else {}
            tags |= {"resumed_from_run_id": lost} if lost else {}
            run = mlflow.start_run(run_name=self.cfg.run_name, log_system_metrics=self.cfg.system_metrics,
                                   tags=tags or None)  # fmt: skip
            self._log_params(flatten(params))
            path = os.path.join(self.run_dir, "config.yaml")
            with open(path, "w") as f:
                f.write(config_yaml)
            mlflow.log_artifact(path)
        else:  # a resumed job continues its run, each metric's steps once
            run = mlflow.start_run(run_id=run_id, log_system_metrics=self.cfg.system_metrics)
            client = mlflow.MlflowClient()
            self.logged = {k: max(m.step for m in client.get_metric_history(run_id, k)) for k in run.data.metrics}
        self.run_id = run.info.run_id
        log.info("MLflow run %s at %s", self.run_id, self.uri)
        return self.run_id

    @staticmethod
    def _known(run_id: str) -> bool:
        mlflow = _mlflow()
        try:
            mlflow.MlflowClient().get_run(run_id)
        except mlflow.exceptions.MlflowException:
            return False
        return True

    def _set_experiment(self) -> None:
        """With a sqlite store MLflow puts artifacts in ./mlruns of the current directory; a new
        experiment in a local store gets them beside the store instead."""
        mlflow = _mlflow()
        if self.uri.startswith("sqlite:") and mlflow.get_experiment_by_name(self.cfg.experiment) is None:
            store_dir = os.path.dirname(self.uri[len("sqlite:///") :]) or "."
            location = "file://" + os.path.abspath(os.path.join(store_dir, "mlartifacts"))
            mlflow.create_experiment(self.cfg.experiment, artifact_location=location)
        mlflow.set_experiment(self.cfg.experiment)

    def _log_params(self, flat: dict[str, str]) -> None:
        mlflow = _mlflow()
        items = sorted(flat.items())
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            mlflow.log_params(dict(items[i : i + MAX_PARAMS_PER_BATCH]))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log at `step`, except a metric a continued run already holds at this step or later."""
        named = {metric_name(k): float(v) for k, v in metrics.items()}
        named = {k: v for k, v in named.items() if step > self.logged.get(k, -1)}
        if self.active and named:
            _mlflow().log_metrics(named, step=step)

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        if self.active:
            mlflow = _mlflow()
            if os.path.isdir(path):
                mlflow.log_artifacts(path, artifact_path=artifact_path)
            else:
                mlflow.log_artifact(path, artifact_path=artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.active:
            _mlflow().set_tags(tags)

    def end(self, status: str = "FINISHED") -> None:
        if self.active:
            _mlflow().end_run(status=status)
