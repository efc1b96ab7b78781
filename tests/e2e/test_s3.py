"""The HowTo100M converter writing to S3: a real S3 HTTP endpoint (moto_server) on loopback.

The shards written through s3fs must be complete and byte-identical to a local run of the
same input, readable back through fsspec + webdataset, and the resume rules must hold there too.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import moto_s3, read_samples, run_cli, run_main, shard_paths

from data_prep import schema
from data_prep.errors import DataPrepError

pytestmark = pytest.mark.slow

BUCKET = "shards"
# The S3 runs use the heuristic tagger (spaCy is tested in test_howto100m.py) and two workers,
# so the worker processes open S3 themselves.
OPTIONS = ("--tagger", "heuristic")


@dataclass
class S3:
    endpoint: str
    client: object  # boto3 S3 client

    def keys(self, prefix: str, bucket: str = BUCKET) -> dict[str, int]:
        """Object name under `prefix/` -> size."""
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
            out.update({o["Key"][len(prefix) + 1 :]: o["Size"] for o in page.get("Contents", [])})
        return out

    def get(self, key: str, bucket: str = BUCKET) -> bytes:
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def versions(self, key: str, bucket: str) -> int:
        """How many times `key` was written (the bucket has versioning on)."""
        listed = self.client.list_object_versions(Bucket=bucket, Prefix=key)
        return sum(v["Key"] == key for v in listed.get("Versions", []))


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}
    with moto_s3(tmp_path_factory.mktemp("moto"), credentials) as endpoint:
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield S3(endpoint, client)


@pytest.fixture(scope="module")
def s3_run(s3: S3, corpus, convert):
    """One run to s3://shards/howto/clip60 and the local run of the same input."""
    prefix = "howto/clip60"
    manifest = run_main(
        corpus.args(
            f"s3://{BUCKET}/{prefix}", "hero", "clip60", *OPTIONS, "--workers", "2", "--s3-endpoint", s3.endpoint
        )
    )
    local, local_manifest = convert("hero", "clip60", *OPTIONS)
    return prefix, manifest, local, local_manifest


def test_every_file_is_in_the_bucket(s3, s3_run):
    prefix, manifest, local, _ = s3_run
    keys = s3.keys(prefix)
    sizes = json.loads(s3.get(f"{prefix}/sizes.json"))
    stats = {json.loads(s3.get(f"{prefix}/{k}"))["index"] for k in keys if k.endswith(".stats.json")}
    expected = {
        schema.SIZES_FILE,
        schema.MANIFEST_FILE,
        schema.REJECTS_FILE,
        schema.TOI_DF_FILE,
        schema.FEATURE_STATS_FILE,
    }
    for i in stats:
        expected |= {schema.stats_name(i), schema.shard_rejects_name(i), schema.shard_name(i)}
    assert set(keys) == expected  # no temporary object left behind
    assert set(keys) == {p.name for p in local.iterdir()}
    assert sorted(sizes) == manifest["shards"] and len(sizes) >= 3
    assert json.loads(s3.get(f"{prefix}/manifest.json")) == manifest


def test_shards_are_complete_and_identical_to_a_local_run(s3, s3_run):
    prefix, manifest, local, local_manifest = s3_run
    sizes = json.loads(s3.get(f"{prefix}/sizes.json"))
    assert sizes == json.loads((local / "sizes.json").read_text())
    for name, count in sizes.items():
        data = s3.get(f"{prefix}/{name}")
        stats = json.loads(s3.get(f"{prefix}/{name[: -len('.tar')]}.stats.json"))
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = tar.getmembers()
            assert len(members) == 2 * count
            for m in members:
                assert len(tar.extractfile(m).read()) == m.size
        assert hashlib.sha256(data).hexdigest() == stats["sha256"] and len(data) == stats["bytes"]
        assert data == (local / name).read_bytes(), name
    for name in ("rejects.jsonl", "toi_df.json", "feature_stats.json"):
        assert s3.get(f"{prefix}/{name}") == (local / name).read_bytes()
    assert manifest["counts"] == local_manifest["counts"]
    assert manifest["feature_spec"] == local_manifest["feature_spec"]


def test_shards_read_back_through_s3fs_and_webdataset(s3, s3_run, monkeypatch):
    import fsspec

    prefix, manifest, local, _ = s3_run
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": s3.endpoint}, skip_instance_cache=True)
    opened = []

    def s3_open(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
        opened.append(url)
        return fs.open(url, mode)

    gopen = importlib.import_module("webdataset.gopen")  # the module; `wds.gopen` is its function
    monkeypatch.setitem(gopen.gopen_schemes, "s3", s3_open)
    urls = [f"s3://{BUCKET}/{prefix}/{name}" for name in manifest["shards"]]
    remote = read_samples(None, urls)
    assert opened == urls
    expected = read_samples(local)
    assert len(remote) == len(expected) == manifest["counts"]["samples"]
    for a, b in zip(remote, expected):
        assert a["__key__"] == b["__key__"] and a["json"] == b["json"]
        assert a["feat.npy"].dtype == np.float16
        np.testing.assert_array_equal(a["feat.npy"], b["feat.npy"])


def test_resume_rules_on_s3(s3, corpus, convert):
    bucket, prefix = "resume", "howto/clip60"
    s3.client.create_bucket(Bucket=bucket)  # versioned, to tell a kept object from a rewritten one
    s3.client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    url = f"s3://{bucket}/{prefix}"
    args = corpus.args(url, "hero", "clip60", *OPTIONS)
    run_main([*args, "--s3-endpoint", s3.endpoint])
    local, _ = convert("hero", "clip60", *OPTIONS)

    # Again without --resume: refused with one clear line; the endpoint from AWS_ENDPOINT_URL.
    refused = run_cli(args, env={"AWS_ENDPOINT_URL": s3.endpoint})
    assert refused.returncode == 2, refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and url in errors[0] and "--resume" in errors[0]
    with pytest.raises(DataPrepError, match="other inputs or options"):
        run_main([*args, "--s3-endpoint", s3.endpoint, "--resume", "--shard-size", "5"])

    # An interrupted run: one shard lost its stats object (the mark of completion) and its tar
    # is cut short; --resume redoes exactly that shard.
    stats_keys = sorted(k for k in s3.keys(prefix, bucket) if k.endswith(".stats.json"))
    torn = json.loads(s3.get(f"{prefix}/{stats_keys[1]}", bucket))["shard"]
    s3.client.delete_object(Bucket=bucket, Key=f"{prefix}/{stats_keys[1]}")
    s3.client.put_object(Bucket=bucket, Key=f"{prefix}/{torn}", Body=s3.get(f"{prefix}/{torn}", bucket)[:5000])
    for key in ("manifest.json", "sizes.json"):
        s3.client.delete_object(Bucket=bucket, Key=f"{prefix}/{key}")
    kept = [k for k in stats_keys if k != stats_keys[1]]
    assert all(s3.versions(f"{prefix}/{k}", bucket) == 1 for k in kept)
    run_main([*args, "--s3-endpoint", s3.endpoint, "--resume", "--workers", "2"])
    for p in shard_paths(local):
        assert s3.get(f"{prefix}/{p.name}", bucket) == p.read_bytes(), p.name
    assert s3.get(f"{prefix}/sizes.json", bucket) == (local / "sizes.json").read_bytes()
    assert all(s3.versions(f"{prefix}/{k}", bucket) == 1 for k in kept)  # kept, not redone
    assert s3.versions(f"{prefix}/{stats_keys[1]}", bucket) == 2
    assert not [k for k in s3.keys(prefix, bucket) if k.endswith(".tmp")]
