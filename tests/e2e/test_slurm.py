"""The launch scripts on a real single-node Slurm (tests/slurm_cluster.py starts it): an sbatch
pretraining job with 2 tasks, preemption by the warning signal -> checkpoint -> requeue ->
resume, the MASTER_ADDR/MASTER_PORT derivation, the local and MLflow server launchers.

Jobs are submitted from a temporary directory, so their logs land in <tmp>/logs/ and the
repository stays clean. sacct does not work without accounting: the tests poll scontrol.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import slurm_cluster
from conftest import small_pretraining_shards
from test_finetune import TINY as FINETUNE_TINY
from test_pretrain import FAST, LOSS_KEYS

from launch.pipeline import free_port

REPO = Path(__file__).resolve().parents[2]
PRETRAIN = REPO / "launch" / "pretrain_howto100m.sh"
CONFIG = "configs/pretrain/tiny_cpu.yaml"  # relative: the script finds it in the repository
# The CPU node: 2 ranks of 1 core each, no GPU (the script's defaults are 8 GPUs x 8 cores).
CPU_NODE = ["--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1"]


@pytest.fixture(scope="session")
def slurm_node() -> str:
    """A working single-node Slurm (left running afterwards); an error, never a skip, without one."""
    return slurm_cluster.ensure_cluster()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return small_pretraining_shards(tmp_path_factory.mktemp("slurm_data"), shard_size=8)


def _env() -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "MLFLOW_TRACKING_URI")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1")
    return env


def _submit_dir(tmp_path: Path) -> Path:
    (tmp_path / "logs").mkdir(exist_ok=True)  # Slurm does not create the --output folder
    return tmp_path


def _sbatch(submit: Path, *args: str, timeout: float = 300) -> tuple[int, subprocess.CompletedProcess]:
    """Submit (with --wait: and wait); a job still there at the timeout is cancelled, not left to block the node."""
    try:
        proc = subprocess.run(
            ["sbatch", "--parsable", *args], cwd=submit, env=_env(), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        job = re.match(r"(\d+)", e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or "")
        if job:
            subprocess.run(["scancel", job.group(1)], capture_output=True)
        raise
    match = re.match(r"(\d+)", proc.stdout)
    assert match, f"sbatch printed no job id: {proc.stdout}{proc.stderr}"
    return int(match.group(1)), proc


def _job(job_id: int) -> dict[str, str]:
    """`scontrol show job` as a dict ({} once the job has left the controller)."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {}
    return dict(kv.split("=", 1) for kv in proc.stdout.split() if "=" in kv)


def _train_args(shards: Path, run_dir: Path, *overrides: str) -> list[str]:
    return [str(PRETRAIN), CONFIG, f"data.train={shards}", f"run.output_dir={run_dir}", *FAST, *overrides]


def _metrics_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def _mlflow_runs(run_dir: Path) -> tuple:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.slow
def test_sbatch_two_tasks_trains_checkpoints_exports_and_logs(slurm_node, shards, tmp_path) -> None:
    submit, run_dir = _submit_dir(tmp_path), tmp_path / "run"
    job_id, proc = _sbatch(
        submit,
        "--wait",
        *CPU_NODE,
        *_train_args(
            shards, run_dir, "run.max_steps=4", "checkpoint.every=2", "eval.every=2", f"eval.held_out={shards}"
        ),
    )
    log = submit / "logs" / f"vlp-pretrain-{job_id}.out"  # --output=logs/%x-%j.out under the submit dir
    assert log.exists(), f"no log at {log}: {list((submit / 'logs').iterdir())}"
    text = log.read_text()
    assert proc.returncode == 0, text[-6000:]

    assert f"master {slurm_node}:{20000 + job_id % 20000}" in text and "2 tasks" in text
    assert "SLURM_RESTART_COUNT=0" in text and f"run dir {run_dir}" in text and "srun exited with 0" in text
    assert _metrics_steps(run_dir) == [1, 2, 3, 4]
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    assert ckpts == ["step_00000002", "step_00000004"]
    assert all((run_dir / "checkpoints" / c / "COMPLETE").exists() for c in ckpts)
    assert (run_dir / "export" / "model.safetensors").exists() and (run_dir / "export" / "config.yaml").exists()

    client, runs = _mlflow_runs(run_dir)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    for key in (*LOSS_KEYS, "lr", "zeroshot_t2v_R_1"):
        assert key in runs[0].data.metrics, key
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")] == [1, 2, 3, 4]


@pytest.mark.slow
def test_a_config_error_ends_the_job_with_one_line_and_exit_2(slurm_node, shards, tmp_path) -> None:
    """Checked in the batch shell before srun: the documented exit 2 and the one-line message, not srun's 143."""
    submit, run_dir = _submit_dir(tmp_path), tmp_path / "run"
    job_id, proc = _sbatch(submit, "--wait", *CPU_NODE, *_train_args(shards, run_dir, "run.max_stepz=4"))
    text = (submit / "logs" / f"vlp-pretrain-{job_id}.out").read_text()
    assert proc.returncode == 2, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("config error")]
    assert len(errors) == 1 and "max_stepz" in errors[0] and "launch: srun" not in text


@pytest.mark.slow
def test_a_fresh_checkout_logs_and_names_a_python_without_the_project(slurm_node, tmp_path) -> None:
    """The documented command from the root of a checkout (what git gives: no .venv, no mkdir) with a
    python that lacks the project: the job writes its log to logs/ and ends in the batch shell with
    one line naming the python and the fix, exit 2, before srun."""
    checkout = tmp_path / "checkout"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    for name in files:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, checkout / name)
    assert not (checkout / ".venv").exists() and (checkout / "logs").is_dir()
    bare = tmp_path / "bare"  # a python with none of the project's packages
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    env = {**_env(), "VLP_PYTHON": str(bare / "bin" / "python")}
    proc = subprocess.run(["sbatch", "--parsable", "--wait", *CPU_NODE, "launch/pretrain_howto100m.sh", CONFIG],
                          cwd=checkout, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    job_id = int(re.match(r"(\d+)", proc.stdout).group(1))
    log = checkout / "logs" / f"vlp-pretrain-{job_id}.out"
    assert log.exists(), f"no log: {proc.stdout}{proc.stderr}"
    text = log.read_text()
    assert proc.returncode == 2, text
    assert f"launch: {bare}/bin/python lacks torch deepspeed webdataset omegaconf mlflow" in text, text
    assert "VLP_PYTHON" in text and "launch: srun" not in text and "Traceback" not in text, text


@pytest.mark.slow
def test_warning_signal_checkpoints_requeues_and_resumes(slurm_node, shards, tmp_path) -> None:
    """USR1 to the batch shell (what --signal=B:USR1@300 sends) mid-run: the trainer checkpoints and
    exits 3, the script requeues the job, the same job id resumes and finishes all 8 steps."""
    submit, run_dir = _submit_dir(tmp_path), tmp_path / "run"
    job_id, _ = _sbatch(
        submit, *CPU_NODE, *_train_args(shards, run_dir, "run.max_steps=8", "checkpoint.every=0", "eval.every=0")
    )
    log = submit / "logs" / f"vlp-pretrain-{job_id}.out"
    job = _preempt_after(job_id, run_dir, log, steps=2)  # after step 2, well before step 8
    text = log.read_text()
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1" and job["ExitCode"] == "0:0", text[-6000:]

    first, _, second = text.partition("SLURM_RESTART_COUNT=1")  # one log: --open-mode=append
    assert second, text[-6000:]
    assert "SLURM_RESTART_COUNT=0" in first and "got SIGUSR1" in first and f"requeueing job {job_id}" in first
    assert "Exited with exit code 3" in first  # the trainer's PREEMPTED_EXIT, not a death by the signal
    assert "srun exited with 0" not in first and "srun exited with 0" in second
    resumed = re.search(r"resumed from \S+/step_(\d+) at step (\d+)", second)
    assert resumed, second[-4000:]
    preempted_at = int(resumed.group(2))
    assert 2 <= preempted_at < 8
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    assert ckpts == [f"step_{preempted_at:08d}", "step_00000008"]  # checkpoint.every=0: the preemption one

    assert _metrics_steps(run_dir) == list(range(1, 9))  # every step exactly once across both runs
    client, runs = _mlflow_runs(run_dir)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the requeued run continued it
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")) == list(range(1, 9))
    assert (run_dir / "export" / "model.safetensors").exists()


def _preempt_after(job_id: int, run_dir: Path, log: Path, steps: int) -> dict[str, str]:
    """USR1 to the batch shell once `steps` steps are logged (what --signal=B:USR1@N sends); the job's
    last record once it has ended. The job is cancelled on the way out whatever happens."""
    try:
        deadline = time.monotonic() + 240
        while len(_metrics_steps(run_dir)) < steps:
            assert _job(job_id).get("JobState") in ("PENDING", "RUNNING"), log.read_text()[-6000:]
            assert time.monotonic() < deadline, "no training step in time"
            time.sleep(0.3)
        subprocess.run(["scancel", "--signal=USR1", "--batch", str(job_id)], check=True)
        return _wait_done(job_id, log)
    finally:
        subprocess.run(["scancel", str(job_id)], capture_output=True)


def _wait_done(job_id: int, log: Path, timeout: float = 300) -> dict[str, str]:
    """The job's last record once it has ended (or left the controller)."""
    deadline = time.monotonic() + timeout
    while (job := _job(job_id)).get("JobState") not in (
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        None,
    ):
        assert time.monotonic() < deadline, f"job {job_id} still {job.get('JobState')}\n{log.read_text()[-4000:]}"
        time.sleep(1)
    return job


@pytest.fixture(scope="module")
def finetune_sets(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("slurm_finetune_sets")
    proc = subprocess.run([sys.executable, "-m", "launch.main_job", f"workdir={work}", "videos=24", "tagger=heuristic",
                           "eval_queries=0", "until=data"], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work / "shards"


@pytest.mark.slow
def test_finetune_job_preempted_requeues_and_finishes(slurm_node, finetune_sets, tmp_path) -> None:
    """launch/finetune.sh with 2 tasks: USR1 mid-run checkpoints and requeues like pretraining; the
    requeued job finishes the steps, evaluates and writes the metrics, in one MLflow run."""
    submit, run_dir = _submit_dir(tmp_path), tmp_path / "run"
    job_id, _ = _sbatch(submit, *CPU_NODE, str(REPO / "launch" / "finetune.sh"), "msrvtt",
                        "configs/finetune/msrvtt.yaml", f"data.root={finetune_sets / 'msrvtt'}",
                        f"run.output_dir={run_dir}", *FINETUNE_TINY, "run.max_steps=5", "task.rerank=3",
                        "data.max_frames=8")  # fmt: skip
    log = submit / "logs" / f"vlp-finetune-{job_id}.out"
    job = _preempt_after(job_id, run_dir, log, steps=1)
    text = log.read_text()
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", text[-6000:]
    first, _, second = text.partition("SLURM_RESTART_COUNT=1")
    assert "got SIGUSR1" in first and "Exited with exit code 3" in first and "resumed from" in second, text[-6000:]
    assert _metrics_steps(run_dir) == [1, 2, 3, 4, 5]
    metrics = json.loads((run_dir / "eval" / "test_1ka" / "step_00000005" / "metrics.json").read_text())
    assert set(metrics) == {"R@1", "R@5", "R@10", "MedR", "MeanR"}
    _, runs = _mlflow_runs(run_dir)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and "test_1ka/R_1" in runs[0].data.metrics


def _bash(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", script], cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow
def test_master_addr_and_port_come_from_the_job(slurm_node) -> None:
    """4 nodes: the first host of the (compressed) node list, a port from the job id (real scontrol)."""
    env = {**_env(), "SLURM_JOB_ID": "1234567", "SLURM_JOB_NODELIST": "gpu-a[017-019],gpu-b001", "MASTER_PORT": "1"}
    proc = _bash('source launch/slurm_env.sh && vlp_master_env && echo "$MASTER_ADDR $MASTER_PORT"', env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["gpu-a017", str(20000 + 1234567 % 20000)]

    outside = {k: v for k, v in _env().items() if not k.startswith("SLURM_")}
    proc = _bash("source launch/slurm_env.sh && vlp_master_env", outside)
    assert proc.returncode == 2 and "not inside a Slurm job" in proc.stderr


def test_launch_scripts_parse_and_fail_clearly() -> None:
    scripts = sorted((REPO / "launch").glob("*.sh"))
    assert {p.name for p in scripts} >= {"pretrain_howto100m.sh", "finetune.sh", "local.sh", "mlflow_server.sh"}
    for script in scripts:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, (script, proc.stderr)
    if shutil.which("shellcheck"):  # a check where it is installed; the project does not need it
        proc = subprocess.run(
            ["shellcheck", "-x", *[str(p.relative_to(REPO)) for p in scripts]], cwd=REPO, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stdout
    for script in ("pretrain_howto100m.sh", "finetune.sh"):  # no hyperparameters in the launch scripts
        text = (REPO / "launch" / script).read_text()
        assert not re.search(r"\b(lr|batch_size|max_steps|zero_stage|warmup)\b", text.replace("key=value", "")), script

    env = {**_env(), "VLP_REPO": str(REPO)}
    proc = _bash("bash launch/finetune.sh no_such_task configs/pretrain/tiny_cpu.yaml", env)
    assert proc.returncode == 2 and "no finetune task 'no_such_task'" in proc.stderr, proc.stderr
    assert "finetune/no_such_task.py does not exist" in proc.stderr
    proc = _bash("bash launch/pretrain_howto100m.sh", env)
    assert proc.returncode == 2 and "usage: sbatch launch/pretrain_howto100m.sh CONFIG" in proc.stderr
    proc = _bash("bash launch/local.sh two configs/pretrain/tiny_cpu.yaml", env)
    assert proc.returncode == 2 and "usage: bash launch/local.sh NPROC CONFIG" in proc.stderr


@pytest.mark.slow
def test_local_launcher_two_cpu_ranks(shards, tmp_path) -> None:
    run_dir = tmp_path / "run"
    env = {k: v for k, v in _env().items() if k != "DS_ACCELERATOR"}  # the script picks the CPU itself
    proc = subprocess.run(["bash", str(REPO / "launch" / "local.sh"), "2", CONFIG, f"data.train={shards}",
                           f"run.output_dir={run_dir}", *FAST, "run.max_steps=2", "checkpoint.every=0",
                           "tracking.enabled=false", "checkpoint.export=false"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "2 local ranks, DS_ACCELERATOR=cpu" in proc.stdout
    assert _metrics_steps(run_dir) == [1, 2]


@pytest.mark.slow
def test_mlflow_server_takes_runs_from_another_host_name(tmp_path) -> None:
    """The tracking server that multi-node jobs log to: a run logged through http://<hostname>:PORT
    (not localhost: MLflow 3 refuses unknown Host headers) lands in its sqlite store."""
    import mlflow

    port = free_port()
    env = {**_env(), "MLFLOW_PORT": str(port)}
    server_log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(["bash", str(REPO / "launch" / "mlflow_server.sh"), "--workers", "1"], cwd=tmp_path,
                              env=env, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        host = socket.gethostname()
        deadline = time.monotonic() + 120
        while True:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/health", headers={"Host": f"{host}:{port}"})
                if urllib.request.urlopen(request, timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "the MLflow server did not start"
            time.sleep(0.5)
        client = mlflow.MlflowClient(f"http://{host}:{port}")
        run = client.create_run(client.create_experiment("launch-test"))
        client.log_metric(run.info.run_id, "loss", 1.5, step=3)
        client.set_terminated(run.info.run_id)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        server_log.close()
    store = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow' / 'mlflow.db'}")
    assert [m.step for m in store.get_metric_history(run.info.run_id, "loss")] == [3]
    assert (tmp_path / "runs" / "mlflow" / "artifacts").is_dir()
