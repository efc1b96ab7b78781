"""Pretraining streams its shards from S3 (moto_server on loopback) and survives transient errors.

- train.py reads data.train=s3://... and eval.held_out=s3://... and finishes; no credential
  reaches stderr, the MLflow params, the logged config or any file of the run.
- Injected transient errors (s3fs-translated 503/SlowDown, dropped connections, timeouts, a read
  that fails half-way) are retried with backoff and logged: the batches equal an error-free run's.
- Permanent errors (NoSuchKey -> FileNotFoundError) are not retried; a shard that fails on every
  attempt is skipped and counted as `unreadable_shard`, and the epoch goes on.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import moto_s3, small_pretraining_shards

from launch.pipeline import free_port
from pretrain import loader as L
from pretrain import s3retry
from pretrain.loader import reading, storage

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BUCKET, PREFIX = "pretrain", "howto/clip60"
URL = f"s3://{BUCKET}/{PREFIX}"
ACCESS_KEY = "AKIAFAKEFAKEFAKE1234"
SECRET = "SECRETFAKEsecretfakeSECRETFAKEsecretfake"
SESSION = "SESSIONFAKEtokenfakeSESSIONFAKE"
FAST = [
    "data.batch_size=4", "data.max_frames=16", "data.max_text_len=32", "data.streams=2",
    "model.text_layers=1", "model.cross_layers=1", "eval.max_samples=32", "run.log_every=1",
    "optim.warmup_steps=2",
]  # fmt: skip


@dataclass
class S3:
    endpoint: str
    client: object  # boto3 S3 client
    env: dict[str, str]  # what a child process needs to reach it


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_pretraining_shards(tmp_path_factory.mktemp("s3_pretrain_data"), shard_size=4)


@pytest.fixture(scope="module")
def s3(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """moto_server on 127.0.0.1 with the shard folder uploaded to s3://pretrain/howto/clip60."""
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": SESSION,
           "AWS_ENDPOINT_URL": "{endpoint}"}  # fmt: skip
    with moto_s3(tmp_path_factory.mktemp("moto"), env) as endpoint:
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        for path in sorted(shards.iterdir()):
            client.upload_file(str(path), BUCKET, f"{PREFIX}/{path.name}")
        yield S3(endpoint, client, {**env, "AWS_ENDPOINT_URL": endpoint})


@pytest.fixture(scope="module")
def tokenizer():
    from pretrain import text

    return text.load_tokenizer()


def _config(**kw) -> L.LoaderConfig:
    base = dict(train=URL, batch_size=4, max_text_len=32, max_frames=16, num_workers=0, streams=2,
                shuffle_buffer=8, s3_retries=3, s3_backoff=0.001)  # fmt: skip
    return L.LoaderConfig(**{**base, **kw})


def _epoch(cfg: L.LoaderConfig, tokenizer) -> tuple[list[dict], Counter]:
    loader = L.build_train_loader(cfg, tokenizer, rank=0, world_size=1)
    return list(loader), loader.skipped


def _same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


@pytest.fixture(scope="module")
def reference(s3, tokenizer) -> list[dict]:
    batches, skipped = _epoch(_config(), tokenizer)
    assert batches and not skipped
    return batches


class _FailingRead:
    """A file whose read fails (a connection dropped mid-body); closes the real one."""

    def __init__(self, real, exn: Exception):
        self.real, self.exn = real, exn

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.real.close()

    def read(self, *args):
        self.real.read(100)
        raise self.exn

    def close(self) -> None:
        self.real.close()


def _slowdown() -> OSError:
    """What s3fs raises for an HTTP 503 SlowDown (an OSError(EBUSY) with the ClientError as cause)."""
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    err = ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."},
                       "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject")  # fmt: skip
    return translate_boto_error(err)


def _no_such_key() -> OSError:
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    err = ClientError({"Error": {"Code": "NoSuchKey", "Message": "The specified key does not exist."},
                       "ResponseMetadata": {"HTTPStatusCode": 404}}, "GetObject")  # fmt: skip
    return translate_boto_error(err)


@pytest.fixture
def inject(monkeypatch):
    """`inject(name, [error or ("read", error), ...] or callable)`: the next opens of the object
    `name` fail with these (an error: the open; ("read", e): its read), then succeed; returns the
    per-name open counts."""
    import s3fs

    real_open = s3fs.S3FileSystem.open
    calls: Counter[str] = Counter()
    plans: dict[str, list] = {}
    always: dict[str, Exception] = {}

    def fake_open(self, path, mode="rb", *args, **kw):
        name = str(path).rstrip("/").rsplit("/", 1)[-1]
        calls[name] += 1
        if name in always:
            raise always[name]
        if plans.get(name):
            step = plans[name].pop(0)
            if isinstance(step, tuple):
                return _FailingRead(real_open(self, path, mode, *args, **kw), step[1])
            raise step
        return real_open(self, path, mode, *args, **kw)

    monkeypatch.setattr(s3fs.S3FileSystem, "open", fake_open)

    def add(name: str, steps: list | None = None, every: Exception | None = None) -> Counter[str]:
        if every is not None:
            always[name] = every
        else:
            plans[name] = list(steps or [])
        return calls

    return add


def _shard_names(shards: Path) -> list[str]:
    return sorted(json.loads((shards / "sizes.json").read_text()))


def _train_env(s3: S3) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(
        s3.env,
        DS_ACCELERATOR="cpu",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(REPO),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def test_pretraining_streams_from_s3_without_leaking_credentials(s3, tmp_path) -> None:
    run_dir = tmp_path / "run"
    env = _train_env(s3)
    cmd = [sys.executable, "pretrain/train.py", "--config", "configs/pretrain/tiny_cpu.yaml", f"data.train={URL}",
           f"eval.held_out={URL}", f"run.output_dir={run_dir}", *FAST, "run.max_steps=2", "tracking.enabled=true",
           "tracking.system_metrics=false"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    params = runs[0].data.params
    assert params["data.train"] == URL
    artifacts = list((run_dir / "mlartifacts").rglob("config.yaml"))
    assert artifacts and URL in artifacts[0].read_text()
    secrets = (ACCESS_KEY, SECRET, SESSION)
    for secret in secrets:
        assert secret not in proc.stderr and secret not in proc.stdout
        assert not any(secret in f"{k}={v}" for k, v in params.items())
        assert secret not in artifacts[0].read_text()
    for path in run_dir.rglob("*"):  # nothing the run wrote holds a credential (the MLflow db included)
        if path.is_file():
            data = path.read_bytes()
            assert not any(secret.encode() in data for secret in secrets), path


def test_checkpoints_and_export_mirrored_to_s3_and_a_fresh_run_dir_resumes_from_there(s3, tmp_path) -> None:
    """checkpoint.upload: complete checkpoints (COMPLETE last, keep_last remotely too) and the export go
    to S3; a run started on an empty run dir (a new node) pulls the latest and continues from it."""
    mirror = f"s3://{BUCKET}/runs/mirrored"
    cmd = [sys.executable, "pretrain/train.py", "--config", "configs/pretrain/tiny_cpu.yaml", f"data.train={URL}",
           *FAST, "tracking.enabled=false", "eval.every=0", "checkpoint.every=1", "checkpoint.keep_last=1",
           f"checkpoint.upload={mirror}"]  # fmt: skip
    first = tmp_path / "node_a"
    proc = subprocess.run([*cmd, f"run.output_dir={first}", "run.max_steps=2"], cwd=REPO, env=_train_env(s3),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-5000:]

    def remote(prefix: str) -> list[str]:
        listed = s3.client.list_objects_v2(Bucket=BUCKET, Prefix=f"runs/mirrored/{prefix}")
        return sorted(o["Key"].removeprefix(f"runs/mirrored/{prefix}") for o in listed.get("Contents", []))

    local = sorted(str(p.relative_to(first / "checkpoints")) for p in (first / "checkpoints").glob("step_*/**/*")
                   if p.is_file())  # fmt: skip
    assert remote("checkpoints/") == local and "step_00000002/COMPLETE" in local  # step 1 pruned on both sides
    assert "model.safetensors" in remote("export/")

    second = tmp_path / "node_b"  # nothing local: the checkpoint comes from S3
    proc = subprocess.run([*cmd, f"run.output_dir={second}", "run.max_steps=3"], cwd=REPO, env=_train_env(s3),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "pulled checkpoint step_00000002" in proc.stderr and "at step 2" in proc.stderr
    rows = [json.loads(line) for line in (second / "metrics.jsonl").read_text().splitlines()]
    # steps 1-2 from the mirror's metrics.jsonl (this run dir never saw them), 3 from this run: each once
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[:2] == [json.loads(line) for line in (first / "metrics.jsonl").read_text().splitlines()]
    assert [k.split("/")[0] for k in remote("checkpoints/") if k.endswith("COMPLETE")] == ["step_00000003"]
    for secret in (ACCESS_KEY, SECRET, SESSION):
        assert secret not in proc.stderr


def test_transient_errors_are_retried_and_the_batches_do_not_change(s3, shards, tokenizer, reference, inject,
                                                                     caplog) -> None:  # fmt: skip
    names = _shard_names(shards)
    from botocore.exceptions import EndpointConnectionError

    calls = inject("sizes.json", [TimeoutError("read timed out")])
    inject("toi_df.json", [_slowdown()])
    inject(names[0], [_slowdown(), _slowdown()])  # 503 SlowDown twice on the open
    inject(names[1], [("read", EndpointConnectionError(endpoint_url=s3.endpoint))])  # dropped mid-read
    inject(names[-1], [ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), ("read", _slowdown())])
    with caplog.at_level(logging.WARNING):
        batches, skipped = _epoch(_config(), tokenizer)
    _same_batches(batches, reference)
    assert not skipped
    assert calls["sizes.json"] == 2 and calls["toi_df.json"] == 2
    assert calls[names[0]] >= 3 and calls[names[1]] >= 2 and calls[names[-1]] >= 3
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 7 and all(r.levelno == logging.WARNING for r in caplog.records if "retrying" in r.msg)
    for name in ("sizes.json", "toi_df.json", names[0], names[1], names[-1]):
        assert any(f"{URL}/{name}" in line for line in retries), name
    assert any("OSError" in line and "reduce your request rate" in line for line in retries)
    for record in caplog.records:
        for secret in (ACCESS_KEY, SECRET, SESSION):
            assert secret not in record.getMessage()


def test_permanent_errors_are_not_retried(s3, shards, tokenizer, reference, inject, caplog, monkeypatch) -> None:
    monkeypatch.setattr(reading, "_logged", Counter())  # skip logging is rate-limited per process
    names = _shard_names(shards)
    calls = inject(names[2], every=_no_such_key())  # the object went away after the plan was made
    with caplog.at_level(logging.WARNING):
        batches, skipped = _epoch(_config(), tokenizer)
    assert len(batches) == len(reference)  # a skipped shard costs no step
    assert skipped["unreadable_shard"] >= 1 and calls[names[2]] == skipped["unreadable_shard"]  # once per read
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]
    assert any(names[2] in r.getMessage() and "unreadable_shard" in r.getMessage() for r in caplog.records)

    # Missing at the start: the loader's FileNotFoundError naming it, at once.
    s3.client.put_object(Bucket=BUCKET, Key="broken/sizes.json", Body=json.dumps({names[0]: 4, "gone.tar": 4}))
    s3.client.copy_object(Bucket=BUCKET, Key=f"broken/{names[0]}", CopySource=f"{BUCKET}/{PREFIX}/{names[0]}")
    with pytest.raises(FileNotFoundError, match="gone.tar"):
        L.resolve_shards(f"s3://{BUCKET}/broken")
    calls = inject("sizes.json", every=_no_such_key())
    before = calls["sizes.json"]
    with pytest.raises(FileNotFoundError):
        storage.read_json(f"{URL}/sizes.json", None, s3retry.RetryPolicy(retries=5, backoff=10.0))
    assert calls["sizes.json"] == before + 1


def test_a_shard_failing_every_attempt_is_skipped_and_counted(s3, shards, tokenizer, reference, inject, caplog) -> None:
    names = _shard_names(shards)
    calls = inject(names[1], every=_slowdown())
    with caplog.at_level(logging.WARNING):
        batches, skipped = _epoch(_config(s3_retries=2), tokenizer)
    assert len(batches) == len(reference)  # the run goes on: its stream repeats samples instead
    reads = skipped["unreadable_shard"]
    assert reads >= 1 and set(skipped) == {"unreadable_shard"}
    assert calls[names[1]] == 3 * reads  # 1 + 2 retries per read
    gave_up = [r.getMessage() for r in caplog.records if "failed after 3 attempt(s)" in r.getMessage()]
    assert len(gave_up) == reads and all(f"{URL}/{names[1]}" in line for line in gave_up)


def test_classification_and_redaction() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    def client_error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                           "GetObject")  # fmt: skip

    for exn in (_slowdown(), client_error("InternalError", 500), client_error("502", 502),
                client_error("RequestTimeout", 400), EndpointConnectionError(endpoint_url="http://x"),
                ConnectionResetError(), TimeoutError(), OSError(errno.EIO, "io")):  # fmt: skip
        assert s3retry.is_transient(exn), exn
    for exn in (_no_such_key(), FileNotFoundError("k"), PermissionError("denied"), client_error("AccessDenied", 403),
                client_error("NoSuchKey", 404), NoCredentialsError(), OSError(errno.EINVAL, "bad range"),
                ValueError("bad json")):  # fmt: skip
        assert not s3retry.is_transient(exn), exn
    attempts = []

    def fail():
        attempts.append(1)
        raise _slowdown()

    policy = s3retry.RetryPolicy(retries=4, backoff=1.0, max_delay=2.0, max_time=100)
    waits: list[float] = []
    with pytest.raises(OSError):
        s3retry.retry_call(fail, "s3://b/k", policy, sleep=waits.append)
    assert len(attempts) == 5 and len(waits) == 4
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0 and all(1.0 <= w <= 2.0 for w in waits[2:])
    attempts.clear()
    with pytest.raises(OSError):  # the time budget stops it before the attempts run out
        s3retry.retry_call(
            fail,
            "s3://b/k",
            s3retry.RetryPolicy(retries=10, backoff=50, max_delay=100, max_time=60),
            sleep=waits.append,
        )
    assert len(attempts) == 2
    attempts.clear()
    with pytest.raises(OSError):  # local paths are never retried
        s3retry.retry_call(fail, "/tmp/x.tar", policy, sleep=waits.append)
    assert len(attempts) == 1
    text = f"key {ACCESS_KEY} secret={SECRET} https://b.s3.amazonaws.com/k?X-Amz-Signature=abc123&X-Amz-Credential=AKIA"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        out = s3retry.redact(text)
    assert ACCESS_KEY not in out and SECRET not in out and "abc123" not in out and "b.s3.amazonaws.com/k" in out


def test_worker_processes_read_s3_and_give_the_same_batches(s3, tokenizer, reference) -> None:
    batches, skipped = _epoch(_config(num_workers=2), tokenizer)
    _same_batches(batches, reference)
    assert not skipped
