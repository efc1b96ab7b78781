"""README command 1: the main job on a fresh CPU machine, stage by stage.

    bash scripts/main.sh [key=value ...]
    python -m launch.main_job [--config configs/main_job.yaml] [key=value ...]

1. a synthetic corpus in the real public formats        -> <workdir>/raw
2. its HowTo100M part -> clip shards (finetune videos excluded) -> <workdir>/shards/howto100m
3. the five finetune sets -> per-split shards + gt/      -> <workdir>/shards/<dataset>

Each stage is skipped when its output is complete, and resumed when it was interrupted;
`start_over=true` deletes the workdir first. Pretraining, finetuning, evaluation and MLflow
join as stages when those parts land.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from data_prep import activitynet, didemo, how2r, howto100m, msrvtt, synthetic, tvr
from data_prep.errors import DataPrepError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "main_job.yaml"
DONE = ".stage_done"


@dataclass
class MainJobConfig:
    workdir: str = "runs/main"
    videos: int = 48
    seed: int = 0
    clip_seconds: float = 60.0
    shard_size: int = 16
    finetune_shard_size: int = 8
    workers: int = 2
    tagger: str = "auto"
    start_over: bool = False


def load_config(path: Path, overrides: list[str]) -> MainJobConfig:
    """Defaults <- YAML <- key=value overrides; an unknown key or a wrong type is an error."""
    try:
        cfg = OmegaConf.merge(
            OmegaConf.structured(MainJobConfig), OmegaConf.load(path), OmegaConf.from_dotlist(overrides)
        )
    except OmegaConfBaseException as e:
        raise SystemExit(f"config error ({path}): {e}") from None
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def run_stage(n: int, total: int, name: str, out: Path, fn: Callable[[], None]) -> None:
    """Run a stage unless its output is marked complete; mark it when it finishes."""
    marker = out / DONE
    if marker.exists():
        print(f"[{n}/{total}] {name}: done already ({out})", flush=True)
        return
    print(f"[{n}/{total}] {name} -> {out}", flush=True)
    t0 = time.time()
    fn()
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"seconds": round(time.time() - t0, 1)}))
    print(f"[{n}/{total}] {name}: {time.time() - t0:.1f}s", flush=True)


def how2r_youtube_ids(how2r_dir: Path) -> list[str]:
    """YouTube ids of How2R's clips: left out of pretraining (How2R comes from HowTo100M)."""
    ids = set()
    for path in sorted(how2r_dir.glob("how2r_*.csv")):
        with open(path, newline="", encoding="utf-8") as f:
            ids.update(row[0] for row in csv.reader(f) if row)
    return sorted(ids)


def make_corpus(cfg: MainJobConfig, raw: Path) -> None:
    if raw.exists():  # interrupted before its marker
        shutil.rmtree(raw)
    synthetic.generate(raw, videos=cfg.videos, seed=cfg.seed)


def shard_howto100m(cfg: MainJobConfig, raw: Path, out: Path) -> None:
    exclude = out.parent / "howto100m_exclude.txt"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    exclude.write_text("".join(f"{v}\n" for v in how2r_youtube_ids(raw / "how2r")))
    src = raw / "howto100m"
    howto100m.main([
        "--captions", str(src / "raw_caption.json"), "--csv", str(src / "HowTo100M_v1.csv"),
        "--features", str(src / "features" / "hero"), "--out", str(out),
        "--clip-seconds", str(cfg.clip_seconds), "--exclude", str(exclude),
        "--shard-size", str(cfg.shard_size), "--workers", str(cfg.workers), "--tagger", cfg.tagger,
        *(["--resume"] if out.exists() else []),
    ])


def finetune_argv(name: str, src: Path) -> list[str]:
    """Each finetune converter's inputs in the synthetic corpus."""
    args = {
        "tvr": ["--annotations", str(src), "--subtitles", str(src / "tvqa_preprocessed_subtitles.jsonl")],
        "didemo": ["--annotations", str(src)],
        "how2r": ["--train", str(src / "how2r_train.csv"), "--val", str(src / "how2r_val.csv"),
                  "--test", str(src / "how2r_test.csv"), "--captions", str(src / "raw_caption.json")],
        "msrvtt": ["--annotations", str(src)],
        "activitynet": ["--annotations", str(src)],
    }
    return [*args[name], "--features", str(src / "features")]


CONVERTERS = {"tvr": tvr, "didemo": didemo, "how2r": how2r, "msrvtt": msrvtt, "activitynet": activitynet}


def shard_finetune_set(cfg: MainJobConfig, name: str, src: Path, out: Path) -> None:
    if out.exists():  # interrupted before its marker: small enough to redo
        shutil.rmtree(out)
    CONVERTERS[name].main([
        *finetune_argv(name, src), "--out", str(out), "--shard-size", str(cfg.finetune_shard_size),
        "--workers", "1", "--tagger", cfg.tagger,
    ])


def summary(shards: Path) -> str:
    """A table of what every sharded dataset holds, from the manifests."""
    rows = [("dataset/split", "videos", "samples", "shards", "rejected", "MB")]
    for manifest in sorted(shards.glob("**/manifest.json")):
        c = json.loads(manifest.read_text())["counts"]
        name = str(manifest.parent.relative_to(shards))
        rows.append((name, c["videos"], c["samples"], c["shards"], c["videos_rejected"], f"{c['bytes'] / 1e6:.1f}"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.main_job", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    work = Path(cfg.workdir).resolve()
    if cfg.start_over and work.exists():
        shutil.rmtree(work)
    raw, shards = work / "raw", work / "shards"
    stages: list[tuple[str, Path, Callable[[], None]]] = [
        ("synthetic corpus", raw, lambda: make_corpus(cfg, raw)),
        ("HowTo100M -> shards", shards / "howto100m", lambda: shard_howto100m(cfg, raw, shards / "howto100m")),
    ]
    for name in CONVERTERS:
        out = shards / name
        stages.append((f"{name} -> shards", out, lambda n=name, o=out: shard_finetune_set(cfg, n, raw / n, o)))
    t0 = time.time()
    try:
        for i, (name, out, fn) in enumerate(stages, 1):
            run_stage(i, len(stages), name, out, fn)
    except DataPrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\nmain job done in {time.time() - t0:.0f}s; outputs under {work}\n")
    print(summary(shards))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
