"""Zero-shot text-to-video retrieval on a held-out shard: does pretraining align the modalities?

Each held-out clip's text is the query for its own video, against all held-out videos, scored
two ways (R@1/5/10, median and mean rank, pretrain/metrics.py), with the similarity that
pretraining's TACo section uses (`objectives.taco.similarity`: TACo's dot product by default):
- `zeroshot_t2v_*`: sentence level, the text's sentence vector (e_t pooled as the model's
  `text_pooling` says) against the video's mean frame (of e_v), TACo's eq. 3 pair;
- `zeroshot_taco_*`: TACo's cascade score (section 3.3), that sentence-level score plus the sum over
  the text's tokens of interest of their best frame's score (eq. 4's s(x, y^p)), the two cheap
  terms of TACo's inference (finetune/video_retrieval.py adds the fusion score).
Every rank runs the same forward passes (ZeRO-3 needs all ranks in each forward); rank 0 logs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pretrain import metrics
from pretrain.objectives.taco import PAPER, TacoConfig, Texts, pooled, taco_pair_scores

TEXT_CHUNK = 64  # texts scored against every video at once (the token scores are tokens x videos x frames)


def embed_pair(model: torch.nn.Module, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
    """(text tokens y (B, N, d), sentence vectors (B, d), video frames x (B, M, d)) of a batch, as TACo scores them."""
    y = model.embed_text(batch["input_ids"], batch["attention_mask"])  # (B, N, d)
    x = model.embed_video(batch["frames"], batch["frame_mask"])  # (B, M, d)
    return y.float(), model.sentence(y, batch["attention_mask"]).float(), x.float()


def _stack(rows: list[Tensor]) -> Tensor:
    """Pad a list of (n_i, ...) tensors along their first dim to the longest and stack them."""
    n = max(len(r) for r in rows)
    return torch.stack([F.pad(r, (0, 0) * (r.dim() - 1) + (0, n - len(r))) for r in rows])


@torch.no_grad()
def evaluate(engine, batches, device: torch.device, max_samples: int, taco: TacoConfig = PAPER) -> dict[str, float]:
    """Zero-shot T2V metrics over the held-out batches (at most max_samples clips), scored as `taco` scores."""
    was_training = engine.training
    engine.eval()
    ys, y_bars, xs, text_masks, frame_masks, tois = [], [], [], [], [], []
    for batch in batches:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        y, y_bar, x = engine(embed_pair, batch)
        ys.extend(y.unbind(0))
        y_bars.extend(y_bar.unbind(0))
        xs.extend(x.unbind(0))
        text_masks.extend(batch["attention_mask"].bool().unbind(0))
        frame_masks.extend(batch["frame_mask"].bool().unbind(0))
        tois.extend(batch["toi_weight"].float().unbind(0))
        if len(ys) >= max_samples:
            break
    engine.train(was_training)
    if not ys:
        return {}
    n = min(len(ys), max_samples)
    y, tm, toi = _stack(ys[:n]), _stack(text_masks[:n]), _stack(tois[:n])  # (Q, N, d), (Q, N), (Q, N)
    x, fm = _stack(xs[:n]), _stack(frame_masks[:n])  # (V, M, d), (V, M)
    texts = Texts(y, torch.stack(y_bars[:n]), tm, toi)
    x_bar, y_bar = pooled(x, fm, texts.y_bar, taco.cosine)  # (V, d), (Q, d): TACo L1's pair
    sentence = y_bar @ x_bar.T  # (Q, V)
    chunks = [slice(i, i + TEXT_CHUNK) for i in range(0, n, TEXT_CHUNK)]
    cascade = torch.cat([taco_pair_scores(x, fm, texts[c], taco) for c in chunks])  # (Q, V)
    out = {f"zeroshot_t2v_{k}": v for k, v in metrics.text_to_video(sentence).items()}
    out.update({f"zeroshot_taco_{k}": v for k, v in metrics.text_to_video(cascade).items()})
    return out
