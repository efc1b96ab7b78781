"""Masked language modelling conditioned on the video (FEEL eq. 4, following HERO and BERT).

The loader already chose the 15% of tokens and applied BERT's 80/10/10 corruption
(`mlm_input_ids`, `mlm_labels` = -100 where nothing is predicted). Here the corrupted text
and the video go through the cross-modal transformer, and the tied MLM head predicts the
original tokens from the fused text features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor

from pretrain.objectives.passes import Passes

if TYPE_CHECKING:
    from pretrain.objectives import Batch, VideoTextModel

IGNORE = -100


@dataclass
class MLMConfig:
    """Masked language modelling options."""

    label_smoothing: float = 0.0  # 0 = plain negative log-likelihood, as eq. 4


def mlm_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """FEEL eq. 4: mean -log P(t_mask | t_not_mask, v) over the predicted tokens.

    `logits` (P, V) for P positions, `labels` (P,) with IGNORE where nothing is predicted.
    A batch without any predicted token gives 0 (not NaN), so a rare empty batch cannot
    poison the run.
    """
    keep = labels != IGNORE  # (P,)
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum", label_smoothing=label_smoothing)  # ()
    return total / keep.sum().clamp_min(1)


class MLM:
    """MLM objective: returns {"mlm_loss": ...}."""

    name = "mlm"

    def __init__(self, cfg: MLMConfig):
        self.cfg = cfg

    def __call__(self, model: VideoTextModel, batch: Batch, passes: Passes | None = None) -> dict[str, Tensor]:
        passes = passes or Passes(model, batch)
        o_t = passes.cross(masked_text=True).o_t  # (B, N, d): T_cross over the video and the corrupted text
        labels = batch["mlm_labels"]  # (B, N)
        picked = labels != IGNORE  # (B, N)
        logits = model.mlm_logits(o_t[picked].unsqueeze(0)).squeeze(0)  # (P, V): only predicted positions
        return {"mlm_loss": mlm_loss(logits, labels[picked], self.cfg.label_smoothing)}
