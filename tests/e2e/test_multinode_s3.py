"""Node-local run dirs across two Slurm nodes, with checkpoints in S3 (tests/multinode.py's namespaces).

Each node's run dir is its own disk: the same run.output_dir path is bind-mounted, inside each node's
mount namespace, onto a folder of that node alone (`disk_node1/`, `disk_node2/`), so no node sees the
other's checkpoint files, as with scratch disks on a real cluster. moto_server (S3) runs in the hub
namespace on the bridge (10.77.0.100), reached by both nodes over it. `checkpoint.node_local=true`:
every rank uploads its own ZeRO partitions and train state, COMPLETE goes up once all did, and a run
resumes from the mirror, every rank downloading what it reads.

- The nodes swap places: a job stopped after a checkpoint, the local disks wiped, a second job with
  rank 0 on node2 (SLURM_HOSTFILE, --distribution=arbitrary) resumes from S3 and its per-step losses
  equal an uninterrupted run's.
- A lost node requeues: node2's rank killed after a checkpoint; the sbatch script requeues the job by
  itself, which resumes from S3 and finishes; each step once in metrics.jsonl, the losses those of the
  uninterrupted run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import multinode
import pytest
from conftest import small_pretraining_shards
from test_multinode import CONFIG, PRETRAIN, REPO, TWO_NODES, _local_two_ranks, _losses, _train

pytestmark = pytest.mark.slow

S3_ADDR, S3_PORT, BUCKET = f"{multinode.SUBNET}.100", 5757, "ckpt"
ENDPOINT = f"http://{S3_ADDR}:{S3_PORT}"
AWS = {"AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKE1234", "AWS_SECRET_ACCESS_KEY": "SECRETFAKEsecretfake",
       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": ENDPOINT, "AWS_CONFIG_FILE": "/nonexistent",
       "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "NO_PROXY": S3_ADDR}  # fmt: skip
STEPS = ["run.max_steps=12", "checkpoint.every=2"]  # the run every test compares with (and a ZeRO stage)
PYTHON = str(REPO / ".venv" / "bin" / "python")


def _hub(cluster) -> list[str]:
    return ["nsenter", "-t", str(cluster.holders["hub"].pid), "-n", "--"]


def _hub_python(cluster, code: str) -> str:
    """`code` run in the hub namespace (where S3 answers) with the test credentials; its stdout."""
    proc = subprocess.run([*_hub(cluster), PYTHON, "-c", code], capture_output=True, text=True, timeout=60,
                          env=cluster.env(**AWS))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The two nodes, and moto_server on the bridge (in the hub namespace, an address of its own)."""
    with multinode.MultiNodeCluster(tmp_path_factory.mktemp("multinode_s3")) as c:
        subprocess.run([*_hub(c), "ip", "addr", "add", f"{S3_ADDR}/24", "dev", "br0"], check=True)
        subprocess.run([*_hub(c), "ip", "link", "set", "lo", "up"], check=True)  # the hub's own address goes by lo
        log = (c.root / "moto.log").open("w")
        moto = subprocess.Popen([*_hub(c), str(REPO / ".venv" / "bin" / "moto_server"), "-H", S3_ADDR, "-p",
                                 str(S3_PORT)], stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=multinode._die_with_parent)  # fmt: skip
        try:
            _hub_python(
                c,
                f"""
import time, boto3, botocore.config
s3 = boto3.client("s3", config=botocore.config.Config(connect_timeout=1, retries={{"max_attempts": 1}}))
for _ in range(300):
    try:
        s3.create_bucket(Bucket="{BUCKET}")
        break
    except Exception:
        time.sleep(0.1)
else:
    raise SystemExit("moto_server did not answer on {ENDPOINT}")
""",
            )
            yield c
        finally:
            moto.kill()
            moto.wait()
            log.close()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return small_pretraining_shards(tmp_path_factory.mktemp("multinode_s3_data"), shard_size=8)


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):
    """reference(stage): the uninterrupted run's losses, the same config on 2 ranks of one node (launch/local.sh)."""
    done: dict[int, list[dict[str, float]]] = {}

    def losses(stage: int) -> list[dict[str, float]]:
        if stage not in done:
            root = tmp_path_factory.mktemp(f"multinode_s3_reference_zero{stage}")
            _local_two_ranks(shards, root / "run", *STEPS, f"runtime.zero_stage={stage}")
            done[stage] = _losses(root / "run")
        return done[stage]

    return losses


def _node_local(cluster, tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """run.output_dir, bind-mounted in each node onto that node's own folder (its "local disk")."""
    run, disks = tmp_path / "run", {n: tmp_path / f"disk_{n}" for n in cluster.names}
    run.mkdir()
    for node, disk in disks.items():
        disk.mkdir()
        proc = cluster.run(node, "mount", "--bind", str(disk), str(run))
        assert proc.returncode == 0, proc.stderr
    return run, disks


def _submit(cluster, submit: Path, run: Path, shards: Path, stage: int, prefix: str, *sbatch: str, **env: str) -> int:
    (submit / "logs").mkdir(exist_ok=True)
    train = _train(shards, run, *STEPS, f"runtime.zero_stage={stage}", f"checkpoint.upload=s3://{BUCKET}/{prefix}",
                   "checkpoint.node_local=true", "checkpoint.export=true")  # fmt: skip
    proc = cluster.run("node1", "sbatch", "--parsable", f"--chdir={submit}", *TWO_NODES, *sbatch, str(PRETRAIN),
                       CONFIG, *train, cwd=submit, env=cluster.env(**AWS, **env))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return int(re.match(r"(\d+)", proc.stdout).group(1))


def _job(cluster, job: int) -> dict[str, str]:
    out = cluster.run("node1", "scontrol", "show", "job", "-o", str(job)).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def _log(submit: Path, job: int) -> str:
    path = submit / "logs" / f"vlp-pretrain-{job}.out"
    return path.read_text() if path.exists() else ""


def _wait(cluster, submit: Path, job: int, done, what: str, timeout: float = 240) -> str:
    """Poll until `done(log)`; the job is cancelled if that does not happen in time."""
    deadline = time.monotonic() + timeout
    while not done(log := _log(submit, job)):
        if time.monotonic() > deadline:
            cluster.run("node1", "scancel", str(job))
            raise AssertionError(f"{what}: not in {timeout} s (job {_job(cluster, job).get('JobState')})\n"
                                 f"{log[-6000:]}\n{cluster.logs()}")  # fmt: skip
        time.sleep(0.3)
    return log


def _ended(cluster, submit: Path, job: int, timeout: float = 240) -> dict[str, str]:
    ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")
    _wait(cluster, submit, job, lambda _: _job(cluster, job).get("JobState") in ended, "the job's end", timeout)
    while any(re.search(r"pretrain/train\.py", _cmdline(p)) for n in cluster.names for p in cluster.pids(n)):
        time.sleep(0.2)  # its ranks gone too (a killed step's processes take a moment)
    return _job(cluster, job)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _remote(cluster, prefix: str) -> list[str]:
    """The keys under s3://ckpt/<prefix>/, relative to it."""
    out = _hub_python(
        cluster,
        f"""
import boto3
pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket="{BUCKET}", Prefix="{prefix}/")
print("\\n".join(o["Key"] for p in pages for o in p.get("Contents", [])))
""",
    )
    return sorted(k.removeprefix(f"{prefix}/") for k in out.split())


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_node_local_run_dirs_resume_from_s3_with_the_nodes_swapped(cluster, shards, reference, tmp_path) -> None:
    """ZeRO-2, node-local run dirs: each node uploads its own partitions; the job is cancelled after a
    checkpoint; with both disks wiped, a second job with rank 0 on node2 and rank 1 on node1 pulls, on
    each node, only what its rank reads, and goes on with the uninterrupted run's losses. 204 s on 2
    loaded cores (load ~10)."""
    run, disks = _node_local(cluster, tmp_path)
    first = _submit(cluster, tmp_path, run, shards, 2, "swap", "--no-requeue")
    _wait(cluster, tmp_path, first, lambda log: "uploaded checkpoint step_00000002" in log, "a checkpoint in S3")
    cluster.run("node1", "scancel", str(first))
    assert _ended(cluster, tmp_path, first)["JobState"] == "CANCELLED"
    uploaded = _remote(cluster, "swap")
    tags = sorted({k.split("/")[1] for k in uploaded if k.endswith("/COMPLETE")})
    assert tags and tags[-1] < "step_00000012", uploaded
    # Each rank's partition was uploaded from its own node: node1's disk never held rank 1's, nor node2's rank 0's.
    tag = tags[-1]
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt" not in _names(disks["node1"] / "checkpoints" / tag)
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt" not in _names(disks["node2"] / "checkpoints" / tag)
    assert {f"{tag}/zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= {
        k.removeprefix("checkpoints/") for k in uploaded
    }
    for disk in disks.values():  # new nodes, empty disks (the folders stay: they are the mounts' sources)
        for path in disk.iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    hostfile = tmp_path / "hosts"
    hostfile.write_text("node2\nnode1\n")  # task 0 on node2
    second = _submit(cluster, tmp_path, run, shards, 2, "swap", "--no-requeue", "--distribution=arbitrary",
                     SLURM_HOSTFILE=str(hostfile))  # fmt: skip
    job = _ended(cluster, tmp_path, second)
    log = _log(tmp_path, second)
    assert job["JobState"] == "COMPLETED", log[-6000:]
    assert f"master node2:{20000 + second % 20000}" in log, log[-3000:]
    resumed = re.search(r"resumed from \S+/(step_\d+) at step (\d+)", log)
    assert resumed and resumed.group(1) == tag, log[-4000:]
    assert re.search(rf"rank 0 on node2 pulled its \d+ files of checkpoint {tag}", log), log[-4000:]
    assert re.search(rf"rank 1 on node1 pulled its \d+ files of checkpoint {tag}", log), log[-4000:]
    # Each node fetched its own rank's partition only.
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt" not in _names(disks["node1"] / "checkpoints" / tag)
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt" not in _names(disks["node2"] / "checkpoints" / tag)

    # metrics.jsonl is rank 0's, now on node2: the steps before the checkpoint came from the mirror.
    assert _losses(disks["node2"]) == reference(2)
    assert [m["step"] for m in reference(2)] == list(range(1, 13))
    # The export on node2 (rank 0), with rank 1's partition fetched from S3 for it, and mirrored.
    assert (disks["node2"] / "export" / "model.safetensors").exists()
    assert "export/model.safetensors" in _remote(cluster, "swap")
    assert "checkpoints/step_00000012/COMPLETE" in _remote(cluster, "swap")


def test_a_lost_node_requeues_the_job_which_resumes_from_s3(cluster, shards, reference, tmp_path) -> None:
    """ZeRO-3 (every rank its own model states too), node-local run dirs; node2's rank SIGKILLed after a
    checkpoint: srun ends the step, the sbatch script sees the lost task, requeues the job
    (SLURM_RESTART_COUNT=1), which resumes from the mirror's latest checkpoint and finishes; each step
    once in metrics.jsonl, with the uninterrupted run's losses; the export (rank 1's partitions fetched
    for it). 316 s on 2 loaded cores (load ~10)."""
    run, disks = _node_local(cluster, tmp_path)
    job = _submit(cluster, tmp_path, run, shards, 3, "requeue", VLP_MAX_REQUEUES="1")
    _wait(cluster, tmp_path, job, lambda log: "uploaded checkpoint step_00000002" in log, "a checkpoint in S3")
    assert cluster.kill_ranks("node2"), "no training process on node2"
    state = _ended(cluster, tmp_path, job)
    log = _log(tmp_path, job)
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", log[-6000:]
    first, _, second = log.partition("SLURM_RESTART_COUNT=1")
    assert second, log[-6000:]
    assert "srun: error: node2: task 1: Killed" in first, first[-4000:]
    assert "launch: a rank or node was lost: srun: error: node2: task 1: Killed" in first, first[-4000:]
    assert f"launch: requeueing job {job} after the lost rank/node (restart 1 of at most 1;" in first
    resumed = re.search(r"resumed from \S+/step_(\d+) at step (\d+)", second)
    assert resumed and 2 <= int(resumed.group(2)) < 12, second[-4000:]
    assert "srun exited with 0" in second
    steps = [json.loads(line)["step"] for line in (disks["node1"] / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # each step once
    assert _losses(disks["node1"]) == reference(3)
    assert (disks["node1"] / "export" / "model.safetensors").exists()
    assert {f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in (0, 1)} <= {
        k.rsplit("/", 1)[-1] for k in _remote(cluster, "requeue") if "step_00000012/" in k
    }
