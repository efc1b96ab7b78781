"""Zero-shot text-to-video retrieval on a held-out shard: does pretraining align the modalities?

Each held-out clip's text ([CLS] of e_t) is the query for its own video (mean of e_v over its
frames), against all held-out videos; cosine similarity; R@1/5/10, median and mean rank
(pretrain/metrics.py). Every rank runs the same forward passes (ZeRO-3 needs all ranks in
each forward); rank 0 logs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pretrain import metrics


def embed_pair(model: torch.nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
    """(text (B, d), video (B, d)) L2-normalised embeddings of a batch."""
    e_t = model.embed_text(batch["input_ids"], batch["attention_mask"])  # (B, N, d)
    e_v = model.embed_video(batch["frames"], batch["frame_mask"])  # (B, M, d)
    mask = batch["frame_mask"].unsqueeze(-1).to(e_v.dtype)  # (B, M, 1)
    video = (e_v * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, d)
    return F.normalize(e_t[:, 0].float(), dim=-1), F.normalize(video.float(), dim=-1)


@torch.no_grad()
def evaluate(engine, batches, device: torch.device, max_samples: int) -> dict[str, float]:
    """Zero-shot T2V metrics over the held-out batches (at most max_samples clips)."""
    was_training = engine.training
    engine.eval()
    texts, videos = [], []
    seen = 0
    for batch in batches:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        t, v = engine(embed_pair, batch)
        texts.append(t)
        videos.append(v)
        seen += len(t)
        if seen >= max_samples:
            break
    engine.train(was_training)
    if not texts:
        return {}
    sim = torch.cat(texts)[:max_samples] @ torch.cat(videos)[:max_samples].T  # (Q, V)
    return {f"zeroshot_t2v_{k}": v for k, v in metrics.text_to_video(sim).items()}
