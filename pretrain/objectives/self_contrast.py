"""Cross-modal self-contrasting (FEEL eq. 10-16).

Global modality reconstruction pulls the once-converted embeddings (e'_t, e'_v) onto the
originals. Self-contrasting keeps that from turning into over-alignment of pairs that are only
partly aligned: an embedding converted twice (text -> video -> text) comes from the same
modality as the original, so it must be closer to the original than the once-converted one,
by a margin. Triplet loss, anchor = original, positive = twice converted, negative = once
converted, in both directions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from pretrain.objectives.gmr import Converted
from pretrain.objectives.passes import Passes
from pretrain.pooling import masked_mean

if TYPE_CHECKING:
    from pretrain.objectives import Batch, VideoTextModel

EQ15_NEGATIVES = ("e_v_prime", "e_t_prime")


@dataclass
class SelfContrastConfig:
    """Cross-modal self-contrasting options (see docs/objectives.md for the choices)."""

    margin: float = 0.5  # FEEL gives none. relative_margin: a fraction of the batch's mean anchor-negative distance
    relative_margin: bool = True  # False: `margin` is an absolute distance (the previous reading: 1.0)
    eq15_negative: str = "e_v_prime"  # "e_v_prime" (symmetric with eq. 12) | "e_t_prime" (eq. 15 as printed)
    detach_converted: bool = False  # detach e'_v, e'_t where they are reused (second pass input, negative)

    def __post_init__(self) -> None:
        if self.margin < 0 or (self.relative_margin and self.margin >= 1):
            raise ValueError(f"self_contrast.margin must be >= 0 (and < 1 when relative), got {self.margin}")
        if self.eq15_negative not in EQ15_NEGATIVES:
            raise ValueError(f"eq15_negative must be one of {EQ15_NEGATIVES}, got {self.eq15_negative!r}")


def l2_distance(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """Row-wise Euclidean distance; eps keeps the gradient finite when a == b."""
    return ((a - b).pow(2).sum(-1) + eps).sqrt()  # (B,)


def triplet_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float, relative: bool = False) -> Tensor:
    """FEEL's delta in eq. 12 and 15: mean over the batch of max(0, |a-p|_2 - |a-n|_2 + margin).

    relative: the margin is `margin` x the batch's mean |a-n|_2 (no gradient through it, this
    rank's batch), so it scales with the pooled embeddings: the twice-converted embedding must be
    closer to the original than the once-converted one by that fraction of their typical distance.
    """
    d_an = l2_distance(anchor, negative)  # (B,)
    m = margin * d_an.detach().mean() if relative else margin
    gap = l2_distance(anchor, positive) - d_an + m  # (B,)
    return gap.clamp_min(0.0).mean()


def convert_twice(model: VideoTextModel, c: Converted, detach_converted: bool = False) -> tuple[Tensor, Tensor]:
    """FEEL eq. 10-11 and 13-14: (e''_t (B, N, d), e''_v (B, M, d)).

    e'_v has the text's N positions, so it enters T_cross with the text mask; e'_t has the
    video's M positions and enters with the frame mask.
    """
    e_v_prime = c.e_v_prime.detach() if detach_converted else c.e_v_prime  # (B, N, d)
    e_t_prime = c.e_t_prime.detach() if detach_converted else c.e_t_prime  # (B, M, d)
    o_v_sct, _ = model.cross(e_v_prime, c.text_mask, c.e_t, c.text_mask)  # (B, N, d): eq. 10
    e_t_twice = model.mcb_v2t(o_v_sct, c.text_mask)  # (B, N, d): eq. 11
    _, o_t_scv = model.cross(c.e_v, c.frame_mask, e_t_prime, c.frame_mask)  # (B, M, d): eq. 13
    e_v_twice = model.mcb_t2v(o_t_scv, c.frame_mask)  # (B, M, d): eq. 14
    return e_t_twice, e_v_twice


def self_contrast_loss(
    c: Converted,
    e_t_twice: Tensor,
    e_v_twice: Tensor,
    margin: float = 0.5,
    eq15_negative: str = "e_v_prime",
    detach_converted: bool = False,
    relative_margin: bool = True,
) -> tuple[Tensor, Tensor]:
    """FEEL eq. 12 and 15: (L_SC_t2v, L_SC_v2t); their sum is eq. 16.

    Text: anchor m(e_t), positive m(e''_t), negative m(e'_t). Video: anchor m(e_v), positive
    m(e''_v), negative m(e'_v) (symmetric reading) or m(e'_t) (eq. 15 as printed).
    """
    e_t_prime = c.e_t_prime.detach() if detach_converted else c.e_t_prime  # (B, M, d)
    e_v_prime = c.e_v_prime.detach() if detach_converted else c.e_v_prime  # (B, N, d)
    m_t_prime = masked_mean(e_t_prime, c.frame_mask)  # (B, d)
    m_t, m_t_twice = masked_mean(c.e_t, c.text_mask), masked_mean(e_t_twice, c.text_mask)  # (B, d), (B, d)
    l_t = triplet_loss(m_t, m_t_twice, m_t_prime, margin, relative_margin)  # eq. 12
    negative = masked_mean(e_v_prime, c.text_mask) if eq15_negative == "e_v_prime" else m_t_prime  # (B, d)
    m_v, m_v_twice = masked_mean(c.e_v, c.frame_mask), masked_mean(e_v_twice, c.frame_mask)  # (B, d), (B, d)
    l_v = triplet_loss(m_v, m_v_twice, negative, margin, relative_margin)  # eq. 15
    return l_t, l_v


class SelfContrast:
    """Cross-modal self-contrasting objective: returns {"self_contrast_loss": L_SC} (eq. 16)."""

    name = "self_contrast"

    def __init__(self, cfg: SelfContrastConfig):
        self.cfg = cfg

    def __call__(self, model: VideoTextModel, batch: Batch, passes: Passes | None = None) -> dict[str, Tensor]:
        c = (passes or Passes(model, batch)).converted()  # shared with GMR
        e_t_twice, e_v_twice = convert_twice(model, c, self.cfg.detach_converted)  # (B, N, d), (B, M, d)
        cfg = self.cfg
        l_t, l_v = self_contrast_loss(c, e_t_twice, e_v_twice, cfg.margin, cfg.eq15_negative, cfg.detach_converted,
                                      cfg.relative_margin)  # fmt: skip
        return {"self_contrast_loss": l_t + l_v}
