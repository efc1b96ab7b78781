"""Streams -> chunks: round j of an epoch takes one chunk of every stream (collated in the worker
when it is exactly one planned batch); `EpochStreams` serves a DataLoader worker's streams.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from pretrain.loader.batch import Processor
from pretrain.loader.plan import Cursor, EpochPlan, first_round
from pretrain.loader.reading import StreamReader
from pretrain.loader.storage import Corpus


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
    reader = StreamReader(plan, s, start, corpus)
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
