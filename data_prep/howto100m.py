"""HowTo100M ASR captions + precomputed frame features -> WebDataset shards of clips.

    python -m data_prep.howto100m --captions raw_caption.json --features feats/hero \\
        --csv HowTo100M_v1.csv --out s3://bucket/howto100m/clip60 --clip-seconds 60 \\
        --exclude finetune_video_ids.txt --shard-size 1000 --workers 64 [--resume]

One sample per clip: 60-second windows (FEEL, `--clip-seconds`) or adjacent ASR segments
merged to at least N words (TACo, `--min-words`). Every input video (caption file and CSV)
ends in a shard or in rejects.jsonl with its reason. See docs/shard_format.md.

Captions that run past the features' end by more than `--tolerance` seconds (feature extractors
often drop the last seconds of a video) are cut at the features' end: segments that start after
it are dropped, the clips end there, and the video is counted in the manifest
(`counts.videos_captions_clipped`; each of its samples carries `captions_clipped_at`). Only features
that cover less than half of the captions' span reject the video (features_shorter_than_captions):
a feature file that short is more likely another video's or a broken one.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

from data_prep import asr, cli, schema, sharding
from data_prep.errors import DataPrepError, Rejected
from data_prep.features import EXTRACT_MANIFEST, FeatureReader, probe_dims, to_float16
from data_prep.storage import open_location
from data_prep.tagger import get_tagger

log = logging.getLogger("data_prep.howto100m")

CSV_COLUMNS = ("video_id", "category_1", "category_2", "rank", "task_id")
MIN_COVERAGE = 0.5  # features covering less of the captions' span than this reject the video


@dataclass(frozen=True)
class Context:
    """What a worker needs to turn a planned video into clip samples."""

    reader: FeatureReader
    dims: tuple[int, ...]
    tolerance: float
    tagger: str


def read_csv(path: str | None) -> dict[str, dict[str, str]]:
    """HowTo100M_v1.csv rows by video id (first row wins), or one clear error naming the file."""
    if not path:
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataPrepError(f"{path}: missing column(s) {missing}; expected header {','.join(CSV_COLUMNS)}")
            rows: dict[str, dict[str, str]] = {}
            for n, row in enumerate(reader, 2):
                if None in row or any(row[c] is None for c in CSV_COLUMNS):
                    raise DataPrepError(f"{path}:{n}: expected {len(CSV_COLUMNS)} fields")
                rows.setdefault(row["video_id"], {c: row[c] for c in CSV_COLUMNS})
            return rows
    except FileNotFoundError:
        raise DataPrepError(f"{path}: file not found") from None


ABSENT = object()  # a video of the CSV that the caption file does not have


def plan_video(
    video_id: str, entry: Any, row: dict | None, excluded: bool, args: argparse.Namespace
) -> sharding.WorkItem:
    """Captions -> de-duplicated segments -> clip windows; the features are read later."""
    if excluded:
        return sharding.WorkItem(video_id, reject=("excluded", "listed in --exclude"))
    if entry is ABSENT:
        return sharding.WorkItem(video_id, reject=("missing_captions", "in the CSV, not in the caption file"))
    try:
        segments = asr.dedup_rolling(asr.parse_captions(entry))
    except Rejected as r:
        return sharding.WorkItem(video_id, reject=(r.reason, r.detail))
    if not segments:
        return sharding.WorkItem(video_id, reject=("empty_captions", "no words"))
    if args.min_words:
        clips = asr.clips_by_words(segments, args.min_words)
    else:
        clips = asr.clips_by_seconds(segments, args.clip_seconds)
    windows = [(c.start, c.end, [tuple(s) for s in c.segments]) for c in clips]
    return sharding.WorkItem(video_id, payload=(windows, row), planned=len(clips))


def build_clips(item: sharding.WorkItem, ctx: Context) -> list[schema.Sample]:
    """Read the video's features and cut one sample per planned clip (raises Rejected)."""
    windows, row = item.payload
    feats, sha = ctx.reader.read(item.video_id)  # (T, D)
    if feats.shape[1] != sum(ctx.dims):
        raise Rejected("unreadable_features", f"dim {feats.shape[1]}, expected {sum(ctx.dims)}")
    step = ctx.reader.interval
    duration = len(feats) * step
    caption_end = max(seg[1] for _, _, segs in windows for seg in segs)
    clipped = caption_end > duration + ctx.tolerance
    if clipped and duration < MIN_COVERAGE * caption_end:
        detail = f"captions end at {caption_end:.1f}s, features at {duration:.1f}s (under {MIN_COVERAGE:.0%} of them)"
        raise Rejected("features_shorter_than_captions", detail)
    if clipped:  # cut the captions at the features' end: segments starting after it have no frames
        windows = [(s, e, kept) for s, e, segs in windows if (kept := [g for g in segs if g[0] < duration])]
    half = to_float16(feats, item.video_id)
    texts = [" ".join(seg[2] for seg in segs) for _, _, segs in windows]
    tois = get_tagger(ctx.tagger).tag(texts)
    samples = []
    for i, ((start, end, segs), text, toi) in enumerate(zip(windows, texts, tois)):
        end = min(end, duration)
        f0, f1 = int(start // step), min(math.ceil(end / step), len(half))
        if f1 <= f0:
            continue
        meta = {
            "dataset": "howto100m",
            "video_id": item.video_id,
            "clip_index": i,
            "start": round(start, 3),
            "end": round(end, 3),
            "frame_interval": step,
            "frame_start": f0,
            "segments": [{"start": s, "end": e, "text": t} for s, e, t in segs],
            "text": text,
            "toi": toi,
            "features_sha256": sha,
        }
        if clipped:
            meta["captions_clipped_at"] = round(duration, 3)
        if row:
            meta["category"] = [row["category_1"], row["category_2"]]
            meta["task_id"] = row["task_id"]
        samples.append(schema.Sample(schema.clip_key(item.video_id, i), half[f0:f1], meta))
    return samples


def extraction_provenance(root: str) -> dict[str, Any] | None:
    """The provenance manifest data_prep.extract left in the feature folder (None for features
    that came from elsewhere, e.g. the released ones)."""
    path = os.path.join(root, EXTRACT_MANIFEST)
    return cli.load_json(path) if os.path.exists(path) else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.howto100m", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--captions", required=True, help="raw_caption.json (or caption.json)")
    cli.add_feature_args(p)
    p.add_argument("--csv", default=None, help="HowTo100M_v1.csv: keeps categories; its videos count as inputs")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--clip-seconds", type=float, default=60.0, help="FEEL: fixed clip windows (default 60)")
    mode.add_argument("--min-words", type=int, default=None, help="TACo: merge segments to >= N words")
    p.add_argument("--exclude", default=None, help="video ids to leave out (text, one per line, or JSON list)")
    p.add_argument("--tolerance", type=float, default=3.0, help="seconds captions may run past the features")
    cli.add_output_args(p, shard_size=1000)
    args = p.parse_args(argv)
    if args.clip_seconds <= 0 or (args.min_words is not None and args.min_words < 1):
        p.error("--clip-seconds must be > 0 and --min-words >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    reader = cli.feature_reader(args)
    captions = cli.load_json(args.captions)
    if not isinstance(captions, dict):
        raise DataPrepError(f"{args.captions}: expected an object {{video_id: {{start, end, text}}}}")
    rows = read_csv(args.csv)
    excluded = cli.load_id_list(args.exclude)
    items = [
        plan_video(vid, captions.get(vid, ABSENT), rows.get(vid), vid in excluded, args)
        for vid in sorted(set(captions) | set(rows))
    ]
    del captions
    options = {
        "clip_seconds": None if args.min_words else args.clip_seconds,
        "min_words": args.min_words,
        "shard_size": args.shard_size,
        "tolerance": args.tolerance,
        "feature_layout": args.feature_layout,
        "interval": args.interval,
        "src_interval": args.src_interval,
        "normalisation": args.normalisation,
        "tagger": args.tagger,
        "features_root": os.path.abspath(args.features),
    }
    jobs = sharding.plan_shards(items, args.shard_size, options)
    dims = probe_dims(reader, [item.video_id for item in items if item.reject is None])
    tagger = get_tagger(args.tagger)
    ctx = Context(reader, dims, args.tolerance, args.tagger)
    loc = open_location(args.out, args.s3_endpoint)
    stats = sharding.write_shards(loc, jobs, build_clips, ctx, args.workers, args.resume, args.s3_endpoint, "howto100m")
    inputs = [sharding.file_digest(p) for p in (args.captions, args.csv, args.exclude) if p]
    manifest = sharding.finalize(
        loc,
        jobs,
        stats,
        {
            "dataset": "howto100m",
            "created_by": "python -m data_prep.howto100m",
            "options": options,
            "feature_spec": reader.spec(dims).to_json(),
            "tagger": tagger.describe(),
            "inputs": inputs,
            "features_root": reader.root,
            "excluded_ids": len(excluded),
            "extraction": extraction_provenance(reader.root),
        },
    )
    c = manifest["counts"]
    log.info("%s: %d videos -> %d clips in %d shards; %d rejected %s",
             loc.url, c["videos"], c["samples"], c["shards"], c["videos_rejected"], c["rejects_by_reason"])  # fmt: skip
    return manifest


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
