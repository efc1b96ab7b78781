"""Preemption across two Slurm nodes (tests/multinode.py), with the MLflow server on the other node and a
straggler, in one job: launch/mlflow_server.sh runs inside node2's namespaces and rank 0 (node1) logs to
it over the bridge (http://node2:5000); USR1 to the batch shell mid-run makes both nodes' ranks
checkpoint after the same step, the job requeues and resumes, and from the resumed run's start node2's
rank runs a quarter of the time (a cgroup freezer, `Straggler`). The run must stay exact (its losses equal
an uninterrupted, unslowed 2-node run's), log each step once in metrics.jsonl and in the one MLflow run,
and record where it waits: node1's rank in the loss all-reduce, for rank 1 on node2.

Why not `tc qdisc ... netem delay` on node2's link: the kernel this was written on has no sch_netem
("Error: Specified qdisc kind is unknown", no module to load), and the cgroup needs nothing but its
filesystem. Why a freezer and not a CPU quota: see `Straggler`.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import threading
import time
from pathlib import Path

import multinode
import pytest
import slurm_cluster
from conftest import small_pretraining_shards
from test_multinode import CONFIG, PRETRAIN, REPO, TWO_NODES, _losses, _train

STEPS = 7  # USR1 after step 2 stops at step 3 or 4 (a step of ~1 s on an idle machine): 3 slowed steps or more
PORT = 5000  # node2's own network namespace: nothing else listens there
URI = f"http://node2:{PORT}"
PYTHON = str(REPO / ".venv" / "bin" / "python")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with multinode.MultiNodeCluster(tmp_path_factory.mktemp("multinode_preempt")) as c:
        yield c


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return small_pretraining_shards(tmp_path_factory.mktemp("multinode_preempt_data"), shard_size=8)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _job(cluster, job: int) -> dict[str, str]:
    proc = cluster.run("node1", "scontrol", "show", "job", "-o", str(job))
    return dict(kv.split("=", 1) for kv in proc.stdout.split() if "=" in kv) if proc.returncode == 0 else {}


class MlflowServer:
    """launch/mlflow_server.sh inside node2's namespaces; its store and artifacts under `root`."""

    def __init__(self, cluster, root: Path) -> None:
        self.cluster, self.store = cluster, root / "mlflow.db"
        env = cluster.env(MLFLOW_STORE=str(self.store), MLFLOW_ARTIFACTS=str(root / "artifacts"), MLFLOW_PORT=str(PORT))
        self.log = root / "server.log"
        with self.log.open("w") as out:
            self.proc = cluster.popen("node2", "bash", str(REPO / "launch" / "mlflow_server.sh"), "--workers", "1",
                                      cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)  # fmt: skip

    def wait_ready(self, timeout: float = 120) -> None:
        """Until /health answers on node1, through the bridge and by node2's name (one python, polling)."""
        poll = (
            "import sys, time, urllib.request\n"
            f"deadline = time.monotonic() + {timeout}\n"
            "while True:\n"
            "    try:\n"
            f"        if urllib.request.urlopen('{URI}/health', timeout=2).status == 200: break\n"
            "    except OSError:\n"
            "        if time.monotonic() > deadline: sys.exit(1)\n"
            "        time.sleep(0.5)\n"
        )
        proc = self.cluster.run("node1", PYTHON, "-c", poll, timeout=timeout + 30)
        assert proc.returncode == 0 and self.proc.poll() is None, self.log.read_text()[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.cluster.run("node2", "kill", "-TERM", f"-{self.proc.pid}")  # its process group (the workers too)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Straggler:
    """Processes that run `running` s of every `running + frozen` s of wall time: a cgroup freezer (v1's
    freezer.state, else v2's cgroup.freeze) thawed and frozen in turn by a thread of the test. The slowdown
    is relative to whatever share of a core the processes get (x4 by default), where a CPU quota (cpu.max,
    cfs_quota_us) caps absolute CPU time: on a loaded machine whose fair share is already near the cap
    (2 cores, several test runs at once), a quota of 20% of a core made the steps only 1.2x longer."""

    def __init__(self, name: str, running: float = 0.1, frozen: float = 0.3) -> None:
        self.running, self.frozen = running, frozen
        v1 = Path("/sys/fs/cgroup/freezer")
        v2 = next((p for p in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))
                   if (p / "cgroup.controllers").exists()), None)  # fmt: skip
        try:
            if (v1 / "cgroup.procs").exists():
                self.path, self.state, self.values = v1 / name, "freezer.state", ("THAWED", "FROZEN")
            elif v2 is not None:
                self.path, self.state, self.values = v2 / name, "cgroup.freeze", ("0", "1")
            else:
                raise OSError("no cgroup freezer: neither /sys/fs/cgroup/freezer (v1) nor a cgroup2 mount")
            self.path.mkdir(exist_ok=True)
        except OSError as e:
            raise slurm_cluster.SlurmSetupError(f"the straggler test needs a cgroup freezer (as root): {e}") from e
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._cycle, daemon=True)

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))  # the whole process, every thread
        if not self.thread.is_alive():
            self.thread.start()

    def _set(self, frozen: bool) -> None:
        (self.path / self.state).write_text(self.values[frozen])

    def _cycle(self) -> None:
        while not self.done.is_set():
            self._set(True)
            time.sleep(self.frozen)
            self._set(False)
            time.sleep(self.running)

    def close(self) -> None:
        """Thaw for good (a frozen process cannot even die), then remove the cgroup once its processes left."""
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()
        if self.path.exists():
            self._set(False)
        deadline = time.monotonic() + 30
        while self.path.exists():
            try:
                self.path.rmdir()  # refused while a process is in it (the job's, on its way out)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def _ranks(cluster, node: str) -> list[int]:
    """The training processes on `node` (not the config check the batch shell runs)."""
    found = []
    for pid in cluster.pids(node):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "pretrain/train.py" in cmdline and "--check" not in cmdline and "srun" not in cmdline:
            found.append(pid)
    return found


def _submit(cluster, submit: Path, run_dir: Path, shards: Path, *overrides: str, **env: str) -> tuple[int, Path]:
    """sbatch on node1, without --wait (it polls at growing intervals: tens of seconds late); (job id, its log)."""
    (submit / "logs").mkdir(parents=True, exist_ok=True)
    args = [*TWO_NODES, str(PRETRAIN), CONFIG, *_train(shards, run_dir, f"run.max_steps={STEPS}", *overrides)]
    proc = cluster.run("node1", "sbatch", "--parsable", f"--chdir={submit}", *args, cwd=submit, env=cluster.env(**env))
    assert re.match(r"\d+", proc.stdout), proc.stdout + proc.stderr
    job = int(re.match(r"\d+", proc.stdout).group(0))
    return job, submit / "logs" / f"vlp-pretrain-{job}.out"


def _wait(cluster, job: int, log: Path, until, what: str, timeout: float = 240) -> None:
    """Poll `until()` while the job is alive; a job that ended (or a timeout) first fails with its log."""
    deadline = time.monotonic() + timeout
    while True:
        state = _job(cluster, job).get("JobState")  # before `until()`: a job that ends in between is not a failure
        if until():
            return
        text = log.read_text() if log.exists() else "(no log yet)"
        assert state in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING"), f"job {job} {state}\n{text[-6000:]}"
        assert time.monotonic() < deadline, f"{what}: not in {timeout} s (job {state})\n{text[-6000:]}"
        time.sleep(0.3)


def _completed(cluster, job: int, log: Path) -> dict[str, str]:
    _wait(cluster, job, log, lambda: _job(cluster, job).get("JobState") == "COMPLETED", "the end")
    return _job(cluster, job)


@pytest.mark.slow
def test_preempted_straggling_job_resumes_exactly_into_one_mlflow_run(cluster, shards, tmp_path) -> None:
    """One 2-node job (7 steps) against an uninterrupted, unslowed one of the same config: USR1 after
    step 2 -> both ranks (node1, node2) got the signal and checkpoint after the same step -> leave
    together, exit 3, requeue, resume; node2's rank runs a quarter of the time from the resume on. Each
    step once in metrics.jsonl and in the MLflow run on node2's server, the same run id before and after
    the requeue, the losses exactly the reference's; in the slowed steps node1's rank waits in the loss
    all-reduce far longer than in the reference and names rank 1 on node2 the slowest. ~125 s on 2 cores
    at load 1-3, ~270 s at load 7-11: mostly the 3 start-ups and the requeue hold (cred_expire + 1 = 16 s)."""
    server = MlflowServer(cluster, tmp_path)  # starts while the reference trains
    try:
        _reference_then_preempted_straggler(cluster, shards, tmp_path, server)
    finally:
        server.stop()


def _reference_then_preempted_straggler(cluster, shards: Path, tmp_path: Path, server: MlflowServer) -> None:
    ref_dir = tmp_path / "reference" / "run"
    job, log = _submit(cluster, tmp_path / "reference", ref_dir, shards)
    try:
        record = _completed(cluster, job, log)
    finally:
        cluster.run("node1", "scancel", str(job))
    assert record["ExitCode"] == "0:0", log.read_text()[-6000:]
    server.wait_ready()

    run_dir = tmp_path / "job" / "run"
    job, log = _submit(cluster, tmp_path / "job", run_dir, shards, "tracking.enabled=true", MLFLOW_TRACKING_URI=URI)
    metrics = run_dir / "metrics.jsonl"
    straggler = Straggler(f"vlp_straggler_{job}")
    try:
        _wait(cluster, job, log, lambda: metrics.exists() and len(_records(run_dir)) >= 2, "step 2")
        cluster.run("node1", "scancel", "--signal=USR1", "--batch", str(job), timeout=30)
        _wait(cluster, job, log, lambda: "SLURM_RESTART_COUNT=1" in log.read_text(), "the requeue")
        resumed = lambda: len(re.findall(r"resumed from", log.read_text().partition("SLURM_RESTART_COUNT=1")[2]))  # noqa: E731
        _wait(cluster, job, log, lambda: resumed() == 2, "the resume")  # both ranks loaded the checkpoint
        node2 = _ranks(cluster, "node2")
        assert node2, "no training process on node2"
        for pid in node2:
            straggler.add(pid)
        slowed_after = len(_records(run_dir))  # the checkpoint's step, the resumed ranks not yet past their set-up
        record = _completed(cluster, job, log)
    finally:
        cluster.run("node1", "scancel", str(job))
        straggler.close()
    text = log.read_text()
    assert record["Restarts"] == "1" and record["ExitCode"] == "0:0", text[-6000:]

    # --- preemption: both nodes' ranks got USR1 from srun and stopped after the same step
    first, _, second = text.partition("SLURM_RESTART_COUNT=1")
    assert "got SIGUSR1" in first and f"requeueing job {job}" in first, first[-6000:]
    stops = re.findall(r"stop requested \(SIGUSR1 received here\): rank (\d) on (node\d) checkpoints at step (\d+)",
                       first)  # fmt: skip
    assert sorted(stops)[:2] == sorted(stops) and len(stops) == 2, first[-6000:]
    (r0, h0, k0), (r1, h1, k1) = sorted(stops)
    assert (r0, h0, r1, h1) == ("0", "node1", "1", "node2") and k0 == k1, stops
    k = int(k0)
    assert 2 <= k < STEPS
    # Both ranks left the barrier after the checkpoint and the MLflow run's end before the first exit (srun
    # --kill-on-bad-exit then ends the other, still in its interpreter's teardown).
    ended = [m.start() for m in re.finditer(rf"stopped at step {k} on request", first)]
    exit3 = re.search(r"srun: error: node\d: task \d: Exited with exit code 3", first)
    assert len(ended) == 2 and exit3 and max(ended) < exit3.start(), first[-4000:]
    assert re.search(rf"resumed from \S+/step_{k:08d} at step {k}\b", second), second[-4000:]
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    assert ckpts == [f"step_{k:08d}", f"step_{STEPS:08d}"], ckpts
    saved = {p.name for p in (run_dir / "checkpoints" / f"step_{k:08d}").rglob("*optim_states.pt")}
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= saved, saved

    # --- exact: each step once, the losses of the uninterrupted, unslowed run
    records = _records(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert _losses(run_dir) == _losses(ref_dir)

    # --- MLflow on node2, reached over the bridge: one run, continued by the requeued job, each step once
    import mlflow

    ids = re.findall(rf"MLflow run (\w+) at {re.escape(URI)}", text)
    assert len(ids) == 2 and ids[0] == ids[1], ids
    client = mlflow.MlflowClient(f"sqlite:///{server.store}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs] == ids[:1] and runs[0].info.status == "FINISHED"
    for key in ("loss", "step_s", "sync_wait_max_s", "slowest_rank"):
        history = client.get_metric_history(ids[0], key)
        assert sorted(m.step for m in history) == list(range(1, STEPS + 1)), (key, history)
    logged = {m.step: m.value for m in client.get_metric_history(ids[0], "loss")}
    assert logged == {r["step"]: r["loss"] for r in records}

    # --- the straggler: where the fast rank waits, and for whom
    slowed = [r for r in records if r["step"] > slowed_after]
    assert len(slowed) >= 2, (slowed_after, k)
    # The baseline: this job's steps before the preemption (unslowed, the MLflow server up and idle). The
    # reference's waits are noisier (up to 0.18 s) while the MLflow server starts beside it.
    before = [r for r in records if r["step"] <= k]
    waited = statistics.median(r["sync_wait_max_s"] for r in slowed)
    unslowed = statistics.median(r["sync_wait_max_s"] for r in before)
    summary = [(r["step"], round(r["sync_wait_max_s"], 3), r["slowest_rank"], round(r["step_s"], 2)) for r in records]
    assert all(r["slowest_rank"] == 1 for r in slowed), summary
    assert waited > 4 * unslowed and waited > 0.1, (waited, unslowed, summary)
    # Every rank's step takes the straggler's time (2x and more).
    assert statistics.median(r["step_s"] for r in slowed) > 1.3 * statistics.median(r["step_s"] for r in before)
    assert "(slowest: rank 1 on node2)" in second, second[-4000:]
    print(f"sync_wait_max_s (medians): slowed {waited:.3f} s, before {unslowed:.3f} s; by step {summary}")
