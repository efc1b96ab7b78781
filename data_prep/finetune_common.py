"""What the finetune-set converters (TVR, DiDeMo, How2R, How2QA, MSR-VTT, ActivityNet) share.

A dataset module only parses its public files into `Dataset` -> `Split` -> `Video` -> `Query`
records and calls `convert`. Everything after parsing is here, identical for all of them:

1. durations: from the annotations, or (DiDeMo, MSR-VTT, How2QA) the length of the features
   (How2QA: of the clip's window, cut at the features' end), read once before planning so that
   every query is checked against the duration the sample will carry;
2. query validation: a query with empty text, a problem its parser found (How2QA: a malformed
   row, duplicate answers) or a span outside `0 <= st < duration`, `st < ed <= duration +
   tolerance` is dropped and written to `<split>/rejected_queries.jsonl` (never silently);
3. one sample per video per split through `sharding` (one WorkItem per video, `build_video`),
   plus `<split>/queries.jsonl`, the split's evaluation queries (TVR's test queries name no
   video, so they can only live there);
4. `gt/`: the official annotation files byte for byte, ground truth the dataset generates
   (How2R, How2QA), and `video2idx.json` in TVR's format `{split: {video_id: [duration, idx]}}`.

Output layout (see docs/finetune_sets.md):

    OUT/<split>/shard-*.tar, sizes.json, manifest.json, rejects.jsonl, toi_df.json,
                rejected_queries.jsonl, queries.jsonl
    OUT/gt/<official files>, video2idx.json
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import posixpath
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from data_prep import cli, schema, sharding
from data_prep.asr import Segment
from data_prep.errors import DataPrepError, Rejected
from data_prep.features import FeatureReader, probe_dims, to_float16
from data_prep.storage import Location, open_location
from data_prep.tagger import get_tagger

log = logging.getLogger("data_prep.finetune")

GT_DIR = "gt"
VIDEO2IDX_FILE = "video2idx.json"
QUERIES_FILE = "queries.jsonl"
REJECTED_QUERIES_FILE = "rejected_queries.jsonl"

# Why a query is dropped (the `reason` of rejected_queries.jsonl).
QUERY_REJECT_REASONS = (
    "empty_text",  # no words (How2QA: also an empty answer)
    "negative_start",  # a span starts before 0
    "empty_span",  # a span with start >= end
    "past_end",  # a span starts at or after the video's end, or ends after its duration + tolerance
    "malformed_row",  # How2QA: a CSV row without its 7 fields or with an unreadable window
    "duplicate_answers",  # How2QA: the correct answer is also one of the wrong ones
)

Span = tuple[float, float]


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class Query:
    """One query as released: its id, text and spans in seconds from the video's start."""

    query_id: int | str
    text: str
    spans: tuple[Span, ...] | None = ()  # () no ground truth (test); None the whole video (video retrieval)
    extras: dict[str, Any] = field(default_factory=dict)  # dataset fields kept in the sample (TVR type, ...)
    problem: tuple[str, str] | None = None  # (reason, detail) its parser found: dropped whatever the spans


@dataclass(frozen=True)
class Video:
    """One input video of one split and what the annotations say about it."""

    video_id: str
    queries: tuple[Query, ...] = ()
    duration: float | None = None  # seconds; None: the features' length (in the window), capped at max_duration
    max_duration: float | None = None
    subtitles: tuple[Segment, ...] = ()  # seconds relative to the video
    feature_id: str | None = None  # the feature file's id when it is not video_id (How2R: the YouTube video)
    window: Span | None = None  # the seconds of that file that make this video (How2R, How2QA clip)
    extras: dict[str, Any] = field(default_factory=dict)  # video-level fields of the sample's meta

    @property
    def features(self) -> str:
        return self.feature_id or self.video_id


@dataclass
class Split:
    """The videos of one split; `train`: a video with no usable query is rejected (missing_annotations).

    Evaluation splits keep such videos: they are still candidates of the retrieval corpus.
    """

    name: str
    videos: list[Video]
    train: bool = False
    # queries that name no video: TVR's test_public, How2QA's rows too malformed to name one (with their problem)
    loose_queries: list[Query] = field(default_factory=list)
    granularity: float = 0.0  # spans come in units of this many seconds (DiDeMo: 5 s chunks), see span_limit


@dataclass
class Dataset:
    """A parsed dataset: its splits and the files that make its ground truth."""

    name: str
    splits: list[Split]
    inputs: list[str | None]  # every input file read (None: an option not given); hashed into the manifests
    gt_files: list[str]  # official files copied byte for byte into gt/
    gt_extra: dict[str, bytes] = field(default_factory=dict)  # generated ground truth (How2R, How2QA)
    video2idx: dict[str, dict[str, list]] | None = None  # the official one (TVR, How2R's VALUE); else 0.. by sorted id


# ---------------------------------------------------------------- reading inputs


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


_KINDS: dict[str, tuple[str, Any]] = {
    "str": ("a string", lambda x: isinstance(x, str)),
    "id": ("a string or an integer", lambda x: isinstance(x, (str, int)) and not isinstance(x, bool)),
    "number": ("a finite number", _is_number),
    "span": ("[start, end] numbers", lambda x: isinstance(x, list) and len(x) == 2 and all(map(_is_number, x))),
    "list": ("a list", lambda x: isinstance(x, list)),
    "object": ("an object", lambda x: isinstance(x, dict)),
    "duration_idx": (
        "[duration, idx]",
        lambda x: isinstance(x, list) and len(x) == 2 and _is_number(x[0]) and type(x[1]) is int,
    ),
}


def check(value: Any, kind: str, where: str) -> Any:
    """`value` if it is of `kind` (see _KINDS), else a DataPrepError naming `where` (file and record)."""
    name, ok = _KINDS[kind]
    if not ok(value):
        raise DataPrepError(f"{where}: expected {name}, got {json.dumps(value)[:80]}")
    return value


def need(record: Any, key: str, kind: str, where: str) -> Any:
    """`record[key]`, checked to be of `kind`; a missing key or wrong type names the file and record."""
    check(record, "object", where)
    if key not in record:
        raise DataPrepError(f"{where}: missing key {key!r}")
    return check(record[key], kind, f"{where}: {key!r}")


def need_items(record: Any, key: str, kind: str, where: str) -> list[Any]:
    """`record[key]`, a list whose every item is of `kind`; a bad item names its index."""
    return [check(x, kind, f"{where}: {key}[{i}]") for i, x in enumerate(need(record, key, "list", where))]


def jsonl_records(path: str) -> list[tuple[str, Any]]:
    """(`path:line`, record) for each record of a JSON-lines file (blank lines skipped)."""
    records = cli.load_jsonl(path)
    with open(path, encoding="utf-8") as f:
        lines = [n for n, line in enumerate(f, 1) if line.strip()]
    return [(f"{path}:{n}", r) for n, r in zip(lines, records, strict=True)]


def csv_records(path: str) -> list[tuple[str, list[str]]]:
    """(`path:line`, fields) for each non-empty row of a CSV file, or a DataPrepError naming it."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            return [(f"{path}:{reader.line_num}", row) for row in reader if row]
    except FileNotFoundError:
        raise DataPrepError(f"{path}: file not found") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise DataPrepError(f"{path}: not valid CSV ({e})") from None


def csv_table(path: str, columns: tuple[str, ...]) -> list[tuple[str, dict[str, str]]]:
    """Rows of a CSV file with a header that holds `columns` (other columns are kept too)."""
    rows = csv_records(path)
    header = [h.strip() for h in rows[0][1]] if rows else []
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataPrepError(f"{path}: missing column(s) {missing} in the header {header}")
    out = []
    for where, row in rows[1:]:
        if len(row) != len(header):
            raise DataPrepError(f"{where}: expected {len(header)} fields, got {len(row)}")
        out.append((where, dict(zip(header, row, strict=True))))
    return out


def annotation_file(folder: str, name: str, required: bool = True) -> str | None:
    """`folder/name`; None when an optional file is absent; a DataPrepError for a required one."""
    path = os.path.join(folder, name)
    if os.path.exists(path):
        return path
    if required:
        raise DataPrepError(f"{path}: file not found")
    log.info("%s: not found, split skipped", path)
    return None


class TvrLine(NamedTuple):
    """One line of a TVR-format query file; `vid_name` and `duration` are None in TVR's test file."""

    where: str  # path:line
    vid_name: str | None
    duration: float | None
    query: Query


def read_tvr_queries(path: str, with_video: bool, need_type: bool) -> list[TvrLine]:
    """TVR-format query lines (TVR, How2R's VALUE release), checked.

    `with_video=False` reads TVR's test lines, which hold only `desc_id` and `desc`.
    """
    out = []
    for where, rec in jsonl_records(path):
        desc_id, desc = need(rec, "desc_id", "id", where), need(rec, "desc", "str", where)
        if not with_video:
            out.append(TvrLine(where, None, None, Query(desc_id, desc)))
            continue
        vid, (st, ed) = need(rec, "vid_name", "str", where), need(rec, "ts", "span", where)
        duration = float(need(rec, "duration", "number", where))
        extras = {"type": need(rec, "type", "str", where)} if need_type or "type" in rec else {}
        out.append(TvrLine(where, vid, duration, Query(desc_id, desc, ((float(st), float(ed)),), extras)))
    return out


def tvr_release_lines(rows: list[tuple[str, float, Query]]) -> bytes:
    """(vid_name, duration, query) as TVR-format release lines, one per query and span, in order.

    How2R's ground truth, as VALUE releases it and its scorer reads it: `type` only when the query
    has one (VALUE's How2R queries have none; its scorer reads no type, TVR's eval.py needs one).
    """
    lines = []
    for vid, duration, q in rows:
        for st, ed in q.spans or ():
            record = {"desc_id": q.query_id, "desc": q.text, "vid_name": vid, "ts": [st, ed], "duration": duration}
            if q.extras.get("type") is not None:
                record["type"] = q.extras["type"]
            lines.append(json.dumps(record).encode() + b"\n")
    return b"".join(lines)


def read_tvr_subtitles(path: str | None) -> dict[str, tuple[Segment, ...]]:
    """TVR-format subtitles `{vid_name, sub: [{text, start, end}]}` by video id ({} without a file)."""
    out: dict[str, tuple[Segment, ...]] = {}
    for where, rec in jsonl_records(path) if path else []:
        subs = need(rec, "sub", "list", where)
        out[need(rec, "vid_name", "str", where)] = tuple(_segment(s, f"{where}: sub[{i}]") for i, s in enumerate(subs))
    return out


def _segment(entry: Any, where: str) -> Segment:
    start, end = need(entry, "start", "number", where), need(entry, "end", "number", where)
    return Segment(float(start), float(end), need(entry, "text", "str", where))


# ---------------------------------------------------------------- planning


def span_limit(duration: float | None, tolerance: float, granularity: float = 0.0) -> float:
    """The latest a span may end: the duration rounded up to a whole unit of `granularity`, + tolerance.

    DiDeMo annotates 5 s chunks and its last chunk is partial (a 25.2 s video has six chunks),
    so a moment may legitimately end at 30 s there.
    """
    if duration is None:
        return math.inf
    if granularity > 0:
        duration = math.ceil(round(duration / granularity, 6)) * granularity
    return duration + tolerance


def query_problem(query: Query, duration: float | None, limit: float) -> tuple[str, str] | None:
    """Why a query cannot be used (reason, detail), or None; see QUERY_REJECT_REASONS."""
    if query.problem:
        return query.problem
    if not query.text.strip():
        return "empty_text", "the text has no words"
    for st, ed in query.spans or ():
        if st < 0:
            return "negative_start", f"span [{st}, {ed}] starts before 0"
        if st >= ed:
            return "empty_span", f"span [{st}, {ed}]: start >= end"
        if duration is not None and st >= duration:
            return "past_end", f"span [{st}, {ed}] starts at or after the video's end, {duration} s"
        if ed > limit:
            return "past_end", f"span [{st}, {ed}] ends after {limit} s (the video's end + tolerance)"
    return None


def split_queries(
    queries: tuple[Query, ...] | list[Query], video_id: str | None, duration: float | None, limit: float
) -> tuple[list[Query], list[dict[str, Any]]]:
    """Valid queries (whole-video spans resolved to [0, duration]) and rejected-query records."""
    kept, dropped = [], []
    for q in queries:
        if q.spans is None:
            q = replace(q, spans=((0.0, duration),))
        problem = query_problem(q, duration, limit)
        if problem:
            dropped.append({"query_id": q.query_id, "video_id": video_id, "reason": problem[0], "detail": problem[1]})
        else:
            kept.append(q)
    return kept, dropped


def feature_duration(video: Video, reader: FeatureReader) -> float | Rejected:
    """The duration of a video whose annotations give none: its features' length, capped; for a
    window of the file, the window cut at the features' end (How2QA's last clip of a video)."""
    try:
        feats, _ = reader.read(video.features)  # (T, D)
    except Rejected as r:
        return r
    end = round(len(feats) * reader.interval, 3)
    if video.window is not None:
        st, ed = video.window
        if end <= st:
            return Rejected("unreadable_features", f"features end at {end} s, before the window {video.window}")
        return round(min(ed, end) - st, 3)
    return min(end, video.max_duration) if video.max_duration else end


def resolve_durations(videos: list[Video], reader: FeatureReader, workers: int) -> dict[str, float | Rejected | None]:
    """Each video's duration, or why its features cannot be read (a thread per worker, same order)."""
    todo = [v for v in videos if v.duration is None]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        probed = dict(zip((v.video_id for v in todo), pool.map(lambda v: feature_duration(v, reader), todo)))
    return {v.video_id: probed.get(v.video_id, v.duration) for v in videos}


@dataclass
class SplitPlan:
    """What planning a split decided: one WorkItem per video, the queries kept and dropped."""

    items: list[sharding.WorkItem] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)  # queries.jsonl
    dropped: list[dict[str, Any]] = field(default_factory=list)  # rejected_queries.jsonl
    durations: dict[str, float | None] = field(default_factory=dict)  # for video2idx.json


def plan_split(split: Split, reader: FeatureReader, excluded: set[str], args: argparse.Namespace) -> SplitPlan:
    """WorkItems sorted by video id; a video is rejected when excluded, unreadable or (train) unqueried."""
    videos = sorted(split.videos, key=lambda v: v.video_id)
    repeated = [a.video_id for a, b in zip(videos, videos[1:]) if a.video_id == b.video_id]
    if repeated:
        raise DataPrepError(f"split {split.name}: video(s) {repeated[:5]} listed twice")
    durations = resolve_durations([v for v in videos if v.video_id not in excluded], reader, args.workers)
    plan = SplitPlan()
    for video in videos:
        vid, duration = video.video_id, durations.get(video.video_id, video.duration)
        plan.durations[vid] = duration if not isinstance(duration, Rejected) else None
        if vid in excluded or isinstance(duration, Rejected):
            r = duration if isinstance(duration, Rejected) else Rejected("excluded", "listed in --exclude")
            plan.items.append(sharding.WorkItem(vid, reject=(r.reason, r.detail)))
            continue
        limit = span_limit(duration, args.tolerance, split.granularity)
        kept, dropped = split_queries(video.queries, vid, duration, limit)
        plan.dropped += dropped
        plan.kept += [query_record(q, vid) for q in kept]
        if split.train and not kept:
            detail = f"all {len(dropped)} queries dropped" if dropped else "no query"
            plan.items.append(sharding.WorkItem(vid, reject=("missing_annotations", detail)))
        else:
            plan.items.append(sharding.WorkItem(vid, payload=replace(video, duration=duration, queries=tuple(kept))))
    loose, dropped = split_queries(split.loose_queries, None, None, math.inf)
    plan.kept += [query_record(q, None) for q in loose]
    plan.dropped += dropped
    return plan


def query_record(query: Query, video_id: str | None) -> dict[str, Any]:
    """A line of queries.jsonl: the query, its video (None when unknown) and spans."""
    spans = [list(s) for s in query.spans or ()]
    return {"query_id": query.query_id, "video_id": video_id, "text": query.text, "spans": spans, **query.extras}


# ---------------------------------------------------------------- building samples


@dataclass(frozen=True)
class BuildContext:
    """What a worker needs to turn a planned video into its sample."""

    reader: FeatureReader
    dims: tuple[int, ...]
    tagger: str
    dataset: str
    split: str


def frame_window(window: Span | None, interval: float, n_frames: int) -> tuple[int, int]:
    """Frames [f0, f1) of a feature file that cover `window` seconds (all of them without one)."""
    if window is None:
        return 0, n_frames
    f0 = math.floor(round(window[0] / interval, 6))
    f1 = min(math.ceil(round(window[1] / interval, 6)), n_frames)
    if f1 <= f0:
        raise Rejected("unreadable_features", f"features end at {n_frames * interval} s, before the window {window}")
    return f0, f1


def build_video(item: sharding.WorkItem, ctx: BuildContext) -> list[schema.Sample]:
    """Read a video's features and return its one sample (raises Rejected)."""
    video: Video = item.payload
    feats, sha = ctx.reader.read(video.features)  # (T, D)
    if feats.shape[1] != sum(ctx.dims):
        raise Rejected("unreadable_features", f"dim {feats.shape[1]}, expected {sum(ctx.dims)}")
    f0, f1 = frame_window(video.window, ctx.reader.interval, len(feats))
    half = to_float16(feats[f0:f1], video.video_id)  # (T', D)
    return [schema.Sample(schema.escape_id(video.video_id), half, video_meta(video, ctx, f0, sha))]


def video_meta(video: Video, ctx: BuildContext, frame_start: int, sha: str) -> dict[str, Any]:
    """The sample's JSON: times in seconds from the video's start, texts with their tokens of interest."""
    sub_text = " ".join(s.text for s in video.subtitles)
    *query_tois, sub_toi = get_tagger(ctx.tagger).tag([q.text for q in video.queries] + [sub_text])
    queries = [
        {"query_id": q.query_id, "text": q.text, "spans": [list(s) for s in q.spans or ()], "toi": toi, **q.extras}
        for q, toi in zip(video.queries, query_tois, strict=True)
    ]
    return {
        "dataset": ctx.dataset,
        "split": ctx.split,
        "video_id": video.video_id,
        "duration": video.duration,
        "frame_interval": ctx.reader.interval,
        "frame_start": frame_start,
        "subtitles": [{"start": s.start, "end": s.end, "text": s.text} for s in video.subtitles],
        "sub_text": sub_text,
        "sub_toi": sub_toi,
        "queries": queries,
        "features_sha256": sha,
        **video.extras,
    }


# ---------------------------------------------------------------- writing


@dataclass
class Run:
    """The pieces every split of one conversion shares."""

    args: argparse.Namespace
    reader: FeatureReader
    dims: tuple[int, ...]
    excluded: set[str]
    inputs: list[dict[str, Any]]  # file_digest of every input file
    created_by: str


def _jsonl_bytes(records: list[dict[str, Any]]) -> bytes:
    return b"".join(schema.dumps(r) + b"\n" for r in records)


def sublocation(args: argparse.Namespace, name: str) -> Location:
    """OUT/<name> (a split's folder or gt/), local or on S3."""
    return open_location(posixpath.join(args.out.rstrip("/"), name), args.s3_endpoint)


def write_split(dataset: str, split: Split, run: Run) -> tuple[dict[str, Any], dict[str, float | None]]:
    """Plan, write and finalize one split's shards; return its manifest and its videos' durations."""
    args = run.args
    plan = plan_split(split, run.reader, run.excluded, args)
    options = {
        "dataset": dataset,
        "split": split.name,
        "shard_size": args.shard_size,
        "tolerance": args.tolerance,
        "feature_layout": args.feature_layout,
        "interval": args.interval,
        "src_interval": args.src_interval,
        "normalisation": args.normalisation,
        "tagger": args.tagger,
    }
    jobs = sharding.plan_shards(plan.items, args.shard_size, options)
    ctx = BuildContext(run.reader, run.dims, args.tagger, dataset, split.name)
    loc = sublocation(args, split.name)
    stats = sharding.write_shards(
        loc, jobs, build_video, ctx, args.workers, args.resume, args.s3_endpoint, f"{dataset}/{split.name}"
    )
    loc.write_bytes(QUERIES_FILE, _jsonl_bytes(plan.kept))
    loc.write_bytes(REJECTED_QUERIES_FILE, _jsonl_bytes(plan.dropped))
    queries = {
        "kept": len(plan.kept),
        "dropped": len(plan.dropped),
        "dropped_by_reason": dict(sorted(Counter(d["reason"] for d in plan.dropped).items())),
    }
    manifest = sharding.finalize(
        loc,
        jobs,
        stats,
        {
            "dataset": dataset,
            "split": split.name,
            "created_by": run.created_by,
            "options": options,
            "feature_spec": run.reader.spec(run.dims).to_json(),
            "tagger": get_tagger(args.tagger).describe(),
            "inputs": run.inputs,
            "features_root": run.reader.root,
            "excluded_ids": len(run.excluded),
            "queries": queries,
        },
    )
    c = manifest["counts"]
    log.info("%s: %d videos -> %d samples in %d shards; %d rejected %s; %d queries, %d dropped %s",
             loc.url, c["videos"], c["samples"], c["shards"], c["videos_rejected"], c["rejects_by_reason"],
             queries["kept"], queries["dropped"], queries["dropped_by_reason"])  # fmt: skip
    return manifest, plan.durations


def video2idx(durations: dict[str, dict[str, float | None]]) -> dict[str, dict[str, list]]:
    """TVR's `{split: {video_id: [duration, idx]}}` with idx 0.. in sorted id order (null: unknown duration)."""
    return {split: {v: [d[v], i] for i, v in enumerate(sorted(d))} for split, d in durations.items()}


def write_gt(ds: Dataset, args: argparse.Namespace, durations: dict[str, dict[str, float | None]]) -> list[str]:
    """OUT/gt: official files byte for byte, generated ground truth and video2idx.json; return the names."""
    loc = sublocation(args, GT_DIR)
    files: dict[str, bytes] = {}
    for path in ds.gt_files:
        with open(path, "rb") as f:
            files[os.path.basename(path)] = f.read()
    files.update(ds.gt_extra)
    files[VIDEO2IDX_FILE] = schema.dumps(ds.video2idx if ds.video2idx is not None else video2idx(durations))
    if len(files) != len(ds.gt_files) + len(ds.gt_extra) + 1:
        raise DataPrepError(f"two ground-truth files share a name: {sorted(files)}")
    for name, data in files.items():
        loc.write_bytes(name, data)
    return sorted(files)


# ---------------------------------------------------------------- command line


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_common_args(p: argparse.ArgumentParser, shard_size: int = 500) -> None:
    """Features, --exclude, --tolerance and the output options every finetune converter takes."""
    cli.add_feature_args(p)
    p.add_argument("--exclude", default=None, help="video ids to leave out (text, one per line, or JSON list)")
    p.add_argument("--tolerance", type=float, default=3.0, help="seconds a query span may run past the video's end")
    cli.add_output_args(p, shard_size=shard_size)


def convert(ds: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """Write every split of a parsed dataset and its gt/; return {dataset, out, splits: manifests, gt}."""
    reader = cli.feature_reader(args)
    excluded = cli.load_id_list(args.exclude)
    videos = [v for s in ds.splits for v in s.videos if v.video_id not in excluded]
    dims = probe_dims(reader, list(dict.fromkeys(v.features for v in videos)))
    get_tagger(args.tagger)  # fail before any shard is written when the tagger asked for is missing
    inputs = [sharding.file_digest(p) for p in [*ds.inputs, args.exclude] if p]
    run = Run(args, reader, dims, excluded, inputs, f"python -m data_prep.{ds.name}")
    manifests, durations = {}, {}
    for split in ds.splits:
        manifests[split.name], durations[split.name] = write_split(ds.name, split, run)
    gt = write_gt(ds, args, durations)
    return {"dataset": ds.name, "out": args.out, "splits": manifests, "gt": gt}
