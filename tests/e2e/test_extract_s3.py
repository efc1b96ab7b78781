"""data_prep.extract with videos in and features out on a real S3 endpoint (moto_server on
loopback): the same features as a local run, the reject log and the provenance on S3, and a
rerun that skips every complete video."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import moto_s3

from data_prep import extract as X

pytestmark = pytest.mark.slow

TINY = ["--random-weights", "--tiny"]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    with moto_s3(tmp_path_factory.mktemp("moto-extract"), credentials) as endpoint:
        yield endpoint


def test_videos_and_features_on_s3_match_a_local_run(s3_endpoint: str, tmp_path: Path) -> None:
    import s3fs
    from test_extract import write_video  # tests/integration: conftest puts every tier on the path

    src = tmp_path / "videos"
    src.mkdir()
    write_video(src / "a.mp4", "h264", 10, 30)
    write_video(src / "b.webm", "libvpx-vp9", 10, 24)
    (src / "broken.mkv").write_bytes(b"not a video" * 100)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("videos")
    fs.mkdir("feats")
    fs.put(str(src) + "/", "videos/in/", recursive=True)

    local = tmp_path / "local"
    X.main(["--videos", str(src), "--out", str(local), *TINY])
    args = ["--videos", "s3://videos/in", "--out", "s3://feats/out", "--s3-endpoint", s3_endpoint, *TINY]
    res = X.main(args)
    assert sorted(res["done"]) == ["a", "b"] and res["rejected"] == ["broken"]
    fs.invalidate_cache()
    keys = sorted(k.removeprefix("feats/out/") for k in fs.find("feats/out"))
    assert keys == ["2d/a.npy", "2d/b.npy", "3d/a.npy", "3d/b.npy", "_extract/rejects.00000-of-00001.jsonl",
                    X.MANIFEST_FILE]  # fmt: skip
    for key in keys[:4]:
        np.testing.assert_array_equal(np.load(io.BytesIO(fs.cat(f"feats/out/{key}"))), np.load(local / key))
    (reject,) = [json.loads(line) for line in fs.cat("feats/out/" + keys[4]).decode().splitlines()]
    assert reject["video_id"] == "broken" and reject["reason"] == "unreadable"
    assert json.loads(fs.cat(f"feats/out/{X.MANIFEST_FILE}"))["backbones"][0]["name"] == "resnet152"
    again = X.main(args)
    assert sorted(again["skipped"]) == ["a", "b"] and not again["done"]
