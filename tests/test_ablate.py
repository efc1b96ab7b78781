"""The ablation runner (launch/ablate.py): the variants' exact overrides, a short local run of the
FEEL suite (table + MLflow parent/variant/training runs, reuse on a re-run), and the --slurm job
chains on the real single-node Slurm of tests/slurm_cluster.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import slurm_cluster
from test_finetune import TINY as FINETUNE_TINY
from test_pretrain import FAST

from launch import ablate
from pretrain import config as pretrain_config

REPO = Path(__file__).resolve().parent.parent
CPU_NODE = ["--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1"]  # as tests/test_slurm.py


def _list(values: list[str]) -> str:
    """A dotlist list of strings, each quoted so that it stays one string."""
    return "[" + ",".join(f"'{v}'" for v in values) + "]"


def tiny(main_work: Path, workdir: Path, *extra: str) -> list[str]:
    """Overrides for a few-minute CPU run: 12 videos, 2 pretraining and 2 MSR-VTT steps, one seed."""
    return [
        f"main_overrides=[workdir={main_work},videos=12,tagger=heuristic,workers=1,shard_size=4,finetune_shard_size=2]",
        f"workdir={workdir}", "pretrain.steps=2", "finetune.steps=2", "finetune.seeds=[0]",
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
    assert {s: [(v.label, v.key, v.overrides) for v in vs] for s, vs in ablate.SUITES.items()} == {
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
    for v in (*ablate.SUITES["feel"], *ablate.SUITES["taco"]):
        o = pretrain_config.load("configs/pretrain/tiny_cpu.yaml", list(v.overrides)).objectives
        seen[v.key] = (list(o.enabled), o.taco.lambda1 > 0, o.taco.lambda2 > 0, o.taco.lambda3 > 0, o.taco.cascade)
    assert [seen[k][0] for k in ("mlm-mfm", "gmr", "gmr-cs")] == [
        ["mlm", "mfm_nce"], ["mlm", "mfm_nce", "gmr"], ["mlm", "mfm_nce", "gmr", "self_contrast"]]
    taco = {k: v[1:] for k, v in seen.items() if v[0] == ["taco"]}
    assert taco == {"l1": (True, False, False, True), "l3": (False, False, True, False),
                    "l1-l3": (True, False, True, False), "cascade": (True, False, True, True),
                    "full": (True, True, True, True)}  # fmt: skip


def test_config_inherits_the_main_job_and_rejects_unknown_keys() -> None:
    cfg = ablate.load_config(ablate.DEFAULT_CONFIG, [])
    main = ablate.main_config(cfg)
    assert (cfg.pretrain.steps, cfg.finetune.steps, cfg.finetune.seeds) == (30, 30, [0])
    assert cfg.pretrain.overrides == main.pretrain.overrides and cfg.finetune.overrides == main.finetune.overrides
    assert cfg.finetune.recipes == ["tvr", "msrvtt"]
    plan = ablate.make_plan(cfg, "feel")
    assert ablate.columns(plan) == ["zero-shot R@10", "TVR VCMR 0.5-r1", "TVR VCMR 0.7-r1", "TVR VR r1",
                                    "MSR-VTT R@1", "MSR-VTT R@5", "MSR-VTT R@10"]  # fmt: skip
    with pytest.raises(SystemExit, match="finetune.stepz"):
        ablate.load_config(ablate.DEFAULT_CONFIG, ["finetune.stepz=3"])
    with pytest.raises(SystemExit, match="no variant 'gmr-cs' in suite 'taco'"):
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
    assert ablate.main(["--suite", "feel", *tiny(main_work, work)]) == 0, capsys.readouterr().out[-4000:]
    rows = table_rows((work / "ablation_feel.md").read_text())
    assert rows[0] == ["variant", "zero-shot R@10", "MSR-VTT R@1", "MSR-VTT R@5", "MSR-VTT R@10"]
    assert [r[0] for r in rows[1:]] == ["MLM+MFM", "+GMR", "+GMR+CS"]
    assert all(re.fullmatch(r"\d+\.\d\d", c) for r in rows[1:] for c in r[1:]), rows

    runs = runs_of(work / "mlflow.db")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [(r.info.run_name, r.info.status) for r in parents] == [("ablation feel", "FINISHED")]
    variants = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert sorted(variants) == sorted(["MLM+MFM", "+GMR", "+GMR+CS"])
    for row in rows[1:]:
        run = variants[row[0]]
        assert run.info.status == "FINISHED" and run.data.tags["ablation.suite"] == "feel"
        logged = [f"{run.data.metrics[name.replace('@', '_')]:.2f}" for name in rows[0][1:]]
        assert logged == row[1:], (row, run.data.metrics)
        assert run.data.params["overrides"].startswith("objectives.enabled=")
        children = sorted(r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == run.info.run_id)
        key = run.data.tags["ablation.key"]
        assert children == [f"{key}/msrvtt-seed0", f"{key}/pretrain"]
    assert len(runs) == 1 + 3 + 3 * 2
    print(f"feel suite: {time.monotonic() - t0:.0f}s", file=sys.stderr)

    # A re-run reuses every run and continues the same MLflow runs.
    assert ablate.main(["--suite", "feel", *tiny(main_work, work)]) == 0
    out = capsys.readouterr().out
    assert out.count("done already") == 3 * 2 + 3, out  # 3 x (pretrain + finetune), 3 data stages
    assert len(runs_of(work / "mlflow.db")) == len(runs)


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
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                                                            "MLFLOW_TRACKING_URI")}  # fmt: skip
    env.update(DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    args = tiny(main_work, work, "variants=[gmr]", f"slurm.pretrain={_list(CPU_NODE)}",
                f"slurm.finetune={_list(CPU_NODE)}")  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "launch.ablate", "--suite", "feel", "--slurm", *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
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
