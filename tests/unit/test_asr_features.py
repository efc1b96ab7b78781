"""Unit tests of data_prep.asr (captions) and data_prep.features (feature files, one grid).

Small hand-made inputs; the resampling is checked against a naive loop written from the
rule documented in data_prep/features.py, not from its vectorised code.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest

from data_prep import asr
from data_prep.errors import Rejected
from data_prep.features import FeatureReader, resample, to_float16
from data_prep.tagger import Tagger

Seg = asr.Segment

LINES = [
    "hello everyone and welcome back",
    "today I will show you how",
    "to bake a simple loaf of bread",
    "first pour warm milk into a bowl",
    "then add the yeast and some sugar",
    "stir it gently with a spoon",
]


def rolling(lines: list[str], step: float = 2.5, repeats: bool = True) -> dict[str, list]:
    """YouTube's rolling two-line display of `lines`: segment i shows line i-1 and line i,
    lasts two steps (so segments overlap), and is followed by a 10 ms exact repeat."""
    entry: dict[str, list] = {"start": [], "end": [], "text": []}
    for i, line in enumerate(lines):
        text = f"{lines[i - 1]}\n{line}" if i else line
        for start, end in [(i * step, i * step + 2 * step)] + ([(i * step + 2.4, i * step + 2.41)] if repeats else []):
            entry["start"].append(start)
            entry["end"].append(end)
            entry["text"].append(text)
    return entry


# --------------------------------------------------------------------------- captions


def test_parse_captions_sorts_by_start_and_keeps_types():
    segs = asr.parse_captions({"start": [3, 0.5], "end": [4, 2], "text": ["b", "a"]})
    assert segs == [Seg(0.5, 2.0, "a"), Seg(3.0, 4.0, "b")]
    assert all(isinstance(s.start, float) and isinstance(s.end, float) for s in segs)


@pytest.mark.parametrize(
    "entry",
    [
        {"start": [0, 1], "end": [1], "text": ["a", "b"]},  # lengths differ
        {"start": [0], "end": [1, 2], "text": ["a"]},
        {"start": [2.0], "end": [1.0], "text": ["a"]},  # end < start
        {"start": ["0"], "end": [1.0], "text": ["a"]},  # strings as times
        {"start": [0.0], "end": ["1.5"], "text": ["a"]},
        {"start": [float("nan")], "end": [1.0], "text": ["a"]},  # NaN
        {"start": [0.0], "end": [float("nan")], "text": ["a"]},
        {"start": [0.0], "end": [float("inf")], "text": ["a"]},
        {"start": [-1.0], "end": [1.0], "text": ["a"]},  # negative start
        {"start": [True], "end": [1.0], "text": ["a"]},  # bool is not a number here
        {"start": [0.0], "end": [1.0], "text": [3]},  # text not a string
        {"start": [0.0], "end": [1.0]},  # key missing
        {"start": 0.0, "end": 1.0, "text": "a"},  # not lists
        ["not", "an", "object"],
        None,
    ],
)
def test_malformed_captions_are_rejected(entry):
    with pytest.raises(Rejected) as e:
        asr.parse_captions(entry)
    assert e.value.reason == "malformed_captions"


def test_dedup_recovers_rolling_lines():
    segs = asr.dedup_rolling(asr.parse_captions(rolling(LINES)))
    assert [s.text for s in segs] == LINES
    # No overlap in time after de-duplication; each segment starts where its line appeared.
    assert [s.start for s in segs] == [i * 2.5 for i in range(len(LINES))]
    for a, b in zip(segs, segs[1:]):
        assert a.end <= b.start
    assert segs[-1].end == (len(LINES) + 1) * 2.5  # the last keeps its own end


def test_dedup_drops_exact_repeats_and_empty_segments():
    segs = [Seg(0, 2, "cut the onion"), Seg(1.9, 1.91, "cut the onion"), Seg(2, 3, "  "), Seg(3, 5, "into rings")]
    out = asr.dedup_rolling(segs)
    assert out == [Seg(0, 2, "cut the onion"), Seg(3, 5, "into rings")]


def test_dedup_drops_an_exact_repeat_longer_than_the_lookback():
    long = " ".join(f"w{i}" for i in range(40))
    out = asr.dedup_rolling([Seg(0, 5, long), Seg(4.99, 5, long), Seg(5, 6, "end")], window=32)
    assert [s.text for s in out] == [long, "end"]


def test_dedup_keeps_words_of_a_new_line_without_overlap():
    out = asr.dedup_rolling([Seg(0, 2, "one two three"), Seg(2, 4, "four five")])
    assert [s.text for s in out] == ["one two three", "four five"]


def test_dedup_window_bounds_the_lookback():
    # The overlap is looked for only in the last `window` emitted words.
    segs = [Seg(0, 1, "a b c d e"), Seg(1, 2, "a b c d e f")]
    assert [s.text for s in asr.dedup_rolling(segs, window=32)] == ["a b c d e", "f"]
    assert [s.text for s in asr.dedup_rolling(segs, window=3)] == ["a b c d e", "a b c d e f"]


def test_dedup_recovers_the_planted_lines_of_the_synthetic_corpus(corpus):
    raw = json.loads(corpus.raw_captions.read_text())
    assert set(raw) == set(corpus.planted)
    repeats = 0
    for vid, planted in corpus.planted.items():
        entry = raw[vid]
        repeats += sum(a == b for a, b in zip(entry["text"], entry["text"][1:]))
        segs = asr.dedup_rolling(asr.parse_captions(entry))
        assert [s.text for s in segs] == [text for _, _, text in planted["asr_lines"]], vid
        assert [s.start for s in segs] == [start for start, _, _ in planted["asr_lines"]], vid
    assert repeats > 0  # the corpus does plant exact repeats


def test_dedup_keeps_every_line_of_non_rolling_captions(corpus):
    from data_prep.synthetic import STOP_WORDS

    clean = json.loads(corpus.clean_captions.read_text())
    lost = {}
    for vid, planted in corpus.planted.items():
        want = [" ".join(w for w in text.split() if w not in STOP_WORDS) for _, _, text in planted["asr_lines"]]
        got = [s.text for s in asr.dedup_rolling(asr.parse_captions(clean[vid]))]
        if got != [w for w in want if w]:
            lost[vid] = (got, want)
    assert not lost, sorted(lost)


def test_dedup_keeps_a_line_that_starts_with_the_last_word_of_the_previous_one():
    # In the rolling display the previous line is repeated whole, so the overlap is the
    # whole previous line and a word that merely recurs at the boundary is kept.
    lines = ["first pour the water", "water it well", "well done"]
    assert [s.text for s in asr.dedup_rolling(asr.parse_captions(rolling(lines)))] == lines


def test_clips_by_seconds_uses_midpoints_and_drops_empty_windows():
    segs = [
        Seg(0.0, 10.0, "a"),  # mid 5 -> window 0
        Seg(50.0, 65.0, "b"),  # mid 57.5 -> window 0, although it ends in window 1
        Seg(55.0, 70.0, "c"),  # mid 62.5 -> window 1, although it starts in window 0
        Seg(119.0, 121.0, "d"),  # mid 120 -> window 2 (windows are [k L, (k+1) L))
        Seg(300.0, 302.0, "e"),  # mid 301 -> window 5; windows 3 and 4 hold nothing
    ]
    clips = asr.clips_by_seconds(segs, 60.0)
    assert [(c.start, c.end) for c in clips] == [(0, 60), (60, 120), (120, 180), (300, 360)]
    assert [[s.text for s in c.segments] for c in clips] == [["a", "b"], ["c"], ["d"], ["e"]]


def test_clips_by_words_reaches_min_words_and_merges_short_tail():
    segs = [Seg(float(i), i + 1.0, " ".join(["w"] * n)) for i, n in enumerate([3, 4, 5, 2, 9, 1, 1])]
    clips = asr.clips_by_words(segs, 7)
    words = [sum(len(s.text.split()) for s in c.segments) for c in clips]
    assert words == [7, 7, 11]  # 3+4 | 5+2 | 9 + the short remainder 1+1
    assert all(w >= 7 for w in words)
    assert [(c.start, c.end) for c in clips] == [(0, 2), (2, 4), (4, 7)]
    assert [s for c in clips for s in c.segments] == segs  # every segment once, in order


def test_clips_by_words_lone_short_video_is_one_clip():
    segs = [Seg(0, 1, "just three words")]
    clips = asr.clips_by_words(segs, 10)
    assert len(clips) == 1 and clips[0].segments == segs


# --------------------------------------------------------------------------- resampling


def naive_resample(feats: np.ndarray, s: float, t: float) -> np.ndarray:
    """The documented rule, one target frame at a time: source j covers [j s, (j+1) s),
    target k covers [k t, (k+1) t); target k is the mean of the source frames whose centre
    lies in its window, else the source frame that contains the target's centre."""
    n_src = len(feats)
    n_dst = max(1, math.ceil(round(n_src * s / t, 6)))  # the target grid covers the source duration
    out = np.zeros((n_dst, feats.shape[1]))
    for k in range(n_dst):
        inside = [j for j in range(n_src) if k * t <= (j + 0.5) * s < (k + 1) * t]
        if inside:
            out[k] = feats[inside].astype(np.float64).mean(axis=0)
        else:
            centre = (k + 0.5) * t
            j = min(int(centre // s), n_src - 1)
            out[k] = feats[j]
    return out


@pytest.mark.parametrize("n", [1, 2, 7, 40, 61])
@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (1.0, 1.5),
        (1 / 1.5, 1.5),
        (1.5, 1.5),
        (2.0, 1.5),
        (2.5, 1.5),
        (3.0, 1.5),
        (1.5, 1.0),
        (1 / 1.5, 1.0),
        (0.5, 2.0),
    ],
)
def test_resample_matches_naive_rule(src, dst, n):
    rng = np.random.default_rng(n)
    feats = rng.normal(size=(n, 5)).astype(np.float32)
    got = resample(feats, src, dst)
    want = naive_resample(feats, src, dst)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_resample_one_second_to_one_and_a_half_by_hand():
    feats = np.arange(6, dtype=np.float32)[:, None]  # centres 0.5 .. 5.5 s
    # windows [0,1.5) holds 0.5; [1.5,3) holds 1.5, 2.5; [3,4.5) holds 3.5; [4.5,6) holds 4.5, 5.5
    np.testing.assert_allclose(resample(feats, 1.0, 1.5)[:, 0], [0, 1.5, 3, 4.5])


def test_resample_upsampling_takes_the_frame_holding_the_centre():
    feats = np.array([[10.0], [20.0]], dtype=np.float32)  # 3 s frames, centres 1.5 and 4.5
    # targets of 1.5 s: [0,1.5) no centre -> centre 0.75 in frame 0; [1.5,3) holds 1.5; [3,4.5) -> 3.75
    # in frame 1; [4.5,6) holds 4.5
    np.testing.assert_allclose(resample(feats, 3.0, 1.5)[:, 0], [10, 10, 20, 20])


def test_resample_identity_when_intervals_equal():
    feats = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
    out = resample(feats, 1.5, 1.5)
    np.testing.assert_array_equal(out, feats)


# --------------------------------------------------------------------------- feature files


def save_npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def test_hero_layout_reads_features_and_hashes_the_file(tmp_path):
    feats = np.random.default_rng(1).normal(size=(12, 6)).astype(np.float32)
    save_npz(tmp_path / "v1.npz", features=feats)
    out, sha = FeatureReader(str(tmp_path)).read("v1")
    np.testing.assert_array_equal(out, feats)
    import hashlib

    assert sha == hashlib.sha256((tmp_path / "v1.npz").read_bytes()).hexdigest()
    assert FeatureReader(str(tmp_path)).probe_dims("v1") == (6,)


def test_hero_layout_resamples_from_src_interval(tmp_path):
    feats = np.random.default_rng(2).normal(size=(30, 3)).astype(np.float32)
    save_npz(tmp_path / "v.npz", features=feats)
    out, _ = FeatureReader(str(tmp_path), src_interval=1.0).read("v")
    np.testing.assert_allclose(out, naive_resample(feats, 1.0, 1.5), rtol=1e-6, atol=1e-6)


def test_howto100m_layout_aligns_and_concatenates_2d_and_3d(tmp_path):
    rng = np.random.default_rng(3)
    f2 = rng.normal(size=(90, 8)).astype(np.float32)  # 90 s at 1/s
    f3 = rng.normal(size=(134, 5)).astype(np.float32)  # 89.3 s at 1.5/s
    save_npy(tmp_path / "2d" / "v.npy", f2)
    save_npy(tmp_path / "3d" / "v.npy", f3)
    reader = FeatureReader(str(tmp_path), layout="howto100m")
    out, _ = reader.read("v")
    a, b = naive_resample(f2, 1.0, 1.5), naive_resample(f3, 1 / 1.5, 1.5)
    n = min(len(a), len(b))
    assert out.shape == (n, 13)
    np.testing.assert_allclose(out, np.concatenate([a[:n], b[:n]], axis=1), rtol=1e-6, atol=1e-6)
    assert reader.probe_dims("v") == (8, 5)
    assert reader.spec((8, 5)).to_json()["dim"] == 13


def test_l2_normalisation_is_per_source_and_frame(tmp_path):
    rng = np.random.default_rng(4)
    save_npy(tmp_path / "2d" / "v.npy", rng.normal(size=(9, 4)).astype(np.float32) * 7)
    save_npy(tmp_path / "3d" / "v.npy", rng.normal(size=(14, 3)).astype(np.float32) * 3)
    out, _ = FeatureReader(str(tmp_path), layout="howto100m", normalisation="l2").read("v")
    np.testing.assert_allclose(np.linalg.norm(out[:, :4], axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out[:, 4:], axis=1), 1, rtol=1e-5)


def _truncated_npz(path: Path) -> None:
    save_npz(path, features=np.ones((50, 8), np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _damaged_deflate_npz(path: Path) -> None:
    """A compressed .npz whose deflate stream holds garbage bytes: zlib itself fails (not the zip's CRC)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, features=np.arange(3200, dtype=np.float32).reshape(50, 64))
    data = bytearray(buf.getvalue())
    data[70:78] = b"\xff" * 8
    path.write_bytes(bytes(data))


def _truncated_npy(path: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ones((50, 8), np.float32))
    path.write_bytes(buf.getvalue()[:300])


@pytest.mark.parametrize(
    "make",
    [
        lambda p: save_npz(p, other=np.ones((5, 4), np.float32)),  # no key `features`
        _truncated_npz,
        lambda p: p.write_bytes(b"not a zip at all"),
        lambda p: save_npz(p, features=np.ones(10, np.float32)),  # 1-D
        lambda p: save_npz(p, features=np.ones((2, 3, 4), np.float32)),  # 3-D
        lambda p: save_npz(p, features=np.ones((0, 4), np.float32)),  # no frames
        lambda p: save_npz(p, features=np.ones((5, 4), np.int64)),  # not float
        _damaged_deflate_npz,
    ],
    ids=["no-key", "truncated-npz", "garbage", "1d", "3d", "empty", "int", "damaged-deflate"],
)
def test_unreadable_hero_features(tmp_path, make):
    make(tmp_path / "v.npz")
    with pytest.raises(Rejected) as e:
        FeatureReader(str(tmp_path)).read("v")
    assert e.value.reason == "unreadable_features"


@pytest.mark.parametrize("vid", ["../outside", "sub/v", "..", "", "a\\b"])
def test_a_video_id_never_leaves_the_feature_folder(tmp_path, vid):
    """An id such as ../outside names a file beside the feature folder: rejected, never read."""
    (tmp_path / "features").mkdir()
    save_npz(tmp_path / "outside.npz", features=np.ones((5, 4), np.float32))
    save_npz(tmp_path / "features" / "sub" / "v.npz", features=np.ones((5, 4), np.float32))
    for layout in ("hero", "howto100m"):
        with pytest.raises(Rejected) as e:
            FeatureReader(str(tmp_path / "features"), layout=layout).read(vid)
        assert e.value.reason == "unsafe_video_id" and "outside" in e.value.detail


@pytest.mark.parametrize("which", ["2d", "3d"])
def test_unreadable_howto100m_features(tmp_path, which):
    save_npy(tmp_path / "2d" / "v.npy", np.ones((9, 4), np.float32))
    save_npy(tmp_path / "3d" / "v.npy", np.ones((14, 4), np.float32))
    _truncated_npy(tmp_path / which / "v.npy")
    with pytest.raises(Rejected) as e:
        FeatureReader(str(tmp_path), layout="howto100m").read("v")
    assert e.value.reason == "unreadable_features"


def test_object_array_is_not_unpickled(tmp_path):
    save_npy(tmp_path / "2d" / "v.npy", np.array([{"a": 1}], dtype=object))
    save_npy(tmp_path / "3d" / "v.npy", np.ones((14, 4), np.float32))
    with pytest.raises(Rejected) as e:
        FeatureReader(str(tmp_path), layout="howto100m").read("v")
    assert e.value.reason == "unreadable_features"


def test_missing_features(tmp_path):
    with pytest.raises(Rejected) as e:
        FeatureReader(str(tmp_path)).read("nope")
    assert e.value.reason == "missing_features"
    save_npy(tmp_path / "2d" / "v.npy", np.ones((9, 4), np.float32))  # 3d missing
    with pytest.raises(Rejected) as e:
        FeatureReader(str(tmp_path), layout="howto100m").read("v")
    assert e.value.reason == "missing_features"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_features(tmp_path, bad):
    feats = np.ones((6, 4), np.float32)
    feats[3, 2] = bad
    save_npz(tmp_path / "v.npz", features=feats)
    with pytest.raises(Rejected) as e:
        FeatureReader(str(tmp_path)).read("v")
    assert e.value.reason == "nonfinite_features"


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_float16_overflow_is_nonfinite():
    ok = np.full((3, 2), 65000.0, np.float32)
    assert to_float16(ok, "v").dtype == np.float16
    with pytest.raises(Rejected) as e:
        to_float16(np.full((3, 2), 1e6, np.float32), "v")
    assert e.value.reason == "nonfinite_features"


def test_zip_member_not_npy_is_unreadable(tmp_path):
    with zipfile.ZipFile(tmp_path / "v.npz", "w") as z:
        z.writestr("features.npy", b"\x93NUMPY garbage")
    with pytest.raises(Rejected) as e:
        FeatureReader(str(tmp_path)).read("v")
    assert e.value.reason == "unreadable_features"


# --------------------------------------------------------------------------- tagger


def test_heuristic_tagger_spans_index_the_text():
    text = "now you cut the onion with a sharp knife"
    (tags,) = Tagger("heuristic").tag([text])
    words = {text[s:e]: pos for s, e, pos in tags}
    assert words["cut"] == "VERB" and words["onion"] == "NOUN" and words["knife"] == "NOUN"
    assert "the" not in words and "you" not in words


def test_heuristic_tagger_skips_adjectives_and_adverbs():
    text = "slowly stir the delicious red sauce with a large spoon until the family is really happy"
    (tags,) = Tagger("heuristic").tag([text])
    words = {text[s:e]: pos for s, e, pos in tags}
    assert words == {"stir": "VERB", "sauce": "NOUN", "spoon": "NOUN", "family": "NOUN"}
