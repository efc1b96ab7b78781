"""The pretraining config tree: defaults <- YAML <- key=value overrides, then validation.

Each part's schema lives beside the code it configures (ModelConfig in model.py, LoaderConfig
in pretrain/loader/, ...); this module assembles them. OmegaConf's structured configs reject an
unknown key or a wrong type with the key's name; `validate` then checks what needs the
world (world size, files on disk) before any work starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pretrain.checkpoint import CheckpointConfig
from pretrain.loader import LoaderConfig, check_world, read_manifest, resolve_shards, source_folder
from pretrain.model import ModelConfig, resolve
from pretrain.objectives import ObjectivesConfig
from pretrain.objectives import validate as validate_objectives
from pretrain.runtime import OptimConfig, RuntimeConfig, ds_config, grad_accum_steps
from pretrain.s3retry import NO_RETRY, is_remote
from pretrain.tracking import TrackingConfig


class ConfigError(ValueError):
    """A bad config: raised before any work starts, naming the key."""


@dataclass
class RunConfig:
    name: str = "pretrain"
    output_dir: str = "runs/pretrain"  # checkpoints, export, metrics.jsonl, the default MLflow store
    seed: int = 0
    max_steps: int = 100  # optimizer steps
    log_every: int = 10
    max_bad_steps: int = 3  # non-finite losses in a row before the run stops


@dataclass
class EvalConfig:
    held_out: str | None = None  # shard folder for zero-shot text-to-video retrieval (None: no eval)
    every: int = 0  # steps between evaluations; 0: at the end only
    batch_size: int = 16
    max_samples: int = 1000


@dataclass
class PretrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: LoaderConfig = field(default_factory=LoaderConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load(path: str | None, overrides: list[str], schema: type = PretrainConfig, defaults: dict | None = None):
    """The typed config: schema defaults, then `defaults` (values that take the schema's place, e.g. the
    sections an ablation inherits from the main job), then the YAML file, then key=value overrides.
    Every loader of a config file goes through here: a bad key or value is a ConfigError naming it."""
    try:
        base = OmegaConf.merge(OmegaConf.structured(schema), defaults or {})
        layers = [OmegaConf.load(path)] if path else []
        merged = OmegaConf.merge(base, *layers, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path or 'config'}: {e}".replace("\n", " | ")) from None


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def _shard_manifest(url: str, s3_endpoint: str | None) -> dict | None:
    """The manifest.json of a shard folder, or beside a shard path or brace pattern (local or s3://);
    None when there is none to read."""
    folder = source_folder(url)
    if folder is None:
        return None
    try:
        return read_manifest(folder, s3_endpoint, NO_RETRY)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        if is_remote(folder):  # unreachable here: the loader reports it with its retries
            return None
        raise


def validate_run(cfg, world: int) -> ModelConfig:
    """What every training entry point checks (pretraining, finetuning): the model preset, the batch
    arithmetic, the DeepSpeed section (stage, precision, buckets), the step count. Returns the model."""
    try:
        model = resolve(cfg.model)
        grad_accum_steps(cfg.runtime, cfg.data.batch_size, world)
        ds_config(cfg.runtime, cfg.optim, cfg.data.batch_size, 1)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.run.max_steps < 1:
        raise ConfigError(f"run.max_steps must be >= 1, got {cfg.run.max_steps}")
    if cfg.checkpoint.node_local and not cfg.checkpoint.upload:
        raise ConfigError("checkpoint.node_local needs checkpoint.upload (s3://bucket/prefix): with a run dir on each "
                          "node's own disk, the mirror is the only place a checkpoint is whole")  # fmt: skip
    check_writable(cfg.run.output_dir)
    return model


def check_writable(run_dir: str) -> None:
    """The run directory can be written, or made: a file is created and removed in it, or in its nearest
    existing ancestor (so that a config error leaves nothing behind), before any model or engine is set up."""
    path = os.path.abspath(run_dir)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    probe = os.path.join(path, f".write_test_{os.getpid()}")
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"run.output_dir {run_dir} is not writable: {path}: {e.strerror or e}") from None


def validate(cfg: PretrainConfig, world: int) -> None:
    """Checks that need more than types: names, divisibility, paths, feature dims."""
    try:
        validate_objectives(cfg.objectives)
        cfg.data.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    model = validate_run(cfg, world)
    train = [cfg.data.train] if isinstance(cfg.data.train, str) else list(cfg.data.train)
    if not any(train):
        raise ConfigError("data.train is empty: give a shard folder, a list of them, or shard paths")
    held_out = [cfg.eval.held_out] if cfg.eval.held_out else []
    for key, url in [("data.train", u) for u in train] + [("eval.held_out", u) for u in held_out]:
        if not url.startswith("s3://") and "{" not in url and not os.path.exists(url):
            raise ConfigError(f"{key}: {url} does not exist")
    if world > 1:
        try:
            check_world(resolve_shards(train, cfg.data.s3_endpoint).sizes, world)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"data.train: {e}") from None
    for key, url in [("data.train", u) for u in train] + [("eval.held_out", u) for u in held_out]:
        manifest = _shard_manifest(url, cfg.data.s3_endpoint)
        if manifest is not None and manifest["feature_spec"]["dim"] != model.frame_dim:
            raise ConfigError(
                f"model.frame_dim {model.frame_dim} != the feature dim {manifest['feature_spec']['dim']} of "
                f"{key} {url} (its manifest.json)"
            )
