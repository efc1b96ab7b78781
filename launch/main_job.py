"""README command 1: the main job on a fresh CPU machine, stage by stage.

    bash scripts/main.sh [key=value ...]
    python -m launch.main_job [--config configs/main_job.yaml] [key=value ...]

1. a synthetic corpus in the real public formats, of world `world` (0: the default world; n >= 1 a
   drawn one: other vocabulary, synonyms, rates, noise and feature dims)   -> <workdir>/raw
2. its HowTo100M part -> clip shards (finetune videos excluded) -> <workdir>/shards/howto100m
   (extract.enabled=true, off by default: the corpus also writes its videos and data_prep.extract makes
   the features sharded here                            -> <workdir>/features/howto100m)
3. the six finetune sets -> per-split shards + gt/       -> <workdir>/shards/<dataset>
   (extract.enabled=true: each finetune.recipes set's features extracted from its videos with the same
   backbones                                            -> <workdir>/features/<dataset>)
4. pretraining, all five objectives, DeepSpeed on `pretrain.ranks` CPU ranks, the last
   `pretrain.held_out_shards` HowTo100M shards held out   -> <workdir>/runs/pretrain
5. zero-shot text-to-video retrieval on the held-out clips: pretrained vs random init
                                                          -> <workdir>/runs/zeroshot.json
6. finetuning of each `finetune.recipes` (TVR, MSR-VTT) from the pretrained export and from
   scratch, once per seed, `finetune.parallel` runs at a time   -> <workdir>/runs/finetune/
7. the report: a results table (mean +- std over seeds), loss curves, plots
                                                          -> <workdir>/report/
Every run logs to one MLflow store, <workdir>/mlflow.db, nested under one "main job" run.

Training runs take model.frame_dim from the shards' manifests (a drawn world has its own feature dim).

Each stage is skipped when its output is complete, and resumed when it was interrupted (a
training run from its latest checkpoint); `start_over=true` deletes the workdir first. A stage's
marker keeps the settings it was made with: a re-run with other settings (say `pretrain.steps`)
stops with an error naming them instead of reusing stale outputs.

This file is the driver only: the stages, the config and the markers are launch/stages.py (which the
ablations reuse); nothing imports this module.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from data_prep.errors import DataPrepError
from launch import pipeline
from launch.stages import (
    DEFAULT_CONFIG,
    STAGES,
    StageChanged,
    check_frame_dims,
    data_stages,
    finetune_runs,
    load_config,
    main_run,
    pretrain_run,
    report_stage,
    run_stage,
    stage_settings,
    summary,
    zero_shot_stage,
)
from pretrain.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    """Run the stages up to `until`; 0 when done, 2 on a config, data or stale-stage error, 1 when a run failed."""
    p = argparse.ArgumentParser(
        prog="python -m launch.main_job", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    work = Path(cfg.workdir).resolve()
    if cfg.start_over and work.exists():
        shutil.rmtree(work)
    shards = work / "shards"
    settings = stage_settings(cfg)
    t0 = time.time()
    try:
        stages = data_stages(cfg, work)
        for i, (key, name, out, fn) in enumerate(stages, 1):
            run_stage(i, len(stages) + STAGES.index(cfg.until), name, out, fn, settings[key])
        check_frame_dims(cfg, work)
    except (DataPrepError, StageChanged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(shards), flush=True)
    if cfg.until == "data":
        return 0
    runs = work / "runs"
    tracker = main_run(cfg, work)
    jobs = finetune_runs(cfg, work, tracker.run_id)
    later = [
        ("pretrain", f"pretraining ({cfg.pretrain.ranks} ranks, {cfg.pretrain.steps} steps)", runs / "pretrain",
         lambda: pretrain_run(cfg, work, tracker.run_id).execute()),
        ("zeroshot", "zero-shot retrieval", runs / "zeroshot", lambda: zero_shot_stage(cfg, work, runs / "zeroshot")),
        ("finetune", f"finetuning ({len(jobs)} runs, {cfg.finetune.parallel} at a time)", runs / "finetune",
         lambda: pipeline.run_all(jobs, cfg.finetune.parallel)),
        ("report", "report", work / "report", lambda: report_stage(cfg, work, work / "report", tracker)),
    ]  # fmt: skip
    total = len(stages) + STAGES.index(cfg.until)
    try:
        for i, (key, name, out, fn) in enumerate(later, len(stages) + 1):
            run_stage(i, total, name, out, fn, settings[key])
            if key == cfg.until:
                break
    except (RuntimeError, StageChanged) as e:
        tracker.end("FAILED")
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, StageChanged) else 1
    tracker.end()
    store = work / "mlflow.db"
    print(f"main job done in {time.time() - t0:.0f}s; outputs under {work}")
    if (work / "report" / "report.md").exists():
        print(
            f"report: {work / 'report' / 'report.md'} (figures embedded: report.html; in MLflow: the 'main job' "
            "run's artifacts, report/report.html)"
        )
    print(f"MLflow store: sqlite:///{store}")
    print(f"browse it:    mlflow ui --backend-store-uri sqlite:///{store} --port 5000")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
