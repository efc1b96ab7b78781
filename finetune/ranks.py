"""Evaluation spread over the ranks: each rank takes a share of the work, the results are gathered so that every
rank holds the whole, in the order one rank would have made it.

The work comes in numbered units (batches of videos or queries, chunks of queries of the search); unit u is
rank u % W's. Units are the same whatever W (a batch is the same batch, a chunk the same chunk), so each
unit's numbers are computed by the same operations on the same inputs as on one rank, and the gathered
result is the same, bit for bit (docs/evaluation.md; tests/integration/test_eval_ranks.py). Forwards through
the engine are padded: a rank with fewer units runs spare forwards whose output is dropped, so that every rank
runs the same number (ZeRO-3 gathers parameters in every forward, with every rank taking part).

With one rank (or no process group) every unit is rank 0's and nothing is communicated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from pretrain.distributed import gather_no_grad, rank_and_world

T = TypeVar("T")


def owner(unit: int, world: int) -> int:
    """The rank that computes unit `unit`."""
    return unit % world


def units_of(rank: int, world: int, units: int) -> range:
    """The units of `rank` among `units`, in order."""
    return range(rank, units, world)


def most_units(world: int, units: int) -> int:
    """The most units any rank has: the forwards every rank runs, spares included."""
    return -(-units // world)


def gather_rows(x: Tensor, pad_value: float | bool = 0) -> list[Tensor]:
    """Every rank's `x` (n_r, ...), rows counted per rank: [x of rank 0, x of rank 1, ...].

    Row counts may differ (padded to the largest for the all_gather, the padding dropped after), as may the
    other dims, padded with `pad_value` to the largest over the ranks (gather_no_grad's rule).
    """
    rank, world = rank_and_world()
    if world == 1:
        return [x]
    n = torch.tensor([x.shape[0]], device=x.device)
    counts = gather_no_grad(n).tolist()  # (W,)
    padded = F.pad(x, [0, 0] * (x.dim() - 1) + [0, max(counts) - x.shape[0]], value=float(pad_value))
    parts = gather_no_grad(padded, pad_value).split(max(counts))  # W x (max n, ...)
    return [p[:c] for p, c in zip(parts, counts)]


def gather_objects(obj: T) -> list[T]:
    """Every rank's picklable `obj`, by rank."""
    _, world = rank_and_world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def in_unit_order(parts: Sequence[Sequence[T]], sizes: Sequence[int]) -> list[T]:
    """The items of all units in unit order, from each rank's items of its own units (in order) and every unit's
    item count: parts[r] holds the items of units r, r + W, ... one after the other."""
    world, taken, out = len(parts), [0] * len(parts), []
    for unit, size in enumerate(sizes):
        r = owner(unit, world)
        out.extend(parts[r][taken[r] : taken[r] + size])
        taken[r] += size
    return out


def rows_in_unit_order(local: Tensor, sizes: Sequence[int], pad_value: float | bool = 0) -> Tensor:
    """(sum(sizes), ...): this rank's rows of its units gathered with everybody's, in unit order."""
    _, world = rank_and_world()
    if world == 1:
        return local
    parts = gather_rows(local, pad_value)
    out = parts[0].new_empty((sum(sizes), *parts[0].shape[1:]))  # each unit's rows copied once into place
    taken, row = [0] * world, 0
    for unit, size in enumerate(sizes):
        r = owner(unit, world)
        out[row : row + size] = parts[r][taken[r] : taken[r] + size]
        taken[r], row = taken[r] + size, row + size
    return out


def ragged_in_unit_order(items: Tensor, counts: Tensor, sizes: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(items, counts) of all units in unit order, from this rank's: `counts` (n,) says how many rows of `items`
    (sum(counts), ...) each of this rank's entries has (a query's predictions), `sizes` every unit's entries.
    Two all_gathers of tensors: nothing pickled."""
    _, world = rank_and_world()
    if world == 1:
        return items, counts
    counts = rows_in_unit_order(counts, sizes)  # (sum(sizes),)
    rows_per_unit = [int(c.sum()) for c in counts.split(list(sizes))]
    return rows_in_unit_order(items, rows_per_unit), counts


def spread(units: int, compute: Callable[[int], T], spare: Callable[[], T]) -> tuple[list[T], T | None]:
    """(compute(u) for this rank's units in order, the last spare's result or None): `spare()` runs as often as
    this rank has fewer units than the rank with the most, so that every rank runs as many forwards."""
    rank, world = rank_and_world()
    mine = [compute(u) for u in units_of(rank, world, units)]
    extra = None
    for _ in range(most_units(world, units) - len(mine)):
        extra = spare()
    return mine, extra
