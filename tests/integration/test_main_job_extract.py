"""The main job's extract stage (launch/stages.py, `extract.enabled=true`) at tiny size, stage by
stage (not the whole job): the synthetic corpus writes its HowTo100M part as video, data_prep.extract
turns it into 2d/ + 3d/ features, and data_prep.howto100m shards those, with the extraction's
provenance in the shards' manifest. Weights: a missing file is the extractor's error; random
weights only when the config says so. The first test is slow: about 50 s on 2 shared cores, most
of it extracting the corpus's 2 HowTo100M videos (505 s of footage at 4 fps) with tiny random backbones.
`test_main_job_from_video_finetunes_on_extracted_features` runs the whole main job from video (MSR-VTT's
features extracted too, then pretraining, zero-shot, finetuning, the report) at tiny size: slow, 103 s on
2 shared cores (load ~3, 2026-12-05), most of it the data stages (extraction).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_finetune import TINY as FINETUNE_TINY
from test_pretrain import FAST

from data_prep import extract as X
from data_prep.errors import DataPrepError
from launch import stages as S
from pretrain.config import ConfigError
from pretrain.loader import read_manifest

TINY = ["videos=2", "until=data", "extract.enabled=true", "extract.device=cpu", "extract.batch_size=8"]


def _list(values: list[str]) -> str:
    """A dotlist list of strings, each quoted so that it stays one string."""
    return "[" + ",".join(f"'{v}'" for v in values) + "]"


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
            S.extract_videos(cfg, videos, tmp_path / "out")
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
                       r"until=zeroshot"):  # fmt: skip
        S.check_frame_dims(cfg, tmp_path)
    S.check_frame_dims(_config(tmp_path, "extract.random_weights=true", "until=zeroshot"), tmp_path)  # not finetuned
    shards(recipe_dim=128)
    S.check_frame_dims(cfg, tmp_path)  # the same dims: on to pretraining


def test_finetuned_sets_are_extracted_from_video_and_the_rest_keep_their_features(tmp_path: Path) -> None:
    """extract.enabled=true: each finetuned set gets an extract stage (hero layout) before its sharding, which
    reads the extracted folder; sets not finetuned keep the corpus's features; off: no such stage."""
    cfg = _config(tmp_path, "extract.random_weights=true", "finetune.recipes=[msrvtt]")
    names = [name for _, name, *_ in S.data_stages(cfg, tmp_path)]
    assert names.index("msrvtt videos -> features") == names.index("msrvtt -> shards") - 1
    assert not any(n.endswith("videos -> features") for n in names if not n.startswith(("msrvtt", "HowTo100M")))
    off = S.load_config(S.DEFAULT_CONFIG, [f"workdir={tmp_path}"])
    assert not any("videos -> features" in name for _, name, *_ in S.data_stages(off, tmp_path))
    assert "extracted_sets" not in S.stage_settings(off)["sets"]  # the default's markers are unchanged
    assert S.stage_settings(cfg)["sets"]["extracted_sets"] == ["msrvtt"]


@pytest.mark.slow
def test_main_job_from_video_finetunes_on_extracted_features(tmp_path: Path, capsys) -> None:
    """The main job with extract.enabled=true runs to the end: MSR-VTT's shards hold features extracted from its
    videos with the backbones HowTo100M's came from (the extracted dim, not the corpus's 64-d), so the export
    initialises the finetune model, which trains and is evaluated; the report is written."""
    import json

    from launch import main_job

    work = tmp_path / "work"
    rc = main_job.main([
        f"workdir={work}", "videos=3", "eval_queries=0", "extract.enabled=true", "extract.random_weights=true",
        "extract.tiny=true", "extract.device=cpu", "extract.batch_size=8", "tagger=heuristic", "workers=1",
        "shard_size=1", "finetune_shard_size=2", "pretrain.steps=2", "pretrain.ranks=1", "pretrain.held_out_shards=1",
        f"pretrain.overrides={_list([*FAST, 'checkpoint.every=0', 'eval.every=0'])}",
        "finetune.recipes=[msrvtt]", "finetune.seeds=[0]", "finetune.steps=2", "finetune.parallel=1",
        f"finetune.overrides={_list([*FINETUNE_TINY, 'eval.every=0'])}",
        "finetune.recipe_overrides.msrvtt=[data.max_frames=8,task.rerank=3]",
    ])  # fmt: skip
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    assert "main job done" in out.out
    dim = read_manifest(str(work / "shards" / "howto100m"))["feature_spec"]["dim"]
    assert dim != 64  # the tiny backbones' 2d + 3d, not the corpus's precomputed HERO features
    feats = work / "features" / "msrvtt"
    ids = sorted(p.stem for p in (work / "raw" / "msrvtt" / "videos").glob("*.mp4"))
    assert ids and sorted(p.stem for p in feats.glob("*.npz")) == ids
    with np.load(feats / f"{ids[0]}.npz") as z:
        assert z["features"].shape[1] == dim
    splits = sorted(p.parent for p in (work / "shards" / "msrvtt").glob("*/manifest.json"))
    assert work / "shards" / "msrvtt" / S.train_split("msrvtt", []) in splits
    for split in splits:
        manifest = read_manifest(str(split))
        assert manifest["feature_spec"]["dim"] == dim and manifest["features_root"] == str(feats), split
    results = json.loads((work / "runs" / "finetune" / "msrvtt-pretrained-seed0" / "results.json").read_text())
    assert {"R@1", "R@10"} <= set(results["metrics"])
    assert (work / "report" / "report.md").exists()
