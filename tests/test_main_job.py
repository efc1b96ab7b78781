"""The README's first command on a small corpus: every stage's outputs, then reuse on a re-run."""

from __future__ import annotations

import json
from pathlib import Path

from launch import main_job

DATASETS = {
    "howto100m": [""],
    "tvr": ["train", "val", "test_public"],
    "didemo": ["train", "val", "test"],
    "how2r": ["train", "val", "test"],
    "msrvtt": ["train_9k", "train_7k", "test_1ka"],
    "activitynet": ["train", "val_1", "val_2"],
}


def _run(workdir: Path, capsys, *extra: str) -> str:
    code = main_job.main([f"workdir={workdir}", "videos=12", "tagger=heuristic", "workers=1", *extra])
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def test_main_job_shards_every_dataset_and_reuses_them(tmp_path: Path, capsys) -> None:
    out = _run(tmp_path, capsys)
    shards = tmp_path / "shards"
    for dataset, splits in DATASETS.items():
        for split in splits:
            manifest = json.loads((shards / dataset / split / "manifest.json").read_text())
            assert manifest["counts"]["samples"] > 0, (dataset, split)
            assert f"{dataset}/{split}".rstrip("/") in out
    for dataset in DATASETS:
        if dataset != "howto100m":
            assert (shards / dataset / "gt" / "video2idx.json").exists(), dataset

    # The How2R source videos are left out of pretraining, with their reason.
    how2r_ids = set(main_job.how2r_youtube_ids(tmp_path / "raw" / "how2r"))
    rejects = [json.loads(line) for line in (shards / "howto100m" / "rejects.jsonl").read_text().splitlines()]
    excluded = {r["video_id"] for r in rejects if r["reason"] == "excluded"}
    captioned = set(json.loads((tmp_path / "raw" / "howto100m" / "raw_caption.json").read_text()))
    assert excluded == how2r_ids & captioned and excluded

    first_shard = sorted((shards / "howto100m").glob("*.tar"))[0]
    mtime = first_shard.stat().st_mtime_ns
    again = _run(tmp_path, capsys)
    assert again.count("done already") == 1 + len(DATASETS)
    assert first_shard.stat().st_mtime_ns == mtime


def test_main_job_finishes_an_interrupted_stage(tmp_path: Path, capsys) -> None:
    _run(tmp_path, capsys)
    stage = tmp_path / "shards" / "tvr"
    (stage / main_job.DONE).unlink()
    (stage / "train" / "manifest.json").unlink()  # as if killed before the end
    out = _run(tmp_path, capsys)
    assert "tvr -> shards ->" in out
    assert (stage / "train" / "manifest.json").exists()
