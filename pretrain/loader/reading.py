"""Reading shards with webdataset: blocks of whole shards -> validated raw samples, what was skipped
counted by kind and logged (rate-limited), and one stream's reader from a cursor on.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import fsspec
import numpy as np
import webdataset as wds

from data_prep import schema
from pretrain.loader.plan import Cursor, EpochPlan
from pretrain.loader.storage import Corpus, read_bytes, storage_options
from pretrain.s3retry import RetryPolicy, is_remote

log = logging.getLogger(__name__)

LOG_FIRST, LOG_EVERY = 10, 100  # skip logging: the first 10 of a kind per process, then every 100th
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
                stream = io.BytesIO(read_bytes(url, endpoint, retry, "shard read"))
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


class StreamReader:
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
