"""The main job's extract stage (launch/stages.py, `extract.enabled=true`) at tiny size, stage by
stage (not the whole job): the synthetic corpus writes its HowTo100M part as video, data_prep.extract
turns it into 2d/ + 3d/ features, and data_prep.howto100m shards those, with the extraction's
provenance in the shards' manifest. Weights: a missing file is the extractor's error; random
weights only when the config says so. The first test is slow: about 50 s on 2 shared cores, most
of it extracting the corpus's 2 HowTo100M videos (505 s of footage at 4 fps) with tiny random backbones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_prep import extract as X
from data_prep.errors import DataPrepError
from launch import stages as S
from pretrain.config import ConfigError
from pretrain.loader import read_manifest

TINY = ["videos=2", "until=data", "extract.enabled=true", "extract.device=cpu", "extract.batch_size=8"]


def _config(work: Path, *overrides: str) -> S.MainJobConfig:
    return S.load_config(S.DEFAULT_CONFIG, [f"workdir={work}", *TINY, *overrides])


@pytest.mark.slow
def test_extract_stage_feeds_the_howto100m_shards(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "extract.random_weights=true", "extract.tiny=true")
    settings = S.stage_settings(cfg)
    stages = S.data_stages(cfg, tmp_path)
    assert [k for k, *_ in stages[:3]] == ["corpus", "extract", "howto100m"]
    for i, (key, name, out, fn) in enumerate(stages[:3], 1):
        S.run_stage(i, 3, name, out, fn, settings[key])

    ids = sorted(p.stem for p in (tmp_path / "raw" / "howto100m" / "videos").glob("*.mp4"))
    assert len(ids) >= 1
    feats = tmp_path / "features" / "howto100m"
    dims = {}
    for kind in ("2d", "3d"):
        assert sorted(p.stem for p in (feats / kind).glob("*.npy")) == ids
        arrays = [np.load(feats / kind / f"{v}.npy") for v in ids]
        assert all(a.ndim == 2 and a.shape[0] > 0 and np.isfinite(a).all() for a in arrays)
        dims[kind] = arrays[0].shape[1]
    manifest = read_manifest(str(tmp_path / "shards" / "howto100m"))
    prov = manifest["extraction"]
    assert prov is not None and sorted(b["name"] for b in prov["backbones"]) == ["r2plus1d_18", "resnet152"]
    assert manifest["counts"]["videos"] > 0
    # The shards hold the extracted features (tiny widths), not the corpus's precomputed ones.
    assert manifest["features_root"] == str(feats)
    assert manifest["feature_spec"]["dim"] == dims["2d"] + dims["3d"]

    # Re-running: every stage done already; the extractor itself would skip every video.
    assert X.main(["--videos", str(tmp_path / "raw" / "howto100m" / "videos"), "--out", str(feats),
                   "--random-weights", "--tiny", "--device", "cpu"])["skipped"] == ids  # fmt: skip


def test_missing_weights_is_the_extractors_error_and_random_needs_saying(tmp_path: Path) -> None:
    for overrides, message in [
        ([], "resnet152: weights not found (no --weights for it)"),
        ([f"extract.weights=resnet152={tmp_path}/nope.pth,r2plus1d_18={tmp_path}/nope3d.pth"],
         f"weights not found at {tmp_path}/nope.pth"),
    ]:  # fmt: skip
        cfg = _config(tmp_path / "w", *overrides)
        videos = tmp_path / "videos"
        videos.mkdir(exist_ok=True)
        with pytest.raises(DataPrepError, match=message.replace("(", r"\(").replace(")", r"\)")):
            S.extract_howto100m(cfg, videos, tmp_path / "out")
    with pytest.raises(ConfigError, match="extract.tiny=true is for tests"):
        _config(tmp_path, "extract.tiny=true")


def test_extract_is_off_by_default_and_leaves_the_old_markers_alone(tmp_path: Path) -> None:
    cfg = S.load_config(S.DEFAULT_CONFIG, [f"workdir={tmp_path}"])
    assert not cfg.extract.enabled
    assert "extract" not in [k for k, *_ in S.data_stages(cfg, tmp_path)]
    assert "with_video" not in S.stage_settings(cfg)["corpus"]
    on = S.stage_settings(_config(tmp_path, "extract.random_weights=true"))
    assert on["howto100m"]["extract"]["random_weights"] is True  # another extraction: the shards are redone
    assert "resize" not in on["corpus"]["extract"]  # the default resize: the markers made before it still match
    ffmpeg = S.stage_settings(_config(tmp_path, "extract.random_weights=true", "extract.resize=ffmpeg"))
    assert ffmpeg["howto100m"]["extract"]["resize"] == "ffmpeg"
    with pytest.raises(ConfigError, match="extract.resize='area' is not one of"):
        _config(tmp_path, "extract.resize=area")


def test_finetune_sets_of_another_frame_dim_stop_the_job_before_pretraining(tmp_path: Path) -> None:
    """extract.enabled=true: the HowTo100M shards hold the extracted features, the finetune sets the corpus's;
    a job that goes on to finetune stops after the data stages with both dims named, not after pretraining."""
    import json

    def shards(recipe_dim: int) -> None:
        for folder, dim in [
            ("howto100m", 128),
            *((f"{r}/{S.train_split(r, [])}", recipe_dim) for r in ("tvr", "msrvtt")),
        ]:
            (tmp_path / "shards" / folder).mkdir(parents=True, exist_ok=True)
            (tmp_path / "shards" / folder / "manifest.json").write_text(json.dumps({"feature_spec": {"dim": dim}}))

    cfg = _config(tmp_path, "extract.random_weights=true", "until=report")
    shards(recipe_dim=64)
    with pytest.raises(DataPrepError, match=r"takes 128-d frames .* tvr/train has 64-d, msrvtt/\S+ has 64-d.*"
                       r"extract.enabled=true makes the HowTo100M features from video"):  # fmt: skip
        S.check_frame_dims(cfg, tmp_path)
    S.check_frame_dims(_config(tmp_path, "extract.random_weights=true", "until=zeroshot"), tmp_path)  # not finetuned
    shards(recipe_dim=128)
    S.check_frame_dims(cfg, tmp_path)  # the same dims: on to pretraining
