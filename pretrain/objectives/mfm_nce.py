"""Masked frame modelling with noise-contrastive estimation (FEEL eq. 5-6, HERO's MFM-NCE).

The loader picks the masked frames (`mfm_mask`, at least one per sample). Their features are
zeroed and, as in HERO, a learned mask vector of the raw feature dim Dv is added to them
(`mask_embedding`); the video goes through the cross-modal transformer with the unmasked text.
With `target="raw"` (the default, HERO's `feat_regress` + `mfm_nce`) the regression head maps
o_v back to Dv and its output at a masked frame must score that frame's RAW input features
(fixed, no gradient) above the negatives: the raw features of the other masked frames of the
batch and the head outputs at the unmasked frames of the batch, dot products / temperature (1).
`target="embedded"` (this repo's earlier reading) uses the d-dim `mfm_head` and scores
`embed_video` of the original frames instead, a target the model produces itself (with
gradient unless `detach_targets`). Negatives come from the whole local batch, as in HERO, but
padded frames never take part: HERO's negatives include them by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from pretrain.objectives.passes import Passes

if TYPE_CHECKING:
    from pretrain.objectives import Batch, VideoTextModel


TARGETS = ("raw", "embedded")


@dataclass
class MFMNCEConfig:
    """MFM-NCE options (see docs/objectives.md)."""

    target: str = "raw"  # "raw": HERO's raw input features, Dv-dim head | "embedded": embed_video(frames), d-dim head
    mask_embedding: bool = True  # HERO: a learned Dv-dim vector added to the zeroed masked frames; False: zeroed only
    temperature: float = 1.0  # HERO divides the dot products by 1
    detach_targets: bool = False  # target="embedded" only: stop the gradient into embed_video(frames)

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"mfm_nce target must be one of {TARGETS}, got {self.target!r}")
        if not isinstance(self.mask_embedding, bool):
            raise ValueError(f"mfm_nce mask_embedding must be one of (True, False), got {self.mask_embedding!r}")


def mfm_nce_loss(
    pred: Tensor, target: Tensor, mfm_mask: Tensor, frame_mask: Tensor, temperature: float = 1.0
) -> Tensor:
    """FEEL eq. 5-6 (HERO's MFM-NCE): mean cross-entropy over the masked frames of the batch.

    pred (B, M, D): head outputs; target (B, M, D): the original frames (raw features, D = Dv,
    or their embeddings, D = d);
    mfm_mask (B, M): masked frames; frame_mask (B, M): valid frames. For masked frame q the
    logits are [pred_q . target_q' for every masked q'] + [pred_q . pred_u for every unmasked
    valid u], the positive being q' = q. Padding frames take no part. Without any masked
    frame the loss is 0 (the loader guarantees one per sample; this only avoids a NaN).
    """
    masked = mfm_mask & frame_mask  # (B, M)
    q = pred[masked]  # (Q, d)
    if q.shape[0] == 0:  # Q is known on the host once the rows are picked: no extra sync
        return pred.sum() * 0.0
    unmasked = frame_mask & ~mfm_mask  # (B, M)
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

    def __call__(self, model: VideoTextModel, batch: Batch, passes: Passes | None = None) -> dict[str, Tensor]:
        frames, frame_mask, mfm_mask = batch["frames"], batch["frame_mask"], batch["mfm_mask"]  # (B, M, Dv), (B, M)
        passes = passes or Passes(model, batch)
        o_v = passes.cross(masked_video=True, learned=self.cfg.mask_embedding).o_v  # (B, M, d): masked frames
        if self.cfg.target == "raw":
            pred = model.mfm_regress(o_v)  # (B, M, Dv)
            target = frames.detach().to(pred.dtype)  # (B, M, Dv): HERO's feat_targets, fixed
        else:
            pred = model.mfm_head(o_v)  # (B, M, d)
            target = passes.video()  # (B, M, d): the original frames' embeddings
            target = target.detach() if self.cfg.detach_targets else target  # (B, M, d)
        return {"mfm_nce_loss": mfm_nce_loss(pred, target, mfm_mask, frame_mask, self.cfg.temperature)}
