"""Global modality reconstruction (FEEL, eq. 1-3 and 7-9).

The cross-modal transformer fuses video and text (eq. 1); the Modality Converting Blocks turn
the fused video into the text embedding space and the fused text into the video space (eq. 2-3);
the mean-pooled conversions must match the mean-pooled original embeddings (eq. 7-9). This
aligns whole sequences, not only the few tokens that MLM/MFM reconstruct.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor

from pretrain.objectives.passes import Passes
from pretrain.pooling import masked_mean  # FEEL's m(.): mean over the valid positions (padding excluded)

if TYPE_CHECKING:
    from pretrain.objectives import Batch, VideoTextModel


@dataclass
class GMRConfig:
    """Global modality reconstruction options."""

    detach_targets: bool = False  # stop the gradient into the original e_v, e_t (eq. 7-8 targets)


@dataclass
class Converted:
    """One pass of FEEL eq. 1-3: original embeddings and their conversions, with their masks."""

    e_v: Tensor  # (B, M, d) video embedding
    e_t: Tensor  # (B, N, d) language embedding
    e_v_prime: Tensor  # (B, N, d) text converted to the video space: lives on text positions
    e_t_prime: Tensor  # (B, M, d) video converted to the text space: lives on frame positions
    frame_mask: Tensor  # (B, M) bool
    text_mask: Tensor  # (B, N) bool


def convert(model: VideoTextModel, batch: Batch, passes: Passes | None = None) -> Converted:
    """FEEL eq. 1-3 on the unmasked batch: e_v, e_t -> T_cross -> MCB_V2T / MCB_T2V (`Passes.converted`
    shares it between objectives)."""
    frame_mask, text_mask = batch["frame_mask"], batch["attention_mask"]  # (B, M), (B, N)
    f = (passes or Passes(model, batch)).cross()  # e_v (B, M, d), e_t (B, N, d), o_v (B, M, d), o_t (B, N, d)
    e_t_prime = model.mcb_v2t(f.o_v, frame_mask)  # (B, M, d)
    e_v_prime = model.mcb_t2v(f.o_t, text_mask)  # (B, N, d)
    return Converted(f.e_v, f.e_t, e_v_prime, e_t_prime, frame_mask, text_mask)


def gmr_loss(c: Converted, detach_targets: bool = False) -> tuple[Tensor, Tensor]:
    """FEEL eq. 7 and 8: (L_G_t2v, L_G_v2t); their sum is eq. 9.

    Each MSE is the mean over batch and feature dims of the squared difference of the pooled
    vectors. e'_v sits on text positions, so it is pooled with the text mask; e'_t with the
    frame mask.
    """
    v, t = (c.e_v.detach(), c.e_t.detach()) if detach_targets else (c.e_v, c.e_t)  # (B, M, d), (B, N, d)
    l_t2v = F.mse_loss(masked_mean(c.e_v_prime, c.text_mask), masked_mean(v, c.frame_mask))  # eq. 7
    l_v2t = F.mse_loss(masked_mean(c.e_t_prime, c.frame_mask), masked_mean(t, c.text_mask))  # eq. 8
    return l_t2v, l_v2t


class GMR:
    """Global modality reconstruction objective: returns {"gmr_loss": L_G} (FEEL eq. 9)."""

    name = "gmr"

    def __init__(self, cfg: GMRConfig):
        self.cfg = cfg

    def __call__(self, model: VideoTextModel, batch: Batch, passes: Passes | None = None) -> dict[str, Tensor]:
        l_t2v, l_v2t = gmr_loss((passes or Passes(model, batch)).converted(), self.cfg.detach_targets)
        return {"gmr_loss": l_t2v + l_v2t}
