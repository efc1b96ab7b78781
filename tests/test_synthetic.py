"""Tests for data_prep.synthetic: exact public formats, determinism, and the planted structure."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from data_prep import synthetic as syn

ROOT = Path(__file__).resolve().parents[1]
SHOW_PREFIXES = ("friends_", "castle_", "house_", "grey_", "met_")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    out = tmp_path_factory.mktemp("syn")
    summary = syn.generate(out)
    return out, summary, json.loads((out / "planted.json").read_text())


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def _features(path: Path) -> np.ndarray:
    with np.load(path) as npz:
        assert list(npz.keys()) == ["features"]
        return npz["features"]


def _check_hero(path: Path, duration: float) -> np.ndarray:
    feats = _features(path)
    assert feats.dtype == np.float32
    assert feats.shape == (math.ceil(round(duration / 1.5, 6)), 64)
    return feats


# ---------------------------------------------------------------- determinism


def test_same_seed_is_byte_identical_and_other_seed_differs(corpus, tmp_path):
    root, _, _ = corpus
    syn.generate(tmp_path / "again")
    syn.generate(tmp_path / "other", seed=1)
    first = _hashes(root)
    assert len(first) > 300
    assert _hashes(tmp_path / "again") == first
    other = _hashes(tmp_path / "other")
    assert other["planted.json"] != first["planted.json"]
    same = {k for k in set(other) & set(first) if other[k] == first[k]}
    assert same <= {"msrvtt/MSRVTT_train.7k.csv"}  # a list of "video{i}" ids fixed by the split sizes


def test_npz_has_fixed_timestamp_and_single_member(corpus):
    root, _, _ = corpus
    path = next((root / "tvr" / "features").glob("*.npz"))
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    assert [i.filename for i in infos] == ["features.npy"]
    assert infos[0].date_time == (1980, 1, 1, 0, 0, 0)


# ---------------------------------------------------------------- formats


def test_howto100m_formats(corpus):
    root, summary, planted = corpus
    base = root / "howto100m"
    with open(base / "HowTo100M_v1.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["video_id", "category_1", "category_2", "rank", "task_id"]
    ids = [r[0] for r in rows[1:]]
    assert len(ids) == len(set(ids)) == summary["howto100m"]["videos"] == syn.DEFAULT_VIDEOS
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{11}", v) for v in ids)
    assert any("-" in v for v in ids) and any("_" in v for v in ids)
    assert all(r[3].isdigit() and r[4].isdigit() for r in rows[1:])
    raw = json.loads((base / "raw_caption.json").read_text())
    clean = json.loads((base / "caption.json").read_text())
    assert list(raw) == list(clean) == ids
    for vid in ids:
        duration = planted["datasets"]["howto100m"]["videos"][vid]["duration"]
        assert 90 <= duration <= 300
        for caps in (raw[vid], clean[vid]):
            assert list(caps) == ["start", "end", "text"]
            assert len(caps["start"]) == len(caps["end"]) == len(caps["text"]) > 0
            assert all(0 <= s <= e <= duration for s, e in zip(caps["start"], caps["end"], strict=True))
        assert not any(_words(t) & syn.STOP_WORDS for t in clean[vid]["text"])
        _check_hero(base / "features" / "hero" / f"{vid}.npz", duration)
        for sub, rows_per_s in (("2d", 1.0), ("3d", 1.5)):
            arr = np.load(base / "features" / sub / f"{vid}.npy")
            assert arr.dtype == np.float32
            assert arr.shape == (math.ceil(round(duration * rows_per_s, 6)), 32)


def test_rolling_captions_dedup_to_planted_lines(corpus):
    root, _, planted = corpus
    raw = json.loads((root / "howto100m" / "raw_caption.json").read_text())
    repeats = 0
    for vid, caps in raw.items():
        truth = planted["datasets"]["howto100m"]["videos"][vid]["asr_lines"]
        segs = list(zip(caps["start"], caps["end"], caps["text"], strict=True))
        kept = [segs[0]]
        for seg in segs[1:]:
            if seg[2] == kept[-1][2] and seg[1] - seg[0] <= 0.011:
                repeats += 1
                continue
            kept.append(seg)
        assert len(kept) == len(truth)
        lines = []
        for i, (start, _, text) in enumerate(kept):
            if i:
                assert text.startswith(lines[-1] + " ")  # two-line roll
                assert kept[i - 1][1] > start  # segments overlap in time
                text = text[len(lines[-1]) + 1 :]
            lines.append(text)
            assert start == truth[i][0]
        assert lines == [t[2] for t in truth]
        assert all(3 <= len(t.split()) <= 8 and t == t.lower() and re.fullmatch(r"[a-z ]+", t) for t in lines)
    assert repeats > 0


def test_tvr_formats(corpus):
    root, summary, planted = corpus
    base = root / "tvr"
    video2dur = json.loads((base / "tvr_video2dur_idx.json").read_text())
    assert list(video2dur) == ["train", "val", "test_public"]
    for split in video2dur.values():
        assert sorted(idx for _, idx in split.values()) == list(range(len(split)))
    subs = {row["vid_name"]: row["sub"] for row in _jsonl(base / "tvqa_preprocessed_subtitles.jsonl")}
    names = [n for split in video2dur.values() for n in split]
    assert sorted(subs) == sorted(names) and len(names) == summary["tvr"]["videos"] == 40
    assert any(n.startswith(SHOW_PREFIXES) for n in names)
    assert all(re.fullmatch(r"((friends|castle|house|grey|met)_)?s\d\de\d\d_seg0[12]_clip_\d\d", n) for n in names)
    desc_ids = []
    for split in ("train", "val"):
        for row in _jsonl(base / f"tvr_{split}_release.jsonl"):
            assert list(row) == ["desc", "duration", "ts", "desc_id", "type", "vid_name"]
            assert row["duration"] == video2dur[split][row["vid_name"]][0]
            assert 60 <= row["duration"] <= 90 and 0 <= row["ts"][0] < row["ts"][1] <= row["duration"]
            assert row["type"] in ("v", "t", "vt")
            events = planted["datasets"]["tvr"]["videos"][row["vid_name"]]["events"]
            (ev,) = [e for e in events if [e["start"], e["end"]] == row["ts"]]
            assert ev["noun"] in _words(row["desc"])
            if row["type"] != "v":  # subtitle-grounded queries: the concept is talked about
                assert ev["mentioned"] and any(ev["noun"] in _words(s["text"]) for s in subs[row["vid_name"]])
            desc_ids.append(row["desc_id"])
    test_rows = _jsonl(base / "tvr_test_public_release.jsonl")
    assert test_rows and all(list(r) == ["desc", "desc_id"] for r in test_rows)
    desc_ids += [r["desc_id"] for r in test_rows]
    assert len(desc_ids) == len(set(desc_ids)) == summary["tvr"]["queries"]
    for name, sub in subs.items():
        assert all(list(s) == ["text", "start", "end"] and re.match(r"\([A-Z][a-z]+:\) ", s["text"]) for s in sub)
        duration = planted["datasets"]["tvr"]["videos"][name]["duration"]
        _check_hero(base / "features" / f"{name}.npz", duration)


def test_didemo_formats(corpus):
    root, summary, planted = corpus
    base = root / "didemo"
    ann_ids = set()
    for split in ("train", "val", "test"):
        rows = json.loads((base / f"{split}_data.json").read_text())
        assert rows
        for row in rows:
            assert list(row) == ["annotation_id", "description", "video", "times", "download_link", "num_segments"]
            assert re.fullmatch(r"\d{8}@N\d\d_\d{11}_[0-9a-f]{10}\.(mov|mp4)", row["video"])
            truth = planted["datasets"]["didemo"]["videos"][row["video"]]
            assert row["num_segments"] == math.ceil(truth["duration"] / 5) <= 6
            assert len(row["times"]) == 4
            assert all(0 <= s <= e < row["num_segments"] for s, e in row["times"])
            assert sum(t == row["times"][0] for t in row["times"]) >= 1
            ann_ids.add(row["annotation_id"])
            _check_hero(base / "features" / f"{row['video']}.npz", truth["duration"])
    assert len(ann_ids) == summary["didemo"]["queries"]


def test_how2r_formats(corpus):
    root, summary, planted = corpus
    base = root / "how2r"
    truth = planted["datasets"]["how2r"]
    raw = json.loads((base / "raw_caption.json").read_text())
    value_subs = {r["vid_name"]: r["sub"] for r in _jsonl(base / "value" / "how2r_subtitles.jsonl")}
    csv_ids, quoted = set(), False
    for split in ("train", "val", "test"):
        text = (base / f"how2r_{split}.csv").read_text()
        quoted |= '"' in text
        rows = list(csv.reader(text.splitlines()))
        value = _jsonl(base / "value" / f"how2r_{split}_release.jsonl")
        assert rows and len(rows) == len(value)
        for (yt, clip, moment, query), v in zip(rows, value, strict=True):
            cst, ced = map(int, re.fullmatch(r"\[(\d+):(\d+)\]", clip).groups())
            mst, med = map(float, re.fullmatch(r"\[(\d+\.\d+):(\d+\.\d+)\]", moment).groups())
            assert ced - cst == 60 and cst <= mst < med <= ced
            assert ced <= truth["videos"][yt]["duration"]
            assert list(v) == ["desc", "duration", "ts", "desc_id", "type", "vid_name"]
            assert v["vid_name"] == f"{yt}_{cst}_{ced}" and v["desc"] == query and v["duration"] == 60.0
            assert v["ts"] == [round(mst - cst, 2), round(med - cst, 2)]
            assert all(0 <= s["start"] <= s["end"] <= 60 for s in value_subs[v["vid_name"]])
            csv_ids.add(yt)
    assert quoted  # some queries contain commas and need CSV quoting
    assert csv_ids <= set(raw) == set(truth["videos"])
    howto = root / "howto100m"
    howto_raw = json.loads((howto / "raw_caption.json").read_text())
    assert truth["overlap_with_howto100m"] and set(truth["overlap_with_howto100m"]) <= csv_ids
    for vid in truth["overlap_with_howto100m"]:  # the same video looks the same in both releases
        assert (base / "features" / f"{vid}.npz").read_bytes() == (
            howto / "features" / "hero" / f"{vid}.npz"
        ).read_bytes()
        assert raw[vid] == howto_raw[vid]
    for vid in raw:
        _check_hero(base / "features" / f"{vid}.npz", truth["videos"][vid]["duration"])
    assert summary["how2r"]["clips"] == len(truth["clips"]) >= 30


def test_msrvtt_formats(corpus):
    root, _, planted = corpus
    base = root / "msrvtt"
    data = json.loads((base / "MSRVTT_data.json").read_text())
    assert list(data) == ["info", "videos", "sentences"]
    videos = {v["video_id"]: v for v in data["videos"]}
    for v in data["videos"]:
        assert list(v) == ["category", "url", "video_id", "start time", "end time", "split", "id"]
        assert v["split"] in ("train", "validate", "test") and 10 <= v["end time"] - v["start time"] <= 30.01
        duration = planted["datasets"]["msrvtt"]["videos"][v["video_id"]]["duration"]
        assert 1 <= len(planted["datasets"]["msrvtt"]["videos"][v["video_id"]]["events"]) <= 3
        _check_hero(base / "features" / f"{v['video_id']}.npz", duration)
    counts: dict[str, int] = {}
    for s in data["sentences"]:
        assert list(s) == ["caption", "video_id", "sen_id"]
        counts[s["video_id"]] = counts.get(s["video_id"], 0) + 1
    assert set(counts.values()) == {20} and set(counts) == set(videos)

    def ids(name: str, header: list[str]) -> list[list[str]]:
        with open(base / name, newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == header
        return rows[1:]

    nine = {r[0] for r in ids("MSRVTT_train.9k.csv", ["video_id"])}
    seven = {r[0] for r in ids("MSRVTT_train.7k.csv", ["video_id"])}
    test = ids("MSRVTT_JSFUSION_test.csv", ["key", "vid_key", "video_id", "sentence"])
    assert seven < nine and test
    for k, (key, vid_key, vid, _) in enumerate(test):
        assert key == f"ret{k}" and vid_key == "msr" + vid.removeprefix("video")
        assert vid not in nine and videos[vid]["split"] == "test"


def test_activitynet_formats(corpus):
    root, _, planted = corpus
    base = root / "activitynet"
    train, val1, val2 = (json.loads((base / f"{n}.json").read_text()) for n in ("train", "val_1", "val_2"))
    assert train and list(val1) == list(val2) and not set(train) & set(val1)
    assert any(val1[k]["sentences"] != val2[k]["sentences"] for k in val1)
    sentences = []
    for data in (train, val1, val2):
        for vid, entry in data.items():
            assert re.fullmatch(r"v_[A-Za-z0-9_-]{11}", vid) and list(entry) == ["duration", "timestamps", "sentences"]
            assert 60 <= entry["duration"] <= 180 and len(entry["timestamps"]) == len(entry["sentences"]) > 0
            assert all(0 <= s < e <= entry["duration"] for s, e in entry["timestamps"])
            sentences += entry["sentences"]
            _check_hero(base / "features" / f"{vid}.npz", planted["datasets"]["activitynet"]["videos"][vid]["duration"])
    assert all(s.strip()[0].isupper() and s.endswith(".") for s in sentences)
    assert any(s.startswith(" ") for s in sentences)


# ---------------------------------------------------------------- planted structure


def _event_contrast(
    feats: np.ndarray, events: list[dict], key: str, projected: dict[str, np.ndarray], interval: float = 1.5
) -> list[float]:
    """Per event: mean cosine to its concept's projected prototype on rows inside the event minus
    rows where that concept is not visible at all."""
    starts = np.arange(len(feats)) * interval
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    out = []
    for ev in events:
        target = projected[ev[key]] / np.linalg.norm(projected[ev[key]])
        cos = unit @ target
        inside = (starts >= ev["start"]) & (starts + interval <= ev["end"])
        visible = np.zeros(len(feats), bool)
        for other in events:
            if other[key] == ev[key]:
                visible |= (starts + interval > other["start"]) & (starts < other["end"])
        if inside.any() and (~visible).any():
            out.append(float(cos[inside].mean() - cos[~visible].mean()))
    return out


@pytest.mark.parametrize("dataset", ["howto100m", "tvr", "activitynet"])
def test_frames_in_an_event_look_like_its_concepts(corpus, dataset):
    root, _, planted = corpus
    protos = syn.concept_prototypes(0)
    halves = {"noun": (slice(0, 32), "hero_appearance"), "verb": (slice(32, 64), "hero_motion")}
    sub = {"howto100m": "features/hero", "tvr": "features", "activitynet": "features"}[dataset]
    for key, (cols, layout) in halves.items():
        projected = {c: syn.layout_projection(0, layout) @ p for c, p in protos.items()}
        gaps = []
        for vid, truth in planted["datasets"][dataset]["videos"].items():
            feats = _features(root / dataset / sub / f"{vid}.npz")[:, cols]
            gaps += _event_contrast(feats, truth["events"], key, projected)
        assert np.mean(np.array(gaps) > 0) > 0.9 and np.mean(gaps) > 0.2, (key, np.mean(gaps))


def test_appearance_layouts_see_nouns_more_than_verbs(corpus):
    root, _, planted = corpus
    protos = syn.concept_prototypes(0)
    gaps = {}
    for layout, sub in (("howto_2d", "2d"), ("howto_3d", "3d")):
        projected = {c: syn.layout_projection(0, layout) @ p for c, p in protos.items()}
        for key in ("noun", "verb"):
            vals = []
            for vid, truth in planted["datasets"]["howto100m"]["videos"].items():
                feats = np.load(root / "howto100m" / "features" / sub / f"{vid}.npy")
                vals += _event_contrast(feats, truth["events"], key, projected, syn.INTERVALS[sub])
            gaps[layout, key] = np.mean(vals)
    assert gaps["howto_2d", "noun"] > gaps["howto_2d", "verb"]
    assert gaps["howto_3d", "verb"] > gaps["howto_3d", "noun"]


def test_narration_mentions_events_near_their_time_and_never_the_background(corpus):
    root, _, planted = corpus
    mentioned = total = 0
    for dataset in ("howto100m", "how2r"):
        for truth in planted["datasets"][dataset]["videos"].values():
            lines = truth["asr_lines"]
            background = truth["background"]["noun"]
            assert not any(background in _words(t) for _, _, t in lines)
            assert all(e["noun"] != background for e in truth["events"])
            for ev in truth["events"]:
                total += 1
                if not ev["mentioned"]:
                    continue
                mentioned += 1
                near = [t for s, e, t in lines if e >= ev["start"] - 3 and s <= ev["end"] + 3]
                assert any(ev["noun"] in _words(t) for t in near), ev
                assert any(_words(t) & {ev["verb"], *syn.VERB_FORMS[ev["verb"]]} for t in near), ev
    assert 0.5 < mentioned / total < 0.85
    subs = _jsonl(root / "tvr" / "tvqa_preprocessed_subtitles.jsonl")
    for row in subs:
        background = planted["datasets"]["tvr"]["videos"][row["vid_name"]]["background"]["noun"]
        assert not any(background in _words(s["text"]) for s in row["sub"])


def test_vocabulary_is_consistent(corpus):
    _, _, planted = corpus
    vocab = planted["vocabulary"]
    concepts = set(vocab["nouns"]) | set(vocab["verbs"])
    assert len(vocab["nouns"]) >= 25 and len(vocab["verbs"]) >= 10
    assert not concepts & set(vocab["unrelated_words"]) and not concepts & syn.STOP_WORDS
    for template in syn.MENTION_TEMPLATES + syn.CHATTER:
        assert not _words(re.sub(r"\{\w+\}", "", template)) & concepts
    for text in syn.SUB_CHATTER:
        assert not _words(text) & concepts


# ---------------------------------------------------------------- scaling and CLI


def test_videos_scales_counts(tmp_path):
    summary = syn.generate(tmp_path / "small", videos=6, seed=2)
    assert summary["howto100m"]["videos"] == 6
    assert len(list((tmp_path / "small" / "howto100m" / "features" / "2d").glob("*.npy"))) == 6
    assert summary["tvr"]["videos"] == 5 and summary["didemo"]["videos"] == 4
    assert summary["msrvtt"]["videos"] == 5 and summary["activitynet"]["videos"] == 4
    assert summary["how2r"]["clips"] >= 4
    tiny = syn.generate(tmp_path / "tiny", videos=1, seed=2)
    assert tiny["tvr"]["videos"] == 3 and tiny["msrvtt"]["videos"] == 4 and tiny["activitynet"]["videos"] == 2


def test_eval_queries_enlarges_the_scored_eval_splits_only(tmp_path):
    """eval_queries: extra TVR val videos until val holds that many queries, and an MSR-VTT 1k-A test of
    that many; the rest of the corpus is what eval_queries=0 writes, byte for byte."""
    base, big = tmp_path / "base", tmp_path / "big"
    syn.generate(base, videos=6, seed=2)
    summary = syn.generate(big, videos=6, seed=2, eval_queries=40)
    val = (big / "tvr" / "tvr_val_release.jsonl").read_text().splitlines()
    assert len(val) >= 40 > len((base / "tvr" / "tvr_val_release.jsonl").read_text().splitlines())
    assert summary["msrvtt"]["jsfusion_test"] == 40
    rows = (big / "msrvtt" / "MSRVTT_JSFUSION_test.csv").read_text().splitlines()
    assert len(rows) == 41 and len({r.split(",")[2] for r in rows[1:]}) == 40  # header + 40 distinct videos
    train = (big / "tvr" / "tvr_train_release.jsonl").read_text()
    assert train == (base / "tvr" / "tvr_train_release.jsonl").read_text()  # the train split is unchanged
    for name in ("howto100m", "didemo", "how2r", "how2qa", "activitynet"):
        a, b = sorted((base / name).rglob("*")), sorted((big / name).rglob("*"))
        assert [p.relative_to(base) for p in a] == [p.relative_to(big) for p in b], name
        assert all(p.read_bytes() == q.read_bytes() for p, q in zip(a, b) if p.is_file()), name


def test_cli_writes_corpus(tmp_path):
    cmd = [sys.executable, "-m", "data_prep.synthetic", "--out", str(tmp_path), "--videos", "2", "--seed", "5"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(result.stdout)["howto100m"]["videos"] == 2
    planted = json.loads((tmp_path / "planted.json").read_text())
    assert planted["seed"] == 5 and len(planted["datasets"]["howto100m"]["videos"]) == 2
