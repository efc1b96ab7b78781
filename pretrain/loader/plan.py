"""The epoch plan: which shards each stream of a rank reads and how many samples it delivers,
and the resume arithmetic over it (stream cursors, the first round not yet consumed). Pure:
it depends on the shard sizes and the setup only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

_SEED_SHARDS, _SEED_BLOCK = 1, 2  # purposes mixed into the plan's seeds


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
