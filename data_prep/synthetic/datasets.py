"""The seven dataset writers (HowTo100M, TVR, DiDeMo, How2R, How2QA, MSR-VTT, ActivityNet Captions),
each writing its public files and returning (planted ground truth, summary counts), and their ids,
sizes and splits."""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .files import write_csv, write_json, write_jsonl, write_npy, write_npz
from .speech import cleaned_captions, narrate, rolling_captions, subtitle
from .vocab import (
    ANET_DESC,
    ANET_WHO,
    DIDEMO_DESC,
    HOW2QA_QUESTIONS,
    HOW2R_DESC,
    MSRVTT_DESC,
    MSRVTT_WHO,
    SHOWS,
    TVR_DESC,
)
from .world import (
    INTERVALS,
    Event,
    Video,
    World,
    draw_timeline,
    draw_video,
    fill,
    fresh_pair,
    hero_features,
    keyed_rng,
    layout_features,
    pick,
    round2,
)

DEFAULT_VIDEOS = 48  # HowTo100M videos; downstream sizes scale with videos / DEFAULT_VIDEOS
HOW2QA_CLIP = 60  # seconds: HERO's How2 clips are windows [60w, 60w+60) of the YouTube video
YT_CHARS = string.ascii_letters + string.digits + "-_"


# ---------------------------------------------------------------- ids, sizes, splits


def _youtube_ids(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    """11-char YouTube-like ids; every 4th has a '-' and every 4th a '_' somewhere inside."""
    ids: list[str] = []
    while len(ids) < n:
        chars = [pick(rng, YT_CHARS) for _ in range(11)]
        if len(ids) % 4 in (1, 2):
            chars[int(rng.integers(1, 11))] = "-_"[len(ids) % 4 - 1]
        vid = "".join(chars)
        if vid not in taken:
            taken.add(vid)
            ids.append(vid)
    return ids


def _scaled(base: int, videos: int, minimum: int) -> int:
    """Downstream size rule: base * videos / DEFAULT_VIDEOS, rounded, at least `minimum`."""
    return max(minimum, round(base * videos / DEFAULT_VIDEOS))


def _split_labels(n: int, names: Sequence[str], fracs: Sequence[float]) -> list[str]:
    """Contiguous split labels; every split after the first gets at least one item."""
    counts = [max(1, round(n * f)) for f in fracs[1:]]
    labels = [names[0]] * (n - sum(counts))
    for name, count in zip(names[1:], counts, strict=True):
        labels += [name] * count
    return labels


def _split_by_weight(weights: Sequence[int], names: Sequence[str], fracs: Sequence[float]) -> list[str]:
    """Contiguous split labels with about `fracs` of the total weight each: an item goes where the
    middle of its weight falls; `_split_labels` when that would leave a split empty."""
    total, done, labels = sum(weights), 0, []
    bounds = np.cumsum(fracs)[:-1] * total
    for w in weights:
        labels.append(names[int(np.searchsorted(bounds, done + w / 2, side="right"))])
        done += w
    return labels if set(labels) == set(names) else _split_labels(len(weights), names, fracs)


# ---------------------------------------------------------------- datasets


def _planted(video: Video, world: World, with_lines: bool = False) -> dict:
    """A video's ground truth in planted.json: its duration, domain, background, events (and speech)."""
    rec = {
        "duration": video.duration,
        "domain": world.domains[video.domain][1],
        "background": {"noun": video.background, "spans": [list(s) for s in video.background_spans]},
        "events": [
            {"start": e.start, "end": e.end, "noun": e.noun, "verb": e.verb, "mentioned": e.mentioned}
            for e in video.events
        ],
    }
    if with_lines:
        rec["asr_lines"] = [[ln.start, ln.end, ln.text] for ln in video.lines]
    return rec


def _narrated_video(seed: int, world: World, vid: str, durations: tuple[float, float]) -> Video:
    """A HowTo100M-style YouTube video: timeline plus ASR narration."""
    rng = keyed_rng(seed, "video", vid)
    video = draw_video(rng, vid, durations, world)
    narrate(rng, video, world)
    return video


def _write_asr_and_features(root: Path, seed: int, world: World, videos: list[Video], extractor: bool) -> None:
    raw = {v.vid: rolling_captions(keyed_rng(seed, "rolling", v.vid), v.lines, v.duration) for v in videos}
    write_json(root / "raw_caption.json", raw)
    hero_dir = root / "features" / "hero" if extractor else root / "features"
    for v in videos:
        write_npz(hero_dir / f"{v.vid}.npz", hero_features(v, seed, world))
        if extractor:
            for sub in ("2d", "3d"):
                feats = layout_features(v, seed, f"howto_{sub}", INTERVALS[sub], world)
                write_npy(root / "features" / sub / f"{v.vid}.npy", feats)


def _write_howto100m(root: Path, seed: int, world: World, videos: list[Video]) -> tuple[dict, dict]:
    rng = keyed_rng(seed, "howto100m", "meta")
    tasks = [[int(t) for t in rng.integers(10_000, 130_000, size=3)] for _ in world.domains]
    rows = [[v.vid, *world.domains[v.domain][:2], int(rng.integers(1, 200)), pick(rng, tasks[v.domain])]
            for v in videos]  # fmt: skip
    write_csv(root / "HowTo100M_v1.csv", ["video_id", "category_1", "category_2", "rank", "task_id"], rows)
    write_json(root / "caption.json", {v.vid: cleaned_captions(v.lines) for v in videos})
    _write_asr_and_features(root, seed, world, videos, extractor=True)
    planted = {"videos": {v.vid: _planted(v, world, with_lines=True) for v in videos}}
    return planted, {"videos": len(videos), "asr_lines": sum(len(v.lines) for v in videos)}


def _tvr_name(rng: np.random.Generator, show: str) -> str:
    ints = rng.integers([1, 1, 1, 0], [11, 25, 3, 30])
    name = f"s{ints[0]:02d}e{ints[1]:02d}_seg{ints[2]:02d}_clip_{ints[3]:02d}"
    return name if show == "bbt" else f"{show}_{name}"  # real TVR/TVQA: bbt clips have no prefix


def _write_tvr(root: Path, seed: int, world: World, n: int, min_val_queries: int = 0) -> tuple[dict, dict]:
    """n videos split 70/15/15, then more val videos until val holds `min_val_queries` queries."""
    rng = keyed_rng(seed, "tvr")
    videos, shows, taken = [], [], set()

    def new_video() -> None:
        while True:
            show = pick(rng, list(SHOWS))
            name = _tvr_name(rng, show)
            if name not in taken:
                break
        taken.add(name)
        vrng = keyed_rng(seed, "video", name)
        video = draw_video(vrng, name, (60.0, 90.0), world, gap=(1.0, 8.0))
        subtitle(vrng, video, SHOWS[show], world)
        videos.append(video)
        shows.append(show)

    while len(videos) < n:
        new_video()
    splits: dict[str, list] = {"train": [], "val": [], "test_public": []}
    video2dur: dict[str, dict] = {s: {} for s in splits}
    desc_id = 0

    def add_queries(video: Video, show: str, split: str) -> None:
        nonlocal desc_id
        video2dur[split][video.vid] = [video.duration, len(video2dur[split])]
        k = min(len(video.events), int(rng.integers(3, 6)))
        for i in sorted(rng.choice(len(video.events), size=k, replace=False)):
            ev = video.events[i]
            qtype = pick(rng, ("t", "vt")) if ev.mentioned else "v"
            desc = fill(pick(rng, TVR_DESC[qtype]), ev, world, spoken=False, who=pick(rng, SHOWS[show]))
            row = {
                "desc": desc,
                "duration": video.duration,
                "ts": [ev.start, ev.end],
                "desc_id": desc_id,
                "type": qtype,
                "vid_name": video.vid,
            }
            splits[split].append(row if split != "test_public" else {"desc": desc, "desc_id": desc_id})
            desc_id += 1

    for video, show, split in zip(videos, shows, _split_labels(n, list(splits), (0.7, 0.15, 0.15)), strict=True):
        add_queries(video, show, split)
    while len(splits["val"]) < min_val_queries:  # eval splits large enough to resolve a difference
        new_video()
        add_queries(videos[-1], shows[-1], "val")
    n = len(videos)
    for split, rows in splits.items():
        write_jsonl(root / f"tvr_{split}_release.jsonl", rows)
    write_json(root / "tvr_video2dur_idx.json", video2dur)
    subs = [
        {"vid_name": v.vid, "sub": [{"text": ln.text, "start": ln.start, "end": ln.end} for ln in v.lines]}
        for v in videos
    ]
    write_jsonl(root / "tvqa_preprocessed_subtitles.jsonl", subs)
    for v in videos:
        write_npz(root / "features" / f"{v.vid}.npz", hero_features(v, seed, world))
    return {"videos": {v.vid: _planted(v, world) for v in videos}}, {"videos": n, "queries": desc_id}


def _didemo_video(rng: np.random.Generator, name: str, world: World) -> tuple[Video, int]:
    """A 25-30 s video whose 1-3 events are aligned to DiDeMo's 5 s chunks."""
    duration = round2(rng.uniform(25.0, 30.0))
    n_seg = math.ceil(duration / 5)
    domain = int(rng.integers(len(world.domains)))
    background, spans, _ = draw_timeline(rng, duration, domain, world, max_events=0)
    nouns = [x for x in world.domains[domain][2] if x != background]
    events, chunk = [], int(rng.integers(0, 2))
    while chunk < n_seg and len(events) < 3:
        last = min(chunk + int(rng.integers(0, 3)), n_seg - 1)
        end = min((last + 1) * 5.0, duration)
        if end - chunk * 5.0 < 3.0:  # a sliver of the last chunk is no moment
            break
        events.append(Event(chunk * 5.0, end, *fresh_pair(rng, nouns, world.domains[domain][3], events)))
        chunk = last + 1 + int(rng.integers(0, 2))
    return Video(name, duration, domain, background, spans, events), n_seg


def _didemo_times(rng: np.random.Generator, s: int, e: int, n_seg: int) -> list[list[int]]:
    """Four annotators: the first exact, the others moved by one chunk ~30% of the time."""
    times = [[s, e]]
    for _ in range(3):
        a, b = s, e
        if rng.random() < 0.3:
            if rng.random() < 0.5:
                a = min(max(a + pick(rng, (-1, 1)), 0), b)
            else:
                b = max(min(b + pick(rng, (-1, 1)), n_seg - 1), a)
        times.append([a, b])
    return times


def _write_didemo(root: Path, seed: int, world: World, n: int) -> tuple[dict, dict]:
    rng = keyed_rng(seed, "didemo")
    videos, taken = [], set()
    while len(videos) < n:
        user, photo = int(rng.integers(10_000_000, 100_000_000)), int(rng.integers(10**10, 10**11))
        owner = f"{user}@N{int(rng.integers(0, 100)):02d}"
        secret = "".join(pick(rng, "0123456789abcdef") for _ in range(10))
        name = f"{owner}_{photo}_{secret}.{'mp4' if rng.random() < 0.1 else 'mov'}"
        if name not in taken:
            taken.add(name)
            videos.append((name, f"https://www.flickr.com/videos/{owner}/{photo}/"))
    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    planted, ann_id = {}, 0
    for (name, link), split in zip(videos, _split_labels(n, list(splits), (0.7, 0.15, 0.15)), strict=True):
        video, n_seg = _didemo_video(keyed_rng(seed, "video", name), name, world)
        for ev in video.events:
            s, e = int(ev.start // 5), math.ceil(ev.end / 5) - 1
            splits[split].append(
                {
                    "annotation_id": ann_id,
                    "description": fill(pick(rng, DIDEMO_DESC), ev, world, spoken=False),
                    "video": name,
                    "times": _didemo_times(rng, s, e, n_seg),
                    "download_link": link,
                    "num_segments": n_seg,
                }
            )
            ann_id += 1
        planted[name] = _planted(video, world)
        write_npz(root / "features" / f"{name}.npz", hero_features(video, seed, world))
    for split, rows in splits.items():
        write_json(root / f"{split}_data.json", rows)
    return {"videos": planted}, {"videos": n, "queries": ann_id}


def _clips(video: Video) -> list[tuple[int, int, list[Event]]]:
    """Up to three 60 s windows [60w, 60w+60) holding at least one whole event (≤3 queried)."""
    out = []
    for w in range(int(video.duration // 60)):
        inside = [e for e in video.events if 60 * w <= e.start and e.end <= 60 * w + 60]
        if inside:
            out.append((60 * w, 60 * w + 60, inside[:3]))
    return out[:3]


def _howto_overlap(howto: list[Video]) -> list[Video]:
    """The HowTo100M videos How2R (and How2QA) also cut clips from, spread over the list."""
    candidates = [v for v in howto if _clips(v)]
    n_overlap = min(len(candidates), max(1, round(3 * len(howto) / DEFAULT_VIDEOS)))
    return [candidates[i * len(candidates) // n_overlap] for i in range(n_overlap)]


def _write_how2r(
    root: Path, seed: int, world: World, n_clips: int, howto: list[Video], taken: set[str]
) -> tuple[dict, dict]:
    """How2R clips from YouTube videos; a few are HowTo100M videos (real How2R overlaps it)."""
    overlap = _howto_overlap(howto)
    n_overlap = len(overlap)
    extras: list[Video] = []
    ids_rng = keyed_rng(seed, "how2r", "ids")
    while len(extras) + n_overlap < 3 or sum(len(_clips(v)) for v in extras + overlap) < n_clips:
        extras.append(_narrated_video(seed, world, _youtube_ids(ids_rng, 1, taken)[0], (180.0, 300.0)))
    sources = extras + overlap  # overlaps last, so they land in val/test
    rng = keyed_rng(seed, "how2r", "queries")
    csv_rows: dict[str, list] = {"train": [], "val": [], "test": []}
    value_rows: dict[str, list] = {s: [] for s in csv_rows}
    subs, clips_planted, desc_id = [], {}, 0
    for video, split in zip(sources, _split_labels(len(sources), list(csv_rows), (0.7, 0.15, 0.15)), strict=True):
        for st, ed, events in _clips(video):
            clip = f"{video.vid}_{st}_{ed}"
            clips_planted[clip] = split
            for ev in events:
                query = fill(pick(rng, HOW2R_DESC), ev, world, spoken=False)
                csv_rows[split].append([video.vid, f"[{st}:{ed}]", f"[{ev.start}:{ev.end}]", query])
                value_rows[split].append(
                    {
                        "desc": query,
                        "duration": 60.0,
                        "ts": [round2(ev.start - st), round2(ev.end - st)],
                        "desc_id": desc_id,
                        "vid_name": clip,
                    }
                )
                desc_id += 1
            sub = [
                {"text": ln.text, "start": round2(max(ln.start - st, 0.0)), "end": round2(min(ln.end - st, 60.0))}
                for ln in video.lines
                if ln.end > st and ln.start < ed
            ]
            subs.append({"vid_name": clip, "sub": sub})
    for split in csv_rows:
        write_csv(root / f"how2r_{split}.csv", None, csv_rows[split])
        write_jsonl(root / "value" / f"how2r_{split}_release.jsonl", value_rows[split])
    write_jsonl(root / "value" / "how2r_subtitles.jsonl", subs)
    # VALUE's video idx: one numbering over all splits in a shuffled order, the test split named test_public
    order = keyed_rng(seed, "how2r", "video2idx").permutation(len(clips_planted)).tolist()
    video2dur: dict[str, dict[str, list]] = {"train": {}, "val": {}, "test_public": {}}
    for (clip, split), idx in zip(clips_planted.items(), order, strict=True):
        video2dur["test_public" if split == "test" else split][clip] = [60, idx]
    write_json(root / "value" / "how2r_video2dur_idx.json", video2dur)
    _write_asr_and_features(root, seed, world, sources, extractor=False)
    planted = {
        "overlap_with_howto100m": [v.vid for v in overlap],
        "clips": clips_planted,
        "videos": {v.vid: _planted(v, world, with_lines=True) for v in sources},
    }
    return planted, {"videos": len(sources), "clips": len(clips_planted), "queries": desc_id}


class _Question(NamedTuple):
    """A planted How2QA question on one event, and its wrong answers."""

    window: tuple[int, int]  # the clip: the 60 s grid window(s) holding the event
    event: Event
    in_clip: str  # a noun shown in the clip outside the event's span
    absent: tuple[str, str]  # nouns not shown in the clip, the video's domain first
    same_verb: bool  # in_clip is shown with the question's verb: only the span tells them apart


def _nouns_shown(video: Video, st: float, ed: float) -> dict[str, set[str]]:
    """Nouns visible somewhere in [st, ed) -> the verbs of their events there (none for the background)."""
    out: dict[str, set[str]] = {}
    for s, e in video.background_spans:
        if s < ed and e > st:
            out.setdefault(video.background, set())
    for ev in video.events:
        if ev.start < ed and ev.end > st:
            out.setdefault(ev.noun, set()).add(ev.verb)
    return out


def _questions(rng: np.random.Generator, video: Video, world: World) -> list[_Question]:
    """≤3 questions per clip, on the events whose clip shows another noun outside their span; at
    most one event per video crosses a grid line (its clip is two windows long)."""
    out: list[_Question] = []
    wide = False
    for ev in video.events:
        a = int(ev.start // HOW2QA_CLIP) * HOW2QA_CLIP
        window = (a, max(a + HOW2QA_CLIP, math.ceil(ev.end / HOW2QA_CLIP) * HOW2QA_CLIP))
        shown = _nouns_shown(video, a, min(window[1], video.duration))
        outside = [n for n in shown if n not in _nouns_shown(video, ev.start, ev.end)]
        crosses = window[1] - a > HOW2QA_CLIP
        if not outside or sum(q.window == window for q in out) == 3 or (crosses and wide):
            continue
        wide |= crosses
        same_verb = [n for n in outside if ev.verb in shown[n]]
        domain = [n for n in world.domains[video.domain][2] if n not in shown]
        others = [n for n in world.nouns if n not in shown and n not in domain]
        absent = [domain[i] for i in rng.permutation(len(domain))] + [others[i] for i in rng.permutation(len(others))]
        out.append(_Question(window, ev, pick(rng, same_verb or outside), (absent[0], absent[1]), bool(same_verb)))
    return out


def _write_how2qa(
    root: Path, seed: int, world: World, n_clips: int, howto: list[Video], taken: set[str]
) -> tuple[dict, dict]:
    """How2QA: 4-way questions on events of 60 s clips of YouTube videos, a few of them How2R's
    HowTo100M videos (the only ones the main job leaves out of pretraining).

    The correct answer is the noun shown during the question's span; one wrong answer is a noun
    shown in the same clip outside the span, two are nouns the clip does not show. Two extra
    train rows are bad: one repeats its correct answer as a wrong one, one has an unquoted comma.
    """
    ask = lambda v: _questions(keyed_rng(seed, "how2qa", "questions", v.vid), v, world)
    overlap = [(v, qs) for v in _howto_overlap(howto) if (qs := ask(v))]
    extras: list[tuple[Video, list[_Question]]] = []
    ids_rng = keyed_rng(seed, "how2qa", "ids")
    while len(extras) + len(overlap) < 3 or sum(len({q.window for q in qs}) for _, qs in extras + overlap) < n_clips:
        video = _narrated_video(seed, world, _youtube_ids(ids_rng, 1, taken)[0], (180.0, 300.0))
        if qs := ask(video):
            extras.append((video, qs))
    sources = extras + overlap  # overlaps last, so they land in val/test
    rng = keyed_rng(seed, "how2qa", "rows")
    rows: dict[str, list] = {"train": [], "val": [], "test": []}
    truth: dict[str, list] = {s: [] for s in rows}
    clips = {}
    labels = _split_by_weight([len(qs) for _, qs in sources], list(rows), (0.6, 0.25, 0.15))
    for (video, qs), split in zip(sources, labels, strict=True):
        for q in qs:
            ev, clip = q.event, f"{video.vid}_{q.window[0]}_{q.window[1]}"
            clips[clip] = split
            wrong = [f"the {world.written(n)}" for n in (q.in_clip, *q.absent)]
            wrong = [wrong[i] for i in rng.permutation(3)]
            question = fill(pick(rng, HOW2QA_QUESTIONS), ev, world, spoken=False)
            truth[split].append({"row": len(rows[split]), "clip": clip, "span": [ev.start, ev.end], "verb": ev.verb,
                                 "answer": ev.noun, "in_clip": q.in_clip, "absent": list(q.absent),
                                 "same_verb": q.same_verb, "reject": None})  # fmt: skip
            rows[split].append([video.vid, f"[{ev.start}:{ev.end}]", *wrong, question, f"the {world.written(ev.noun)}"])
    first, second = rows["train"][0], rows["train"][1 % len(rows["train"])]
    bad = [
        ("duplicate_answers", truth["train"][0]["clip"], [*first[:4], first[6].upper(), *first[5:]]),
        ("malformed_row", None, [*second[:5], "in this part", " " + second[5].replace(",", ""), second[6]]),
    ]
    for reason, clip, row in bad:
        truth["train"].append({"row": len(rows["train"]), "clip": clip, "reject": reason})
        rows["train"].append(row)
    for split, split_rows in rows.items():
        write_csv(root / f"how2qa_{split}.csv", None, split_rows)
    _write_asr_and_features(root, seed, world, [v for v, _ in sources], extractor=False)
    planted = {
        "clip_length": HOW2QA_CLIP,
        "overlap_with_howto100m": [v.vid for v, _ in overlap],
        "clips": clips,
        "questions": truth,
        "videos": {v.vid: _planted(v, world, with_lines=True) for v, _ in sources},
    }
    counts = {split: len(split_rows) for split, split_rows in rows.items()}
    return planted, {"videos": len(sources), "clips": len(clips), **counts, "bad_rows": len(bad)}


def _write_msrvtt(
    root: Path, seed: int, world: World, n: int, taken: set[str], min_test_queries: int = 0
) -> tuple[dict, dict]:
    """n videos split 55/5/40 (at least `min_test_queries` / 0.4 when that is more); the 1k-A test
    (JSFusion) takes half of the test videos, or `min_test_queries` of them when that is more."""
    n = max(n, math.ceil(min_test_queries / 0.4))
    rng = keyed_rng(seed, "msrvtt")
    labels = _split_labels(n, ["train", "validate", "test"], (0.55, 0.05, 0.4))
    urls = _youtube_ids(rng, n, taken)
    records, sentences, planted = [], [], {}
    for i, (split, url_id) in enumerate(zip(labels, urls, strict=True)):
        vid = f"video{i}"
        timeline = {"span": (3.0, 8.0), "gap": (0.5, 3.0), "margin": 0.5, "max_events": 3}
        video = draw_video(keyed_rng(seed, "video", vid), vid, (10.0, 30.0), world, **timeline)
        start = round2(rng.uniform(0, 300))
        records.append(
            {
                "category": int(rng.integers(0, 20)),
                "url": f"https://www.youtube.com/watch?v={url_id}",
                "video_id": vid,
                "start time": start,
                "end time": round2(start + video.duration),
                "split": split,
                "id": i,
            }
        )
        for k in range(20):
            ev = video.events[k % len(video.events)]
            caption = fill(pick(rng, MSRVTT_DESC), ev, world, spoken=False, who=pick(rng, MSRVTT_WHO))
            sentences.append({"caption": caption, "video_id": vid, "sen_id": len(sentences)})
        planted[vid] = _planted(video, world)
        write_npz(root / "features" / f"{vid}.npz", hero_features(video, seed, world))
    info = {
        "contributor": "Microsoft MSM group",
        "data_created": "2016-04-14 14:30:20",
        "version": "1.0",
        "description": "MSR-VTT dataset",
        "year": "2016",
    }
    write_json(root / "MSRVTT_data.json", {"info": info, "videos": records, "sentences": sentences})
    test = [i for i, s in enumerate(labels) if s == "test"]
    size = min(len(test), max(1, len(test) // 2, min_test_queries))
    jsfusion = sorted(int(i) for i in rng.choice(test, size=size, replace=False))
    train9k = [[f"video{i}"] for i in range(n) if i not in jsfusion]
    train7k = [[f"video{i}"] for i in range(n) if labels[i] != "test"]
    write_csv(root / "MSRVTT_train.9k.csv", ["video_id"], train9k)
    write_csv(root / "MSRVTT_train.7k.csv", ["video_id"], train7k)
    test_rows = [
        [f"ret{k}", f"msr{i}", f"video{i}", sentences[20 * i + int(rng.integers(20))]["caption"]]
        for k, i in enumerate(jsfusion)
    ]
    write_csv(root / "MSRVTT_JSFUSION_test.csv", ["key", "vid_key", "video_id", "sentence"], test_rows)
    summary = {
        "videos": n,
        "sentences": len(sentences),
        "train9k": len(train9k),
        "train7k": len(train7k),
        "jsfusion_test": len(jsfusion),
    }
    return {"videos": planted}, summary


def _anet_sentences(rng: np.random.Generator, video: Video, world: World) -> list[str]:
    """Capitalised sentences with periods; all but the first usually start with a space."""
    who = pick(rng, ANET_WHO)
    out = []
    for i, ev in enumerate(video.events):
        text = fill(pick(rng, ANET_DESC), ev, world, spoken=False, who=who)
        out.append((" " if i and rng.random() < 0.7 else "") + text[0].upper() + text[1:])
    return out


def _write_activitynet(root: Path, seed: int, world: World, n: int, taken: set[str]) -> tuple[dict, dict]:
    ids = [f"v_{vid}" for vid in _youtube_ids(keyed_rng(seed, "activitynet", "ids"), n, taken)]
    files: dict[str, dict] = {"train": {}, "val_1": {}, "val_2": {}}
    planted = {}
    for vid, split in zip(ids, _split_labels(n, ["train", "val"], (2 / 3, 1 / 3)), strict=True):
        video = draw_video(
            keyed_rng(seed, "video", vid), vid, (60.0, 180.0), world, span=(5.0, 25.0), gap=(2.0, 20.0), margin=3.0
        )
        stamps = [[ev.start, ev.end] for ev in video.events]
        for name in ("train",) if split == "train" else ("val_1", "val_2"):
            sents = _anet_sentences(keyed_rng(seed, "activitynet", name, vid), video, world)
            files[name][vid] = {"duration": video.duration, "timestamps": stamps, "sentences": sents}
        planted[vid] = _planted(video, world)
        write_npz(root / "features" / f"{vid}.npz", hero_features(video, seed, world))
    for name, data in files.items():
        write_json(root / f"{name}.json", data)
    summary = {
        "videos": n,
        "train": len(files["train"]),
        "val": len(files["val_1"]),
        "sentences": sum(len(d["sentences"]) for f in files.values() for d in f.values()),
    }
    return {"videos": planted}, summary


def write_datasets(out: Path, seed: int, world: World, videos: int, eval_queries: int) -> dict[str, tuple[dict, dict]]:
    """Write the seven datasets under out/<dataset>/: dataset -> (planted ground truth, summary counts).
    HowTo100M gets `videos` videos, the others sizes scaled from it; they share one set of YouTube ids."""
    taken: set[str] = set()
    ids = _youtube_ids(keyed_rng(seed, "howto100m", "ids"), videos, taken)
    howto = [_narrated_video(seed, world, vid, (90.0, 300.0)) for vid in ids]
    return {
        "howto100m": _write_howto100m(out / "howto100m", seed, world, howto),
        "tvr": _write_tvr(out / "tvr", seed, world, _scaled(40, videos, 3), eval_queries),
        "didemo": _write_didemo(out / "didemo", seed, world, _scaled(30, videos, 3)),
        "how2r": _write_how2r(out / "how2r", seed, world, _scaled(30, videos, 3), howto, taken),
        "how2qa": _write_how2qa(out / "how2qa", seed, world, _scaled(40, videos, 3), howto, taken),
        "msrvtt": _write_msrvtt(out / "msrvtt", seed, world, _scaled(40, videos, 4), taken, eval_queries),
        "activitynet": _write_activitynet(out / "activitynet", seed, world, _scaled(30, videos, 2), taken),
    }
