"""MESM's Enhanced Cross-Modal Aligner (../shared/papers/mesm_modal_enhanced.txt, section 3.3), an
option of the moment-retrieval task (finetune/moment.py: TVR, DiDeMo, How2R).

    FW-MESM  F_v^enh = F_v + MLP(softmax(Q K^T / sqrt(d)) V),  Q = W^q F_v, K = W^k F_q, V = W^v F_q     eq. 1
             the same weights with the inputs exchanged reconstruct the masked words from the video:
             F_q^r from Q* = W^q F_q^m, K* = W^k F_v, V* = W^v F_v;  L_fw = -1/L_w sum_j z_j log P_j(F_q^r)  eq. 2
    SS-MESM  the query's sentence feature F_s = mean of its words is replaced by a learnable [MASK]
             among the video's other sentences; layers over them attend to the video -> F_s^gen     eq. 3
             F_q^enh = [F_s^gen, F_q];  S = mean of F_v over the ground-truth frames                 eq. 4
             L_ss = -log sum_{j in S_pos} exp(sum_k F_q^enh_k . S_j / tau) / sum_j exp(...)          eq. 5
    MA       cross-attention of F_v^enh (query) to F_q^enh (key, value) -> F (the aligned feature)
    L_enc    BCE of the frame saliency s = sigmoid(MLP(F)) against "frame inside the moment"         eq. 6
    L = lambda_fw L_fw + lambda_ss L_ss + lambda_enc L_enc + L_vmr                                    eq. 8

Choices where the paper leaves room, or where this project's task differs:
- F_v is the task's video encoding (frames contextualised with the subtitles), F_q the query's
  token encodings; words are masked in F_q (a learnable vector replaces them: MESM masks
  extracted word features), a third of the words between [CLS] and [SEP], and the vocabulary
  distribution is the backbone's MLM decoder (tied to the word embeddings). Eq. 2 averages over
  all L_w words, as written, not only the masked ones.
- SS-MESM's layers are decoder layers (self-attention among the sentences, then cross-attention
  to the video): with cross-attention alone the [MASK] output could not read the context
  sentences eq. 3 builds it from. Eq. 5 is taken on L2-normalised features (the temperature
  implies a bounded similarity); its positive set is every row of the batch whose segment is in
  the same video with temporal IoU > gamma (the row itself included).
- Layers: FW-MESM 2 and MA 2 (implementation details), SS-MESM 4 (Table 7's best: mIoU 52.14
  and mAP_avg 38.57 against 49.75 / 36.26 with 2).
- L_vmr (eq. 7) is the task's own loss: VCMR ranks videos by a query-independent score, so the
  span head (XML's ConvSE) reads F in place of the video encoding and DETR's decoder is not used.
- At inference in a corpus the query's video is unknown, so its "other sentences" are too:
  the generated token comes from the [MASK] alone attending to the candidate video.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.pooling import masked_mean


@dataclass
class MesmConfig:
    fw: float = 0.0  # lambda_fw (0: no FW-MESM, the video is not enhanced)
    ss: float = 0.0  # lambda_ss (0: no SS-MESM, no generated token)
    enc: float = 0.0  # lambda_enc
    mask_ratio: float = 1 / 3  # of the query's words, FW-MESM
    context_sentences: int = 8  # other queries of the video given to SS-MESM
    gamma: float = 0.9  # IoU above which two segments are positives of each other (eq. 5)
    tau: float = 1.0  # eq. 5
    # layers: the paper's implementation details set FW-MESM, MA (and QD-DETR's encoder and decoder) to 2; its
    # Table 7 ablates SS-MESM's layers on Charades-STA and is best at 4 (mIoU 52.14, mAP_avg 38.57, against
    # 49.75 / 36.26 at 2; 5 is close, 6 drops): its full model's setting (Table 5's last row, the same numbers)
    fw_layers: int = 2
    ss_layers: int = 4
    ma_layers: int = 2

    @property
    def enabled(self) -> bool:
        """Any MESM loss on: the span head reads the aligner's output F."""
        return bool(self.fw or self.ss or self.enc)

    def validate(self) -> None:
        if min(self.fw, self.ss, self.enc) < 0:
            raise ValueError(f"task.mesm.fw/ss/enc must be >= 0, got {self.fw}, {self.ss}, {self.enc}")
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"task.mesm.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if not 0 <= self.gamma < 1 or not self.tau > 0:
            raise ValueError(f"task.mesm.gamma must be in [0, 1) and tau > 0, got {self.gamma}, {self.tau}")
        if min(self.fw_layers, self.ss_layers, self.ma_layers) < 1 or self.context_sentences < 0:
            raise ValueError("task.mesm.*_layers must be >= 1 and context_sentences >= 0")


class CrossBlock(nn.Module):
    """x + MLP(softmax(W^q x (W^k y)^T / sqrt(d)) W^v y): eq. 1, one head, y's padding masked."""

    def __init__(self, d: int, ffn: int):
        super().__init__()
        self.wq, self.wk, self.wv = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Linear(ffn, d))

    def forward(self, x: Tensor, y: Tensor, y_mask: Tensor) -> Tensor:
        att = torch.einsum("bid,bjd->bij", self.wq(x), self.wk(y)) / math.sqrt(x.shape[-1])  # (B, Lx, Ly)
        att = att.masked_fill(~y_mask[:, None, :], float("-inf")).softmax(-1)
        return x + self.mlp(torch.einsum("bij,bjd->bid", att, self.wv(y)))  # (B, Lx, d)


class Mesm(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, dropout: float, cfg: MesmConfig):
        super().__init__()
        self.cfg = cfg
        self.fw = nn.ModuleList(CrossBlock(d, ffn) for _ in range(cfg.fw_layers)) if cfg.fw else None
        self.word_mask = nn.Parameter(torch.zeros(d)) if cfg.fw else None
        self.sentence_mask = nn.Parameter(torch.zeros(d)) if cfg.ss else None
        self.ss = nn.ModuleList(
            nn.TransformerDecoderLayer(d, heads, ffn, dropout, activation="gelu", batch_first=True, norm_first=True)
            for _ in range(cfg.ss_layers)
        ) if cfg.ss else None  # fmt: skip
        self.ma = nn.ModuleList(CrossBlock(d, ffn) for _ in range(cfg.ma_layers))
        self.saliency = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        for p in (self.word_mask, self.sentence_mask):
            if p is not None:
                nn.init.normal_(p, std=0.02)

    def enhance_video(self, f_v: Tensor, f_q: Tensor, q_mask: Tensor) -> Tensor:
        """FW-MESM's video branch, eq. 1: F_v^enh (B, M, d); F_v itself without FW-MESM."""
        if self.fw is None:
            return f_v
        x = f_v
        for block in self.fw:
            x = block(x, f_q, q_mask)
        return x

    def reconstruct_words(self, f_q: Tensor, word_mask: Tensor, f_v: Tensor, v_mask: Tensor) -> Tensor:
        """FW-MESM's word branch: F_q^r (B, N, d) from F_q^m (masked words replaced) attending to F_v."""
        x = torch.where(word_mask[..., None], self.word_mask.to(f_q.dtype), f_q)  # (B, N, d)
        for block in self.fw:
            x = block(x, f_v, v_mask)
        return x

    def generate_token(self, context: Tensor | None, context_valid: Tensor | None, f_v: Tensor,
                       v_mask: Tensor) -> Tensor:  # fmt: skip
        """SS-MESM, eq. 3: F_s^gen of the masked sentence (B, d). context (B, K, d): the video's other
        sentences' features (None at corpus inference), context_valid (B, K)."""
        b, d = f_v.shape[0], f_v.shape[-1]
        x = self.sentence_mask.to(f_v.dtype).expand(b, 1, d)  # (B, 1, d) the [MASK] first
        valid = torch.ones(b, 1, dtype=torch.bool, device=f_v.device)  # (B, 1)
        if context is not None:
            x, valid = torch.cat([x, context], 1), torch.cat([valid, context_valid], 1)  # (B, 1+K, d), (B, 1+K)
        for layer in self.ss:
            x = layer(x, f_v, tgt_key_padding_mask=~valid, memory_key_padding_mask=~v_mask)
        return x[:, 0]  # (B, d)

    def align(self, f_v_enh: Tensor, f_q_enh: Tensor, q_enh_mask: Tensor) -> Tensor:
        """The modality aligner: F (B, M, d), F_v^enh attending to F_q^enh."""
        x = f_v_enh
        for block in self.ma:
            x = block(x, f_q_enh, q_enh_mask)
        return x

    def saliency_logits(self, aligned: Tensor) -> Tensor:
        """s before the sigmoid (B, M) of eq. 6."""
        return self.saliency(aligned).squeeze(-1)


def sentence_features(f_q: Tensor, q_mask: Tensor) -> Tensor:
    """F_s = the mean of a sentence's word features: (..., d) from (..., N, d) and (..., N)."""
    return masked_mean(f_q, q_mask)


def segment_features(f_v: Tensor, span: Tensor) -> Tensor:
    """S of eq. 4: the mean of F_v over frames span[:, 0]..span[:, 1] (inclusive), (B, d)."""
    t = torch.arange(f_v.shape[1], device=f_v.device)[None]  # (1, M)
    inside = (t >= span[:, :1]) & (t <= span[:, 1:])  # (B, M)
    return masked_mean(f_v, inside)


def fw_loss(logits: Tensor, labels: Tensor, words: Tensor) -> Tensor:
    """Eq. 2: cross-entropy of the reconstructed words, averaged over each sentence's L_w words and
    the batch. logits (B, N, V), labels (B, N) token ids, words (B, N) the positions counted."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="none").view(labels.shape)
    w = words.to(ce.dtype)  # (B, N)
    return ((ce * w).sum(1) / w.sum(1).clamp(min=1)).mean()


def pairwise_frame_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU (B, B) between every pair of inclusive frame spans a (B, 2) and b (B, 2) (a span [i, j] covers
    j - i + 1 frames). Spans in seconds: finetune.moment_eval.elementwise_iou (the evaluator's, numpy) and
    finetune.moment_search.batched_pairwise_iou (NMS, torch)."""
    st = torch.maximum(a[:, None, 0], b[None, :, 0])
    ed = torch.minimum(a[:, None, 1], b[None, :, 1])
    inter = (ed - st + 1).clamp(min=0).float()
    union = (a[:, 1] - a[:, 0] + 1)[:, None] + (b[:, 1] - b[:, 0] + 1)[None] - inter
    return inter / union


def ss_loss(q_enh: Tensor, q_enh_mask: Tensor, seg: Tensor, span: Tensor, video: Tensor, gamma: float,
            tau: float) -> Tensor:  # fmt: skip
    """Eq. 5 over the batch: q_enh (B, L+1, d) F_q^enh, q_enh_mask (B, L+1), seg (B, d) S, span (B, 2)
    inclusive frames and video (B,) ids: row j is a positive of row i when in the same video with
    IoU > gamma (i itself always)."""
    q = F.normalize(q_enh, dim=-1) * q_enh_mask[..., None]  # (B, L+1, d) padding contributes 0
    logits = torch.einsum("bkd,jd->bj", q, F.normalize(seg, dim=-1)) / tau  # (B, B) sum over k of F_q^enh_k . S_j
    positive = (video[:, None] == video[None]) & (pairwise_frame_iou(span, span) > gamma)  # (B, B)
    positive |= torch.eye(len(seg), dtype=torch.bool, device=seg.device)
    return (logits.logsumexp(1) - logits.masked_fill(~positive, float("-inf")).logsumexp(1)).mean()


def enc_loss(saliency_logits: Tensor, span: Tensor, frame_mask: Tensor) -> Tensor:
    """Eq. 6: binary cross-entropy of each valid frame's saliency against y_j = frame j in the moment,
    averaged over the L_v frames of each video and over the batch."""
    t = torch.arange(saliency_logits.shape[1], device=span.device)[None]  # (1, M)
    y = ((t >= span[:, :1]) & (t <= span[:, 1:])).to(saliency_logits.dtype)  # (B, M)
    bce = F.binary_cross_entropy_with_logits(saliency_logits.float(), y.float(), reduction="none")  # (B, M)
    m = frame_mask.float()
    return ((bce * m).sum(1) / m.sum(1).clamp(min=1)).mean()
