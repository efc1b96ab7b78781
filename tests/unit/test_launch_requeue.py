"""launch/slurm_env.sh's decisions after a failed srun, on hand-written job logs with a fake `scontrol`:
a lost rank or node requeues (bounded by VLP_MAX_REQUEUES), a config error or a plain crash does not;
MASTER_ADDR is the hostfile's first host under --distribution=arbitrary. (The real thing, on two Slurm
nodes: tests/e2e/test_multinode_s3.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EARLIER = "srun: error: node2: task 1: Killed\n"  # a previous run's lines in the same (appended) log
KILLED = "[rank0]: pretrain.runtime.CollectiveError: collective failed on rank 0 on node1: lost ...\n" \
         "srun: error: node2: task 1: Killed\nsrun: error: node1: task 0: Exited with exit code 1\n"  # fmt: skip


def _run(tmp_path: Path, script: str, log: str = "", earlier: str = "", **env: str) -> subprocess.CompletedProcess:
    """`script` in bash after sourcing slurm_env.sh, with this run's job log `log` (after `earlier`) and a fake
    scontrol that records its arguments in tmp_path/scontrol.args."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "scontrol"
    fake.write_text(f'#!/bin/bash\necho "$*" >> {tmp_path}/scontrol.args\n'
                    '[[ $1 == show ]] && printf "node1\\nnode2\\n"\nexit 0\n')  # fmt: skip
    fake.chmod(0o755)
    path = tmp_path / "job.out"
    path.write_text(earlier + log)
    prelude = (f"source {REPO}/launch/slurm_env.sh; VLP_LOG={path}; VLP_LOG_START={len(earlier.encode())}; "
               "SLURM_JOB_ID=7; ")  # fmt: skip
    return subprocess.run(["bash", "-c", prelude + script], capture_output=True, text=True, timeout=30,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", **env})  # fmt: skip


def _requeued(tmp_path: Path) -> bool:
    args = tmp_path / "scontrol.args"
    return args.exists() and "requeue 7" in args.read_text()


def test_a_killed_task_requeues_naming_what_srun_said(tmp_path) -> None:
    proc = _run(tmp_path, "vlp_requeue_lost", KILLED)
    assert "launch: a rank or node was lost: srun: error: node2: task 1: Killed" in proc.stdout, proc.stderr
    assert "requeueing job 7 after the lost rank/node (restart 1 of at most 3;" in proc.stdout
    assert _requeued(tmp_path)


@pytest.mark.parametrize(
    "log",
    [
        "srun: error: Node failure on node2\n",
        "[rank1]: pretrain.runtime.CollectiveError: collective failed on rank 1 on node2: got no answer ...\n",
    ],
)
def test_a_node_failure_or_a_collective_error_requeues(tmp_path, log) -> None:
    _run(tmp_path, "vlp_requeue_lost", log)
    assert _requeued(tmp_path)


@pytest.mark.parametrize(
    "log",
    [
        "config error: run.output_dir /x is in use\nsrun: error: node1: task 0: Exited with exit code 2\n"
        "srun: error: node2: task 1: Killed\n",  # a config error wins over the kill that followed it
        "Traceback ...\nValueError: a bug\nsrun: error: node1: task 0: Exited with exit code 1\n",  # a crash
        "",  # nothing in this run's lines: the Killed line is an earlier run's
    ],
)
def test_a_config_error_or_a_crash_does_not_requeue(tmp_path, log) -> None:
    proc = _run(tmp_path, "vlp_requeue_lost", log, earlier=EARLIER)
    assert proc.returncode == 0 and not _requeued(tmp_path) and "lost" not in proc.stdout, proc.stdout


def test_requeues_are_bounded(tmp_path) -> None:
    proc = _run(tmp_path, "vlp_requeue_lost", KILLED, VLP_MAX_REQUEUES="2", SLURM_RESTART_COUNT="2")
    assert not _requeued(tmp_path)
    assert "job 7 has restarted 2 times (VLP_MAX_REQUEUES=2): not requeueing" in proc.stderr


def test_master_addr_is_task_0s_host(tmp_path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("node2\nnode1\n")
    script = "SLURM_JOB_NODELIST='node[1-2]'; vlp_master_env; echo $MASTER_ADDR"
    assert _run(tmp_path, script).stdout.split() == ["node1"]  # block distribution: the first host
    arbitrary = _run(tmp_path, script, SLURM_DISTRIBUTION="arbitrary", SLURM_HOSTFILE=str(hosts))
    assert arbitrary.stdout.split() == ["node2"]
