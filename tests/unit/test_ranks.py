"""finetune/ranks.py's bookkeeping in one process: which rank owns which unit, and putting the ranks' results
back in unit order (the gathers themselves run under torchrun in tests/integration/test_eval_ranks.py)."""

from __future__ import annotations

import pytest
import torch

from finetune import ranks


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_units_are_shared_round_robin_and_put_back_in_order(world: int) -> None:
    sizes = [3, 3, 3, 3, 3, 1]  # six batches, the last one short
    items = [(unit, i) for unit, size in enumerate(sizes) for i in range(size)]  # what one rank would make
    parts = [[(u, i) for u in ranks.units_of(r, world, len(sizes)) for i in range(sizes[u])] for r in range(world)]
    assert sorted(u for r in range(world) for u in ranks.units_of(r, world, len(sizes))) == list(range(len(sizes)))
    assert max(len(ranks.units_of(r, world, len(sizes))) for r in range(world)) == ranks.most_units(world, 6)
    assert ranks.in_unit_order(parts, sizes) == items


def test_one_rank_computes_everything_without_spares() -> None:
    calls = []
    mine, spare = ranks.spread(5, lambda u: calls.append(u) or u * 10, lambda: calls.append("spare"))
    assert mine == [0, 10, 20, 30, 40] and spare is None and calls == [0, 1, 2, 3, 4]
    x = torch.arange(6.0).view(3, 2)
    assert ranks.rows_in_unit_order(x, [2, 1]) is x and ranks.gather_rows(x)[0] is x
    assert ranks.gather_objects({"a": 1}) == [{"a": 1}]


def test_ragged_results_of_one_rank_are_kept_as_they_are() -> None:
    items, counts = torch.arange(12.0).view(6, 2), torch.tensor([2, 0, 3, 1])  # four queries' predictions
    got_items, got_counts = ranks.ragged_in_unit_order(items, counts, [3, 1])
    assert got_items is items and got_counts is counts
