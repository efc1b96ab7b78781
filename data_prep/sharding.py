"""The sharded writer every converter uses: plan, write in parallel, resume, account, finish.

A converter turns its inputs into an ordered list of `WorkItem`s (one per input video, each
with the number of samples it should give) and a `build` function that turns one item into
samples or raises `Rejected`. From there this module does the rest:

1. `plan_shards` cuts the ordered items into shards of about `shard_size` samples without
   splitting a video. The plan depends only on the inputs and options, so the same input
   gives the same shards (byte for byte) whatever the number of workers.
2. `write_shards` builds and writes each shard in a worker process: the tar goes to a
   temporary name and is renamed when complete, then the shard's reject log, then its stats
   file, which is written last and marks the shard complete. With `resume`, shards whose
   stats file exists are kept (after checking they were planned from the same inputs) and
   only the others are redone.
3. `finalize` writes sizes.json, the merged reject log, the TACo document frequencies, the
   per-dimension mean and standard deviation of all frames (feature_stats.json, which the model
   standardises its input with) and the manifest, after checking that every input video is
   either in a shard or rejected.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data_prep import schema
from data_prep.errors import DataPrepError, Rejected
from data_prep.storage import Location, open_location

log = logging.getLogger(__name__)

BuildFn = Callable[["WorkItem", Any], list[schema.Sample]]


@dataclass
class WorkItem:
    """One input video: what the converter knows before reading its features."""

    video_id: str
    payload: Any = None  # converter-specific, picklable (segments, clip windows, queries, ...)
    planned: int = 1  # samples it should give; used only to plan shard sizes
    reject: tuple[str, str] | None = None  # (reason, detail) when already known to be unusable


@dataclass
class ShardJob:
    index: int
    items: list[WorkItem] = field(default_factory=list)
    digest: str = ""  # hash of the items and options: a resumed run must plan the same shards


def plan_shards(items: list[WorkItem], shard_size: int, options: dict[str, Any]) -> list[ShardJob]:
    """Cut ordered items into consecutive shards of at least `shard_size` planned samples."""
    if shard_size < 1:
        raise DataPrepError(f"--shard-size must be >= 1, got {shard_size}")
    jobs: list[ShardJob] = []
    current, count = ShardJob(index=0), 0
    for item in items:
        current.items.append(item)
        count += 0 if item.reject else item.planned
        if count >= shard_size:
            jobs.append(current)
            current, count = ShardJob(index=len(jobs)), 0
    if current.items:
        jobs.append(current)
    opts = schema.dumps(options)
    for job in jobs:
        h = hashlib.sha256(opts)
        for item in job.items:
            h.update(schema.dumps([item.video_id, repr(item.payload), item.reject]))
        job.digest = h.hexdigest()
    return jobs


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to `sink`."""

    def __init__(self, sink: Any):
        self.sink, self.sha, self.nbytes = sink, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.sha.update(data)
        self.nbytes += len(data)
        self.sink.write(data)
        return len(data)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    """A tar header with nothing that varies between runs (time, owner, host)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = "bigdata"
    return info


def write_tar(loc: Location, name: str, samples: list[schema.Sample]) -> tuple[int, str]:
    """Write samples to `name` through a temporary file; return (bytes, sha256)."""
    final, tmp = loc.path(name), loc.path(name + ".tmp")
    with loc.fs.open(tmp, "wb") as f:  # closed here, also on s3fs, so the upload completes
        sink = _HashingWriter(f)
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.GNU_FORMAT) as tar:
            for sample in samples:
                for member, data in schema.encode_sample(sample):
                    tar.addfile(_tarinfo(member, len(data)), io.BytesIO(data))
    loc.commit(tmp, final)
    return sink.nbytes, sink.sha.hexdigest()


def _toi_words(meta: dict[str, Any]) -> set[str]:
    """Lower-cased tokens of interest of a sample: its text (clips) and its queries (finetune sets)."""
    texts = [(meta.get("text", ""), meta.get("toi", []))]
    texts += [(q.get("text", ""), q.get("toi", [])) for q in meta.get("queries", [])]
    return {text[s:e].lower() for text, toi in texts for s, e, _ in toi}


def process_job(job: ShardJob, build: BuildFn, ctx: Any, loc: Location) -> dict[str, Any]:
    """Build, write and account for one shard; returns its stats (also written, last)."""
    samples: list[schema.Sample] = []
    rejects: list[dict[str, str]] = []
    sharded: list[str] = []
    for item in job.items:
        try:
            if item.reject:
                raise Rejected(*item.reject)
            built = build(item, ctx)
            if not built:
                raise Rejected("empty_captions", "no sample with both text and frames")
        except Rejected as r:
            rejects.append({"video_id": item.video_id, "reason": r.reason, "detail": r.detail})
            continue
        samples.extend(built)
        sharded.append(item.video_id)
    name = schema.shard_name(job.index) if samples else None
    nbytes, sha = write_tar(loc, name, samples) if name else (0, "")
    loc.write_bytes(schema.shard_rejects_name(job.index), b"".join(schema.dumps(r) + b"\n" for r in rejects))
    df = Counter(w for s in samples for w in _toi_words(s.meta))
    frames = np.concatenate([s.features.astype(np.float64) for s in samples]) if samples else None  # (F, D)
    source = hashlib.sha256(schema.dumps(sorted({s.meta.get("features_sha256", "") for s in samples})))
    stats = {
        "index": job.index,
        "shard": name,
        "samples": len(samples),
        "frames": int(sum(len(s.features) for s in samples)),
        "bytes": nbytes,
        "sha256": sha,
        "plan_digest": job.digest,
        "videos": len(job.items),
        "videos_sharded": sharded,
        "rejected": len(rejects),
        "rejects_by_reason": dict(Counter(r["reason"] for r in rejects)),
        "videos_captions_clipped": len({s.meta["video_id"] for s in samples if "captions_clipped_at" in s.meta}),
        "features_digest": source.hexdigest(),
        "toi_df": dict(sorted(df.items())),
        "feature_sum": frames.sum(0).tolist() if frames is not None else None,  # (D,) float64
        "feature_sumsq": np.square(frames).sum(0).tolist() if frames is not None else None,
    }
    loc.write_bytes(schema.stats_name(job.index), schema.dumps(stats))
    return stats


# Worker processes get the build function, its context and the output once, at start-up.
_WORKER: dict[str, Any] = {}


def _init_worker(build: BuildFn, ctx: Any, url: str, endpoint_url: str | None) -> None:
    _WORKER.update(build=build, ctx=ctx, loc=open_location(url, endpoint_url))


def _run_in_worker(job: ShardJob) -> dict[str, Any]:
    return process_job(job, _WORKER["build"], _WORKER["ctx"], _WORKER["loc"])


def _completed(loc: Location, jobs: list[ShardJob], resume: bool) -> dict[int, dict[str, Any]]:
    """Stats of shards already complete in `loc`; refuses to mix with another run's shards."""
    names = set(loc.listdir())
    found = sorted(n for n in names if n.endswith(".stats.json"))
    if found and not resume:
        raise DataPrepError(
            f"{loc.url} already holds shards ({len(found)} complete); pass --resume to finish "
            "an interrupted run, or write to a new --out"
        )
    planned = {schema.stats_name(j.index): j for j in jobs}
    done: dict[int, dict[str, Any]] = {}
    for stats_file in found:
        job = planned.get(stats_file)
        stats = json.loads(loc.read_bytes(stats_file))
        if job is None or stats.get("plan_digest") != job.digest:
            raise DataPrepError(
                f"{loc.path(stats_file)} was written from other inputs or options than this run; "
                "--resume needs the same command line, or write to a new --out"
            )
        if stats["shard"] is None or stats["shard"] in names:
            done[job.index] = stats
    return done


def write_shards(
    loc: Location,
    jobs: list[ShardJob],
    build: BuildFn,
    ctx: Any,
    workers: int = 1,
    resume: bool = False,
    endpoint_url: str | None = None,
    desc: str = "shards",
) -> list[dict[str, Any]]:
    """Write every planned shard that is not complete yet; return all shards' stats."""
    done = _completed(loc, jobs, resume)
    todo = [j for j in jobs if j.index not in done]
    total_videos = sum(len(j.items) for j in jobs)
    if done:
        log.info("resuming: %d of %d shards already complete", len(done), len(jobs))
    progress = _Progress(desc, total_videos, sum(len(jobs[i].items) for i in done), len(jobs))
    if workers <= 1:
        results: Iterator[dict[str, Any]] = (process_job(j, build, ctx, loc) for j in todo)
        for stats in results:
            done[stats["index"]] = stats
            progress.update(stats)
    else:
        mp = multiprocessing.get_context("spawn")  # s3fs and spaCy are not fork-safe
        with mp.Pool(workers, _init_worker, (build, ctx, loc.url, endpoint_url)) as pool:
            for stats in pool.imap_unordered(_run_in_worker, todo):
                done[stats["index"]] = stats
                progress.update(stats)
    progress.close()
    return [done[j.index] for j in jobs]


class _Progress:
    """A tqdm bar (videos, clips, rejects, rate) on a terminal; a log line per ~10% otherwise."""

    def __init__(self, desc: str, total: int, initial: int, shards: int):
        self.tty = sys.stderr.isatty()
        self.samples = self.rejected = self.shards_done = 0
        self.shards, self.t0, self.desc, self.total, self.videos = shards, time.time(), desc, total, initial
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="video", desc=desc, dynamic_ncols=True)

    def update(self, stats: dict[str, Any]) -> None:
        self.samples += stats["samples"]
        self.rejected += stats["rejected"]
        self.videos += stats["videos"]
        self.shards_done += 1
        if self.bar is not None:
            self.bar.update(stats["videos"])
            self.bar.set_postfix(samples=self.samples, rejected=self.rejected)
        elif self.shards_done == self.shards or self.shards_done % max(1, self.shards // 10) == 0:
            rate = self.samples / max(time.time() - self.t0, 1e-9)
            log.info(
                "%s: %d/%d videos, %d samples, %d rejected, %.1f samples/s",
                self.desc,
                self.videos,
                self.total,
                self.samples,
                self.rejected,
                rate,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def file_digest(path: str) -> dict[str, Any]:
    """sha256 and size of an input file, for the manifest."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return {"path": path, "bytes": size, "sha256": h.hexdigest()}


def finalize(
    loc: Location, jobs: list[ShardJob], stats: list[dict[str, Any]], manifest: dict[str, Any]
) -> dict[str, Any]:
    """Write sizes.json, rejects.jsonl, toi_df.json and manifest.json (last); return the manifest."""
    rejects: list[dict[str, Any]] = []
    for st in stats:
        data = loc.read_bytes(schema.shard_rejects_name(st["index"]))
        rejects.extend(json.loads(line) for line in data.splitlines() if line)
    _check_accounting(jobs, stats, rejects)
    rejects.sort(key=lambda r: r["video_id"])
    sizes = {st["shard"]: st["samples"] for st in stats if st["shard"]}
    df: Counter[str] = Counter()
    for st in stats:
        df.update(st["toi_df"])
    samples = sum(sizes.values())
    counts = {
        "videos": sum(st["videos"] for st in stats),
        "videos_sharded": sum(len(st["videos_sharded"]) for st in stats),
        "videos_rejected": len(rejects),
        "rejects_by_reason": dict(sorted(Counter(r["reason"] for r in rejects).items())),
        "videos_captions_clipped": sum(st.get("videos_captions_clipped", 0) for st in stats),
        "samples": samples,
        "frames": sum(st["frames"] for st in stats),
        "shards": len(sizes),
        "bytes": sum(st["bytes"] for st in stats),
    }
    digest = hashlib.sha256(schema.dumps([st["features_digest"] for st in stats])).hexdigest()
    manifest = {
        "schema_version": schema.SCHEMA_VERSION,
        **manifest,
        "counts": counts,
        "features_digest": digest,
        "shards": sorted(sizes),
    }
    loc.write_bytes(schema.SIZES_FILE, json.dumps(sizes, indent=1, sort_keys=True).encode())
    loc.write_bytes(schema.REJECTS_FILE, b"".join(schema.dumps(r) + b"\n" for r in rejects))
    loc.write_bytes(schema.TOI_DF_FILE, schema.dumps({"num_docs": samples, "df": dict(sorted(df.items()))}))
    feature_stats = merged_feature_stats(stats)
    if feature_stats is not None:
        loc.write_bytes(schema.FEATURE_STATS_FILE, schema.dumps(feature_stats))
    manifest["feature_stats"] = schema.FEATURE_STATS_FILE if feature_stats is not None else None
    loc.write_bytes(schema.MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True).encode())
    for name in loc.listdir():
        if name.endswith(".tmp"):
            loc.remove(name)
    return manifest


def merged_feature_stats(stats: list[dict[str, Any]]) -> dict[str, Any] | None:
    """{frames, mean, std} per feature dimension over every frame of the shards, from their float64 sums
    (in shard order, so the same inputs give the same file); None when a shard's stats predate them."""
    parts = [st for st in stats if st["frames"]]
    if not parts or any(st.get("feature_sum") is None for st in parts):
        return None
    n = sum(st["frames"] for st in parts)
    total, squares = np.zeros(len(parts[0]["feature_sum"])), np.zeros(len(parts[0]["feature_sum"]))
    for st in parts:
        total += np.asarray(st["feature_sum"])
        squares += np.asarray(st["feature_sumsq"])
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean**2, 0.0))
    return {"frames": n, "mean": mean.tolist(), "std": std.tolist()}


def _check_accounting(jobs: list[ShardJob], stats: list[dict[str, Any]], rejects: list[dict[str, Any]]) -> None:
    """Every input video is in a shard or in the reject log, exactly once."""
    planned = Counter(item.video_id for job in jobs for item in job.items)
    seen = Counter(v for st in stats for v in st["videos_sharded"]) + Counter(r["video_id"] for r in rejects)
    if planned != seen:
        missing = sorted((planned - seen).keys())[:5]
        extra = sorted((seen - planned).keys())[:5]
        raise DataPrepError(f"video accounting failed: missing {missing}, unexpected or repeated {extra}")
