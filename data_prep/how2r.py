"""How2R (HERO's HowTo100M moments) -> WebDataset shards: one sample per 60-second clip per split.

    python -m data_prep.how2r --train how2r_train.csv --val how2r_val.csv --test how2r_test.csv \\
        --captions raw_caption.json --features feats/how2r --out s3://bucket/finetune/how2r
    python -m data_prep.how2r --train value/how2r_train_release.jsonl --val value/how2r_val_1k_release.jsonl \\
        --test value/how2r_test_public_1k_release.jsonl --video2dur value/how2r_video2dur_idx.json \\
        --subtitles value/how2r_subtitles.jsonl --features feats/how2r --out ...

A split file is the raw CSV without header `youtube_id,[clip_st:clip_ed],[moment_st:moment_ed],query`
(absolute seconds; unquoted commas in a query are kept) or, by its .jsonl extension, the VALUE
release's TVR-format lines. A clip is the video `{youtube_id}_{clip_st}_{clip_ed}` (numbers as
written); query ids are the CSV's 0-based row numbers or VALUE's desc_id. Features: `<clip id>.npz`
when it exists, else the YouTube video's file cut to the clip's frames (frame_start, clip_window).
Subtitles: --subtitles (TVR format) when it lists the clip, else --captions (HowTo100M ASR,
de-duplicated, cut to the clip, times relative to it). gt/ gets how2r_<split>_release.jsonl in
the VALUE release's format (desc_id, desc, vid_name, ts, duration, and type only when the input has
one: How2R's queries have none), the ground truth VALUE's scorer reads.

Video idx: --video2dur is VALUE's how2r_video2dur_idx.json `{split: {clip: [duration, idx]}}` (the
test split is its `test_public`). With it, gt/video2idx.json holds VALUE's official idx, a clip it
does not list is an error, and a clip it lists without a query stays a retrieval candidate (as
TVR's corpus); the file is copied into gt/. Without it, idx are 0.. in sorted clip order (logged):
VALUE's scorer replaces a submission's video2idx with the official one, so such idx score nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Callable
from functools import cache
from typing import Any

from data_prep import asr, cli
from data_prep import finetune_common as fc
from data_prep.asr import Segment
from data_prep.errors import DataPrepError, Rejected
from data_prep.features import FeatureReader
from data_prep.tvr import read_video2dur

log = logging.getLogger("data_prep.how2r")

SPLITS = ("train", "val", "test")
OFFICIAL_SPLIT = {"train": "train", "val": "val", "test": "test_public"}  # our split -> its key in --video2dur
NUMBER = r"\d+(?:\.\d*)?"  # seconds as the files write them: 120, 131.5, 140.0
WINDOW = re.compile(rf"\[\s*({NUMBER})\s*:\s*({NUMBER})\s*\]")
ClipQuery = tuple[str, float, fc.Query]  # clip id, clip duration, query


def parse_window(text: str, where: str) -> tuple[str, str]:
    """`[st:ed]` -> the two numbers as written."""
    m = WINDOW.fullmatch(text.strip())
    if not m:
        raise DataPrepError(f"{where}: expected [start:end] in seconds, got {text!r}")
    return m.group(1), m.group(2)


def read_csv(path: str) -> list[ClipQuery]:
    """The raw CSV: moments made relative to their clip."""
    out = []
    for row_index, (where, row) in enumerate(fc.csv_records(path)):
        if len(row) < 4:
            raise DataPrepError(f"{where}: expected youtube_id,[clip_st:clip_ed],[moment_st:moment_ed],query")
        (a, b), (c, d) = parse_window(row[1], where), parse_window(row[2], where)
        span = (round(float(c) - float(a), 3), round(float(d) - float(a), 3))
        query = fc.Query(row_index, ",".join(row[3:]), (span,))
        out.append((f"{row[0].strip()}_{a}_{b}", round(float(b) - float(a), 3), query))
    return out


def read_split(path: str) -> list[ClipQuery]:
    if path.endswith(".csv"):
        return read_csv(path)
    if path.endswith(".jsonl"):
        return [(line.vid_name, line.duration, line.query) for line in fc.read_tvr_queries(path, True, False)]
    raise DataPrepError(f"{path}: expected the raw .csv or the VALUE release's .jsonl")


def parse_clip_id(clip_id: str) -> tuple[str, tuple[float, float]] | None:
    """`{youtube_id}_{st}_{ed}` -> (youtube_id, (st, ed)); None for another kind of id."""
    parts = clip_id.rsplit("_", 2)
    if len(parts) == 3 and all(re.fullmatch(NUMBER, x) for x in parts[1:]):
        return parts[0], (float(parts[1]), float(parts[2]))
    return None


def caption_source(path: str | None) -> Callable[[str], list[Segment]]:
    """youtube_id -> de-duplicated ASR segments ([] without --captions or for an absent video)."""
    captions = cli.load_json(path) if path else {}
    if not isinstance(captions, dict):
        raise DataPrepError(f"{path}: expected an object {{youtube_id: {{start, end, text}}}}")

    @cache
    def segments(youtube_id: str) -> list[Segment]:
        try:
            return asr.dedup_rolling(asr.parse_captions(captions[youtube_id])) if youtube_id in captions else []
        except Rejected as r:
            raise DataPrepError(f"{path}: {youtube_id!r}: {r.detail}") from None

    return segments


def clip_captions(segments: list[Segment], window: tuple[float, float]) -> tuple[Segment, ...]:
    """ASR segments overlapping the clip, times relative to it and cut to it."""
    st, ed = window
    return tuple(
        Segment(max(0.0, round(s.start - st, 3)), min(round(ed - st, 3), round(s.end - st, 3)), s.text)
        for s in segments
        if s.end > st and s.start < ed
    )


def make_video(
    clip_id: str,
    duration: float,
    queries: list[fc.Query],
    reader: FeatureReader,
    subtitles: dict[str, tuple[Segment, ...]],
    captions: Callable[[str], list[Segment]],
) -> fc.Video:
    """A clip: its own feature file if there is one, else its window of the YouTube video's."""
    parsed = parse_clip_id(clip_id)
    if parsed is None:
        return fc.Video(clip_id, tuple(queries), duration, subtitles=subtitles.get(clip_id, ()))
    youtube_id, window = parsed
    subs = subtitles[clip_id] if clip_id in subtitles else clip_captions(captions(youtube_id), window)
    extras = {"youtube_id": youtube_id, "clip_window": list(window)}
    own_file = all(os.path.exists(p) for p in reader.paths(clip_id))
    source = {} if own_file else {"feature_id": youtube_id, "window": window}
    return fc.Video(clip_id, tuple(queries), duration, subtitles=subs, extras=extras, **source)


def official_corpus(video2dur: dict[str, dict[str, list]], split: str, path: str,
                    clips: dict[str, Any], split_file: str) -> dict[str, list]:  # fmt: skip
    """The split's `{clip: [duration, idx]}` in VALUE's how2r_video2dur_idx.json; every clip must be listed."""
    key = OFFICIAL_SPLIT[split]
    if key not in video2dur:
        raise DataPrepError(f"{path}: no split {key!r} for --{split} (has {sorted(video2dur)})")
    corpus = video2dur[key]
    missing = [c for c in clips if c not in corpus]
    if missing:
        shown = ", ".join(repr(c) for c in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataPrepError(f"{path}: {len(missing)} clip(s) of {split_file} not listed under {key!r}: {shown}")
    return corpus


def load(args: argparse.Namespace) -> fc.Dataset:
    reader, subtitles = cli.feature_reader(args), fc.read_tvr_subtitles(args.subtitles)
    captions = caption_source(args.captions)
    video2dur = read_video2dur(args.video2dur) if args.video2dur else None
    if video2dur is None:
        log.warning("no --video2dur: video idx are 0.. in sorted clip order, not VALUE's official ones "
                    "(how2r_video2dur_idx.json); VALUE's scorer would score a submission of them as 0")  # fmt: skip
    paths = {name: getattr(args, name) for name in SPLITS if getattr(args, name)}
    splits, gt, v2i = [], {}, {}
    for name, path in paths.items():
        rows = read_split(path)
        clips: dict[str, tuple[float, list[fc.Query]]] = {}
        for clip, duration, query in rows:
            clips.setdefault(clip, (duration, []))[1].append(query)
        if video2dur is not None:
            v2i[name] = official_corpus(video2dur, name, args.video2dur, clips, path)
            candidates = [c for c in v2i[name] if c not in clips]
            if candidates:
                log.info("%s: %d clips listed under %r have no query: kept as retrieval candidates",
                         args.video2dur, len(candidates), OFFICIAL_SPLIT[name])  # fmt: skip
            clips.update({c: (float(v2i[name][c][0]), []) for c in candidates})
        videos = [make_video(c, d, qs, reader, subtitles, captions) for c, (d, qs) in clips.items()]
        splits.append(fc.Split(name, videos, train=name == "train"))
        gt[f"how2r_{name}_release.jsonl"] = fc.tvr_release_lines(rows)
    inputs = [*paths.values(), args.captions, args.subtitles, args.video2dur]
    official = [args.video2dur] if args.video2dur else []
    return fc.Dataset("how2r", splits, inputs=inputs, gt_files=official, gt_extra=gt, video2idx=v2i or None)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = fc.parser("python -m data_prep.how2r", __doc__)
    for name in SPLITS:
        p.add_argument(f"--{name}", default=None, help=f"the {name} split: raw .csv or VALUE .jsonl")
    p.add_argument("--captions", default=None, help="HowTo100M-format raw_caption.json of the YouTube videos")
    p.add_argument("--subtitles", default=None, help="TVR-format subtitles by clip id (VALUE release)")
    p.add_argument("--video2dur", default=None, help="VALUE's how2r_video2dur_idx.json: the official video idx")
    fc.add_common_args(p)
    args = p.parse_args(argv)
    if not any(getattr(args, name) for name in SPLITS):
        p.error("give at least one of --train, --val, --test")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    return fc.convert(load(args), args)


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
