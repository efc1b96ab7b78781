"""Sentence vectors: the one place where a text's token features become one vector.

Every sentence-level use calls `pool_text` with the model's `text_pooling` (TACo's L1 and its
cascade and inference scores, zero-shot retrieval, the finetune query vectors); FEEL's m(.) and
the video side use `masked_mean`. A text encoder is pooled the way it was trained
(`model.text_pooling: auto`, resolved by `encoder_pooling`):

- a sentence-transformers model (a `1_Pooling/config.json` beside its weights, like the packaged
  all-MiniLM-L6-v2): the pooling it was trained with, mean of the token features for MiniLM.
  Its [CLS] was never trained as a summary: cut to 2 layers, the [CLS] of unrelated sentences
  has cosine >= 0.9999 (docs/objectives.md), a constant;
- BERT (`model_type: bert`): [CLS], which BERT's next-sentence prediction trains and TACo uses;
- RoBERTa and every other encoder: mean, since they have no sentence-level pretraining objective
  (RoBERTa dropped next-sentence prediction, so its <s> is not a summary) and mean pooling is the
  better sentence vector for them (Reimers & Gurevych 2019, Sentence-BERT's pooling ablation).

Mean pooling averages every valid token, [CLS] and [SEP] included, as sentence-transformers does.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor

TEXT_POOLINGS = ("mean", "cls")


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over the valid positions of each sequence (padding excluded): (B, L, d), (B, L) -> (B, d); any
    leading dims, (..., L, d), (..., L) -> (..., d). A sequence without a valid position gives 0."""
    w = mask.to(x.dtype).unsqueeze(-1)  # (..., L, 1)
    return (x * w).sum(-2) / w.sum(-2).clamp_min(1.0)  # (..., d)


def pool_text(y: Tensor, text_mask: Tensor, pooling: str) -> Tensor:
    """The sentence vector (B, d) of token features y (B, N, d): "mean" over valid tokens, or "cls" (token 0)."""
    if pooling == "cls":
        return y[:, 0]
    if pooling == "mean":
        return masked_mean(y, text_mask)
    raise ValueError(f"text pooling must be one of {TEXT_POOLINGS}, got {pooling!r}")


def encoder_pooling(path: str) -> str:
    """How the encoder at `path` (a local folder, or a hub name) was trained to give sentence vectors."""
    folder = Path(path)
    st_pooling = folder / "1_Pooling" / "config.json"
    if st_pooling.is_file():
        modes = json.loads(st_pooling.read_text())
        if modes.get("pooling_mode_cls_token"):
            return "cls"
        if modes.get("pooling_mode_mean_tokens"):
            return "mean"
        raise ValueError(f"{st_pooling}: a pooling other than mean or [CLS]; set model.text_pooling")
    config = folder / "config.json"
    model_type = json.loads(config.read_text()).get("model_type", "") if config.is_file() else folder.name.lower()
    return "cls" if model_type == "bert" or model_type.startswith("bert-") else "mean"
