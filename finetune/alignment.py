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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pretrain.distributed import gather_with_grad, local_rows


@dataclass
class AlignConfig:
    glob: float = 0.0  # lambda1 of eq. 1 (0: off)
    seg: float = 0.0  # lambda2 of eq. 1 (0: off)
    margin: float = 0.2  # alpha of eq. 2

    def validate(self, segment_applicable: bool = True) -> None:
        if self.glob < 0 or self.seg < 0:
            raise ValueError(f"task.align.glob and task.align.seg must be >= 0, got {self.glob}, {self.seg}")
        if self.margin < 0:
            raise ValueError(f"task.align.margin must be >= 0, got {self.margin}")
        if self.seg and not segment_applicable:
            raise ValueError("task.align.seg must be 0 for video retrieval: a caption covers its whole video, "
                             "so there is no false segment (multi-level alignment section 4.3)")  # fmt: skip


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
