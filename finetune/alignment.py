"""Multi-level alignment (../shared/papers/multi_level_alignment.txt, section 3), a finetuning
option of the moment-retrieval, video-retrieval and How2QA tasks:

    L_train = L_task + lambda1 * L_glob + lambda2 * L_seg                      eq. 1
    L(S_neg, S_pos) = [alpha + S_neg - S_pos]_+                                eq. 2
    S_glob = cos(E_L, E_V)                                                     eq. 3
    L_glob = L(max_{i in batch} S_glob^neg_i, S_glob^pos)                      eq. 4
    S_seg = cos((E_L + E_ans) / 2, E_f)                                        eq. 5
    L_seg = L(max_{j in sample} S_seg^neg_j, S_seg^pos)                        eq. 6

Global: a positive pair is a language sample and its own video; its negatives are every
mismatched pair in the batch that contains either of them (the language with another video,
another language with the video); eq. 4 takes the hardest one. The batch is the global batch:
embeddings are gathered from every rank with gradient, each rank averages over its own rows.

Segment: within one sample, positives are the "true" language sample with each frame of the
"true" segment; negatives are the "false" language samples with the true frames and the true
language sample with the frames outside the segment ("vice versa"); eq. 6 contrasts each
positive with the sample's hardest negative, and the positives' hinges are averaged. How2QA:
language sample k is (E_question + E_answer_k) / 2 and the true segment is the question's
time span; moment retrieval (section 4.4): the query alone (no false language sample) and the
ground-truth moment. A sample without a negative (a segment covering the whole video, one
language sample) contributes nothing.

E_L and E_V (section 3.1, `task.align.pooling`): "attention" (default), the paper's reading:
"words' weighted sum E_L" after self-attention and "E_V the weighted sum of every frame's E_f,
where the weights are computed from a self-attention layer", i.e. a learned attention pooling
E = sum_p a_p h_p, a = softmax over the valid positions of w . h_p, of the word tokens (between
[CLS] and [SEP]) and of the frames. The pools belong to the task head (finetune parameters,
built when glob or seg > 0), w starts at 0 so that at step 0 they are the masked means of the
pretrained features, and padding gets weight exactly 0. "cls_mean": the previous reading, E_L the
[CLS] token and E_V the mean frame. The same pooling gives every language vector of the losses
(How2QA: E_question and E_ans_k); the segment level's E_f is each frame's encoding either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.distributed import gather_with_grad, local_rows
from pretrain.pooling import masked_mean

POOLINGS = ("attention", "cls_mean")


@dataclass
class AlignConfig:
    glob: float = 0.0  # lambda1 of eq. 1 (0: off)
    seg: float = 0.0  # lambda2 of eq. 1 (0: off)
    margin: float = 0.2  # alpha of eq. 2
    # E_L / E_V (section 3.1): "attention" = learned attention pooling of the word tokens / of the frames, the
    # paper's weighted sums (started uniform: the masked means); "cls_mean" = the [CLS] token / the mean frame
    pooling: str = "attention"

    @property
    def enabled(self) -> bool:
        return bool(self.glob or self.seg)

    def validate(self, segment_applicable: bool = True) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"task.align.pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.glob < 0 or self.seg < 0:
            raise ValueError(f"task.align.glob and task.align.seg must be >= 0, got {self.glob}, {self.seg}")
        if self.margin < 0:
            raise ValueError(f"task.align.margin must be >= 0, got {self.margin}")
        if self.seg and not segment_applicable:
            raise ValueError("task.align.seg must be 0 for video retrieval: a caption covers its whole video, "
                             "so there is no false segment (multi-level alignment section 4.3)")  # fmt: skip


def inner_words(q_mask: Tensor) -> Tensor:
    """(..., N) the words between [CLS] and [SEP] of each (right-padded) token sequence, mask (..., N)."""
    t = torch.arange(q_mask.shape[-1], device=q_mask.device)  # (N,)
    return (t >= 1) & (t <= q_mask.sum(-1, keepdim=True) - 2)


class AttentionPool(nn.Module):
    """E = sum_p a_p h_p, a = softmax over the valid positions of w . h_p (section 3.1's weighted sums).

    w starts at 0: uniform weights, i.e. the masked mean. Padding gets weight exactly 0 (and its
    values are never read); a row without a valid position pools to 0."""

    def __init__(self, d: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d))

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        """h (..., L, d), mask (..., L) -> (..., d)."""
        logits = h @ self.w.to(h.dtype)  # (..., L)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 / fp16: softmax in fp32
        safe = mask | ~mask.any(-1, keepdim=True)  # an empty row: any finite weights, zeroed below
        a = logits.masked_fill(~safe, float("-inf")).softmax(-1) * mask  # (..., L)
        return torch.einsum("...l,...ld->...d", a.to(h.dtype), h.masked_fill(~mask[..., None], 0))


class AlignPooling(nn.Module):
    """E_L and E_V of the alignment losses from token and frame encodings, per AlignConfig.pooling."""

    def __init__(self, d: int, pooling: str):
        super().__init__()
        self.pooling = pooling
        attention = pooling == "attention"
        self.words = AttentionPool(d) if attention else None
        self.frames = AttentionPool(d) if attention else None

    def language(self, tok: Tensor, attention_mask: Tensor) -> Tensor:
        """E_L (..., d) of token encodings tok (..., N, d) with their attention mask (..., N)."""
        if self.words is None:
            return tok[..., 0, :]  # [CLS]
        words = inner_words(attention_mask)  # (..., N)
        words[..., 0] |= ~words.any(-1)  # a sequence without words: its [CLS]
        return self.words(tok, words)

    def video(self, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """E_V (B, d) of frame encodings E_f (B, M, d) with their mask (B, M)."""
        if self.frames is None:
            return masked_mean(frames, frame_mask)
        return self.frames(frames, frame_mask)


def build_pooling(d: int, cfg: AlignConfig) -> AlignPooling | None:
    """The task head's alignment pooling: built when a loss of eq. 1 is on (its pools are finetune parameters)."""
    return AlignPooling(d, cfg.pooling) if cfg.enabled else None


def hinge(s_neg: Tensor, s_pos: Tensor, margin: float) -> Tensor:
    """Eq. 2: [alpha + S_neg - S_pos]_+, elementwise."""
    return (margin + s_neg - s_pos).clamp(min=0)


def global_alignment_loss(e_l: Tensor, e_v: Tensor, margin: float) -> Tensor:
    """Eq. 3-4 over the global batch: e_l (B, d) languages, e_v (B, d) their videos (this rank's rows)."""
    l_all, v_all = gather_with_grad(e_l), gather_with_grad(e_v)  # (G, d), (G, d)
    rows = local_rows(l_all.shape[0], e_l.shape[0])
    own = torch.arange(rows.start, rows.stop, device=e_l.device)  # (B,) each row's column in the gathered batch
    l_n, v_n = F.normalize(e_l, dim=-1), F.normalize(e_v, dim=-1)  # (B, d)
    lang_vs_videos = l_n @ F.normalize(v_all, dim=-1).T  # (B, G) S(L_i, V_j)
    video_vs_langs = v_n @ F.normalize(l_all, dim=-1).T  # (B, G) S(L_j, V_i)
    s_pos = lang_vs_videos.gather(1, own[:, None]).squeeze(1)  # (B,)
    diagonal = F.one_hot(own, l_all.shape[0]).bool()  # (B, G)
    hardest = torch.maximum(lang_vs_videos.masked_fill(diagonal, -2.0).amax(1),
                            video_vs_langs.masked_fill(diagonal, -2.0).amax(1))  # fmt: skip  # (B,)
    if l_all.shape[0] == 1:  # a batch of one has no negative
        return e_l.sum() * 0
    return hinge(hardest, s_pos, margin).mean()


def segment_alignment_loss(lang: Tensor, frames: Tensor, frame_mask: Tensor, true_frames: Tensor,
                           true_lang: Tensor, margin: float) -> Tensor:  # fmt: skip
    """Eq. 5-6 per sample, averaged over the samples that have a positive and a negative.

    lang (B, K, d): language samples ((E_L + E_ans_k) / 2; K = 1 without answers); frames (B, M, d)
    E_f; frame_mask (B, M) valid frames; true_frames (B, M) the true segment; true_lang (B,) index
    of the true language sample.
    """
    sim = torch.einsum("bkd,bmd->bkm", F.normalize(lang, dim=-1), F.normalize(frames, dim=-1))  # (B, K, M)
    is_true_lang = F.one_hot(true_lang, lang.shape[1]).bool()[:, :, None]  # (B, K, 1)
    seg = (true_frames & frame_mask)[:, None, :]  # (B, 1, M)
    outside = (~true_frames & frame_mask)[:, None, :]  # (B, 1, M)
    positive = is_true_lang & seg  # (B, K, M)
    negative = (~is_true_lang & seg) | (is_true_lang & outside)  # (B, K, M)
    hardest = sim.masked_fill(~negative, -2.0).flatten(1).amax(1)  # (B,)
    losses = hinge(hardest[:, None, None], sim, margin) * positive  # (B, K, M)
    n_pos = positive.flatten(1).sum(1)  # (B,)
    used = (n_pos > 0) & negative.flatten(1).any(1)  # (B,)
    if not used.any():
        return sim.sum() * 0
    per_sample = losses.flatten(1).sum(1) / n_pos.clamp(min=1)  # (B,)
    return per_sample[used].mean()


def frames_in_span(span: Tensor, num_frames: int) -> Tensor:
    """(B, M) bool: frames span[:, 0]..span[:, 1] (inclusive indices) of each row."""
    t = torch.arange(num_frames, device=span.device)[None]  # (1, M)
    return (t >= span[:, :1]) & (t <= span[:, 1:])  # (B, M)
