"""Retrieval metrics as pure functions (checked against brute force in tests/unit/test_loop_and_metrics.py).

Text-to-video retrieval over a similarity matrix `sim[q, v]` where query q's ground truth is
video `gt[q]`: the rank of the ground truth is 1 + the number of videos scored strictly
higher (ties resolved in the query's favour, as the MSR-VTT/CLIP4Clip convention does).
"""

from __future__ import annotations

import torch
from torch import Tensor


def gt_ranks(sim: Tensor, gt: Tensor) -> Tensor:
    """1-based rank of each query's ground-truth video, (Q,) long, from sim (Q, V) and gt (Q,)."""
    target = sim.gather(1, gt.view(-1, 1))  # (Q, 1)
    return (sim > target).sum(dim=1) + 1  # (Q,)


def recall_at(ranks: Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """R@K in percent, plus median and mean rank."""
    out = {f"R@{k}": 100.0 * (ranks <= k).float().mean().item() for k in ks}
    out["MedR"] = ranks.float().quantile(0.5).item()  # np.median: the mean of the two middle ranks
    out["MeanR"] = ranks.float().mean().item()
    return out


def text_to_video(sim: Tensor, gt: Tensor | None = None, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """R@K / MedR / MeanR; gt defaults to the diagonal (query i matches video i)."""
    if gt is None:
        gt = torch.arange(sim.shape[0], device=sim.device)
    return recall_at(gt_ranks(sim, gt), ks)
