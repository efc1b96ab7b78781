"""How2QA: the converter on the synthetic set and on hand-written rows, and what the synthetic set plants.

The synthetic round trip converts `data_prep.synthetic`'s How2QA CSVs (`main(argv)`, in this
process) and checks every row's fate, the answer permutation, the clip rule and the features
against the input files parsed here independently. Clamping at the end of the features and
malformed rows use tiny hand-written inputs.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import read_jsonl, read_samples, sha256_file
from test_finetune_converters import hero, write_hero

from data_prep import how2qa, how2r, layout, synthetic
from data_prep.errors import DataPrepError

SYN_VIDEOS = 6  # How2QA's minimum: 3 YouTube videos, 14 clips, 35 rows (seed 0)
SPLITS = ("train", "val", "test")
CLIP = 60.0
INTERVAL = 1.5


# ---------------------------------------------------------------- helpers


def samples_by_id(folder: Path) -> dict[str, dict[str, Any]]:
    """The split's samples by video id: the JSON plus `features` (float16 [T, D])."""
    out = {}
    for s in read_samples(folder):
        assert s["feat.npy"].dtype == np.float16
        out[s["json"]["video_id"]] = {**s["json"], "features": s["feat.npy"]}
    return out


def csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [row for row in csv.reader(f) if row]


def expected_order(split: str, query_id: int) -> tuple[int, ...]:
    """The documented permutation: the k-th of the 24 in lexicographic order, k = sha256 prefix mod 24."""
    k = int.from_bytes(hashlib.sha256(f"{split}:{query_id}".encode()).digest()[:8], "big") % 24
    return list(itertools.permutations(range(4)))[k]


def grid_clip(youtube_id: str, st: float, ed: float) -> str:
    """The clip id of a span: the 60 s grid window(s) holding it."""
    a = math.floor(st / CLIP) * CLIP
    b = max(a + CLIP, math.ceil(ed / CLIP) * CLIP)
    return f"{youtube_id}_{a:g}_{b:g}"


def split_args(d: Path) -> list[str]:
    """--train/--val/--test for the how2qa_<split>.csv files of `d` that exist."""
    return [a for s in SPLITS if (d / f"how2qa_{s}.csv").exists() for a in (f"--{s}", str(d / f"how2qa_{s}.csv"))]


def convert(d: Path, out: Path, *extra: str) -> dict:
    return how2qa.main([*split_args(d), "--features", str(d / "features"), "--out", str(out), "--tagger",
                        "heuristic", "--shard-size", "3", *extra])  # fmt: skip


@pytest.fixture(scope="module")
def syn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("qa-synthetic")
    synthetic.generate(root, videos=SYN_VIDEOS, seed=0)
    return root / "how2qa", json.loads((root / "planted.json").read_text())


@pytest.fixture(scope="module")
def converted(syn: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    src, _ = syn
    out = tmp_path_factory.mktemp("qa-out")
    return out, how2qa.main([*layout.how2qa_inputs(src), "--out", str(out), "--tagger", "heuristic", "--shard-size",
                             "3"])  # fmt: skip


# ---------------------------------------------------------------- the synthetic set


def test_every_row_is_a_query_or_a_counted_reject(syn: tuple[Path, dict], converted: tuple[Path, dict]) -> None:
    src, planted = syn
    out, result = converted
    truth = planted["datasets"]["how2qa"]["questions"]
    for split in SPLITS:
        rows = csv_rows(src / f"how2qa_{split}.csv")
        kept = read_jsonl(out / split / "queries.jsonl")
        dropped = read_jsonl(out / split / "rejected_queries.jsonl")
        ids = [q["query_id"] for q in kept] + [r["query_id"] for r in dropped]
        assert sorted(ids) == list(range(len(rows))), split
        planted_rejects = {t["row"]: t["reject"] for t in truth[split] if t["reject"]}
        assert {r["query_id"]: r["reason"] for r in dropped} == planted_rejects
        assert all(r["detail"] for r in dropped)
        manifest = result["splits"][split]
        assert manifest["queries"]["kept"] == len(kept) and manifest["queries"]["dropped"] == len(dropped)
        assert manifest["counts"]["videos_rejected"] == 0
        # the shards hold exactly queries.jsonl's queries, grouped by clip
        samples = samples_by_id(out / split)
        in_shards = [{**{k: v for k, v in q.items() if k != "toi"}, "video_id": vid}
                     for vid, s in samples.items() for q in s["queries"]]  # fmt: skip
        assert sorted(in_shards, key=lambda q: q["query_id"]) == sorted(kept, key=lambda q: q["query_id"])
    assert sorted(r["reason"] for r in read_jsonl(out / "train" / "rejected_queries.jsonl")) == [
        "duplicate_answers", "malformed_row"]  # fmt: skip


def test_answers_are_permuted_deterministically(syn: tuple[Path, dict], converted: tuple[Path, dict],
                                               tmp_path: Path) -> None:  # fmt: skip
    src, planted = syn
    out, _ = converted
    idx = []
    for split in SPLITS:
        rows = csv_rows(src / f"how2qa_{split}.csv")
        truth = {t["row"]: t for t in planted["datasets"]["how2qa"]["questions"][split]}
        for q in read_jsonl(out / split / "queries.jsonl"):
            row = rows[q["query_id"]]
            given = [x.strip() for x in (*row[2:5], row[6])]
            assert q["text"] == row[5] and q["answers"] == [given[i] for i in expected_order(split, q["query_id"])]
            assert q["answers"][q["answer_idx"]] == row[6].strip() == f"the {truth[q['query_id']]['answer']}"
            assert f"the {truth[q['query_id']]['in_clip']}" in q["answers"]
            idx.append(q["answer_idx"])
    assert len(set(idx)) == 4 and idx.count(3) < len(idx) / 2, idx  # not always last
    again = tmp_path / "again"
    convert(src, again, "--captions", str(src / "raw_caption.json"))
    for split in SPLITS:
        for name in ("queries.jsonl", "rejected_queries.jsonl", "sizes.json"):
            assert (again / split / name).read_bytes() == (out / split / name).read_bytes()
        for shard in sorted((out / split).glob("shard-*.tar")):
            assert sha256_file(again / split / shard.name) == sha256_file(shard)


def test_clips_spans_and_features(syn: tuple[Path, dict], converted: tuple[Path, dict]) -> None:
    src, planted = syn
    out, _ = converted
    clamped = wide = 0
    for split in SPLITS:
        samples = samples_by_id(out / split)
        rows = csv_rows(src / f"how2qa_{split}.csv")
        assert set(samples) == {c for c, s in planted["datasets"]["how2qa"]["clips"].items() if s == split}
        for vid, s in samples.items():
            youtube_id, a, b = vid.rsplit("_", 2)
            a, b = float(a), float(b)
            whole = hero(src / "features" / f"{youtube_id}.npz")
            end = len(whole) * INTERVAL
            f0, f1 = round(a / INTERVAL), min(math.ceil(b / INTERVAL), len(whole))
            assert s["frame_start"] == f0 and s["clip_window"] == [a, b] and s["youtube_id"] == youtube_id
            assert s["duration"] == round(min(b, end) - a, 3) > 0
            np.testing.assert_array_equal(s["features"], whole[f0:f1].astype(np.float16))
            clamped += b > end
            wide += b - a > CLIP
            for q in s["queries"]:
                row = rows[q["query_id"]]
                st, ed = (float(x) for x in row[1].strip("[]").split(":"))
                assert grid_clip(row[0], st, ed) == vid
                assert q["spans"] == [[round(st - a, 3), round(ed - a, 3)]]
                assert 0 <= q["spans"][0][0] < q["spans"][0][1] <= s["duration"]
            assert all(0 <= x["start"] <= x["end"] <= b - a for x in s["subtitles"])
    assert clamped and wide  # the synthetic set exercises both


def test_gt_copies_and_answers(syn: tuple[Path, dict], converted: tuple[Path, dict]) -> None:
    src, _ = syn
    out, result = converted
    assert result["gt"] == sorted([*(f"how2qa_{s}.csv" for s in SPLITS), *(f"how2qa_{s}_answers.jsonl" for s in SPLITS),
                                   "video2idx.json"])  # fmt: skip
    video2idx = json.loads((out / "gt" / "video2idx.json").read_text())
    for split in SPLITS:
        assert (out / "gt" / f"how2qa_{split}.csv").read_bytes() == (src / f"how2qa_{split}.csv").read_bytes()
        gt = read_jsonl(out / "gt" / f"how2qa_{split}_answers.jsonl")
        assert all(list(g) == ["query_id", "video_id", "question", "answers", "answer_idx", "ts"] for g in gt)
        malformed = {r["query_id"] for r in read_jsonl(out / split / "rejected_queries.jsonl")
                     if r["reason"] == "malformed_row"}  # fmt: skip
        assert [g["query_id"] for g in gt] == [i for i in range(len(csv_rows(src / f"how2qa_{split}.csv")))
                                               if i not in malformed]  # fmt: skip
        by_id = {g["query_id"]: g for g in gt}
        for q in read_jsonl(out / split / "queries.jsonl"):
            g = by_id[q["query_id"]]
            assert (g["video_id"], g["question"], g["answers"], g["answer_idx"], [g["ts"]]) == (
                q["video_id"], q["text"], q["answers"], q["answer_idx"], q["spans"])  # fmt: skip
        assert sorted(video2idx[split]) == sorted(samples_by_id(out / split))


def test_synthetic_plant(syn: tuple[Path, dict]) -> None:
    """The answer is shown in the span, one wrong answer only elsewhere in the clip, two nowhere in it;
    the span's frames look like the answer more than like the in-clip distractor."""
    src, planted = syn
    qa = planted["datasets"]["how2qa"]
    protos, proj = synthetic.concept_prototypes(0), synthetic.layout_projection(0, "hero_appearance")
    wins = total = 0
    for split in SPLITS:
        for t in qa["questions"][split]:
            if t["reject"]:
                continue
            youtube_id, a, b = t["clip"].rsplit("_", 2)
            video = qa["videos"][youtube_id]
            st, ed = t["span"]
            shown = [(e["start"], e["end"], e["noun"]) for e in video["events"]]
            shown += [(s, e, video["background"]["noun"]) for s, e in video["background"]["spans"]]
            in_clip = {n for s, e, n in shown if s < min(int(b), video["duration"]) and e > int(a)}
            in_span = {n for s, e, n in shown if s < ed and e > st}
            [event] = [e for e in video["events"] if [e["start"], e["end"]] == t["span"]]
            assert (event["noun"], event["verb"]) == (t["answer"], t["verb"])
            assert t["in_clip"] in in_clip - in_span and not set(t["absent"]) & in_clip
            feats = hero(src / "features" / f"{youtube_id}.npz")[:, :32]
            rows = [k for k in range(len(feats)) if k * INTERVAL >= st and (k + 1) * INTERVAL <= ed]
            unit = feats[rows] / np.linalg.norm(feats[rows], axis=1, keepdims=True)
            cos = {n: float((unit @ (proj @ protos[n]) / np.linalg.norm(proj @ protos[n])).mean())
                   for n in (t["answer"], t["in_clip"])}  # fmt: skip
            wins += cos[t["answer"]] > cos[t["in_clip"]]
            total += 1
    assert total >= 30 and wins / total > 0.9, (wins, total)
    assert set(qa["overlap_with_howto100m"]) <= set(planted["datasets"]["how2r"]["overlap_with_howto100m"])
    assert any(t.get("same_verb") for ts in qa["questions"].values() for t in ts)


# ---------------------------------------------------------------- hand-written rows


def test_window_past_the_features_is_clamped(tmp_path: Path) -> None:
    d = tmp_path / "how2qa"
    whole = write_hero(d / "features" / "ytA.npz", 50)  # 75 s of features
    own = write_hero(d / "features" / "ytB_0_60.npz", 20)  # a clip with its own (30 s) file
    windows = [
        ("ytA", "62:70"),  # 0: clip 60-120 cut at 75 s: 15 s
        ("ytA", "64:72.5"),  # 1: same clip
        ("ytA", "70:79"),  # 2: [10, 19] ends past 15 + 3 s: past_end
        ("ytA", "76:77.5"),  # 3: [16, 17.5] starts after the clip's end: past_end
        ("ytA", "5:12"),  # 4: clip 0-60, whole
        ("ytA", "55:65"),  # 5: crosses 60: clip 0-120, cut at 75 s
        ("ytA", "121:125"),  # 6: clip 120-180 starts after the features: the clip is rejected
        ("ytB", "3:9"),  # 7: own file
    ]
    rows = "".join(f"{vid},[{w}],the box,the cup,the pen,what does he open?,the jar\n" for vid, w in windows)
    (d / "how2qa_train.csv").write_text(rows)
    out = tmp_path / "out"
    result = convert(d, out)
    samples = samples_by_id(out / "train")
    assert sorted(samples) == ["ytA_0_120", "ytA_0_60", "ytA_60_120", "ytB_0_60"]
    c = samples["ytA_60_120"]
    assert c["duration"] == 15.0 and c["frame_start"] == 40 and [q["query_id"] for q in c["queries"]] == [0, 1]
    assert [q["spans"] for q in c["queries"]] == [[[2.0, 10.0]], [[4.0, 12.5]]]
    np.testing.assert_array_equal(c["features"], whole[40:50].astype(np.float16))
    assert samples["ytA_0_60"]["duration"] == 60.0 and len(samples["ytA_0_60"]["features"]) == 40
    assert samples["ytA_0_120"]["duration"] == 75.0 and samples["ytA_0_120"]["queries"][0]["spans"] == [[55.0, 65.0]]
    np.testing.assert_array_equal(samples["ytA_0_120"]["features"], whole.astype(np.float16))
    b = samples["ytB_0_60"]
    assert b["duration"] == 30.0 and b["frame_start"] == 0 and b["queries"][0]["spans"] == [[3.0, 9.0]]
    np.testing.assert_array_equal(b["features"], own.astype(np.float16))
    dropped = read_jsonl(out / "train" / "rejected_queries.jsonl")
    assert [(r["query_id"], r["video_id"], r["reason"]) for r in dropped] == [
        (2, "ytA_60_120", "past_end"), (3, "ytA_60_120", "past_end")]  # fmt: skip
    assert [(r["video_id"], r["reason"]) for r in read_jsonl(out / "train" / "rejects.jsonl")] == [
        ("ytA_120_180", "unreadable_features")]  # fmt: skip
    assert result["splits"]["train"]["counts"]["videos_rejected"] == 1
    assert json.loads((out / "gt" / "video2idx.json").read_text())["train"]["ytA_120_180"] == [None, 2]

    # How2R keeps its annotated 60 s duration for the same window (its frames are cut the same way)
    (d / "how2r_train.csv").write_text("ytA,[60:120],[62:70],open the jar\n")
    how2r.main(["--train", str(d / "how2r_train.csv"), "--features", str(d / "features"), "--out",
                str(tmp_path / "how2r"), "--tagger", "heuristic"])  # fmt: skip
    [r] = read_samples(tmp_path / "how2r" / "train")
    assert r["json"]["duration"] == 60.0 and len(r["feat.npy"]) == 10


def test_malformed_rows_are_counted_not_guessed(tmp_path: Path) -> None:
    d = tmp_path / "how2qa"
    write_hero(d / "features" / "ytA.npz", 40)
    (d / "how2qa_train.csv").write_text("ytA,[1:4],the box,the cup,the pen,what does he open?,the jar\n")
    (d / "how2qa_val.csv").write_text(
        "ytA,[5:12],the box,the cup,the pen,what does he open, then close?,the jar\n"  # 0: 8 fields
        "ytA,[5:12],the box,the cup,what does he open?,the jar\n"  # 1: 6 fields
        "ytA,[a:12],the box,the cup,the pen,what does he open?,the jar\n"  # 2: bad window
        "ytA,[5-12],the box,the cup,the pen,what does he open?,the jar\n"  # 3: bad window
        "ytA,[5:12],the box, The Jar ,the pen,what does he open?,the jar\n"  # 4: duplicate_answers
        "ytA,[5:12],the box,the cup,the pen,  ,the jar\n"  # 5: empty question
        "ytA,[5:12],the box,,the pen,what does he open?,the jar\n"  # 6: empty answer
        'ytA,[5:12],the box,the cup,the pen,"what does he open, then close?", the jar \n'  # 7: valid, quoted
        ",[5:12],the box,the cup,the pen,what does he open?,the jar\n"  # 8: no video
    )
    out = tmp_path / "out"
    result = convert(d, out)
    [q] = read_jsonl(out / "val" / "queries.jsonl")
    assert (q["query_id"], q["video_id"], q["text"]) == (7, "ytA_0_60", "what does he open, then close?")
    assert q["answers"][q["answer_idx"]] == "the jar" and sorted(q["answers"]) == sorted(
        ["the box", "the cup", "the pen", "the jar"])  # fmt: skip
    dropped = {r["query_id"]: (r["reason"], r["video_id"]) for r in read_jsonl(out / "val" / "rejected_queries.jsonl")}
    assert dropped == {
        **{i: ("malformed_row", None) for i in (0, 1, 2, 3, 8)},
        4: ("duplicate_answers", "ytA_0_60"), 5: ("empty_text", "ytA_0_60"), 6: ("empty_text", "ytA_0_60"),
    }  # fmt: skip
    by_reason = {"duplicate_answers": 1, "empty_text": 2, "malformed_row": 5}
    assert result["splits"]["val"]["queries"] == {"kept": 1, "dropped": 8, "dropped_by_reason": by_reason}
    gt = read_jsonl(out / "gt" / "how2qa_val_answers.jsonl")
    assert [g["query_id"] for g in gt] == [4, 5, 6, 7]  # every row that names a clip
    # a training clip left without a valid question is rejected, its question counted
    (d / "how2qa_train.csv").write_text("ytA,[1:4],the box,the cup,the jar,what does he open?,the JAR\n")
    result = convert(d, tmp_path / "out2")
    assert result["splits"]["train"]["queries"]["dropped_by_reason"] == {"duplicate_answers": 1}
    assert [(r["video_id"], r["reason"]) for r in read_jsonl(tmp_path / "out2" / "train" / "rejects.jsonl")] == [
        ("ytA_0_60", "missing_annotations")]  # fmt: skip


def test_unreadable_file_names_it(tmp_path: Path) -> None:
    d = tmp_path / "how2qa"
    write_hero(d / "features" / "ytA.npz", 40)
    (d / "how2qa_train.csv").write_bytes(b"ytA,[1:4],the box,the cup,the pen,what\xff?,the jar\n")
    with pytest.raises(DataPrepError, match="not valid CSV") as err:
        convert(d, tmp_path / "out")
    assert str(d / "how2qa_train.csv") in str(err.value)
    with pytest.raises(DataPrepError, match="file not found"):
        how2qa.main(["--val", str(d / "absent.csv"), "--features", str(d / "features"), "--out", str(tmp_path / "o")])
