"""Pretraining across two Slurm nodes (tests/multinode.py: network, UTS and mount namespaces on this
machine, a bridge between them, one slurmd per node): the ranks rendezvous over TCP between the
nodes (gloo), MASTER_ADDR is the first node's hostname, and the per-step losses equal a 2-rank run
on one node. The same for a finetune recipe (TVR), its corpus evaluation spread over the two nodes'
ranks included. Faults: a node's ranks killed mid-run, a rendezvous that never completes.

The cluster is the module's (started once, torn down at the end, also on failure). Jobs are
submitted on node1 with the cluster's own SLURM_CONF; the filesystem is shared by the nodes.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import multinode
import pytest
from conftest import small_pretraining_shards
from test_eval_ranks import small_sets
from test_finetune import TINY as FINETUNE_TINY
from test_pretrain import FAST

REPO = Path(__file__).resolve().parents[2]
PRETRAIN = REPO / "launch" / "pretrain_howto100m.sh"
CONFIG = "configs/pretrain/tiny_cpu.yaml"
# One rank per node, one core each, no GPU (the script's defaults are 8 GPUs x 8 cores).
TWO_NODES = ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1"]
QUIET = ["checkpoint.every=0", "eval.every=0", "tracking.enabled=false", "checkpoint.export=false"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with multinode.MultiNodeCluster(tmp_path_factory.mktemp("multinode")) as c:
        yield c


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return small_pretraining_shards(tmp_path_factory.mktemp("multinode_data"), shard_size=8)


def _losses(run_dir: Path) -> list[dict[str, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k == "step" or k.endswith("loss")} for line in lines]


def _sbatch(
    cluster, submit: Path, *args: str, timeout: float = 240, name: str = "vlp-pretrain"
) -> tuple[int, str, int]:
    """sbatch --wait on node1; (job id, its log, sbatch's exit status). A job left at the timeout is cancelled."""
    (submit / "logs").mkdir(parents=True, exist_ok=True)
    proc = cluster.popen("node1", "sbatch", "--parsable", "--wait", f"--chdir={submit}", *args, cwd=submit,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        cluster.run("node1", "scancel", "--user=root")
        raise AssertionError(f"the job did not end in {timeout} s\n{cluster.logs()}") from None
    match = re.match(r"(\d+)", out)
    assert match, f"sbatch printed no job id: {out}{err}"
    job = int(match.group(1))
    log = submit / "logs" / f"{name}-{job}.out"
    return job, log.read_text() if log.exists() else f"(no log)\n{cluster.logs()}", proc.returncode


def _train(shards: Path, run_dir: Path, *overrides: str) -> list[str]:
    return [f"data.train={shards}", f"run.output_dir={run_dir}", *FAST, *QUIET, *overrides]


def _local_two_ranks(shards: Path, run_dir: Path, *overrides: str) -> None:
    """The reference: the same config, 2 ranks on one node (torchrun, host namespace)."""
    args = ["bash", str(REPO / "launch" / "local.sh"), "2", CONFIG, *_train(shards, run_dir, *overrides)]
    proc = subprocess.run(args, cwd=run_dir.parent, capture_output=True, text=True, timeout=240,
                          env=_host_env())  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def _host_env() -> dict[str, str]:
    import os

    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "MLFLOW_TRACKING_URI", "DS_ACCELERATOR")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_two_nodes_train_with_the_losses_of_one_node(cluster, shards, tmp_path, stage) -> None:
    """sbatch --nodes=2: one rank on node1, one on node2, gloo over the bridge; ZeRO-2 and ZeRO-3 give
    the per-step losses of the same config on 2 ranks of one node, exactly. ~50 s each."""
    steps = [f"runtime.zero_stage={stage}", "run.max_steps=3"]
    job, log, rc = _sbatch(cluster, tmp_path, *TWO_NODES, str(PRETRAIN), CONFIG,
                           *_train(shards, tmp_path / "multi", *steps))  # fmt: skip
    assert rc == 0, log[-6000:]
    assert f"nodes node[1-2], 2 tasks, master node1:{20000 + job % 20000}" in log, log[-3000:]
    (tmp_path / "local").mkdir()
    _local_two_ranks(shards, tmp_path / "local" / "run", *steps)
    multi, local = _losses(tmp_path / "multi"), _losses(tmp_path / "local" / "run")
    assert [m["step"] for m in multi] == [1, 2, 3]
    assert multi == local


@pytest.fixture(scope="module")
def tvr(tmp_path_factory) -> Path:
    """The synthetic TVR set (seed 0, 16 videos, 20 eval queries), converted, in shards of 4 (test_eval_ranks')."""
    return small_sets(tmp_path_factory.mktemp("multinode_tvr"), ("tvr",)) / "tvr"


def _finetune_args(tvr: Path, run_dir: Path) -> list[str]:
    """TVR for 2 steps, then the val split's corpus evaluation (VCMR, SVMR, VR) spread over the ranks."""
    return [f"data.root={tvr}", f"run.output_dir={run_dir}", *FINETUNE_TINY, "run.max_steps=2", "data.test_split=null",
            "task.search.top_videos=4", "tracking.enabled=false", "eval.codalab_zip=false"]  # fmt: skip


EVAL_FILES = ("tvr_val_submission.json", "metrics.json")


@pytest.mark.slow
def test_two_nodes_finetune_and_evaluate_like_one_node(cluster, tvr, tmp_path) -> None:
    """sbatch --nodes=2 launch/finetune.sh tvr: one rank per node; the per-step losses, the val split's
    submission file and its metrics (corpus evaluation over both nodes' ranks, finetune/ranks.py) equal
    a 2-rank torchrun run on one node, byte for byte. ~70 s."""
    multi, local = tmp_path / "multi", tmp_path / "local"
    job, log, rc = _sbatch(cluster, tmp_path, *TWO_NODES, str(REPO / "launch" / "finetune.sh"), "tvr",
                           "configs/finetune/tvr.yaml", *_finetune_args(tvr, multi), name="vlp-finetune")  # fmt: skip
    assert rc == 0, log[-6000:]
    assert f"nodes node[1-2], 2 tasks, master node1:{20000 + job % 20000}" in log, log[-3000:]
    cmd = [str(REPO / ".venv" / "bin" / "python"), "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(REPO / "finetune" / "tvr.py"), "--config", str(REPO / "configs/finetune/tvr.yaml"),
           *_finetune_args(tvr, local)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240,
                          env={**_host_env(), "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)})  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert [m["step"] for m in _losses(multi)] == [1, 2]
    assert _losses(multi) == _losses(local)
    folder = Path("eval") / "val" / "step_00000002"
    for name in EVAL_FILES:
        assert (multi / folder / name).read_bytes() == (local / folder / name).read_bytes(), name
    metrics = json.loads((multi / folder / "metrics.json").read_text())
    assert {"VCMR", "SVMR", "VR"} <= set(metrics), metrics


def _start_job(cluster, submit: Path, run_dir: Path, shards: Path, *overrides: str) -> subprocess.Popen:
    (submit / "logs").mkdir(parents=True, exist_ok=True)
    args = [*TWO_NODES, str(PRETRAIN), CONFIG, *_train(shards, run_dir, "run.max_steps=200", *overrides)]
    return cluster.popen("node1", "sbatch", "--parsable", "--wait", "--no-requeue", f"--chdir={submit}", *args,
                         cwd=submit, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _after_steps(cluster, proc: subprocess.Popen, run_dir: Path, steps: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not (run_dir / "metrics.jsonl").exists() or len(_losses(run_dir)) < steps:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            cluster.run("node1", "scancel", "--user=root")
            raise AssertionError(f"no step {steps} (sbatch exit {proc.poll()})\n{cluster.logs()}")
        time.sleep(0.3)


def _ended(cluster, proc: subprocess.Popen, submit: Path, within: float) -> tuple[str, float]:
    """The job's log and how long it took to end, once sbatch --wait returns; the job is cancelled past `within`."""
    start = time.monotonic()
    try:
        out, _ = proc.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        proc.kill()
        cluster.run("node1", "scancel", "--user=root")
        logs = "".join(p.read_text() for p in (submit / "logs").glob("*.out"))
        raise AssertionError(f"the job still ran {within} s after the fault\n{logs[-6000:]}") from None
    elapsed = time.monotonic() - start
    job = int(re.match(r"(\d+)", out).group(1))
    assert proc.returncode != 0, "the job succeeded although a node was lost"
    return (submit / "logs" / f"vlp-pretrain-{job}.out").read_text(), elapsed


@pytest.mark.slow
def test_a_node_killed_mid_run_ends_the_job_naming_the_lost_rank(cluster, shards, tmp_path) -> None:
    """node2's rank SIGKILLed after step 1: srun (--kill-on-bad-exit) names the task and node that died
    and ends the step at once, rank 0 on node1 included; the job ends non-zero. ~40 s. (Outside Slurm,
    e.g. under torchrun, rank 0's next collective fails on the reset connection and names rank 1 on
    node2 the way the link-cut test below checks.)"""
    run_dir = tmp_path / "run"
    proc = _start_job(cluster, tmp_path, run_dir, shards, "runtime.timeout_s=60")
    _after_steps(cluster, proc, run_dir, 1)
    killed_at = datetime.now(UTC)
    assert cluster.kill_ranks("node2"), "no training process on node2"
    log, _ = _ended(cluster, proc, tmp_path, within=60)
    assert "srun: error: node2: task 1: Killed" in log and "srun exited with 0" not in log, log[-6000:]
    # How long the step took to end, from the job's own log: sbatch --wait polls the job at growing intervals,
    # so the time it takes to return says little about how quickly the job ended.
    ended_at = datetime.fromisoformat(re.search(r"launch: (\S+) srun exited with", log).group(1))
    assert (ended_at - killed_at).total_seconds() < 30, (ended_at, killed_at, log[-3000:])


def _rank(cluster, node: str, rank: int, shards: Path, run_dir: Path, port: int, *overrides: str) -> subprocess.Popen:
    """One rank of 2 started by hand on `node` (what torchrun or any launcher does), MASTER_ADDR=node1."""
    env = cluster.env(RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE="2", MASTER_ADDR="node1", MASTER_PORT=str(port),
                      PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")  # fmt: skip
    args = [str(REPO / ".venv" / "bin" / "python"), str(REPO / "pretrain" / "train.py"), "--config", str(REPO / CONFIG)]
    return cluster.popen(node, *args, *_train(shards, run_dir, *overrides), env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)  # fmt: skip


@pytest.mark.slow
def test_without_slurm_a_killed_rank_is_named_by_the_survivor(cluster, shards, tmp_path) -> None:
    """Ranks started by hand on node1 and node2 (no srun to end the step): node2's rank SIGKILLed after
    step 1; rank 0's next collective fails on the reset connection at once, and it exits 1 naming rank
    1 on node2 and its address, well before the timeout (60 s). ~40 s."""
    run_dir = tmp_path / "run"
    ranks = [_rank(cluster, f"node{r + 1}", r, shards, run_dir, 29556, "run.max_steps=200", "runtime.timeout_s=60")
             for r in (0, 1)]  # fmt: skip
    try:
        _after_steps(cluster, ranks[0], run_dir, 1)
        assert cluster.kill_ranks("node2"), "no training process on node2"
        start = time.monotonic()
        out, _ = ranks[0].communicate(timeout=50)
        elapsed = time.monotonic() - start
    finally:
        for proc in ranks:
            proc.kill()
    assert ranks[0].returncode != 0, out[-4000:]
    assert "collective failed on rank 0 on node1: lost the connection to rank 1 on node2 (10.77.0.2)" in out, out[
        -6000:
    ]
    assert elapsed < 30, elapsed


@pytest.mark.slow
def test_a_node_cut_off_the_network_fails_rank_0_within_the_timeout(cluster, shards, tmp_path) -> None:
    """node2's link down after step 1 (nothing is reset: packets vanish): rank 0 waits runtime.timeout_s,
    then exits 1 naming the rank and host it got no answer from, instead of hanging. srun cannot reach
    node2 to end its task: with the link back the job ends non-zero. ~60 s."""
    run_dir = tmp_path / "run"
    proc = _start_job(cluster, tmp_path, run_dir, shards, "runtime.timeout_s=10")
    _after_steps(cluster, proc, run_dir, 1)
    cluster.cut_link("node2")
    start, log = time.monotonic(), ""
    try:
        while "node1: task 0: Exited with exit code 1" not in log and time.monotonic() - start < 60:
            time.sleep(0.5)
            log = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.out"))
        elapsed = time.monotonic() - start
    finally:
        _link_up(cluster, "node2")
    _ended(cluster, proc, tmp_path, within=90)
    message = "collective failed on rank 0 on node1: got no answer in time from (or lost) rank 1 on node2 (10.77.0.2)"
    assert message in log and "runtime.timeout_s=10 s" in log, log[-6000:]
    assert elapsed < 40, (elapsed, log[-3000:])  # the timeout (10 s) and the way out, not SlurmdTimeout (300 s)


def _link_up(cluster, node: str) -> None:
    """Put the link back and the node in service (the next test needs both nodes)."""
    hub = ["nsenter", "-t", str(cluster.holders["hub"].pid), "-n", "--"]
    subprocess.run([*hub, "ip", "link", "set", f"v{node}", "up"], check=True)
    cluster.run("node1", "scontrol", "update", f"nodename={node}", "state=resume")


@pytest.mark.slow
def test_a_rendezvous_that_never_completes_fails_within_the_timeout(cluster, shards, tmp_path) -> None:
    """Rank 0 of 2 on node1, the second node never starts: a bounded wait and one clear error. ~20 s."""
    env = cluster.env(RANK="0", LOCAL_RANK="0", WORLD_SIZE="2", MASTER_ADDR="node1", MASTER_PORT="29555",
                      PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")  # fmt: skip
    start = time.monotonic()
    proc = cluster.run("node1", str(REPO / ".venv" / "bin" / "python"), str(REPO / "pretrain" / "train.py"),
                       "--config", str(REPO / CONFIG), *_train(shards, tmp_path / "run", "runtime.timeout_s=8"),
                       env=env, timeout=120)  # fmt: skip
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert "rendezvous at node1:29555 did not complete within runtime.timeout_s=8 s: rank 0 of 2 on node1" in (
        proc.stderr
    ), proc.stderr[-4000:]
    assert elapsed < 60, elapsed
