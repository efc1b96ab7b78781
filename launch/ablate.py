"""Ablations in the shape of the papers' tables. Two kinds of suite:

- pretraining suites, each variant pretrained and finetuned: FEEL Table 5 (`feel`: which
  pretraining objectives), TACo Table 3 (`taco`: which losses, cascade or random negatives) and
  `readings` (the papers' defaults against each previous reading they replaced,
  docs/objectives.md); they finetune the config's `finetune.recipes`;
- finetune-only suites, whose variants share ONE pretraining (the main job's, `pretrain`, run once
  per suite) and differ only in finetune overrides: the multi-level alignment paper's Tables 2
  and 4 (`align`: no / global / segment / both alignment losses; How2QA and How2R) and MESM's main
  ablation (`mesm`: XML head, MA + L_enc, +FW-MESM, +SS-MESM, both; DiDeMo and TVR). Their
  recipes are the suite's own: `finetune.recipes` does not apply to them.

The suites are configs/ablate_suites.yaml (rows, overrides, columns); the run settings configs/ablate.yaml.

    python -m launch.ablate --suite feel|taco|readings|align|mesm [--config configs/ablate.yaml] [key=value ...]
    python -m launch.ablate --suite taco --slurm [key=value ...]    # Slurm job chains
    python -m launch.ablate --suite taco --collect [key=value ...]  # the table + MLflow from the run dirs

A pretraining suite's variant: pretraining (pretrain/train.py, the variant's objective overrides
on top of `pretrain`) -> its export finetuned by every recipe, once per seed -> zero-shot
text-to-video retrieval of the export on the held-out HowTo100M shards. A finetune-only suite:
the one pretraining and its zero-shot retrieval, then per variant every recipe x seed finetuned
from that export with the variant's finetune overrides (after `finetune.overrides` and
`finetune.recipe_overrides`). The data are the main job's shards, made by its data stages when
missing. Locally the variants run in turn (`finetune.parallel` finetunes at a time; for a
finetune-only suite, after its pretraining, all variants' finetunes `finetune.parallel` at a
time); a finished run is reused on a re-run. With --slurm each pretraining is a job and each finetune a job after
the pretraining it starts from (afterok): per variant for a pretraining suite, one shared
pretraining job for a finetune-only suite; one collect job after all of them runs this module
with --collect.

Under <workdir>: <suite>/<variant>/{pretrain, finetune/<recipe>-seed<s>, zeroshot.json} for a
pretraining suite, <suite>/{pretrain, zeroshot.json} and <suite>/<variant>/finetune/<recipe>-seed<s>
for a finetune-only one; ablation_<suite>.md (the table) and mlflow.db: the run "ablation <suite>",
one nested run per variant (its table row as metrics, its settings as params and tags), and the
variant's training runs nested under that; a shared pretraining run is nested under the suite's
run. The run ids are kept in <suite>/mlflow_runs.json: a re-run continues them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from data_prep.errors import DataPrepError
from finetune.datasets import DATASETS
from launch import pipeline, report, slurm, stages
from launch.stages import FinetuneStage, PretrainStage
from pretrain import config, zeroshot
from pretrain.config import ConfigError
from pretrain.tracking import Tracker, TrackingConfig

DEFAULT_CONFIG = pipeline.REPO / "configs" / "ablate.yaml"
SUITES_FILE = pipeline.REPO / "configs" / "ablate_suites.yaml"
IDS = "mlflow_runs.json"


@dataclass(eq=False)
class Variant:
    """One row of a paper's ablation table."""

    label: str  # the row as the paper names it
    key: str  # its folder and MLflow run name
    overrides: list[str] = field(default_factory=list)  # key=value for pretrain/train.py, after `pretrain.overrides`
    # key=value for every finetune recipe, after `finetune.(recipe_)overrides`; "<recipe>:key=value" for one
    finetune: list[str] = field(default_factory=list)

    def finetune_for(self, recipe: str) -> list[str]:
        """The variant's finetune overrides that apply to `recipe`, its prefix removed."""
        out = []
        for o in self.finetune:
            prefix, _, rest = o.partition(":")
            if "=" in prefix or not rest:  # no recipe prefix (a value may hold a ":", as in s3://)
                out.append(o)
            elif prefix == recipe:
                out.append(rest)
        return out


@dataclass(eq=False)
class Suite:
    """A paper's ablation table: its rows, and whether each row pretrains or all share one pretraining."""

    title: str
    variants: list[Variant]
    finetune_only: bool = False  # True: one shared pretraining (`pretrain`), variants differ in finetuning only
    recipes: list[str] = field(default_factory=list)  # the suite's own finetune recipes; []: `finetune.recipes`
    # recipe -> the labels of its metrics shown; default: the papers' columns (finetune/datasets.py)
    columns: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Suites:
    suites: dict[str, Suite] = field(default_factory=dict)


def check_suite(name: str, suite: Suite) -> None:
    """What the schema cannot say: unique keys, recipes and metric labels that exist."""
    keys = [v.key for v in suite.variants]
    if len(set(keys)) != len(keys) or "pretrain" in keys:  # <suite>/pretrain is the shared one
        raise ConfigError(f"suite {name!r}: variant keys must be unique and not 'pretrain': {keys}")
    if suite.finetune_only and (any(v.overrides for v in suite.variants) or not suite.recipes):
        raise ConfigError(f"suite {name!r}: a finetune-only suite names its recipes and has no pretraining overrides")
    for v in suite.variants:
        for o in v.finetune:
            prefix, _, rest = o.partition(":")
            if "=" not in prefix and rest and prefix not in DATASETS:
                raise ConfigError(f"suite {name!r}, variant {v.key!r}: {o!r} names no recipe ({list(DATASETS)})")
    for recipe in [*suite.recipes, *suite.columns]:
        if recipe not in DATASETS:
            raise ConfigError(f"suite {name!r}: unknown recipe {recipe!r} (recipes: {list(DATASETS)})")
    for recipe, labels in suite.columns.items():
        unknown = set(labels) - {m.label for m in DATASETS[recipe].metrics}
        if unknown:
            raise ConfigError(f"suite {name!r}: columns.{recipe}: no metric {sorted(unknown)}")


def load_suites(path: Path = SUITES_FILE) -> dict[str, Suite]:
    suites = config.load(str(path), [], Suites).suites
    for name, suite in suites.items():
        check_suite(name, suite)
    return suites


SUITES = load_suites()
ZERO_SHOT = "zero-shot R@10"  # of TACo's L1+L2 score (pretrain/zeroshot.py), the score TACo's inference starts from
ZERO_SHOT_KEY = "zeroshot_taco_R@10"


@dataclass
class SlurmJobs:
    """sbatch options (resources, partition, account, time limit): no hyperparameters here."""

    sbatch: list[str] = field(default_factory=list)  # every job of the suite
    pretrain: list[str] = field(default_factory=list)  # the pretraining jobs, after `sbatch`
    finetune: list[str] = field(default_factory=list)
    collect: list[str] = field(default_factory=list)


@dataclass
class AblateConfig:
    """configs/ablate.yaml; `pretrain` and `finetune` start from the main job's sections."""

    workdir: str = "runs/ablate"
    main_job: str = "configs/stages.yaml"  # the main job's config: its shards and training defaults
    main_overrides: list[str] = field(default_factory=list)  # key=value for it (workdir=..., videos=...)
    shards: str | None = None  # None: <main job workdir>/shards, made by its data stages when missing
    experiment: str = "ablation"
    tracking_uri: str | None = None  # None: sqlite:///<workdir>/mlflow.db (a server on a multi-node cluster)
    variants: list[str] = field(default_factory=list)  # keys of the suite's variants to run; empty: all
    pretrain: PretrainStage = field(default_factory=PretrainStage)  # defaults: the main job's section
    finetune: FinetuneStage = field(default_factory=FinetuneStage)  # defaults: the main job's section
    slurm: SlurmJobs = field(default_factory=SlurmJobs)


def repo_file(path: str | Path) -> Path:
    """A config path as given, else relative to the repository (as the sbatch scripts find configs)."""
    p = Path(path)
    return p.resolve() if p.exists() else pipeline.REPO / p


def main_config(cfg: AblateConfig) -> stages.MainJobConfig:
    return stages.load_config(repo_file(cfg.main_job), list(cfg.main_overrides))


def load_config(path: Path, overrides: list[str]) -> AblateConfig:
    """Schema <- the main job's pretrain/finetune sections <- YAML <- key=value; an unknown key is a
    ConfigError naming it. The ablation thus trains like the main job except for what its YAML changes."""
    main = main_config(config.load(str(path), overrides, AblateConfig))
    inherited = {"pretrain": asdict(main.pretrain), "finetune": asdict(main.finetune)}
    return config.load(str(path), overrides, AblateConfig, defaults=inherited)


def suite_recipes(cfg: AblateConfig, suite: str) -> list[str]:
    """The finetune recipes of a suite: its own (finetune-only suites), else `finetune.recipes`."""
    own = SUITES[suite].recipes
    return list(own) if own else list(cfg.finetune.recipes)


def validate(cfg: AblateConfig, suite: str) -> None:
    """Unknown variant keys or recipes are errors that list the known ones."""
    keys = [v.key for v in SUITES[suite].variants]
    for key in cfg.variants:
        if key not in keys:
            raise ConfigError(f"variants: no variant {key!r} in suite {suite!r} (variants: {keys})")
    for recipe in suite_recipes(cfg, suite):
        if recipe not in DATASETS:
            raise ConfigError(f"finetune.recipes: unknown {recipe!r} (recipes: {list(DATASETS)})")


@dataclass(frozen=True)
class Pretraining:
    """A pretraining of the suite: a variant's own, or the one every variant of a finetune-only suite shares."""

    name: str  # its MLflow run name: <variant>/pretrain, or pretrain when shared
    folder: Path  # holds pretrain/ (the run, its export) and zeroshot.json
    overrides: tuple[str, ...]  # after `pretrain.overrides`

    @property
    def export(self) -> Path:
        return self.folder / "pretrain" / "export"


@dataclass(frozen=True)
class Plan:
    """One invocation: the config, the suite, where the data are and where everything goes."""

    cfg: AblateConfig
    suite: str
    work: Path  # <workdir>, absolute
    shards: Path  # holds howto100m/ and one folder per finetune recipe

    @property
    def spec(self) -> Suite:
        return SUITES[self.suite]

    @property
    def variants(self) -> list[Variant]:
        return [v for v in self.spec.variants if not self.cfg.variants or v.key in self.cfg.variants]

    @property
    def recipes(self) -> list[str]:
        return suite_recipes(self.cfg, self.suite)

    @property
    def suite_dir(self) -> Path:
        return self.work / self.suite

    @property
    def table_path(self) -> Path:
        return self.work / f"ablation_{self.suite}.md"

    @property
    def uri(self) -> str:
        return self.cfg.tracking_uri or f"sqlite:///{self.work / 'mlflow.db'}"

    @property
    def shared(self) -> Pretraining:
        """The pretraining every variant of a finetune-only suite starts from: `pretrain` as it is."""
        return Pretraining("pretrain", self.suite_dir, ())

    def pretraining(self, v: Variant) -> Pretraining:
        """The pretraining whose export the variant finetunes."""
        return self.shared if self.spec.finetune_only else Pretraining(f"{v.key}/pretrain", self.dir(v), v.overrides)

    def dir(self, v: Variant) -> Path:
        return self.suite_dir / v.key

    def tracking(self, name: str, parent: str | None) -> list[str]:
        """Overrides that put a training run in the ablation's store, nested under `parent`."""
        return [f"tracking.uri={self.uri}", f"tracking.experiment={self.cfg.experiment}",
                f"tracking.run_name={name}", "tracking.system_metrics=false",
                *([f"tracking.parent_run_id={parent}"] if parent else [])]  # fmt: skip

    def held_out(self) -> tuple[list[str], str]:
        """(training shards, the held-out shards' pattern), split as the main job splits them."""
        return stages.held_out_split(self.shards / "howto100m", self.cfg.pretrain.held_out_shards)


def make_plan(cfg: AblateConfig, suite: str) -> Plan:
    shards = Path(cfg.shards) if cfg.shards else Path(main_config(cfg).workdir) / "shards"
    return Plan(cfg, suite, Path(cfg.workdir).resolve(), shards.resolve())


def make_shards(plan: Plan) -> None:
    """The main job's data stages that the ablation needs, each skipped when the main job (or an
    earlier ablation) finished it: the corpus, HowTo100M and the suite's finetune recipes' sets."""
    if plan.cfg.shards:  # given explicitly: used as it is
        return
    main = main_config(plan.cfg)
    raw, shards, settings = plan.shards.parent / "raw", plan.shards, stages.stage_settings(main)
    todo: list[tuple[str, str, Path, Callable[[], None]]] = [
        ("corpus", "synthetic corpus", raw, partial(stages.make_corpus, main, raw)),
        ("howto100m", "HowTo100M -> shards", shards / "howto100m",
         partial(stages.shard_howto100m, main, raw, shards / "howto100m")),
        *[("sets", f"{r} -> shards", shards / r, partial(stages.shard_finetune_set, main, r, raw / r, shards / r))
          for r in plan.recipes],
    ]  # fmt: skip
    for i, (key, name, out, fn) in enumerate(todo, 1):
        stages.run_stage(i, len(todo), name, out, fn, settings[key])


def pretrain_run(plan: Plan, pre: Pretraining, parent: str | None) -> pipeline.Run:
    """The main job's pretraining with the pretraining's own overrides last (they win): a variant's
    objectives, none for the shared pretraining of a finetune-only suite."""
    p, folder = plan.cfg.pretrain, plan.shards / "howto100m"
    train, held_out = plan.held_out()
    overrides = [*p.overrides, *pre.overrides, *frame_dim(folder), f"run.max_steps={p.steps}", f"run.seed={p.seed}",
                 f"data.train=[{','.join(train)}]", f"data.toi_df={folder / 'toi_df.json'}",
                 f"eval.held_out={held_out}", *plan.tracking(pre.name, parent)]  # fmt: skip
    return pipeline.Run(pre.name, "pretrain/train.py", p.config, pre.folder / "pretrain", overrides, p.ranks, p.threads)


def frame_dim(split_dir: Path) -> list[str]:
    """model.frame_dim from a converted split's manifest (a drawn world has its own); none before the data exist."""
    return [f"model.frame_dim={stages.feature_dim(split_dir)}"] if (split_dir / "manifest.json").exists() else []


def finetune_dir(plan: Plan, v: Variant, recipe: str, seed: int) -> Path:
    return plan.dir(v) / "finetune" / f"{recipe}-seed{seed}"


def finetune_runs(plan: Plan, v: Variant, parent: str | None) -> list[pipeline.Run]:
    """Every recipe x seed, initialised from the export of the variant's pretraining, the variant's
    finetune overrides after the config's (they win)."""
    f, export = plan.cfg.finetune, plan.pretraining(v).export
    runs = []
    for recipe in plan.recipes:
        for seed in f.seeds:
            name = f"{v.key}/{recipe}-seed{seed}"
            given = [*f.overrides, *f.recipe_overrides.get(recipe, []), *v.finetune_for(recipe)]
            overrides = [*given, *frame_dim(plan.shards / recipe / stages.train_split(recipe, given)),
                         f"data.root={plan.shards / recipe}", f"run.max_steps={f.steps}", f"run.seed={seed}",
                         f"data.seed={seed}", f"data.toi_df={plan.shards / 'howto100m' / 'toi_df.json'}",
                         f"init.checkpoint={export}", *plan.tracking(name, parent)]  # fmt: skip
            runs.append(pipeline.Run(name, DATASETS[recipe].script, DATASETS[recipe].config,
                                     finetune_dir(plan, v, recipe, seed), overrides))  # fmt: skip
    return runs


def zero_shot(plan: Plan, pre: Pretraining) -> dict[str, float]:
    """Zero-shot retrieval of a pretraining's export on the held-out shards, kept in zeroshot.json."""
    path = pre.folder / "zeroshot.json"
    if not path.exists():
        if not (pre.export / "model.safetensors").exists():
            raise RuntimeError(f"{pre.name}: no pretraining export at {pre.export}")
        result = zeroshot.run(str(pre.export), str(pre.export / "config.yaml"), [plan.held_out()[1]],
                              predictions=str(pre.folder / "zeroshot.jsonl"))  # fmt: skip
        path.write_text(json.dumps(result, indent=1))
    return pipeline.read_json(path)


def recipe_columns(plan: Plan, recipe: str) -> list[tuple[str, tuple[str, ...]]]:
    """(column header, path in metrics.json) of a recipe's columns: the suite's choice, else the papers'."""
    dataset = DATASETS[recipe]
    wanted = plan.spec.columns.get(recipe, [m.label for m in dataset.paper_metrics])
    return [(f"{dataset.title} {m.label}", m.path) for m in dataset.metrics if m.label in wanted]


def columns(plan: Plan) -> list[str]:
    """The table's columns: a finetune-only suite's rows share one pretraining, so no zero-shot column."""
    finetuned = [header for r in plan.recipes for header, _ in recipe_columns(plan, r)]
    return finetuned if plan.spec.finetune_only else [ZERO_SHOT, *finetuned]


def variant_results(plan: Plan, v: Variant) -> dict[str, tuple[float, float]]:
    """Column -> (mean, sample std over seeds) from the variant's finished run directories."""
    out: dict[str, tuple[float, float]] = {}
    if not plan.spec.finetune_only:  # the variant's own pretraining
        out[ZERO_SHOT] = (zero_shot(plan, plan.pretraining(v))[ZERO_SHOT_KEY], 0.0)
    for recipe in plan.recipes:
        runs = []
        for seed in plan.cfg.finetune.seeds:
            path = finetune_dir(plan, v, recipe, seed) / "results.json"
            if not path.exists():
                raise RuntimeError(f"{v.key}: finetuning run not finished, no {path}")
            runs.append(pipeline.read_json(path)["metrics"])
        for header, metric_path in recipe_columns(plan, recipe):
            out[header] = report.mean_std([report.metric(r, metric_path) for r in runs])
    return out


def zero_shot_differences(plan: Plan, variants: list[Variant]) -> str:
    """Each row's zero-shot R@10 minus the first row's, with a 95% CI paired over the held-out clips (from
    the rows' zeroshot.jsonl); empty when a row has none."""
    files = [plan.pretraining(v).folder / "zeroshot.jsonl" for v in variants]
    if len(variants) < 2 or not all(f.exists() for f in files):
        return ""
    hits = [np.asarray([[100.0 * (r["rank_taco"] <= 10) for r in pipeline.read_jsonl(f)]]) for f in files]
    lines = []
    for v, h in zip(variants[1:], hits[1:]):
        draws = report.bootstrap([h, hits[0]])
        lo, hi = report.interval(draws[:, 0] - draws[:, 1])
        lines.append(f"- {v.label}: {h.mean() - hits[0].mean():+.1f} [{lo:+.1f}, {hi:+.1f}]")
    return (
        f'\nZero-shot R@10 against "{variants[0].label}", with a 95% CI paired over the {hits[0].shape[1]} '
        "held-out clips (one pretraining per row: the interval covers the choice of clips, not the "
        "pretraining's seed):\n\n" + "\n".join(lines) + "\n"
    )


def markdown(plan: Plan, results: dict[Variant, dict[str, tuple[float, float]]]) -> str:
    """The table: one row per variant, mean ± std over seeds where there are several."""
    seeds, p, f = len(plan.cfg.finetune.seeds), plan.cfg.pretrain, plan.cfg.finetune
    cell = lambda col, m, s: f"{m:.2f} ± {s:.2f}" if seeds > 1 and col != ZERO_SHOT else f"{m:.2f}"
    rows = [["variant", *columns(plan)]]
    rows += [[v.label, *(cell(c, *res[c]) for c in columns(plan))] for v, res in results.items()]
    std = " (mean ± sample std)" if seeds > 1 else ""
    if not plan.spec.finetune_only:
        return (f"# Ablation: {plan.spec.title}\n\nEach variant pretrained {p.steps} steps ({p.config}) on "
                f"{plan.shards / 'howto100m'}, then finetuned {f.steps} steps from its export, seeds "
                f"{list(f.seeds)}{std}. Zero-shot: text-to-video R@10 (TACo's L1+L2 score) on the "
                f"{p.held_out_shards} held-out shards. Numbers as the runs gave them, nothing tuned.\n\n"
                f"{report.table(rows)}\n{zero_shot_differences(plan, list(results))}")  # fmt: skip
    zs = zero_shot(plan, plan.shared)[ZERO_SHOT_KEY]
    overrides = "\n".join(f"- {v.label}: `{' '.join(v.finetune)}`" for v in results)
    return (f"# Ablation: {plan.spec.title}\n\nEvery row shares one pretraining, {p.steps} steps ({p.config}) on "
            f"{plan.shards / 'howto100m'} ({plan.shared.folder / 'pretrain'}; zero-shot text-to-video R@10 "
            f"{zs:.2f} on the {p.held_out_shards} held-out shards); each row finetuned {f.steps} steps from its "
            f"export with the row's finetune overrides, seeds {list(f.seeds)}{std}. Numbers as the runs gave "
            f"them, nothing tuned.\n\n{report.table(rows)}\n\nEach row's finetune overrides (after "
            f"`finetune.overrides` and `finetune.recipe_overrides`):\n\n{overrides}\n")  # fmt: skip


def tracker(plan: Plan, name: str, run_dir: Path, parent: str | None = None) -> Tracker:
    tcfg = TrackingConfig(uri=plan.uri, experiment=plan.cfg.experiment, run_name=name, system_metrics=False,
                          parent_run_id=parent)  # fmt: skip
    return Tracker(tcfg, str(run_dir), 0)


def create_run(plan: Plan, name: str, run_dir: Path, params: dict[str, Any], tags: dict[str, str],
               parent: str | None) -> str:  # fmt: skip
    """A new MLflow run with its params and tags, left RUNNING: runs nest under it before it has results."""
    t = tracker(plan, name, run_dir, parent)
    run_id = t.start(params, OmegaConf.to_yaml(params))
    t.set_tags(tags)
    t.end("RUNNING")
    assert run_id is not None
    return run_id


def variant_params(plan: Plan, v: Variant) -> dict[str, Any]:
    p, f = plan.cfg.pretrain, plan.cfg.finetune
    own = {"overrides": " ".join(v.overrides)} if v.overrides else {}  # the pretraining's
    own |= {"finetune_overrides": " ".join(v.finetune)} if v.finetune else {}
    return {"suite": plan.suite, "variant": v.label, **own, "pretrain_steps": p.steps, "pretrain_config": p.config,
            "pretraining": "shared" if plan.spec.finetune_only else "own", "finetune_steps": f.steps,
            "recipes": ",".join(plan.recipes), "seeds": ",".join(map(str, f.seeds))}  # fmt: skip


def run_ids(plan: Plan) -> dict[str, str]:
    """{suite: parent run id, variant key: its run id}: read from mlflow_runs.json, the missing created."""
    path = plan.suite_dir / IDS
    ids: dict[str, str] = pipeline.read_json(path) if path.exists() else {}
    if plan.suite not in ids:
        params = OmegaConf.to_container(OmegaConf.structured(plan.cfg))
        ids[plan.suite] = create_run(plan, f"ablation {plan.suite}", plan.suite_dir, {"suite": plan.suite, **params},
                                     {"ablation.suite": plan.suite}, None)  # fmt: skip
    for v in plan.variants:
        if v.key not in ids:
            tags = {"ablation.suite": plan.suite, "ablation.variant": v.label, "ablation.key": v.key}
            ids[v.key] = create_run(plan, v.label, plan.dir(v), variant_params(plan, v), tags, ids[plan.suite])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ids, indent=1))
    return ids


def finish_runs(plan: Plan, ids: dict[str, str], status: str,
                results: dict[Variant, dict[str, tuple[float, float]]] | None = None) -> None:  # fmt: skip
    """Close the variant runs (with their row as metrics) and the parent run (with the table, and
    the shared pretraining's zero-shot R@10 for a finetune-only suite)."""
    for v in plan.variants:
        t = tracker(plan, v.label, plan.dir(v))
        t.start({}, "", ids[v.key])
        for col, (mean, std) in (results or {}).get(v, {}).items():
            t.log_metrics({col: mean, f"{col} std": std}, step=0)
        t.end(status)
    t = tracker(plan, f"ablation {plan.suite}", plan.suite_dir)
    t.start({}, "", ids[plan.suite])
    if results is not None:
        if plan.spec.finetune_only:
            t.log_metrics({ZERO_SHOT: zero_shot(plan, plan.shared)[ZERO_SHOT_KEY]}, step=0)
        t.log_artifact(str(plan.table_path))
    t.end(status)


def collect(plan: Plan, ids: dict[str, str]) -> str:
    """The table from the finished run directories, written and logged; the runs closed FINISHED."""
    results = {v: variant_results(plan, v) for v in plan.variants}
    text = markdown(plan, results)
    plan.table_path.write_text(text)
    finish_runs(plan, ids, "FINISHED", results)
    return text


def say_zero_shot(plan: Plan, pre: Pretraining, label: str) -> None:
    pipeline.say(f"  [{label}] zero-shot R@10 {zero_shot(plan, pre)[ZERO_SHOT_KEY]:.1f}")


def run_local(plan: Plan, ids: dict[str, str]) -> None:
    """Pretraining suites: the variants in turn, each its pretraining, its finetunes (`finetune.parallel`
    at a time) and zero-shot. Finetune-only suites: the shared pretraining and its zero-shot, then every
    variant's finetunes, `finetune.parallel` at a time."""
    n = len(plan.variants)
    if plan.spec.finetune_only:
        pipeline.say(f"shared pretraining: {plan.shared.folder / 'pretrain'}")
        pretrain_run(plan, plan.shared, ids[plan.suite]).execute()
        say_zero_shot(plan, plan.shared, plan.shared.name)
        for i, v in enumerate(plan.variants, 1):
            pipeline.say(f"[{i}/{n}] {v.label}: {' '.join(v.finetune)}")
        runs = [run for v in plan.variants for run in finetune_runs(plan, v, ids[v.key])]
        pipeline.say(f"{len(runs)} finetunes of its export, {plan.cfg.finetune.parallel} at a time")
        pipeline.run_all(runs, plan.cfg.finetune.parallel)
        return
    for i, v in enumerate(plan.variants, 1):
        pipeline.say(f"[{i}/{n}] {v.label}: {' '.join(v.overrides)}")
        pretrain_run(plan, plan.pretraining(v), ids[v.key]).execute()
        pipeline.run_all(finetune_runs(plan, v, ids[v.key]), plan.cfg.finetune.parallel)
        say_zero_shot(plan, plan.pretraining(v), v.key)


def job_options(plan: Plan, name: str, extra: list[str], after: list[str]) -> list[str]:
    """Name, dependency and the config's options."""
    return [f"--job-name=abl-{plan.suite}-{name}", *slurm.after_ok(after), *plan.cfg.slurm.sbatch, *extra]


def submit_run(plan: Plan, run: pipeline.Run, script: str, args: list[str], extra: list[str], after: list[str]) -> str:
    """sbatch the run's launch script with the run's config and overrides; its job id."""
    options = job_options(plan, run.name.replace("/", "-"), extra, after)
    return slurm.sbatch(options, script, [*args, run.config, f"run.output_dir={run.run_dir}", *run.overrides])


def submit_pretraining(plan: Plan, pre: Pretraining, parent: str) -> list[str]:
    """The pretraining job, or none when its run finished: the job ids to wait for."""
    run = pretrain_run(plan, pre, parent)
    return [] if run.done else [submit_run(plan, run, "pretrain_howto100m.sh", [], plan.cfg.slurm.pretrain, [])]


def submit_finetunes(plan: Plan, v: Variant, parent: str, after: list[str]) -> list[str]:
    """The variant's unfinished finetunes, each after `after` (afterok); their job ids."""
    return [submit_run(plan, run, "finetune.sh", [Path(run.script).stem], plan.cfg.slurm.finetune, after)
            for run in finetune_runs(plan, v, parent) if not run.done]  # fmt: skip


def submit(plan: Plan, ids: dict[str, str], collect_args: list[str]) -> None:
    """The job chains: per variant a pretraining job and its finetunes after it, or for a finetune-only
    suite one shared pretraining job and every variant's finetunes after it; then the collect job
    after all of them. Finished runs are not submitted again."""
    shared = plan.spec.finetune_only
    shared_job = submit_pretraining(plan, plan.shared, ids[plan.suite]) if shared else []
    if shared:
        print(f"shared pretraining: job {' '.join(shared_job) or '(done)'}")
    jobs = list(shared_job)
    for v in plan.variants:
        pre = shared_job if shared else submit_pretraining(plan, plan.pretraining(v), ids[v.key])
        finetunes = submit_finetunes(plan, v, ids[v.key], pre)
        jobs += finetunes if shared else pre + finetunes
        own = "" if shared else f"pretrain job {' '.join(pre) or '(done)'}; "
        print(f"{v.label}: {own}finetune jobs {' '.join(finetunes) or '(done)'}")
    job = slurm.sbatch(job_options(plan, "collect", plan.cfg.slurm.collect, jobs), "ablate_collect.sh", collect_args)
    print(f"collect job {job} (after {' '.join(jobs) or 'nothing'}): table -> {plan.table_path}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m launch.ablate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--suite", required=True, choices=sorted(SUITES))
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--slurm", action="store_true", help="submit the training job chains and a collect job")
    mode.add_argument("--collect", action="store_true", help="only build the table and MLflow runs from the run dirs")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        validate(cfg, args.suite)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    plan, t0 = make_plan(cfg, args.suite), time.time()
    try:
        if not args.collect:
            make_shards(plan)
    except (DataPrepError, stages.StageChanged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ids = run_ids(plan)
    try:
        if args.slurm:
            submit(plan, ids, ["--suite", args.suite, "--config", str(args.config.resolve()), "--collect",
                               *args.overrides])  # fmt: skip
            return 0
        if not args.collect:
            run_local(plan, ids)
        text = collect(plan, ids)
    except RuntimeError as e:
        if not args.slurm:
            finish_runs(plan, ids, "FAILED")
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"\n{text}\nablation {args.suite} done in {time.time() - t0:.0f}s; table {plan.table_path}")
    print(f"MLflow: mlflow ui --backend-store-uri {plan.uri}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
