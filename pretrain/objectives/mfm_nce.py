"""Masked frame modelling with noise-contrastive estimation (FEEL eq. 5-6, HERO's MFM-NCE).

The loader picks the masked frames (`mfm_mask`, at least one per sample). Their features are
zeroed, the video goes through the cross-modal transformer with the unmasked text, and the
MFM head's output at a masked frame must score its own original frame embedding above the
negatives: the originals of the other masked frames of the batch and the head outputs of the
unmasked (valid, non-padding) frames of the batch. Scoring a frame against its own features
would be trivial, so negatives come from the whole local batch, as in HERO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from pretrain.objectives import Batch, VideoTextModel


@dataclass
class MFMNCEConfig:
    """MFM-NCE options."""

    temperature: float = 1.0  # HERO divides the dot products by 1
    detach_targets: bool = False  # stop the gradient into the original frame embeddings


def mfm_nce_loss(
    pred: Tensor, target: Tensor, mfm_mask: Tensor, frame_mask: Tensor, temperature: float = 1.0
) -> Tensor:
    """FEEL eq. 5-6 (HERO's MFM-NCE): mean cross-entropy over the masked frames of the batch.

    pred (B, M, d): head outputs; target (B, M, d): embeddings of the original frames;
    mfm_mask (B, M): masked frames; frame_mask (B, M): valid frames. For masked frame q the
    logits are [pred_q . target_q' for every masked q'] + [pred_q . pred_u for every unmasked
    valid u], the positive being q' = q. Padding frames take no part. Without any masked
    frame the loss is 0 (the loader guarantees one per sample; this only avoids a NaN).
    """
    masked = mfm_mask & frame_mask  # (B, M)
    if not masked.any():
        return pred.sum() * 0.0
    unmasked = frame_mask & ~mfm_mask  # (B, M)
    q = pred[masked]  # (Q, d)
    pos_and_masked = q @ target[masked].T  # (Q, Q): diagonal = positives
    unmasked_neg = q @ pred[unmasked].T  # (Q, U)
    logits = torch.cat([pos_and_masked, unmasked_neg], dim=1) / temperature  # (Q, Q+U)
    labels = torch.arange(q.shape[0], device=q.device)  # (Q,)
    return F.cross_entropy(logits, labels)


class MFMNCE:
    """MFM-NCE objective: returns {"mfm_nce_loss": ...}."""

    name = "mfm_nce"

    def __init__(self, cfg: MFMNCEConfig):
        self.cfg = cfg

    def __call__(self, model: VideoTextModel, batch: Batch) -> dict[str, Tensor]:
        frames, frame_mask, mfm_mask = batch["frames"], batch["frame_mask"], batch["mfm_mask"]  # (B, M, Dv), (B, M)
        text_mask = batch["attention_mask"]  # (B, N)
        zeroed = frames.masked_fill(mfm_mask.unsqueeze(-1), 0.0)  # (B, M, Dv)
        e_v = model.embed_video(zeroed, frame_mask)  # (B, M, d)
        e_t = model.embed_text(batch["input_ids"], text_mask)  # (B, N, d)
        o_v, _ = model.cross(e_v, frame_mask, e_t, text_mask)  # (B, M, d)
        pred = model.mfm_head(o_v)  # (B, M, d)
        target = model.embed_video(frames, frame_mask)  # (B, M, d): the original frames' embeddings
        target = target.detach() if self.cfg.detach_targets else target  # (B, M, d)
        return {"mfm_nce_loss": mfm_nce_loss(pred, target, mfm_mask, frame_mask, self.cfg.temperature)}
