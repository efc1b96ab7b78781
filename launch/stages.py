"""The main job's stages (launch/main_job.py drives them; launch/ablate.py reuses them): its config,
the stage markers, the data stages (synthetic corpus or a public-format folder -> shards), the
training runs it starts (pretraining, finetuning per dataset x init x seed), zero-shot retrieval
and the report.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from data_prep import extract, howto100m, layout, synthetic
from data_prep.errors import DataPrepError
from finetune.datasets import DATASETS
from launch import pipeline, report
from pretrain import config
from pretrain.config import ConfigError
from pretrain.loader import read_manifest

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "main_job.yaml"
DONE = ".stage_done"
STAGES = ("data", "pretrain", "zeroshot", "finetune", "report")


@dataclass
class PretrainStage:
    steps: int = 60
    ranks: int = 2
    threads: int = 1  # per rank
    held_out_shards: int = 2  # the last HowTo100M shards: zero-shot retrieval, never trained on
    seed: int = 0
    config: str = "configs/pretrain/tiny_cpu.yaml"
    overrides: list[str] = field(default_factory=list)  # key=value for pretrain/train.py


@dataclass
class FinetuneStage:
    recipes: list[str] = field(default_factory=lambda: ["tvr", "msrvtt"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 40
    parallel: int = 2  # runs at once, one thread each
    overrides: list[str] = field(default_factory=list)  # for every recipe
    recipe_overrides: dict[str, list[str]] = field(default_factory=dict)  # per recipe, after `overrides`


@dataclass
class ExtractStage:
    """From raw video (docs/feature_extraction.md): the synthetic corpus also writes its HowTo100M part
    as video files, data_prep.extract turns them into 2d/ + 3d/ features, and those are what gets
    sharded and pretrained on (instead of the corpus's precomputed features). Off by default: the
    3D model's CPU cost does not fit the main job's time budget."""

    enabled: bool = False
    backbone: str = "resnet152,r2plus1d_18"  # one 2d and one 3d (the howto100m layout)
    weights: str | None = None  # name=PATH,name=PATH, local files only (data_prep.extract --weights)
    random_weights: bool = False  # tests only: seeded random backbones, no weights file
    tiny: bool = False  # tests only (with random_weights): small widths
    batch_size: int = 32
    device: str = "auto"  # auto (cuda when present), cpu or cuda
    resize: str = "torch"  # torch: the trained resize; ffmpeg: swscale's, faster (data_prep.extract --resize)


@dataclass
class MainJobConfig:
    workdir: str = "runs/main"
    videos: int = 48
    seed: int = 0
    world: int = 0  # the corpus's world: 0 the default, n >= 1 data_prep.synthetic.draw_world(n)
    data: str | None = None  # a folder of public-format files (data_prep/layout.py) instead of the synthetic corpus
    eval_queries: int = 0  # at least this many queries in the scored eval splits (TVR val, MSR-VTT 1k-A)
    clip_seconds: float = 60.0
    shard_size: int = 16
    finetune_shard_size: int = 8
    workers: int = 2
    tagger: str = "auto"
    start_over: bool = False
    until: str = "report"  # the last stage to run: data | pretrain | zeroshot | finetune | report
    pretrain: PretrainStage = field(default_factory=PretrainStage)
    finetune: FinetuneStage = field(default_factory=FinetuneStage)
    extract: ExtractStage = field(default_factory=ExtractStage)


def load_config(path: Path, overrides: list[str]) -> MainJobConfig:
    """Defaults <- YAML <- key=value overrides (pretrain.config.load), then the checks; a ConfigError names the key."""
    cfg = config.load(str(path), overrides, MainJobConfig)
    if cfg.until not in STAGES:
        raise ConfigError(f"{path}: until={cfg.until!r} is not one of {STAGES}")
    if cfg.world < 0:
        raise ConfigError(f"{path}: world={cfg.world} (0 the default world, n >= 1 a drawn one)")
    unknown = sorted(set(cfg.finetune.recipes) - set(DATASETS))
    if unknown:
        raise ConfigError(f"{path}: finetune.recipes has unknown recipes {unknown} (datasets: {', '.join(DATASETS)})")
    if cfg.extract.tiny and not cfg.extract.random_weights:
        raise ConfigError(f"{path}: extract.tiny=true is for tests and needs extract.random_weights=true")
    if cfg.extract.resize not in extract.RESIZES:
        raise ConfigError(f"{path}: extract.resize={cfg.extract.resize!r} is not one of {extract.RESIZES}")
    return cfg


class StageChanged(Exception):
    """A stage's output was made with other settings than the config now asks for."""


def stage_settings(cfg: MainJobConfig) -> dict[str, dict[str, Any]]:
    """Per stage, the config values its output depends on (its own and its inputs'), kept in its marker.
    Speed-only keys (workers, threads, parallel, until, start_over) are left out."""
    corpus = {"videos": cfg.videos, "seed": cfg.seed, "eval_queries": cfg.eval_queries}
    if cfg.data:  # the files of a data folder, not a generated corpus
        corpus = {"data": str(Path(cfg.data).resolve())}
    if cfg.world:  # left out for world 0, so the markers written before worlds existed still match
        corpus["world"] = cfg.world
    if cfg.extract.enabled:  # left out when off, so the markers written before it existed still match
        e = cfg.extract
        corpus["with_video"] = True
        corpus["extract"] = {"backbone": e.backbone, "weights": e.weights, "random_weights": e.random_weights,
                             "tiny": e.tiny}  # fmt: skip
        if e.resize != "torch":  # left out for the default, so the markers written before it existed still match
            corpus["extract"]["resize"] = e.resize
        corpus["extract"]["finetune_sets"] = True  # the corpus writes the finetune sets' videos too
    clips = {**corpus, "clip_seconds": cfg.clip_seconds, "shard_size": cfg.shard_size, "tagger": cfg.tagger}
    sets = {**corpus, "finetune_shard_size": cfg.finetune_shard_size, "tagger": cfg.tagger}
    if cfg.extract.enabled:  # the finetuned sets' features are extracted from their videos
        sets["extracted_sets"] = sorted(cfg.finetune.recipes)
    pre = {**clips, "pretrain": {k: v for k, v in asdict(cfg.pretrain).items() if k != "threads"}}
    zs = {**pre, "random_init_seeds": list(cfg.finetune.seeds)}
    ft = {**pre, **sets, "finetune": {k: v for k, v in asdict(cfg.finetune).items() if k != "parallel"}}
    settings = {"corpus": corpus, "extract": corpus, "howto100m": clips, "sets": sets, "pretrain": pre,
                "zeroshot": zs, "finetune": ft, "report": {**zs, **ft}}  # fmt: skip
    return json.loads(json.dumps(settings))  # as a marker holds them


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def run_stage(n: int, total: int, name: str, out: Path, fn: Callable[[], None],
              settings: dict[str, Any] | None = None) -> None:  # fmt: skip
    """Run a stage unless its output is marked complete; mark it, with its settings, when it finishes.
    A complete output made with other settings is an error (StageChanged) naming what changed."""
    marker = out / DONE
    if marker.exists():
        made = json.loads(marker.read_text()).get("settings")
        if settings is not None and made is not None and made != settings:
            old, new = _flat(made), _flat(settings)
            changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                       if old.get(k) != new.get(k)]  # fmt: skip
            raise StageChanged(f"{name} in {out} was made with other settings ({'; '.join(changed)}); "
                               "start_over=true redoes every stage, or give another workdir")  # fmt: skip
        print(f"[{n}/{total}] {name}: done already ({out})", flush=True)
        return
    print(f"[{n}/{total}] {name} -> {out}", flush=True)
    t0 = time.time()
    fn()
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"seconds": round(time.time() - t0, 1), "settings": settings}))
    print(f"[{n}/{total}] {name}: {time.time() - t0:.1f}s", flush=True)


def how2r_youtube_ids(how2r_dir: Path) -> list[str]:
    """YouTube ids of How2R's (or How2QA's) clips, in the CSVs' first column: left out of
    pretraining (both come from HowTo100M)."""
    ids = set()
    for path in sorted(how2r_dir.glob("how2*_*.csv")):
        with open(path, newline="", encoding="utf-8") as f:
            ids.update(row[0] for row in csv.reader(f) if row)
    return sorted(ids)


def make_corpus(cfg: MainJobConfig, raw: Path) -> None:
    if raw.exists():  # interrupted before its marker
        shutil.rmtree(raw)
    synthetic.generate(raw, videos=cfg.videos, seed=cfg.seed, eval_queries=cfg.eval_queries, world=cfg.world,
                       with_video=cfg.extract.enabled)  # fmt: skip


def extract_videos(cfg: MainJobConfig, videos: Path, out: Path, layout: str = "howto100m") -> dict[str, Any]:
    """Video files -> features (data_prep.extract): HowTo100M's in the howto100m layout (out/2d + out/3d, the
    folder shard_howto100m reads), a finetune set's in the hero layout (out/<id>.npz, both backbones at 1.5 s,
    concatenated: the same dim as the HowTo100M shards' 2d + 3d, which shard_finetune_set reads). Resumable:
    complete feature files are kept. Weights come from extract.weights; a missing file is the extractor's
    error naming the file it expects."""
    e = cfg.extract
    if not videos.is_dir():
        raise DataPrepError(f"extract.enabled=true: no video folder {videos} (the synthetic corpus writes it)")
    args = ["--videos", str(videos), "--out", str(out), "--layout", layout, "--backbone", e.backbone,
            "--batch-size", str(e.batch_size), "--device", e.device, "--resize", e.resize]  # fmt: skip
    if e.random_weights:
        args += ["--random-weights", *(["--tiny"] if e.tiny else [])]
    elif e.weights:
        args += ["--weights", e.weights]
    result = extract.main(args)
    print(f"extracted {len(result['done'])} videos, {len(result['skipped'])} complete already, "
          f"{len(result['rejected'])} rejected ({out / extract.STATE_DIR})", flush=True)  # fmt: skip
    if not result["done"] and not result["skipped"]:
        raise DataPrepError(f"extract: no video of {videos} gave features (reject log under {out})")
    return result


def shard_howto100m(cfg: MainJobConfig, raw: Path, out: Path, features: Path | None = None) -> None:
    """HowTo100M -> clip shards; `features`: a 2d/ + 3d/ folder (the extract stage's) instead of the folder's own."""
    exclude = out.parent / "howto100m_exclude.txt"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    ids = sorted({i for name, d in DATASETS.items() if d.howto100m_clips for i in how2r_youtube_ids(raw / name)})
    exclude.write_text("".join(f"{v}\n" for v in ids))
    inputs = layout.howto100m_inputs(raw / "howto100m")
    if features is not None:
        inputs = [*inputs[: inputs.index("--features")], "--features", str(features), "--feature-layout", "howto100m"]
    howto100m.main([
        *inputs, "--out", str(out),
        "--clip-seconds", str(cfg.clip_seconds), "--exclude", str(exclude),
        "--shard-size", str(cfg.shard_size), "--workers", str(cfg.workers), "--tagger", cfg.tagger,
        *(["--resume"] if out.exists() else []),
    ])  # fmt: skip


def shard_finetune_set(cfg: MainJobConfig, name: str, src: Path, out: Path, features: Path | None = None) -> None:
    """A finetune set -> per-split shards; `features`: a folder of hero .npz (the extract stage's) instead of the
    folder's own features."""
    if out.exists():  # interrupted before its marker: small enough to redo
        shutil.rmtree(out)
    dataset = DATASETS[name]
    inputs = dataset.inputs(src)
    if features is not None:
        at = inputs.index("--features")
        inputs = [*inputs[:at], *inputs[at + 4 :], "--features", str(features), "--feature-layout", "hero"]
    dataset.converter.main([
        *inputs, "--out", str(out), "--shard-size", str(cfg.finetune_shard_size),
        "--workers", "1", "--tagger", cfg.tagger,
    ])  # fmt: skip


def discover(root: Path) -> dict[str, list[str]]:
    """{dataset: its converter's input arguments} for every dataset folder under root: howto100m and the
    registry's (finetune/datasets.py)."""
    if not root.is_dir():
        raise DataPrepError(f"data={root}: not a folder")
    inputs = {"howto100m": layout.howto100m_inputs, **{name: d.inputs for name, d in DATASETS.items()}}
    found = {name: fn(root / name) for name, fn in inputs.items() if (root / name).is_dir()}
    if not found:
        raise DataPrepError(f"data={root}: no dataset folder ({', '.join(inputs)})")
    return found


def data_stages(cfg: MainJobConfig, work: Path) -> list[tuple[str, str, Path, Callable[[], None]]]:
    """(settings key, name, output, function) of the data stages: the synthetic corpus and all seven
    datasets, or (`data=DIR`) the datasets that folder holds; `finetune.recipes` keeps those it holds."""
    shards = work / "shards"
    if cfg.data:
        raw = Path(cfg.data).resolve()
        found = discover(raw)
        stages = []
        missing = [r for r in cfg.finetune.recipes if r not in found]
        if missing:
            print(f"data={raw}: no {', '.join(missing)} folder, not finetuned", flush=True)
            cfg.finetune.recipes = [r for r in cfg.finetune.recipes if r in found]
    else:
        raw, found = work / "raw", dict.fromkeys(["howto100m", *DATASETS])
        stages = [("corpus", "synthetic corpus", raw, lambda: make_corpus(cfg, raw))]
    features = work / "features" / "howto100m" if cfg.extract.enabled else None
    if "howto100m" in found and features is not None:
        stages.append(("extract", "HowTo100M videos -> features", features,
                       lambda: extract_videos(cfg, raw / "howto100m" / "videos", features)))  # fmt: skip
    if "howto100m" in found:
        stages.append(("howto100m", "HowTo100M -> shards", shards / "howto100m",
                       lambda: shard_howto100m(cfg, raw, shards / "howto100m", features)))  # fmt: skip
    elif cfg.until != "data":
        raise DataPrepError(f"data={raw}: no howto100m folder to pretrain on (until=data converts the rest)")
    for name in (n for n in DATASETS if n in found):
        out = shards / name
        # extract.enabled: a finetuned set's features come from its videos too, with the same backbones, so the
        # pretrained model and its finetuning see one feature space; the sets not finetuned keep their own.
        own = work / "features" / name if cfg.extract.enabled and name in cfg.finetune.recipes else None
        if own is not None:
            stages.append(("extract", f"{name} videos -> features", own,
                           lambda n=name, o=own: extract_videos(cfg, raw / n / "videos", o, "hero")))  # fmt: skip
        stages.append(("sets", f"{name} -> shards", out,
                       lambda n=name, o=out, f=own: shard_finetune_set(cfg, n, raw / n, o, f)))  # fmt: skip
    return stages


def summary(shards: Path) -> str:
    """A table of what every sharded dataset holds, from the manifests."""
    rows = [("dataset/split", "videos", "samples", "shards", "rejected", "MB")]
    for manifest in sorted(shards.glob("**/manifest.json")):
        c = read_manifest(str(manifest.parent))["counts"]
        name = str(manifest.parent.relative_to(shards))
        rows.append((name, c["videos"], c["samples"], c["shards"], c["videos_rejected"], f"{c['bytes'] / 1e6:.1f}"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in rows)


def tracking(work: Path, name: str, parent: str | None) -> list[str]:
    """Overrides that put a run in the main job's MLflow store, nested under its run."""
    return [f"tracking.uri=sqlite:///{work / 'mlflow.db'}", "tracking.experiment=main-job",
            f"tracking.run_name={name}", "tracking.system_metrics=false",
            *([f"tracking.parent_run_id={parent}"] if parent else [])]  # fmt: skip


def held_out_split(folder: Path, n: int) -> tuple[list[str], str]:
    """(training shard paths, a brace pattern of the last n shards) of a shard folder."""
    shards = sorted(folder.glob("shard-*.tar"))
    if not 0 < n < len(shards):
        raise ValueError(f"pretrain.held_out_shards={n}: {folder} has {len(shards)} shards (raise videos)")
    first, last = shards[-n].stem.split("-")[1], shards[-1].stem.split("-")[1]
    return [str(p) for p in shards[:-n]], str(folder / f"shard-{{{first}..{last}}}.tar")


def feature_dim(split_dir: Path) -> int:
    """The frame feature dim of a converted split (its manifest's feature_spec.dim): the model's frame_dim."""
    try:
        return int(read_manifest(str(split_dir))["feature_spec"]["dim"])
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}: run the data stages first") from None


def train_split(recipe: str, overrides: list[str]) -> str:
    """The split a finetune recipe trains on: its config's data.train_split, or the overrides' last."""
    recipe_cfg = OmegaConf.load(REPO / DATASETS[recipe].config)
    split = str(OmegaConf.select(recipe_cfg, "data.train_split", default="train"))
    for item in overrides:
        key, _, value = item.partition("=")
        split = value.strip() if key.strip() == "data.train_split" else split
    return split


def pretrain_run(cfg: MainJobConfig, work: Path, parent: str | None) -> pipeline.Run:
    folder = work / "shards" / "howto100m"
    train, held_out = held_out_split(folder, cfg.pretrain.held_out_shards)
    overrides = [*cfg.pretrain.overrides, f"model.frame_dim={feature_dim(folder)}",
                 f"run.max_steps={cfg.pretrain.steps}", f"run.seed={cfg.pretrain.seed}",
                 f"data.train=[{','.join(train)}]", f"data.toi_df={folder / 'toi_df.json'}",
                 f"eval.held_out={held_out}", *tracking(work, "pretrain", parent)]  # fmt: skip
    return pipeline.Run("pretrain", "pretrain/train.py", cfg.pretrain.config, work / "runs" / "pretrain", overrides,
                        cfg.pretrain.ranks, cfg.pretrain.threads)  # fmt: skip


INITS = ("pretrained", "scratch")


def check_frame_dims(cfg: MainJobConfig, work: Path) -> None:
    """Before pretraining, when the job goes on to finetune: each recipe's shards must have the HowTo100M
    shards' frame dim, which the pretrained export's model takes; a DataPrepError naming both otherwise
    (the finetune run would fail only after pretraining, at loading the export)."""
    if STAGES.index(cfg.until) < STAGES.index("finetune") or not cfg.finetune.recipes:
        return
    dim = feature_dim(work / "shards" / "howto100m")
    differ = []
    for recipe in cfg.finetune.recipes:
        split = train_split(recipe, [*cfg.finetune.overrides, *cfg.finetune.recipe_overrides.get(recipe, [])])
        if (d := feature_dim(work / "shards" / recipe / split)) != dim:
            differ.append(f"{recipe}/{split} has {d}-d")
    if differ:
        raise DataPrepError(
            f"the pretrained model takes {dim}-d frames (shards/howto100m) but {', '.join(differ)}: its export "
            "cannot be finetuned on them. Stop before finetuning (until=zeroshot) or finetune sets with the "
            "same features."
        )


def finetune_runs(cfg: MainJobConfig, work: Path, parent: str | None) -> list[pipeline.Run]:
    runs = []
    export = work / "runs" / "pretrain" / "export"
    toi_df = work / "shards" / "howto100m" / "toi_df.json"  # TACo's IDF weights from the pretraining corpus
    for recipe in cfg.finetune.recipes:
        given = [*cfg.finetune.overrides, *cfg.finetune.recipe_overrides.get(recipe, [])]
        frame_dim = feature_dim(work / "shards" / recipe / train_split(recipe, given))
        for init in INITS:
            for seed in cfg.finetune.seeds:
                name = f"{recipe}-{init}-seed{seed}"
                overrides = [*given, f"model.frame_dim={frame_dim}",
                             f"data.root={work / 'shards' / recipe}", f"run.max_steps={cfg.finetune.steps}",
                             f"run.seed={seed}", f"data.seed={seed}", f"data.toi_df={toi_df}",
                             *([f"init.checkpoint={export}"] if init == "pretrained" else []),
                             *tracking(work, name, parent)]  # fmt: skip
                runs.append(pipeline.Run(name, DATASETS[recipe].script, DATASETS[recipe].config,
                                         work / "runs" / "finetune" / name, overrides))  # fmt: skip
    return runs


def zero_shot_stage(cfg: MainJobConfig, work: Path, out: Path) -> None:
    """`python -m pretrain.zeroshot` (its `run`) on the held-out shards: the export, and random init per seed;
    each query's ranks go to <out>/<model>.jsonl (the report's confidence intervals)."""
    from pretrain import zeroshot

    run_dir = work / "runs" / "pretrain"
    _, held_out = held_out_split(work / "shards" / "howto100m", cfg.pretrain.held_out_shards)
    model_cfg = str(run_dir / "export" / "config.yaml")
    out.mkdir(parents=True, exist_ok=True)
    pretrained = zeroshot.run(str(run_dir / "export"), model_cfg, [held_out], predictions=str(out / "pretrained.jsonl"))
    randoms = [zeroshot.run(None, model_cfg, [held_out], seed=s, predictions=str(out / f"random-seed{s}.jsonl"))
               for s in cfg.finetune.seeds]  # fmt: skip
    random = {k: sum(r[k] for r in randoms) / len(randoms) for k in randoms[0]}
    clips = int(pretrained["clips"])
    result = {"clips": clips, "pretrained": pretrained, "random": random, "random_per_seed": randoms}
    (out / "zeroshot.json").write_text(json.dumps(result, indent=1))
    for key, score in (("t2v", "sentence cosine"), ("taco", "TACo L1+L2")):
        print(f"  zero-shot R@10 on {clips} held-out clips ({score}): "
              f"pretrained {pretrained[f'zeroshot_{key}_R@10']:.1f}, "
              f"random init {random[f'zeroshot_{key}_R@10']:.1f}", flush=True)  # fmt: skip


def collect_finetune(cfg: MainJobConfig, work: Path) -> dict[str, dict[str, list[dict]]]:
    """recipe -> init -> the final eval metrics of each seed's run, with its per-query values ("per_query")."""
    out: dict[str, dict[str, list[dict]]] = {}
    for run in finetune_runs(cfg, work, None):
        recipe, init = run.name.split("-")[:2]
        results = pipeline.read_json(run.run_dir / "results.json")
        path = results.get("files", {}).get("per_query")
        per_query = pipeline.read_json(Path(path)) if path and Path(path).exists() else None
        out.setdefault(recipe, {}).setdefault(init, []).append({**results["metrics"], "per_query": per_query})
    return out


def zero_shot_ranks(cfg: MainJobConfig, folder: Path) -> dict[str, list[list[dict]]] | None:
    """model -> per seed the zero-shot stage's per-query lines (pretrained: one), None when one is missing."""
    files = {"pretrained": [folder / "pretrained.jsonl"],
             "random": [folder / f"random-seed{s}.jsonl" for s in cfg.finetune.seeds]}  # fmt: skip
    if not all(p.exists() for paths in files.values() for p in paths):
        return None
    return {model: [pipeline.read_jsonl(p) for p in paths] for model, paths in files.items()}


def report_stage(cfg: MainJobConfig, work: Path, out: Path, tracker) -> None:
    zs = pipeline.read_json(work / "runs" / "zeroshot" / "zeroshot.json")
    zs["ranks"] = zero_shot_ranks(cfg, work / "runs" / "zeroshot")
    heat = sorted((work / "runs" / "finetune").glob("tvr-pretrained-seed*/eval/*/step_*/similarity.png"))
    header = (f"# Main job report\n\n{cfg.videos} synthetic HowTo100M videos (seed {cfg.seed}, world {cfg.world}); "
              f"pretraining {cfg.pretrain.steps} steps on {cfg.pretrain.ranks} ranks; finetuning "
              f"{cfg.finetune.steps} steps, seeds {list(cfg.finetune.seeds)}.")  # fmt: skip
    markdown, summary = report.write(out, zs, collect_finetune(cfg, work), pipeline.pretrain_losses(
        work / "runs" / "pretrain"), heat[0] if heat else None, header)  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    tracker.log_metrics(report.headline(summary), step=0)  # the parent run sorts and charts by its results
    tracker.log_artifact(str(out), "report")
    # The run's description (its Overview page renders it): the report's text and tables, which render there;
    # the figures only in report/report.html (a description cannot reach the run's artifacts).
    text = re.sub(r"\n\n!\[[^\]]*\]\([^)]*\)", "", markdown).replace("# Main job report", "# Main job report\n\n"
                  "Figures: the Artifacts tab, `report/report.html`.", 1)  # fmt: skip
    tracker.set_tags({"mlflow.note.content": text})
    print("\n" + markdown)


def main_run(cfg: MainJobConfig, work: Path):
    """The main job's MLflow run (continued on a re-run), the parent of every training run."""
    from pretrain.tracking import Tracker, TrackingConfig

    tcfg = TrackingConfig(uri=f"sqlite:///{work / 'mlflow.db'}", experiment="main-job", run_name="main job",
                          system_metrics=False)  # fmt: skip
    tracker = Tracker(tcfg, str(work), 0)
    id_file = work / "mlflow_run_id"
    saved = id_file.read_text().strip() if id_file.exists() else None
    id_file.write_text(tracker.start(OmegaConf.to_container(OmegaConf.structured(cfg)), OmegaConf.to_yaml(cfg), saved))
    return tracker
