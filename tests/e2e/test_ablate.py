"""The ablation runner (launch/ablate.py): the variants' exact overrides (pretraining suites: what
the pretraining config makes of them; finetune-only suites: what each recipe's config makes of
them), short local runs of the FEEL suite and of the finetune-only `align` suite (table + MLflow
parent/variant/training runs, one shared pretraining, reuse on a re-run), and the --slurm job
chains on the real single-node Slurm of tests/slurm_cluster.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
import slurm_cluster
from test_finetune import TINY as FINETUNE_TINY
from test_pretrain import FAST

from finetune.datasets import DATASETS
from launch import ablate
from pretrain import config as pretrain_config

REPO = Path(__file__).resolve().parents[2]
CPU_NODE = ["--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1"]  # as tests/e2e/test_slurm.py


def _list(values: list[str]) -> str:
    """A dotlist list of strings, each quoted so that it stays one string."""
    return "[" + ",".join(f"'{v}'" for v in values) + "]"


def tiny(main_work: Path, workdir: Path, *extra: str) -> list[str]:
    """Overrides for a few-minute CPU run: 12 videos (2 shards held out), 2 pretraining and 2 MSR-VTT steps,
    one seed."""
    return [
        f"main_overrides=[workdir={main_work},videos=12,eval_queries=0,tagger=heuristic,workers=1,shard_size=4,"
        "finetune_shard_size=2]",
        f"workdir={workdir}", "pretrain.steps=2", "pretrain.held_out_shards=2", "finetune.steps=2",
        "finetune.seeds=[0]",
        "finetune.recipes=[msrvtt]", "finetune.parallel=1", "pretrain.ranks=1",
        f"pretrain.overrides={_list([*FAST, 'checkpoint.every=0', 'eval.every=0'])}",
        f"finetune.overrides={_list([*FINETUNE_TINY, 'checkpoint.export=false', 'eval.every=0'])}",
        "finetune.recipe_overrides.msrvtt=[data.max_frames=8,task.rerank=3]", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def main_work(tmp_path_factory) -> Path:
    """The main job's workdir whose data stages the ablations run (and share)."""
    return tmp_path_factory.mktemp("ablate_main")


def test_variants_are_the_papers_rows() -> None:
    pretraining = {s: ablate.SUITES[s] for s in ("feel", "taco")}
    assert all(not v.finetune for suite in pretraining.values() for v in suite.variants)
    assert {s: [(v.label, v.key, tuple(v.overrides)) for v in suite.variants] for s, suite in pretraining.items()} == {
        "feel": [
            ("MLM+MFM", "mlm-mfm", ("objectives.enabled=[mlm,mfm_nce]",)),
            ("+GMR", "gmr", ("objectives.enabled=[mlm,mfm_nce,gmr]",)),
            ("+GMR+CS", "gmr-cs", ("objectives.enabled=[mlm,mfm_nce,gmr,self_contrast]",)),
        ],
        "taco": [
            ("L1", "l1", ("objectives.enabled=[taco]", "objectives.taco.lambda2=0", "objectives.taco.lambda3=0")),
            ("L3", "l3", ("objectives.enabled=[taco]", "objectives.taco.lambda1=0", "objectives.taco.lambda2=0",
                          "objectives.taco.cascade=false")),
            ("L1+L3", "l1-l3", ("objectives.enabled=[taco]", "objectives.taco.lambda2=0",
                                "objectives.taco.cascade=false")),
            ("+cascade", "cascade", ("objectives.enabled=[taco]", "objectives.taco.lambda2=0",
                                     "objectives.taco.cascade=true")),
            ("+L2", "full", ("objectives.enabled=[taco]", "objectives.taco.cascade=true")),
        ],
    }  # fmt: skip
    # What the pretraining config makes of them: (enabled, lambda1 > 0, lambda2 > 0, lambda3 > 0, cascade).
    seen = {}
    for v in (*ablate.SUITES["feel"].variants, *ablate.SUITES["taco"].variants):
        o = pretrain_config.load("configs/pretrain/tiny_cpu.yaml", list(v.overrides)).objectives
        seen[v.key] = (list(o.enabled), o.taco.lambda1 > 0, o.taco.lambda2 > 0, o.taco.lambda3 > 0, o.taco.cascade)
    assert [seen[k][0] for k in ("mlm-mfm", "gmr", "gmr-cs")] == [
        ["mlm", "mfm_nce"],
        ["mlm", "mfm_nce", "gmr"],
        ["mlm", "mfm_nce", "gmr", "self_contrast"],
    ]
    taco = {k: v[1:] for k, v in seen.items() if v[0] == ["taco"]}
    assert taco == {"l1": (True, False, False, True), "l3": (False, False, True, False),
                    "l1-l3": (True, False, True, False), "cascade": (True, False, True, True),
                    "full": (True, True, True, True)}  # fmt: skip


def _reading(cfg) -> dict:
    """The readings a `readings` row can change, as a pretraining config holds them."""
    o, m = cfg.objectives, cfg.model
    return {"taco": (o.taco.similarity, o.taco.tau1, o.taco.tau2), "mfm": (o.mfm_nce.target, o.mfm_nce.mask_embedding),
            "sc": (o.self_contrast.relative_margin, o.self_contrast.margin, o.self_contrast.eq15_negative),
            "idf": (cfg.data.idf, cfg.data.subword_weights), "text": (m.text_pooling, m.text_layers),
            "frames": m.standardize_frames}  # fmt: skip


def test_readings_rows_change_one_reading_each_in_pretraining_and_finetuning() -> None:
    """Each row of the `readings` suite sets the previous reading of exactly what its label names (the
    pretraining config, and every finetune run it launches), "previous" all of them, "paper" none."""
    paper = _reading(pretrain_config.load("configs/pretrain/tiny_cpu.yaml", []))
    assert paper == {"taco": ("dot", 1.0, 1.0), "mfm": ("raw", True), "sc": (True, 0.5, "e_v_prime"),
                     "idf": ("taco", "share"), "text": (None, None), "frames": True}  # fmt: skip
    changed = {}
    for v in ablate.SUITES["readings"].variants:
        got = _reading(pretrain_config.load("configs/pretrain/tiny_cpu.yaml", list(v.overrides)))
        changed[v.key] = {k: got[k] for k in got if got[k] != paper[k]}
    assert changed == {
        "paper": {}, "taco-cosine": {"taco": ("cosine", 0.07, 0.07)},
        "mfm-embedded": {"mfm": ("embedded", False)}, "sc-absolute": {"sc": (False, 1.0, "e_v_prime")},
        "sc-eq15": {"sc": (True, 0.5, "e_t_prime")}, "idf-smooth": {"idf": ("smooth", "copy")},
        "cls": {"text": ("cls", None)}, "raw-frames": {"frames": False},
        "previous": {"taco": ("cosine", 0.07, 0.07), "mfm": ("embedded", False), "sc": (False, 1.0, "e_v_prime"),
                     "idf": ("smooth", "copy"), "text": ("cls", 2), "frames": False},
    }  # fmt: skip
    plan = ablate.make_plan(ablate.load_config(ablate.DEFAULT_CONFIG, []), "readings")
    for v in plan.variants:  # finetuning takes the row's model, data and (video retrieval) TACo readings too
        for run in ablate.finetune_runs(plan, v, None):
            schema = DATASETS[Path(run.script).stem].schema
            cfg = pretrain_config.load(run.config, run.overrides, schema)
            pre = pretrain_config.load("configs/pretrain/tiny_cpu.yaml", list(v.overrides))
            assert (cfg.model.text_pooling, cfg.model.text_layers, cfg.model.standardize_frames) == (
                pre.model.text_pooling,
                pre.model.text_layers,
                pre.model.standardize_frames,
            ), (v.key, run.name)
            assert (cfg.data.idf, cfg.data.subword_weights) == (pre.data.idf, pre.data.subword_weights), v.key
            if run.script.endswith("msrvtt.py"):
                taco = cfg.task.taco
                assert (taco.similarity, taco.tau1, taco.tau2) == (
                    pre.objectives.taco.similarity,
                    pre.objectives.taco.tau1,
                    pre.objectives.taco.tau2,
                )
                assert cfg.task.rerank == (8 if v.key == "previous" else 0)


def finetune_task(run) -> object:
    """The `task` section that a finetune run's recipe makes of its config and overrides, validated."""
    schema = DATASETS[Path(run.script).stem].schema
    task = pretrain_config.load(run.config, run.overrides, schema).task
    task.validate()
    return task


def test_finetune_only_variants_are_the_papers_rows() -> None:
    align, mesm = ablate.SUITES["align"], ablate.SUITES["mesm"]
    assert (align.finetune_only, tuple(align.recipes), mesm.finetune_only, tuple(mesm.recipes)) == (
        True, ("how2qa", "how2r"), True, ("didemo", "tvr"))  # fmt: skip
    assert [(v.label, v.key, tuple(v.overrides), tuple(v.finetune)) for v in align.variants] == [
        ("None", "none", (), ("task.align.glob=0", "task.align.seg=0")),
        ("Global", "global", (), ("task.align.glob=1", "task.align.seg=0")),
        ("Segment", "segment", (), ("task.align.glob=0", "task.align.seg=1")),
        ("Global + Segment", "global-segment", (), ("task.align.glob=1", "task.align.seg=1")),
        ("Global + Segment ([CLS] / mean frame)", "global-segment-cls", (),
         ("task.align.glob=1", "task.align.seg=1", "task.align.pooling=cls_mean")),
    ]  # fmt: skip
    assert [(v.label, v.key, tuple(v.overrides), tuple(v.finetune)) for v in mesm.variants] == [
        ("XML head", "xml", (), ("task.mesm.fw=0", "task.mesm.ss=0", "task.mesm.enc=0")),
        ("MA + L_enc", "ma-enc", (), ("task.mesm.fw=0", "task.mesm.ss=0", "task.mesm.enc=1")),
        ("+FW-MESM", "fw", (), ("task.mesm.fw=1", "task.mesm.ss=0", "task.mesm.enc=1")),
        ("+SS-MESM", "ss", (), ("task.mesm.fw=0", "task.mesm.ss=1", "task.mesm.enc=1")),
        ("+SS-MESM (2 layers)", "ss-2", (), ("task.mesm.fw=0", "task.mesm.ss=1", "task.mesm.enc=1",
                                             "task.mesm.ss_layers=2")),
        ("+FW+SS", "fw-ss", (), ("task.mesm.fw=1", "task.mesm.ss=1", "task.mesm.enc=1")),
    ]  # fmt: skip
    # What each recipe's config makes of the runs the rows launch, the config's overrides first
    # (How2QA's own default is glob=0, seg=1: the row wins): (lambda1, lambda2) of eq. 1 ...
    cfg = ablate.load_config(ablate.DEFAULT_CONFIG, [])
    plan = ablate.make_plan(cfg, "align")
    for recipe_index, recipe in enumerate(align.recipes):
        seen = {}
        for v in plan.variants:
            run = ablate.finetune_runs(plan, v, None)[recipe_index]
            assert run.script == f"finetune/{recipe}.py"
            assert f"init.checkpoint={plan.suite_dir / 'pretrain' / 'export'}" in run.overrides  # the shared export
            task = finetune_task(run)
            seen[v.key] = (task.align.glob, task.align.seg, task.align.pooling)
        assert seen == {
            "none": (0, 0, "attention"),
            "global": (1, 0, "attention"),
            "segment": (0, 1, "attention"),
            "global-segment": (1, 1, "attention"),
            "global-segment-cls": (1, 1, "cls_mean"),
        }, recipe
    # ... and MESM's (aligner on, lambda_fw, lambda_ss, lambda_enc)
    plan = ablate.make_plan(cfg, "mesm")
    for recipe_index, recipe in enumerate(mesm.recipes):
        seen = {}
        for v in plan.variants:
            m = finetune_task(ablate.finetune_runs(plan, v, None)[recipe_index]).mesm
            seen[v.key] = (m.enabled, m.fw, m.ss, m.enc, m.ss_layers)
        expected = {"xml": (False, 0, 0, 0, 4), "ma-enc": (True, 0, 0, 1, 4), "fw": (True, 1, 0, 1, 4),
                    "ss": (True, 0, 1, 1, 4), "ss-2": (True, 0, 1, 1, 2), "fw-ss": (True, 1, 1, 1, 4)}  # fmt: skip
        assert seen == expected, recipe


def test_config_inherits_the_main_job_and_rejects_unknown_keys() -> None:
    cfg = ablate.load_config(ablate.DEFAULT_CONFIG, [])
    main = ablate.main_config(cfg)
    assert (cfg.pretrain.steps, cfg.finetune.steps, cfg.finetune.seeds) == (30, 30, [0])
    assert cfg.pretrain.overrides == main.pretrain.overrides and cfg.finetune.overrides == main.finetune.overrides
    assert cfg.finetune.recipes == ["tvr", "msrvtt"]
    plan = ablate.make_plan(cfg, "feel")
    assert ablate.columns(plan) == ["zero-shot R@10", "TVR VCMR 0.5-r1", "TVR VCMR 0.7-r1", "TVR VR r1",
                                    "MSR-VTT R@1", "MSR-VTT R@5", "MSR-VTT R@10"]  # fmt: skip
    # finetune-only suites: their own recipes whatever `finetune.recipes` says, no zero-shot column
    assert ablate.columns(ablate.make_plan(cfg, "align")) == ["How2QA accuracy", "How2R VCMR 0.5-r1",
                                                              "How2R VCMR 0.7-r1"]  # fmt: skip
    assert ablate.columns(ablate.make_plan(cfg, "mesm")) == [
        "DiDeMo VCMR 0.5-r1", "DiDeMo VR r1", "TVR VCMR 0.5-r1", "TVR VCMR 0.7-r1", "TVR VR r1", "TVR SVMR 0.5-r1",
    ]  # fmt: skip
    with pytest.raises(pretrain_config.ConfigError, match="finetune.stepz"):
        ablate.load_config(ablate.DEFAULT_CONFIG, ["finetune.stepz=3"])
    with pytest.raises(pretrain_config.ConfigError, match="no variant 'gmr-cs' in suite 'taco'"):
        ablate.validate(ablate.load_config(ablate.DEFAULT_CONFIG, ["variants=[gmr-cs]"]), "taco")


def table_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|") and not line.startswith("|---")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def runs_of(store: Path) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_feel_suite_locally(main_work: Path, tmp_path: Path, capsys) -> None:
    work = tmp_path / "ablate"
    t0 = time.monotonic()
    two = "variants=[mlm-mfm,gmr-cs]"  # the first and last rows: a third adds time, not coverage
    assert ablate.main(["--suite", "feel", *tiny(main_work, work), two]) == 0, capsys.readouterr().out[-4000:]
    rows = table_rows((work / "ablation_feel.md").read_text())
    assert rows[0] == ["variant", "zero-shot R@10", "MSR-VTT R@1", "MSR-VTT R@5", "MSR-VTT R@10"]
    assert [r[0] for r in rows[1:]] == ["MLM+MFM", "+GMR+CS"]
    assert all(re.fullmatch(r"\d+\.\d\d", c) for r in rows[1:] for c in r[1:]), rows
    text = (work / "ablation_feel.md").read_text()  # the second row's zero-shot against the first, with its CI
    assert re.search(r'against "MLM\+MFM".*\n\n- \+GMR\+CS: [+-]\d+\.\d \[[+-]\d+\.\d, [+-]\d+\.\d\]', text), text

    runs = runs_of(work / "mlflow.db")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [(r.info.run_name, r.info.status) for r in parents] == [("ablation feel", "FINISHED")]
    variants = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert sorted(variants) == sorted(["MLM+MFM", "+GMR+CS"])
    for row in rows[1:]:
        run = variants[row[0]]
        assert run.info.status == "FINISHED" and run.data.tags["ablation.suite"] == "feel"
        logged = [f"{run.data.metrics[name.replace('@', '_')]:.2f}" for name in rows[0][1:]]
        assert logged == row[1:], (row, run.data.metrics)
        assert run.data.params["overrides"].startswith("objectives.enabled=")
        children = sorted(r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == run.info.run_id)
        key = run.data.tags["ablation.key"]
        assert children == [f"{key}/msrvtt-seed0", f"{key}/pretrain"]
    assert len(runs) == 1 + 2 + 2 * 2
    print(f"feel suite: {time.monotonic() - t0:.0f}s", file=sys.stderr)

    # A re-run reuses every run and continues the same MLflow runs.
    assert ablate.main(["--suite", "feel", *tiny(main_work, work), two]) == 0
    out = capsys.readouterr().out
    assert out.count("done already") == 2 * 2 + 3, out  # 2 x (pretrain + finetune), 3 data stages
    assert len(runs_of(work / "mlflow.db")) == len(runs)


def test_finetune_only_suite_locally(main_work: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """The align suite, 2 rows, How2QA only (a finetune run costs ~20 s here; test_config_inherits_...
    checks the full suite's columns): one pretraining that both rows finetune, the suite's recipes
    (not `finetune.recipes`), no zero-shot column, each row's overrides in effect, the MLflow nesting."""
    monkeypatch.setitem(ablate.SUITES, "align", replace(ablate.SUITES["align"], recipes=("how2qa",)))
    work, t0 = tmp_path / "ablate", time.monotonic()
    overrides = [
        "variants=[none,global-segment]",
        "finetune.recipe_overrides.how2qa=[data.max_frames=8,data.max_sub_len=32]",
    ]
    args = ["--suite", "align", *tiny(main_work, work, *overrides)]
    assert ablate.main(args) == 0, capsys.readouterr().out[-4000:]
    assert capsys.readouterr().out.count("[pretrain] started") == 1
    text = (work / "ablation_align.md").read_text()
    rows = table_rows(text)
    assert rows[0] == ["variant", "How2QA accuracy"] and [r[0] for r in rows[1:]] == ["None", "Global + Segment"]
    assert all(re.fullmatch(r"\d+\.\d\d", c) for r in rows[1:] for c in r[1:]), rows
    assert "Every row shares one pretraining" in text and "nothing tuned" in text
    assert "- Global + Segment: `task.align.glob=1 task.align.seg=1`" in text

    suite = work / "align"
    assert [p.relative_to(suite).as_posix() for p in suite.glob("**/export")] == ["pretrain/export"]
    assert (suite / "zeroshot.json").exists() and not list(suite.glob("*/zeroshot.json"))
    losses = {}
    for key in ("none", "global-segment"):
        run_dir = suite / key / "finetune" / "how2qa-seed0"
        assert f"checkpoint: {suite / 'pretrain' / 'export'}\n" in (run_dir / "config.yaml").read_text()
        losses[key] = sorted(k for k in json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
                             if k.startswith("align_"))  # fmt: skip
    # How2QA's own default (segment on) overridden by the "None" row
    assert losses == {"none": [], "global-segment": ["align_glob_loss", "align_seg_loss"]}

    runs = runs_of(work / "mlflow.db")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [(r.info.run_name, r.info.status) for r in parents] == [("ablation align", "FINISHED")]
    parent = parents[0]
    assert "zero-shot R_10" in parent.data.metrics  # the shared pretraining's, once
    under = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(under) == ["Global + Segment", "None", "pretrain"]  # the shared pretraining under the suite
    assert under["pretrain"].info.status == "FINISHED"
    for row in rows[1:]:
        run = under[row[0]]
        assert run.info.status == "FINISHED" and run.data.params["pretraining"] == "shared"
        params = run.data.params
        assert params["finetune_overrides"].startswith("task.align.glob=") and "overrides" not in params
        logged = [f"{run.data.metrics[name.replace('@', '_')]:.2f}" for name in rows[0][1:]]
        assert logged == row[1:], (row, run.data.metrics)
        children = [r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]
        assert children == [f"{run.data.tags['ablation.key']}/how2qa-seed0"]
    assert len(runs) == 1 + 1 + 2 + 2
    print(f"align suite (2 rows, How2QA): {time.monotonic() - t0:.0f}s", file=sys.stderr)

    # A re-run reuses every run; --collect (what the Slurm collect job runs) rebuilds the same table.
    assert ablate.main(args) == 0
    out = capsys.readouterr().out
    assert out.count("done already") == 1 + 2 + 3, out  # the pretraining, 2 finetunes, 3 data stages
    assert ablate.main(["--suite", "align", "--collect", *args[2:]]) == 0
    assert (work / "ablation_align.md").read_text() == text and len(runs_of(work / "mlflow.db")) == len(runs)


def _env() -> dict[str, str]:
    """The submitting shell's environment: no launcher or tracking variables of this process."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                                                            "MLFLOW_TRACKING_URI")}  # fmt: skip
    return env | {"DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def _job(job_id: str) -> dict[str, str]:
    proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    return dict(kv.split("=", 1) for kv in proc.stdout.split() if "=" in kv) if proc.returncode == 0 else {}


def _wait(jobs: list[str], logs: Path, timeout: float = 300) -> dict[str, dict[str, str]]:
    """The jobs' records once all have ended; the first failure's log in the assertion."""
    deadline = time.monotonic() + timeout
    while True:
        states = {j: _job(j) for j in jobs}
        for j, rec in states.items():
            log = next(iter(logs.glob(f"*-{j}.out")), None)
            assert rec.get("JobState") not in ("FAILED", "CANCELLED", "TIMEOUT"), (rec, log and log.read_text()[-4000:])
        if all(rec.get("JobState") == "COMPLETED" for rec in states.values()):
            return states
        assert time.monotonic() < deadline, {j: rec.get("JobState") for j, rec in states.items()}
        time.sleep(2)


@pytest.mark.slow
def test_slurm_job_chain(main_work: Path, tmp_path: Path) -> None:
    """One variant on Slurm: pretraining job -> finetune job (afterok) -> collect job (afterok on both)."""
    slurm_cluster.ensure_cluster()
    work = tmp_path / "ablate"
    args = tiny(main_work, work, "variants=[gmr]", f"slurm.pretrain={_list(CPU_NODE)}",
                f"slurm.finetune={_list(CPU_NODE)}")  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "launch.ablate", "--suite", "feel", "--slurm", *args], cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ids = re.search(r"\+GMR: pretrain job (\d+); finetune jobs (\d+)\n", proc.stdout)
    collect = re.search(r"collect job (\d+) \(after (\d+) (\d+)\)", proc.stdout)
    assert ids and collect and collect.groups()[1:] == ids.groups(), proc.stdout
    pre, fine, last = ids.group(1), ids.group(2), collect.group(1)
    try:
        assert f"afterok:{pre}" in _job(fine)["Dependency"]  # still waiting: pretraining takes longer than this
        assert f"afterok:{pre}" in _job(last)["Dependency"] and f"afterok:{fine}" in _job(last)["Dependency"]
        jobs = _wait([pre, fine, last], tmp_path / "logs")
    finally:
        subprocess.run(["scancel", pre, fine, last], capture_output=True)
    assert jobs[fine]["StartTime"] >= jobs[pre]["EndTime"] and jobs[last]["StartTime"] >= jobs[fine]["EndTime"]
    rows = table_rows((work / "ablation_feel.md").read_text())
    assert [r[0] for r in rows] == ["variant", "+GMR"] and len(rows[1]) == 5
    runs = runs_of(work / "mlflow.db")
    names = sorted((r.info.run_name, r.info.status) for r in runs)
    assert names == [("+GMR", "FINISHED"), ("ablation feel", "FINISHED"), ("gmr/msrvtt-seed0", "FINISHED"),
                     ("gmr/pretrain", "FINISHED")], names  # fmt: skip


@pytest.mark.slow
def test_slurm_finetune_only_chain(main_work: Path, tmp_path: Path) -> None:
    """A finetune-only suite on Slurm: ONE pretraining job (submitted held, so that nothing runs),
    every variant's finetune jobs afterok on it, the collect job afterok on all of them."""
    slurm_cluster.ensure_cluster()
    held = _list(["--hold", *CPU_NODE])
    args = tiny(main_work, tmp_path / "ablate", "variants=[xml,fw-ss]", f"slurm.pretrain={held}",
                f"slurm.finetune={_list(CPU_NODE)}")  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "launch.ablate", "--suite", "mesm", "--slurm", *args], cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pre = re.search(r"^shared pretraining: job (\d+)$", proc.stdout, re.M)
    rows = dict(re.findall(r"^(XML head|\+FW\+SS): finetune jobs (\d+ \d+)$", proc.stdout, re.M))
    collect = re.search(r"^collect job (\d+) \(after ([\d ]+)\)", proc.stdout, re.M)
    assert pre and sorted(rows) == ["+FW+SS", "XML head"] and collect, proc.stdout
    finetunes = [j for jobs in rows.values() for j in jobs.split()]
    jobs = [pre.group(1), *finetunes, collect.group(1)]
    try:
        assert collect.group(2).split() == [pre.group(1), *finetunes]
        records = {j: _job(j) for j in jobs}
        first = records[pre.group(1)]
        assert (first["JobName"], first.get("Dependency", "(null)"), first["Reason"]) == (
            "abl-mesm-pretrain", "(null)", "JobHeldUser"), first  # fmt: skip
        names = sorted(records[j]["JobName"] for j in finetunes)
        assert names == [f"abl-mesm-{k}-{r}-seed0" for k in ("fw-ss", "xml") for r in ("didemo", "tvr")]
        for j in finetunes:  # every finetune waits on the one pretraining job, and on nothing else
            assert re.findall(r"after\w*:(\d+)", records[j]["Dependency"]) == [pre.group(1)], records[j]
            assert records[j]["Dependency"].startswith("afterok:") and records[j]["Reason"] == "Dependency"
        assert sorted(re.findall(r"afterok:(\d+)", records[collect.group(1)]["Dependency"])) == sorted(jobs[:-1])
    finally:
        subprocess.run(["scancel", *jobs], capture_output=True)
    ids = json.loads((tmp_path / "ablate" / "mesm" / "mlflow_runs.json").read_text())
    assert sorted(ids) == ["fw-ss", "mesm", "xml"]  # the suite's run and one per variant, made at submission
