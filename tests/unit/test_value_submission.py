"""How2R against the VALUE benchmark: official video indices, VALUE's own submission format and zip.

`value_scorer` below is VALUE's How2R scoring written out plainly from its published definition
(VALUE-Leaderboard/EvaluationTools: README "Retrieval Submission", scoring_program/evaluate_how2r.py
and the recall code of scoring_program/evaluate_tvr.py), independently of the code under test. The
release written by `value_release` has VALUE's shape: numeric clip names, duration 60, no `type`,
and `how2r_video2dur_idx.json` with global indices under `train`, `val` and `test_public`.
"""

from __future__ import annotations

import json
import logging
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import read_jsonl

from data_prep import how2r
from data_prep.errors import DataPrepError
from finetune import value_submission
from finetune.moment_eval import EvalInputError

OFFICIAL = {  # VALUE's indices are global over the splits, nothing like 0.. per split
    "train": {"25884": [60, 13932], "28434": [60, 6676]},
    "val": {"11723": [60, 5021], "16067": [60, 77], "22936": [60, 16960], "4398": [60, 26523]},
    "test_public": {"21961": [60, 15807], "13765": [60, 19788]},
}
RELEASE = {  # split file -> (vid_name, ts) per query; val's clip 4398 has no query (a corpus candidate only)
    "train": [("25884", [1.5, 9.0]), ("28434", [30.0, 42.5]), ("28434", [0.0, 6.0])],
    "val_1k": [("11723", [0.0, 11.77]), ("16067", [0.0, 1.49]), ("22936", [6.6, 32.56]), ("22936", [40.0, 60.0])],
    "test_public_1k": [("21961", [3.0, 9.0]), ("13765", [12.0, 30.0])],
}
VCMR_KEYS = [f"{t}_r{k}" for t in (0.5, 0.7) for k in (1, 5, 10, 100)]


# ---------------------------------------------------------------- VALUE's scorer, from its definition


def value_scorer(sub: dict[str, Any], video2dur_idx: dict[str, Any], split: str, gt: list[dict]) -> dict[str, Any]:
    """VALUE's How2R metrics of one split, as its published scorer defines them.

    - the submission's own video2idx, if any, is replaced by the official one,
      `{vid_name: entry[1]}` of `video2dur_idx[split]`;
    - VCMR (and SVMR, if present) predictions are `[video_idx, st, ed, score]`; VR predictions are
      bare video idx, each read as `[idx, 0, 0, 0]` (so a list there cannot be read: TypeError);
    - every gt desc_id must have an entry; only the first 100 predictions count; a query with
      none cannot be read (numpy indexes column 0 of an empty array: IndexError);
    - VCMR: a prediction is correct when its idx is the gt video's and its IoU with the gt span
      (intersection over the hull of the two spans) is >= the threshold; `"{iou}_r{k}"` is the
      percentage of queries with a correct prediction among the first k, rounded to 2 decimals;
      VR: `"r{k}"` the percentage with the gt video among the first k; no query types;
    - the leaderboard's How2R score, AveR, is the mean of VCMR 0.7_r1, 0.7_r5 and 0.7_r10.
    """
    video2idx = {vid: entry[1] for vid, entry in video2dur_idx[split].items()}
    out: dict[str, Any] = {}
    for task in ("VCMR", "SVMR", "VR"):
        if task not in sub:
            continue
        by_id = {int(e["desc_id"]): e["predictions"] for e in sub[task]}
        assert {g["desc_id"] for g in gt} <= set(by_id), "desc_ids in ground_truth must all exist in predictions"
        hits: dict[str, list[bool]] = {}
        for g in gt:
            preds = by_id[g["desc_id"]][:100]
            if not preds:
                raise IndexError("a query with no predictions")
            rows = [(float(p), 0.0, 0.0) if task == "VR" else (float(p[0]), float(p[1]), float(p[2])) for p in preds]
            target = video2idx[g["vid_name"]]
            same = [v == target for v, _, _ in rows]
            if task == "VR":
                for k in (1, 5, 10, 100):
                    hits.setdefault(f"r{k}", []).append(any(same[:k]))
                continue
            gst, ged = g["ts"]
            ious = []
            for (_, st, ed), ok in zip(rows, same):
                hull = max(ed, ged) - min(st, gst)
                ious.append(max(0.0, min(ed, ged) - max(st, gst)) / hull if ok and hull else 0.0)
            for thd in (0.5, 0.7):
                for k in (1, 5, 10, 100):
                    hits.setdefault(f"{thd}_r{k}", []).append(any(iou >= thd for iou in ious[:k]))
        out[task] = {key: round(100 * sum(h) / len(h), 2) for key, h in hits.items()}
    if "VCMR" in out:
        out["AveR"] = round(sum(out["VCMR"][f"0.7_r{k}"] for k in (1, 5, 10)) / 3, 2)
    return out


# ---------------------------------------------------------------- a release in VALUE's shape


def value_release(d: Path, official: dict[str, Any] = OFFICIAL) -> dict[str, Path]:
    """VALUE's How2R files under d (queries without `type`, as VALUE releases them) and clip features."""
    d.mkdir(parents=True, exist_ok=True)
    files, desc_id = {}, 1000
    for name, queries in RELEASE.items():
        lines = []
        for vid, ts in queries:
            lines.append({"vid_name": vid, "duration": 60, "ts": ts, "desc_id": desc_id, "desc": f"query {desc_id}"})
            desc_id += 7
        files[name] = d / f"how2r_{name}_release.jsonl"
        files[name].write_text("".join(json.dumps(x) + "\n" for x in lines))
    for clip in {c for table in official.values() for c in table}:
        (d / "features").mkdir(exist_ok=True)
        feats = np.random.default_rng(int(clip)).normal(size=(40, 8)).astype(np.float32)
        np.savez(d / "features" / f"{clip}.npz", features=feats)
    files["video2dur"] = d / "how2r_video2dur_idx.json"
    files["video2dur"].write_text(json.dumps(official))
    return files


def convert(files: dict[str, Path], out: Path, official: bool = True) -> Path:
    splits = ["--train", str(files["train"]), "--val", str(files["val_1k"]), "--test", str(files["test_public_1k"])]
    args = [*splits, "--features", str(files["train"].parent / "features"), "--out", str(out), "--tagger", "heuristic"]
    how2r.main([*args, *(["--video2dur", str(files["video2dur"])] if official else [])])
    return out


def tvr_format_submission(out: Path, split: str, shift: int = 0) -> dict[str, Any]:
    """What the moment recipe writes for `split` (finetune/moment.py): TVR's format, video idx from
    gt/video2idx.json. Each query's prediction is its gt moment on the video `shift` places after its own."""
    table = json.loads((out / "gt" / "video2idx.json").read_text())[split]
    video2idx = {vid: idx for vid, (_, idx) in table.items()}
    videos = sorted(video2idx)
    sub: dict[str, Any] = {"video2idx": video2idx, "VCMR": [], "SVMR": [], "VR": []}
    for g in read_jsonl(out / "gt" / f"how2r_{split}_release.jsonl"):
        idx = video2idx[videos[(videos.index(g["vid_name"]) + shift) % len(videos)]]
        entry = {"desc_id": g["desc_id"], "desc": g["desc"]}
        sub["VCMR"].append({**entry, "predictions": [[idx, *g["ts"], 1.0]]})
        sub["SVMR"].append({**entry, "predictions": [[idx, *g["ts"], 1.0]]})
        sub["VR"].append({**entry, "predictions": [[idx, 0, 0, 1.0]]})
    return sub


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return value_release(tmp_path_factory.mktemp("value"))


@pytest.fixture(scope="module")
def converted(release: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert(release, tmp_path_factory.mktemp("how2r"))


# ---------------------------------------------------------------- the converter


def test_official_indices_are_used(release: dict[str, Path], converted: Path) -> None:
    video2idx = json.loads((converted / "gt" / "video2idx.json").read_text())
    assert video2idx == {"train": OFFICIAL["train"], "val": OFFICIAL["val"], "test": OFFICIAL["test_public"]}
    assert (converted / "gt" / "how2r_video2dur_idx.json").read_bytes() == release["video2dur"].read_bytes()
    # the official split's clip without a query is still a retrieval candidate
    manifest = json.loads((converted / "val" / "manifest.json").read_text())
    assert manifest["counts"]["videos"] == 4 and manifest["counts"]["samples"] == 4


def test_generated_ground_truth_has_no_null_type(release: dict[str, Path], converted: Path, tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        lines = read_jsonl(converted / "gt" / f"how2r_{split}_release.jsonl")
        assert lines and all("type" not in x for x in lines)  # VALUE's How2R queries have no type
    typed = tmp_path / "typed.jsonl"
    typed.write_text(json.dumps({"vid_name": "11723", "duration": 60, "ts": [0, 5], "desc_id": 1, "desc": "a",
                                 "type": "v"}) + "\n")  # fmt: skip
    how2r.main(["--val", str(typed), "--features", str(release["train"].parent / "features"), "--out",
                str(tmp_path / "out"), "--tagger", "heuristic"])  # fmt: skip
    assert read_jsonl(tmp_path / "out" / "gt" / "how2r_val_release.jsonl")[0]["type"] == "v"


def test_a_clip_missing_from_the_official_file_is_an_error(tmp_path: Path) -> None:
    official = {**OFFICIAL, "val": {k: v for k, v in OFFICIAL["val"].items() if k != "16067"}}
    files = value_release(tmp_path / "value", official)
    with pytest.raises(DataPrepError) as err:
        convert(files, tmp_path / "out")
    assert "'16067'" in str(err.value) and str(files["video2dur"]) in str(err.value) and "'val'" in str(err.value)
    del official["test_public"]
    files["video2dur"].write_text(json.dumps({**official, "val": OFFICIAL["val"]}))
    with pytest.raises(DataPrepError, match="no split 'test_public'"):
        convert(files, tmp_path / "out2")


def test_without_the_official_file_the_old_numbering_is_kept_and_logged(
    release: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="data_prep.how2r"):
        out = convert(release, tmp_path / "out", official=False)
    assert "--video2dur" in caplog.text and "VALUE" in caplog.text
    video2idx = json.loads((out / "gt" / "video2idx.json").read_text())
    assert {vid: idx for vid, (_, idx) in video2idx["val"].items()} == {"11723": 0, "16067": 1, "22936": 2}
    # what VALUE makes of it: a perfect submission numbered this way scores nothing
    value = value_submission.from_tvr(tvr_format_submission(out, "val"))
    assert value_scorer(value, OFFICIAL, "val", read_jsonl(release["val_1k"]))["AveR"] == 0.0


# ---------------------------------------------------------------- VALUE's submission format


def test_perfect_and_wrong_submissions_through_values_scorer(
    release: dict[str, Path], converted: Path, tmp_path: Path
) -> None:
    gt = read_jsonl(release["val_1k"])  # VALUE's ground truth is the release file itself
    video_ids = [idx for _, idx in OFFICIAL["val"].values()]
    for shift, expected in ((0, 100.0), (1, 0.0)):
        path = tmp_path / value_submission.file_name("val")
        value_submission.write(path, value_submission.from_tvr(tvr_format_submission(converted, "val", shift)),
                               video_ids)  # fmt: skip
        sub = json.loads(path.read_text())
        assert set(sub) == {"VCMR", "VR"} and all(isinstance(i, int) for e in sub["VR"] for i in e["predictions"])
        metrics = value_scorer(sub, OFFICIAL, "val", gt)
        assert set(metrics["VCMR"]) == set(VCMR_KEYS) and set(metrics["VR"]) == {"r1", "r5", "r10", "r100"}
        assert all(v == expected for task in ("VCMR", "VR") for v in metrics[task].values())
        assert metrics["AveR"] == expected


def test_the_tvr_format_is_not_what_values_scorer_reads(converted: Path) -> None:
    sub = tvr_format_submission(converted, "val")  # VR as [idx, 0, 0, score]
    gt = read_jsonl(converted / "gt" / "how2r_val_release.jsonl")
    with pytest.raises(TypeError):  # VALUE's scorer crashes on it
        value_scorer({"VCMR": sub["VCMR"], "VR": sub["VR"]}, OFFICIAL, "val", gt)
    with pytest.raises(EvalInputError, match="VR entry 0 .* prediction 0: must be a video idx"):
        value_submission.validate({"VCMR": sub["VCMR"], "VR": sub["VR"]})


def test_zip_has_values_layout_and_scores(release: dict[str, Path], converted: Path, tmp_path: Path) -> None:
    paths = {}
    for split in ("val", "test"):
        paths[split] = tmp_path / value_submission.file_name(split)
        value_submission.write(paths[split], value_submission.from_tvr(tvr_format_submission(converted, split)))
    assert paths["test"].name == "how2r_test_public_predictions.json"
    out = value_submission.value_zip(tmp_path / "how2r_submission.zip", paths["val"], paths["test"])
    with zipfile.ZipFile(out) as z:
        assert sorted(z.namelist()) == ["how2r/how2r_test_public_predictions.json", "how2r/how2r_val_predictions.json"]
        val = json.loads(z.read("how2r/how2r_val_predictions.json"))
        test = json.loads(z.read("how2r/how2r_test_public_predictions.json"))
    assert value_scorer(val, OFFICIAL, "val", read_jsonl(release["val_1k"]))["AveR"] == 100.0
    assert value_scorer(test, OFFICIAL, "test_public", read_jsonl(release["test_public_1k"]))["AveR"] == 100.0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**val, "VR": [{**e, "predictions": []} for e in val["VR"]]}))
    with pytest.raises(EvalInputError, match=f"{bad}: VR entry 0 .*: no predictions"):
        value_submission.value_zip(tmp_path / "never.zip", bad, paths["test"])
    assert not (tmp_path / "never.zip").exists()


def _valid() -> dict[str, Any]:
    return {"VCMR": [{"desc_id": 3, "desc": "a", "predictions": [[7, 1.0, 4.5, 0.9], [9, 0.0, 2.0, 0.5]]},
                     {"desc_id": 4, "desc": "b", "predictions": [[9, 3.0, 6.0, 0.3]]}],
            "VR": [{"desc_id": 3, "predictions": [7, 9]}, {"desc_id": 4, "predictions": [9]}]}  # fmt: skip


BAD = [  # (what, edit of a valid submission, message)
    ("VR as TVR's rows", lambda s: s["VR"][0].update(predictions=[[7, 0, 0, 0.9]]), "must be a video idx"),
    ("bool idx", lambda s: s["VR"][1].update(predictions=[True]), "must be a video idx"),
    ("empty VCMR", lambda s: s["VCMR"][1].update(predictions=[]), "no predictions"),
    ("empty VR", lambda s: s["VR"][0].update(predictions=[]), "no predictions"),
    ("SVMR", lambda s: s.update(SVMR=[]), "keys must be"),
    ("no VR", lambda s: s.pop("VR"), "keys must be"),
    ("str desc_id", lambda s: s["VCMR"][0].update(desc_id="3"), "desc_id must be an int"),
    ("unknown key", lambda s: s["VR"][0].update(score=1), "keys"),
    ("repeated desc_id", lambda s: s["VCMR"][1].update(desc_id=3), "appears more than once"),
    ("other queries", lambda s: s["VR"][1].update(desc_id=5), "same desc_ids"),
    ("idx not official", lambda s: s["VCMR"][0]["predictions"][0].__setitem__(0, 8), "not in the official"),
    ("VR idx not official", lambda s: s["VR"][0].update(predictions=[8]), "not in the official"),
    ("st > ed", lambda s: s["VCMR"][0]["predictions"][0].__setitem__(1, 5.0), "0 <= st <= ed"),
    ("nan", lambda s: s["VCMR"][0]["predictions"][0].__setitem__(2, math.nan), "finite numbers"),
    ("ascending", lambda s: s["VCMR"][0]["predictions"].reverse(), "sorted by score"),
    ("repeated VR video", lambda s: s["VR"][0].update(predictions=[7, 7]), "distinct videos"),
    ("101 predictions", lambda s: s["VR"][0].update(predictions=list(range(101))), "at most 100"),
]


@pytest.mark.parametrize(("what", "edit", "message"), BAD, ids=[b[0] for b in BAD])
def test_validate_rejects_what_values_scorer_cannot_read(what: str, edit: Any, message: str) -> None:
    value_submission.validate(_valid(), video_ids={7, 9})
    sub = _valid()
    edit(sub)
    with pytest.raises(EvalInputError, match=message):
        value_submission.validate(sub, video_ids={7, 9})


def test_split_names() -> None:
    assert value_submission.file_name("val") == "how2r_val_predictions.json"
    assert value_submission.file_name("test") == value_submission.file_name("test_public")
