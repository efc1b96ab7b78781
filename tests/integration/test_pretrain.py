"""pretrain/train.py end to end on the CPU: 2 ranks with ZeRO-2 and ZeRO-3, all five objectives,
exact resume after a kill, resume at another world size, MLflow, export, config errors."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import small_pretraining_shards

from launch.pipeline import free_port

REPO = Path(__file__).resolve().parents[2]
LOSS_KEYS = ("mlm_loss", "mfm_nce_loss", "gmr_loss", "self_contrast_loss", "taco_l1_loss", "taco_l2_loss",
             "taco_l3_loss", "loss")  # fmt: skip
# A small, fast setting of the tiny preset (each rank one thread: 2 ranks on 2 cores).
FAST = [
    "data.batch_size=4", "data.max_frames=16", "data.max_text_len=32", "data.streams=2",
    "model.text_layers=1", "model.cross_layers=1", "eval.max_samples=32", "run.log_every=1",
    "optim.warmup_steps=2",
]  # fmt: skip


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return small_pretraining_shards(tmp_path_factory.mktemp("pretrain_data"), shard_size=8)


def launch_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def _command(launcher: str, ranks: int, run_dir: Path, shards: Path, *overrides: str) -> list[str]:
    args = ["pretrain/train.py", "--config", "configs/pretrain/tiny_cpu.yaml", f"data.train={shards}",
            f"eval.held_out={shards}", f"run.output_dir={run_dir}", *FAST, *overrides]  # fmt: skip
    port = str(free_port())
    if launcher == "deepspeed":
        return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks), "--no_ssh_check",
                "--master_port", port, *args]  # fmt: skip
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port", port, *args]


def _train(launcher: str, ranks: int, run_dir: Path, shards: Path, *overrides: str) -> None:
    proc = subprocess.run(_command(launcher, ranks, run_dir, shards, *overrides), cwd=REPO, env=launch_env(),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _mlflow_runs(run_dir: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    experiments = client.search_experiments()
    return client.search_runs([e.experiment_id for e in experiments])


@pytest.fixture(scope="module")
def straight(shards, tmp_path_factory) -> Path:
    """4 steps, 2 ranks, ZeRO-2, DeepSpeed launcher: the reference run."""
    run_dir = tmp_path_factory.mktemp("straight")
    _train(
        "deepspeed", 2, run_dir, shards, "run.max_steps=4", "checkpoint.every=2", "eval.every=2", "runtime.zero_stage=2"
    )
    return run_dir


@pytest.mark.slow
def test_two_ranks_zero2_all_objectives_checkpoints_export_mlflow(straight, shards) -> None:
    rows = _metrics(straight)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for row in rows:
        for key in LOSS_KEYS:
            assert key in row and torch.isfinite(torch.tensor(row[key])), (key, row)
    # zero-shot results every eval.every=2 steps, in metrics.jsonl too (and MLflow, below)
    assert ["zeroshot_taco_R@10" in r for r in rows] == [False, True, False, True]
    # it learns something in 4 steps (MLM: TACo's dot-product losses at tau 1 swing over 4 steps of 8 clips)
    assert rows[-1]["mlm_loss"] < rows[0]["mlm_loss"]
    ckpts = sorted(p.name for p in (straight / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert ckpts == ["step_00000002", "step_00000004"]
    assert all((straight / "checkpoints" / c / "COMPLETE").exists() for c in ckpts)
    assert (straight / "checkpoints" / "latest").read_text() == "step_00000004"  # DeepSpeed's tools need no tag
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    assert "frame_proj.weight" in get_fp32_state_dict_from_zero_checkpoint(str(straight / "checkpoints"))

    from safetensors.torch import load_file

    from pretrain.config import load
    from pretrain.model import VideoLanguageModel

    cfg = load(str(straight / "export" / "config.yaml"), [])  # the export's config rebuilds the model
    weights = load_file(str(straight / "export" / "model.safetensors"))
    result = VideoLanguageModel(cfg.model).load_state_dict(weights, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    stats = json.loads((shards / "feature_stats.json").read_text())
    torch.testing.assert_close(weights["frame_mean"], torch.tensor(stats["mean"]))  # standardised as the corpus
    torch.testing.assert_close(weights["frame_std"], torch.tensor(stats["std"]))
    assert (straight / "export" / "tokenizer.json").exists()
    resolved = cfg.model  # every preset field resolved in the export's config
    assert (resolved.hidden, resolved.frame_dim, resolved.text_pooling, resolved.cross_layers) == (384, 64, "mean", 1)
    from transformers import AutoModel, AutoTokenizer  # the text encoder alone, loadable without this project

    text = AutoModel.from_pretrained(str(straight / "export" / "text_encoder")).eval()
    tok = AutoTokenizer.from_pretrained(str(straight / "export" / "text_encoder"))
    enc = tok(["cut the onion"], return_tensors="pt")
    model = VideoLanguageModel(cfg.model).eval()
    model.load_state_dict(weights)
    with torch.no_grad():
        torch.testing.assert_close(text(**enc).last_hidden_state, model.text(**enc).last_hidden_state)

    runs = _mlflow_runs(straight)
    assert len(runs) == 1
    run = runs[0]
    for key in (
        *LOSS_KEYS,
        "lr",
        "grad_norm",
        "samples_per_s",
        "tokens_per_s",
        "data_wait_frac",
        "zeroshot_t2v_R_1",
        "zeroshot_t2v_R_10",
    ):
        assert key in run.data.metrics, key
    assert run.data.params["model.preset"] == "tiny" and run.data.params["runtime.zero_stage"] == "2"
    assert run.info.run_name == "tiny-cpu"  # run.name, not a random MLflow name
    assert (straight / "mlartifacts").is_dir() and not (REPO / "mlruns").exists()  # artifacts beside the store
    artifacts = list((straight / "mlartifacts").rglob("config.yaml"))
    assert artifacts and "preset: tiny" in artifacts[0].read_text()


@pytest.mark.slow
def test_zero_shot_command_reproduces_the_runs_final_evaluation(straight, shards, tmp_path) -> None:
    """`python -m pretrain.zeroshot --export` on the held-out shards gives the metrics the run logged at its
    last step (the same 32 clips, the same model), and its predictions file agrees with them; a random
    init runs too, and held-out shards of another feature dim are a clear error (exit 2)."""

    def zeroshot(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "pretrain.zeroshot", "--held-out", str(shards), "--max-samples", "32", *args]
        return subprocess.run(cmd, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=300)

    preds = tmp_path / "preds.jsonl"
    proc = zeroshot("--export", str(straight / "export"), "--predictions", str(preds))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    logged = _mlflow_runs(straight)[0].data.metrics  # MLflow turns "@" into "_" in metric names
    assert got["clips"] == 32
    for key in ("zeroshot_t2v_R@1", "zeroshot_t2v_R@10", "zeroshot_taco_R@5", "zeroshot_taco_MeanR"):
        assert got[key] == pytest.approx(logged[key.replace("@", "_")], abs=1e-4), key
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 32 and len({r["key"] for r in rows}) == 32
    for score in ("t2v", "taco"):
        assert 100 * sum(r[f"rank_{score}"] <= 10 for r in rows) / 32 == pytest.approx(got[f"zeroshot_{score}_R@10"])
        assert all((r[f"rank_{score}"] == 1) == (r[f"top_{score}"][0] == r["key"]) for r in rows)
    random = zeroshot("--random-init", "--config", str(straight / "export" / "config.yaml"), "--seed", "1")
    assert random.returncode == 0 and json.loads(random.stdout)["clips"] == 32, random.stderr[-3000:]
    from omegaconf import OmegaConf

    other = OmegaConf.load(straight / "export" / "config.yaml")
    other.model.frame_dim = 32
    OmegaConf.save(other, tmp_path / "other.yaml")
    mismatch = zeroshot("--random-init", "--config", str(tmp_path / "other.yaml"))
    assert mismatch.returncode == 2 and "64-d features" in mismatch.stderr and "frame_dim 32" in mismatch.stderr
    missing = zeroshot("--export", str(tmp_path))
    assert missing.returncode == 2 and "no model.safetensors" in missing.stderr


@pytest.mark.slow
def test_skipped_data_is_summed_over_ranks_by_kind(shards, tmp_path, caplog) -> None:
    """A corrupt shard and a sample without features: metrics.jsonl's data_skipped counts what every rank's
    loader skipped (their train states), by kind; the log names the shard and the sample."""
    import shutil
    import tarfile

    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    names = sorted(p.name for p in bad.glob("shard-*.tar"))
    (bad / names[1]).write_bytes(b"this is not a tar file " * 100)
    with tarfile.open(bad / names[-1]) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(bad / names[-1], "w") as tar:
        for m, data in members:
            if m.name != members[0][0].name:  # the first sample loses its features
                tar.addfile(m, io.BytesIO(data))
    run_dir = tmp_path / "run"
    proc = subprocess.run(_command("torchrun", 2, run_dir, bad, "run.max_steps=6", "checkpoint.every=6",
                                   "eval.every=0", "tracking.enabled=false", "data.streams=1"),
                          cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = _metrics(run_dir)[-1]
    states = [
        torch.load(p, weights_only=False)["loader"]["skipped"]
        for p in sorted((run_dir / "checkpoints" / "step_00000006").glob("train_state_rank*.pt"))
    ]
    assert len(states) == 2
    for kind in ("corrupt_shard", "incomplete_sample"):
        assert last[f"data_skipped_{kind}"] == sum(s.get(kind, 0) for s in states), (kind, states)
    assert last["data_skipped"] == sum(sum(s.values()) for s in states) >= 1
    log = proc.stderr + proc.stdout
    if last["data_skipped_incomplete_sample"]:
        assert f"{names[-1]}: sample {members[0][0].name.split('.')[0]}" in log
    # With 2 streams a rank the corrupt shard is, in some epoch, a stream's only shard: that rank stops with
    # a clear error, and the job ends (it used to hang: the failing rank waited in the teardown barrier, so
    # neither its error nor an exit ever came).
    failed = subprocess.run(_command("torchrun", 2, tmp_path / "run2", bad, "run.max_steps=6", "data.batch_size=8",
                                     "eval.every=0", "checkpoint.every=0"),
                            cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert failed.returncode != 0 and "no readable sample in its shards" in failed.stderr
    (run,) = _mlflow_runs(tmp_path / "run2")  # a crash is FAILED, with the error rank 0 saw (not FINISHED)
    assert run.info.status == "FAILED" and run.data.tags["error"]


@pytest.mark.slow
def test_a_full_disk_is_one_clear_line_and_leaves_no_partial_checkpoint(shards, tmp_path) -> None:
    """The run dir on a 48 MiB tmpfs: the first checkpoint does not fit. One line says so (where, how much
    is free, what a checkpoint needs), the partial folder is gone, the MLflow run (stored elsewhere) is FAILED."""
    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48M", "tmpfs", str(disk)], check=True)
    try:
        run_dir = disk / "run"
        proc = subprocess.run(_command("torchrun", 1, run_dir, shards, "run.max_steps=4", "checkpoint.every=2",
                                       "eval.every=0", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"),
                              cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode != 0
        line = next(x for x in proc.stderr.splitlines() if "no space left on device for checkpoint" in x)
        assert "GiB free" in line and "a checkpoint of this model takes about" in line, line
        assert not (run_dir / "checkpoints" / "step_00000002").exists()
        import mlflow

        client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert run.info.status == "FAILED" and "no space left" in run.data.tags["error"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.slow
def test_sigterm_ends_the_mlflow_run_killed_and_a_second_writer_is_refused(shards, tmp_path) -> None:
    run_dir = tmp_path / "terminated"
    proc = subprocess.Popen(_command("torchrun", 1, run_dir, shards, "run.max_steps=200", "checkpoint.every=0"),
                            cwd=REPO, env=launch_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not ((run_dir / "metrics.jsonl").exists() and len(_metrics(run_dir)) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    second = subprocess.run([sys.executable, "pretrain/train.py", "--config", "configs/pretrain/tiny_cpu.yaml",
                             f"data.train={shards}", f"run.output_dir={run_dir}"], cwd=REPO, env=launch_env(),
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert second.returncode == 2 and "is in use by pid" in second.stderr and "stop that run" in second.stderr
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    (run,) = _mlflow_runs(run_dir)
    assert run.info.status == "KILLED" and "signal" in run.data.tags["error"]


@pytest.mark.slow
def test_resume_after_kill_gives_the_same_losses(straight, shards, tmp_path) -> None:
    run_dir = tmp_path / "killed"
    cmd = _command(
        "deepspeed", 2, run_dir, shards, "run.max_steps=4", "checkpoint.every=2", "eval.every=2", "runtime.zero_stage=2"
    )
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=launch_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    marker = run_dir / "checkpoints" / "step_00000002" / "COMPLETE"
    deadline = time.monotonic() + 400
    logged = lambda: (run_dir / "metrics.jsonl").exists() and len(_metrics(run_dir)) >= 3  # noqa: E731
    while not (marker.exists() and logged()):  # step 3 logged (MLflow too), after the checkpoint of step 2
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "export").exists()

    _train(
        "deepspeed", 2, run_dir, shards, "run.max_steps=4", "checkpoint.every=2", "eval.every=2", "runtime.zero_stage=2"
    )
    want, got = _metrics(straight), _metrics(run_dir)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for a, b in zip(want, got):
        assert {k: a[k] for k in (*LOSS_KEYS, "lr", "grad_norm")} == {k: b[k] for k in (*LOSS_KEYS, "lr", "grad_norm")}
    runs = _mlflow_runs(run_dir)
    assert len(runs) == 1  # the resumed job continued its MLflow run, each step once
    import mlflow

    history = mlflow.MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}").get_metric_history(runs[0].info.run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx([r["loss"] for r in want])


@pytest.mark.slow
def test_resume_at_another_world_size(straight, shards, tmp_path) -> None:
    """2 ranks wrote step 2; 1 rank goes on from it through DeepSpeed's universal checkpoint."""
    import shutil

    run_dir = tmp_path / "resized"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "step_00000002", run_dir / "checkpoints" / "step_00000002")
    _train("torchrun", 1, run_dir, shards, "run.max_steps=3", "checkpoint.every=0", "runtime.zero_stage=2")
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == [3]
    (run,) = _mlflow_runs(run_dir)  # the checkpoint's MLflow run is in another store: a new run, tagged
    assert run.data.tags["resumed_from_run_id"] == _mlflow_runs(straight)[0].info.run_id
    assert run.info.status == "FINISHED" and "loss" in run.data.metrics
    assert (run_dir / "checkpoints" / "step_00000002_universal" / "COMPLETE").exists()
    assert (run_dir / "export" / "model.safetensors").exists()


@pytest.mark.slow
def test_two_ranks_zero3_bf16_torchrun_one_objective_per_step(shards, tmp_path) -> None:
    run_dir = tmp_path / "zero3"
    _train("torchrun", 2, run_dir, shards, "run.max_steps=3", "checkpoint.every=0", "runtime.zero_stage=3",
           "runtime.precision=bf16", "tracking.enabled=false", "objectives.mode=sample")  # fmt: skip
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:  # one objective ran, the same on both ranks (else the averaged flags would be 0.5)
        ran = [name for name in ("mlm", "mfm_nce", "gmr", "self_contrast", "taco") if row[f"ran_{name}"] == 1.0]
        assert len(ran) == 1 and all(row[f"ran_{n}"] in (0.0, 1.0) for n in ("mlm", "gmr", "taco")), row
        assert math.isfinite(row["loss"])
    from safetensors.torch import load_file

    weights = load_file(str(run_dir / "export" / "model.safetensors"))
    assert weights["frame_proj.weight"].dtype == torch.float32 and weights["frame_proj.weight"].shape[1] == 64


def test_float16_frames_and_compiled_encoders_train_to_the_same_losses(shards, tmp_path) -> None:
    """One rank, 3 steps, dropout off: float32 frames from the loader and an eager model (the old path)
    against float16 frames cast on the device and runtime.compile=true, each loss within float rounding.
    aot_eager traces and compiles the graphs as inductor would but generates no kernels: inductor needs a C++
    compiler on the CPU and took 78 s for its first step here (benchmarks/compile_step.py). ~50 s on 2 cores."""
    common = ["run.max_steps=3", "checkpoint.every=0", "eval.every=0", "tracking.enabled=false",
              "checkpoint.export=false", "model.dropout=0.0"]  # fmt: skip
    _train("torchrun", 1, tmp_path / "old", shards, *common, "data.frames_dtype=float32")
    compiled = ["runtime.compile=true", "runtime.compile_backend=aot_eager"]
    proc = subprocess.run(_command("torchrun", 1, tmp_path / "new", shards, *common, *compiled), cwd=REPO,
                          env=launch_env(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0 and "runtime.compile: 5 encoder modules compiled" in proc.stderr, proc.stderr[-3000:]
    old, new = _metrics(tmp_path / "old"), _metrics(tmp_path / "new")
    assert [r["step"] for r in new] == [1, 2, 3]
    for a, b in zip(old, new):
        for key in LOSS_KEYS:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("run.max_stepz=3", "max_stepz"),
        ("run.max_steps=many", "max_steps"),
        ("objectives.enabled=[mlm,fancy]", "fancy"),
        ("data.train=/nonexistent/shards", "/nonexistent/shards"),
        ("runtime.global_batch_size=6", "global_batch_size"),
        ("model.preset=huge", "huge"),
        ("model.frame_dim=32", "frame_dim"),
        ("data.batch_size=-1", "batch_size"),  # the loader's settings are checked with the rest, before any set-up
        ("data.max_frames=0", "max_frames"),
        ("data.num_workers=3", "num_workers"),  # does not divide data.streams
        ("data.idf=bm25", "data.idf"),
        ("data.frames_dtype=bfloat16", "frames_dtype"),
        ("model.text_pooling=max", "text_pooling"),
        ("run.output_dir=/proc/run", "not writable"),  # checked before any set-up
    ],
)
def test_config_errors_name_the_key_before_any_work(override, message, shards, tmp_path) -> None:
    cmd = [sys.executable, "pretrain/train.py", "--config", "configs/pretrain/tiny_cpu.yaml", f"data.train={shards}",
           f"run.output_dir={tmp_path}", override]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "config error" in proc.stderr and message in proc.stderr
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "mlflow.db").exists()


def test_too_few_shards_for_the_ranks_is_a_config_error_before_any_work(shards, tmp_path) -> None:
    """Two ranks, one shard: a `config error:` line (per rank, unless torchrun stopped the other first), no
    traceback of ours, before a model, an engine or an MLflow run."""
    one = sorted(shards.glob("shard-*.tar"))[0]
    proc = subprocess.run(_command("torchrun", 2, tmp_path, one), cwd=REPO, env=launch_env(), capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0
    assert "config error: data.train: 1 shards cannot feed 2 ranks" in proc.stderr, proc.stderr[-3000:]
    assert "ValueError" not in proc.stderr and "gets no samples" not in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.slow
def test_sigusr1_checkpoints_exits_3_and_the_rerun_finishes(shards, tmp_path) -> None:
    """What the sbatch script relies on: a stop request ends in a checkpoint and exit code 3."""
    from pretrain.loop import PREEMPTED_EXIT

    run_dir = tmp_path / "preempted"
    cmd = [
        sys.executable,
        "pretrain/train.py",
        "--config",
        "configs/pretrain/tiny_cpu.yaml",
        f"data.train={shards}",
        f"run.output_dir={run_dir}",
        *FAST,
        "run.max_steps=6",
        "checkpoint.every=0",
        "tracking.enabled=true",
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=launch_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not (run_dir / "metrics.jsonl").exists() or len(_metrics(run_dir)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == PREEMPTED_EXIT, err[-3000:]
    stopped = _metrics(run_dir)[-1]["step"]
    assert 2 <= stopped < 6
    assert (run_dir / "checkpoints" / f"step_{stopped:08d}" / "COMPLETE").exists()
    assert not (run_dir / "export").exists()

    rerun = subprocess.run(cmd, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert [r["step"] for r in _metrics(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert len(_mlflow_runs(run_dir)) == 1 and _mlflow_runs(run_dir)[0].info.status == "FINISHED"
