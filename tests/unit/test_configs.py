"""Every YAML under configs/ loads through the schema of the entry point that reads it, with the same
loader: an unknown key or a wrong type fails here, not hours into a cluster job. A file under configs/
that no entry below knows how to load fails too, so that a new config cannot be skipped silently.

    configs/pretrain/*.yaml   pretrain/train.py          pretrain.config.load (PretrainConfig)
    configs/finetune/X.yaml   finetune/X.py              pretrain.config.load, finetune.datasets.DATASETS["X"].schema
    configs/main_job.yaml     python -m launch.main_job  launch.stages.load_config (MainJobConfig)
    configs/ablate.yaml       python -m launch.ablate    launch.ablate.load_config (AblateConfig over the main job's)
    configs/ablate_suites.yaml  python -m launch.ablate  launch.ablate.load_suites (Suite per suite)

Beyond types, each file passes the checks of its entry point that need neither data nor a cluster
(presets, objectives, loader and task options, the batch arithmetic, DeepSpeed's section), and the
override lists that the main job and the ablations pass to the training entry points load through
those entry points' schemas too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

from finetune.config import FinetuneConfig
from finetune.datasets import DATASETS
from launch import ablate, stages
from pretrain import config as pretrain_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"


def load_pretrain(path: Path) -> pretrain_config.PretrainConfig:
    """As pretrain/train.py's main: config.load(--config, overrides) with the default schema."""
    return pretrain_config.load(str(path), [])


def load_finetune(path: Path) -> FinetuneConfig:
    """As finetune/<name>.py -> finetune.recipe.main(name): the schema of the dataset's record."""
    name = path.stem
    assert name in DATASETS, f"{path}: no dataset {name!r} in finetune/datasets.py (datasets: {sorted(DATASETS)})"
    assert (REPO / "finetune" / f"{name}.py").is_file(), f"{path}: no entry script finetune/{name}.py"
    return pretrain_config.load(str(path), [], DATASETS[name].schema)


def load_main_job(path: Path) -> stages.MainJobConfig:
    return stages.load_config(path, [])


def load_ablate(path: Path) -> ablate.AblateConfig:
    return ablate.load_config(path, [])


def load_suites(path: Path) -> dict[str, ablate.Suite]:
    return ablate.load_suites(path)


# a config's path under configs/ (a glob) -> the entry point's loader. A new kind of config belongs here.
LOADERS: dict[str, Callable[[Path], Any]] = {
    "pretrain/*.yaml": load_pretrain,
    "finetune/*.yaml": load_finetune,
    "main_job.yaml": load_main_job,
    "ablate.yaml": load_ablate,
    "ablate_suites.yaml": load_suites,
}

CONFIG_FILES = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*") if p.is_file())


def loader_of(rel: str) -> Callable[[Path], Any]:
    found = [load for pattern, load in LOADERS.items() if fnmatch(rel, pattern)]
    if len(found) != 1:
        pytest.fail(
            f"configs/{rel}: no entry point known to load it ({len(found)} patterns match); "
            f"add it to LOADERS in tests/unit/test_configs.py with the loader of the entry point that reads it"
        )
    return found[0]


def test_the_config_files_are_found() -> None:
    assert {"pretrain/tiny_cpu.yaml", "pretrain/howto100m.yaml", "main_job.yaml", "ablate.yaml", "ablate_suites.yaml",
            *(f"finetune/{name}.yaml" for name in DATASETS)} <= set(CONFIG_FILES)  # fmt: skip


def test_an_unknown_config_file_fails() -> None:
    with pytest.raises(pytest.fail.Exception, match="no entry point known to load it"):
        loader_of("evaluation/new.yaml")
    with pytest.raises(pytest.fail.Exception, match="no entry point known to load it"):
        loader_of("pretrain/howto100m.yml")


@pytest.mark.parametrize("rel", CONFIG_FILES)
def test_every_config_loads_through_its_entry_points_schema(rel: str, tmp_path: Path) -> None:
    cfg = loader_of(rel)(CONFIGS / rel)
    if isinstance(cfg, pretrain_config.PretrainConfig):
        check_pretrain(cfg, tmp_path)
    elif isinstance(cfg, FinetuneConfig):
        check_finetune(cfg, tmp_path)
    elif isinstance(cfg, ablate.AblateConfig):
        for suite in ablate.SUITES:
            ablate.validate(cfg, suite)
        recipes = {r for suite in ablate.SUITES for r in ablate.suite_recipes(cfg, suite)}
        check_training_overrides(cfg.pretrain, cfg.finetune, recipes)
    elif isinstance(cfg, stages.MainJobConfig):
        check_training_overrides(cfg.pretrain, cfg.finetune, set(cfg.finetune.recipes))
    elif isinstance(cfg, dict):  # the ablation suites: every variant's overrides load through their schemas
        check_suites(cfg)
    else:
        pytest.fail(f"configs/{rel}: loaded as {type(cfg).__name__}, which this test does not check")


def check_pretrain(cfg: pretrain_config.PretrainConfig, tmp_path: Path) -> None:
    """pretrain.config.validate on one rank, with data.train an empty folder and the run dir in tmp_path:
    everything it checks but the shards (presets, objectives, loader options, batch arithmetic, DeepSpeed)."""
    cfg = replace(cfg, run=replace(cfg.run, output_dir=str(tmp_path / "run")),
                  data=replace(cfg.data, train=str(tmp_path)), eval=replace(cfg.eval, held_out=None))  # fmt: skip
    pretrain_config.validate(cfg, world=1)


def check_finetune(cfg: FinetuneConfig, tmp_path: Path) -> None:
    """finetune.recipe.validate's checks that need no converted split: task and loader options, the preset,
    the batch arithmetic and DeepSpeed's section (pretrain.config.validate_run) on one rank."""
    cfg.task.validate()
    cfg.data.loader_config(cfg.data.train_split, cfg.data.batch_size).validate()
    pretrain_config.validate_run(replace(cfg, run=replace(cfg.run, output_dir=str(tmp_path / "run"))), world=1)


def check_training_overrides(pretrain: stages.PretrainStage, finetune: stages.FinetuneStage, recipes: set[str]) -> None:
    """The key=value lists a driver hands to pretrain/train.py and finetune/<recipe>.py load through their
    schemas (a typo there would otherwise surface only when that run starts)."""
    pretrain_config.load(str(REPO / pretrain.config), list(pretrain.overrides))
    unknown = set(finetune.recipe_overrides) - set(DATASETS)
    assert not unknown, f"finetune.recipe_overrides names no recipe: {sorted(unknown)}"
    for name in sorted(recipes | set(finetune.recipe_overrides)):
        given = [*finetune.overrides, *finetune.recipe_overrides.get(name, [])]
        pretrain_config.load(str(CONFIGS / "finetune" / f"{name}.yaml"), given, DATASETS[name].schema)


def check_suites(suites: dict[str, ablate.Suite]) -> None:
    """Every variant's pretraining overrides load through the pretraining schema, its finetune overrides through
    the recipe schema of each dataset it can finetune (a finetune-only suite's own, else any)."""
    for suite in suites.values():
        for v in suite.variants:
            pretrain_config.load(str(CONFIGS / "pretrain" / "tiny_cpu.yaml"), v.overrides)
            for name in suite.recipes or DATASETS:
                dataset = DATASETS[name]
                pretrain_config.load(str(CONFIGS / dataset.config.removeprefix("configs/")), v.finetune_for(name),
                                     dataset.schema)  # fmt: skip
