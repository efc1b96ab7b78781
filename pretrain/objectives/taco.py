"""Token-aware cascade contrastive learning (TACo, sections 3.3-3.4, eq. 3-6).

Three NCE losses over the in-batch videos, negatives gathered from every rank:
L1 (eq. 3) sentence level, mean video token vs the text's sentence vector (TACo: its [CLS];
here the encoder's own pooling, `model.sentence`, pretrain/pooling.py); L2 (eq. 4) token level, each noun
or verb sub-word vs its best-matching frame, weighted by IDF; L3 (eq. 5) on the fusion
module's [CLS] score, for a few hard negatives per text and per video chosen by the L1 + L2
scores (cascade sampling), because the fusion module cannot afford all K^2 pairs.

Similarities are dot products of the features with tau1 = tau2 = 1 (section 4.3: "For Eq. 3
and 4, we set the temperatures tau_1 and tau_2 both equal to 1"); `similarity="cosine"` with
a small tau is the CLIP-style alternative. Inference (section 3.4) sums the three scores for
every text-video pair (`taco_inference_scores`, `fusion_all_pairs`).

Distributed: features are gathered with gradient and the losses are computed for this
rank's rows only (see pretrain/distributed.py); the cascade scores need no gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from pretrain.distributed import gather_no_grad, gather_with_grad, local_rows, rank_and_world
from pretrain.objectives.passes import Passes
from pretrain.pooling import masked_mean

if TYPE_CHECKING:
    from pretrain.objectives import Batch, VideoTextModel

SIMILARITIES = ("dot", "cosine")
FusionFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]  # (e_v, frame_mask, e_t, text_mask) -> (P,)


@dataclass
class TacoConfig:
    """TACo options (see docs/objectives.md)."""

    similarity: str = "dot"  # "dot": TACo's dot products | "cosine": L2-normalised features (then use a small tau)
    tau1: float = 1.0  # L1 temperature (eq. 3); TACo section 4.3 sets 1
    tau2: float = 1.0  # L2 temperature (eq. 4); TACo section 4.3 sets 1
    lambda1: float = 1.0  # weights of eq. 6; each returned loss is already multiplied by its lambda
    lambda2: float = 0.5  # TACo's lambda_t
    lambda3: float = 1.0  # 0 skips the fusion pass entirely (the "L1 + L2" ablation)
    k_neg: int = 8  # K': hard negatives per text and per video for L3, clipped to global batch - 1
    cascade: bool = True  # False: K' random negatives instead (the "without cascade" ablation)
    seed: int = 0  # random negatives only; each rank adds its rank

    def __post_init__(self) -> None:
        if self.tau1 <= 0 or self.tau2 <= 0 or self.k_neg < 0:
            raise ValueError(f"TACo needs tau1, tau2 > 0 and k_neg >= 0, got {self}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"objectives.taco.similarity must be one of {SIMILARITIES}, got {self.similarity!r}")

    @property
    def cosine(self) -> bool:
        return self.similarity == "cosine"


PAPER = TacoConfig()  # the paper's settings: the default of the scoring functions below


@dataclass
class Tokens:
    """The tokens of interest of a batch of texts, flattened: P tokens in all."""

    emb: Tensor  # (P, d) token features y_i^p
    owner: Tensor  # (P,) long: index of the text i the token belongs to
    weight: Tensor  # (P,) IDF weight (> 0)


@dataclass
class Texts:
    """A batch of texts as TACo scores them."""

    y: Tensor  # (T, N, d) token features y_i^p
    y_bar: Tensor  # (T, d) sentence vectors y_bar_i (the model's text pooling, pretrain/pooling.py)
    mask: Tensor  # (T, N) valid tokens
    toi: Tensor  # (T, N) IDF weight of each token of interest, 0 elsewhere

    def __getitem__(self, rows: slice) -> Texts:
        return Texts(self.y[rows], self.y_bar[rows], self.mask[rows], self.toi[rows])

    def __len__(self) -> int:
        return self.y.shape[0]


def pooled(x: Tensor, frame_mask: Tensor, y_bar: Tensor, cosine: bool) -> tuple[Tensor, Tensor]:
    """(x_bar (V, d), y_bar (T, d)): the mean over valid frames and the sentence vectors, L2-normalised if cosine."""
    x_bar = masked_mean(x, frame_mask)  # (V, d)
    return (F.normalize(x_bar, dim=-1), F.normalize(y_bar, dim=-1)) if cosine else (x_bar, y_bar)


def tokens_of_interest(y: Tensor, toi_weight: Tensor, text_mask: Tensor, cosine: bool) -> Tokens:
    """The P_i of eq. 4 for every text: positions with IDF weight > 0 inside the text."""
    picked = (toi_weight > 0) & text_mask  # (T, N)
    emb = y[picked]  # (P, d)
    owner = picked.nonzero()[:, 0]  # (P,)
    return Tokens(F.normalize(emb, dim=-1) if cosine else emb, owner, toi_weight[picked])  # (P, d), (P,), (P,)


def token_video_scores(x: Tensor, frame_mask: Tensor, tokens: Tokens, cosine: bool) -> Tensor:
    """s(x_j, y_i^p) of eq. 4 for every token p and video j: max over the valid frames of x_j^f . y^p."""
    x = F.normalize(x, dim=-1) if cosine else x  # (V, M, d)
    sim = torch.einsum("pd,vmd->pvm", tokens.emb, x)  # (P, V, M)
    sim = sim.masked_fill(~frame_mask.unsqueeze(0), float("-inf"))  # (P, V, M): padding never wins the max
    return sim.amax(dim=-1)  # (P, V)


def text_token_sum(scores: Tensor, tokens: Tokens, num_texts: int) -> Tensor:
    """sum_{p in P_i} s(x_j, y_i^p) per text i (the cascade's token-level score), 0 for TOI-free texts."""
    out = scores.new_zeros(num_texts, scores.shape[1])  # (T, V)
    return out.index_add(0, tokens.owner, scores)  # (T, V)


def taco_l1_loss(y_bar: Tensor, x_bar: Tensor, targets: Tensor, tau1: float) -> Tensor:
    """TACo eq. 3: text -> video NCE of y_bar_i (K, d) against every x_bar_j (V, d), mean over texts.

    targets (K,): column of each text's own video (its global row when features are gathered).
    """
    logits = y_bar @ x_bar.T / tau1  # (K, V)
    return F.cross_entropy(logits, targets)


def taco_l2_loss(scores: Tensor, tokens: Tokens, targets: Tensor, tau2: float) -> Tensor:
    """TACo eq. 4: token -> video NCE for each token of interest, IDF-weighted.

    scores (P, V) = s(x_j, y_i^p); tokens.owner in [0, K); targets (K,) as in L1. Eq. 4 sums
    plain per-token losses; like TACo's appendix we normalise the IDF weights within each
    sentence (so every text with tokens of interest weighs the same, whatever its length),
    then average over all K texts: a text without tokens of interest adds 0, never NaN, and
    the mean of the ranks' losses is the single-process loss (no count to all-reduce).
    """
    num_texts = targets.shape[0]
    ce = F.cross_entropy(scores / tau2, targets[tokens.owner], reduction="none")  # (P,)
    weight_sum = tokens.weight.new_zeros(num_texts).index_add(0, tokens.owner, tokens.weight)  # (K,)
    share = tokens.weight / weight_sum[tokens.owner]  # (P,): sums to 1 within each text
    return (share * ce).sum() / num_texts


def hard_negatives(scores: Tensor, positives: Tensor, k: int) -> Tensor:
    """Indices (R, k) of the k highest-scoring columns of each row of scores (R, C), positive excluded."""
    rows = torch.arange(scores.shape[0], device=scores.device)  # (R,)
    scores = scores.detach().clone()  # (R, C)
    scores[rows, positives] = float("-inf")  # (R, C)
    return scores.topk(k, dim=1).indices  # (R, k)


def nce_first(logits: Tensor) -> Tensor:
    """Mean over rows of -log softmax(logits (R, 1 + K'))[0]: the positive is the first candidate (eq. 5)."""
    return F.cross_entropy(logits, logits.new_zeros(logits.shape[0], dtype=torch.long))


def cascade_pairs(neg_videos: Tensor, neg_texts: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(video index, text index), each (2K(K'+1),), of the pairs that go through the fusion module.

    First K(K'+1): each local text with its own video then its K' negative videos; then K(K'+1):
    each local video with its own text then its K' negative texts. Indices are global rows.
    """
    k1 = neg_videos.shape[1] + 1
    t2v_videos = torch.cat([targets.unsqueeze(1), neg_videos], dim=1).flatten()  # (K(K'+1),)
    v2t_texts = torch.cat([targets.unsqueeze(1), neg_texts], dim=1).flatten()  # (K(K'+1),)
    own = targets.repeat_interleave(k1)  # (K(K'+1),)
    return torch.cat([t2v_videos, own]), torch.cat([own, v2t_texts])  # (2K(K'+1),), (2K(K'+1),)


def taco_l3_loss(
    fusion_fn: FusionFn,
    x: Tensor,
    frame_mask: Tensor,
    y: Tensor,
    text_mask: Tensor,
    pairs: tuple[Tensor, Tensor],
    num_candidates: int,
) -> Tensor:
    """TACo eq. 5 over sampled candidates, both directions: mean NCE of w.z_cls, positive first.

    pairs = (video index, text index), each (2K(K'+1),), from `cascade_pairs`;
    num_candidates = K' + 1; x (V, M, d), y (T, N, d).
    """
    video_idx, text_idx = pairs  # (2K(K'+1),), (2K(K'+1),)
    logits = fusion_fn(x[video_idx], frame_mask[video_idx], y[text_idx], text_mask[text_idx])  # (2K(K'+1),)
    return nce_first(logits.view(-1, num_candidates))  # rows: K texts, then K videos


def l3_all_pairs(fusion_fn: FusionFn, x: Tensor, frame_mask: Tensor, y: Tensor, text_mask: Tensor) -> Tensor:
    """Baseline for the benchmark: eq. 5 with all K^2 pairs through the fusion module, both directions."""
    k = x.shape[0]
    ar = torch.arange(k, device=x.device)  # (K,)
    text_idx, video_idx = ar.repeat_interleave(k), ar.repeat(k)  # (K*K,), (K*K,)
    logits = fusion_fn(x[video_idx], frame_mask[video_idx], y[text_idx], text_mask[text_idx]).view(k, k)  # (T, V)
    return 0.5 * (F.cross_entropy(logits, ar) + F.cross_entropy(logits.T, ar))


def taco_pair_scores(x: Tensor, frame_mask: Tensor, texts: Texts, cfg: TacoConfig = PAPER) -> Tensor:
    """score(v_j, t_i) = x_bar_j . y_bar_i / tau1 + sum_{p in P_i} s(x_j, y_i^p) / tau2 for every text i, video j.

    The cascade's alignment score (TACo section 3.3: the sum of eq. 3's and eq. 4's similarities;
    with the paper's tau1 = tau2 = 1 the temperatures drop out, and otherwise they put both terms
    on the scale the losses train them at). Texts without tokens of interest get only the first term.
    """
    x_bar, y_bar = pooled(x, frame_mask, texts.y_bar, cfg.cosine)  # (V, d), (T, d)
    tokens = tokens_of_interest(texts.y, texts.toi, texts.mask, cfg.cosine)  # P tokens
    token_sum = text_token_sum(token_video_scores(x, frame_mask, tokens, cfg.cosine), tokens, len(texts))  # (T, V)
    return y_bar @ x_bar.T / cfg.tau1 + token_sum / cfg.tau2  # (T, V)


def fusion_all_pairs(fusion_fn: FusionFn, x: Tensor, frame_mask: Tensor, y: Tensor, text_mask: Tensor,
                     chunk: int = 256) -> Tensor:  # fmt: skip
    """The fusion score w . z_cls (eq. 5) of every text i and video j, (T, V), `chunk` pairs per call.

    Memory is bounded by the chunk (its (chunk, M + N, d) activations), not by T x V.
    """
    t, v = y.shape[0], x.shape[0]
    text_idx = torch.arange(t, device=y.device).repeat_interleave(v)  # (T*V,)
    video_idx = torch.arange(v, device=x.device).repeat(t)  # (T*V,)
    scores = [fusion_fn(x[vi], frame_mask[vi], y[ti], text_mask[ti])
              for ti, vi in zip(text_idx.split(chunk), video_idx.split(chunk))]  # fmt: skip
    return torch.cat(scores).view(t, v)  # (T, V)


def taco_inference_scores(
    x: Tensor, frame_mask: Tensor, texts: Texts, fusion_scores: Tensor, cfg: TacoConfig = PAPER
) -> Tensor:
    """Retrieval scores (T, V): the sum of the three scoring functions (TACo section 3.4, "inference").

    fusion_scores (T, V): w . z_cls of every text-video pair from the fusion module (`fusion_all_pairs`).
    """
    return taco_pair_scores(x, frame_mask, texts, cfg) + fusion_scores  # (T, V)


@torch.no_grad()
def choose_negatives(
    x: Tensor,
    frame_mask: Tensor,
    texts: Texts,
    rows: slice,
    k: int,
    cfg: TacoConfig,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """(negative videos (K, k) per local text, negative texts (K, k) per local video), as global rows.

    Cascade: the k best-scoring negatives by `taco_pair_scores`, for local texts against all
    videos and for local videos against all texts (both computed here, so no extra collective).
    Otherwise k uniformly random negatives.
    """
    targets = torch.arange(rows.start, rows.stop, device=x.device)  # (K,)
    if cfg.cascade:
        text_rows = taco_pair_scores(x, frame_mask, texts[rows], cfg)  # (K, V)
        video_rows = taco_pair_scores(x[rows], frame_mask[rows], texts, cfg).T  # (K, T)
    else:
        text_rows = torch.rand(len(targets), x.shape[0], generator=generator, device=x.device)  # (K, V)
        video_rows = torch.rand(len(targets), len(texts), generator=generator, device=x.device)  # (K, T)
    return hard_negatives(text_rows, targets, k), hard_negatives(video_rows, targets, k)  # (K, k), (K, k)


def taco_losses(
    x: Tensor,
    frame_mask: Tensor,
    texts: Texts,
    rows: slice,
    fusion_fn: FusionFn,
    cfg: TacoConfig,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """TACo eq. 3-6 for the texts and videos of `rows`, against all K_g = x.shape[0] pairs given.

    x (K_g, M, d) video tokens and frame_mask (K_g, M), texts (K_g texts) as gathered from all
    ranks; rows: this rank's pairs. Returns lambda-weighted
    taco_l1_loss, taco_l2_loss, taco_l3_loss; their sum is eq. 6 for this rank's rows.
    """
    targets = torch.arange(rows.start, rows.stop, device=x.device)  # (K,)
    local = texts[rows]
    x_bar, y_bar = pooled(x, frame_mask, local.y_bar, cfg.cosine)  # (K_g, d), (K, d)
    tokens = tokens_of_interest(local.y, local.toi, local.mask, cfg.cosine)  # P local tokens
    token_scores = token_video_scores(x, frame_mask, tokens, cfg.cosine)  # (P, K_g)
    out = {
        "taco_l1_loss": cfg.lambda1 * taco_l1_loss(y_bar, x_bar, targets, cfg.tau1),
        "taco_l2_loss": cfg.lambda2 * taco_l2_loss(token_scores, tokens, targets, cfg.tau2),
    }
    if cfg.lambda3 == 0:
        return {**out, "taco_l3_loss": x.new_zeros(())}
    k = min(cfg.k_neg, x.shape[0] - 1)
    neg_videos, neg_texts = choose_negatives(x, frame_mask, texts, rows, k, cfg, generator)
    pairs = cascade_pairs(neg_videos, neg_texts, targets)  # 2K(k+1) pairs
    out["taco_l3_loss"] = cfg.lambda3 * taco_l3_loss(fusion_fn, x, frame_mask, texts.y, texts.mask, pairs, k + 1)
    return out


class Taco:
    """TACo objective with negatives gathered from all ranks (local loss).

    Returns {"taco_l1_loss", "taco_l2_loss", "taco_l3_loss"}, each multiplied by its lambda.
    """

    name = "taco"

    def __init__(self, cfg: TacoConfig):
        self.cfg = cfg
        self.generator: torch.Generator | None = None  # random negatives, made on first use on the batch's device

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.cfg.cascade:
            return None
        if self.generator is None:
            self.generator = torch.Generator(device=device).manual_seed(self.cfg.seed + rank_and_world()[0])
        return self.generator

    def __call__(self, model: VideoTextModel, batch: Batch, passes: Passes | None = None) -> dict[str, Tensor]:
        passes = passes or Passes(model, batch)
        return self.from_embeddings(model, batch, passes.video(), passes.text())  # x (B, M, d), y (B, N, d)

    def from_embeddings(self, model: VideoTextModel, batch: Batch, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """The losses from this rank's video tokens x (B, M, d) and text tokens y (B, N, d)."""
        frame_mask, text_mask = batch["frame_mask"], batch["attention_mask"]  # (B, M), (B, N)
        x_all, y_all = gather_with_grad(x), gather_with_grad(y)  # (K_g, M, d), (K_g, N, d)
        frame_mask_all = gather_no_grad(frame_mask, pad_value=False)  # (K_g, M)
        text_mask_all = gather_no_grad(text_mask, pad_value=False)  # (K_g, N)
        toi_all = gather_no_grad(batch["toi_weight"].to(y.dtype))  # (K_g, N)
        texts = Texts(y_all, model.sentence(y_all, text_mask_all), text_mask_all, toi_all)
        rows = local_rows(x_all.shape[0], x.shape[0])
        fusion, gen = model.fusion_score, self._generator(x.device)
        return taco_losses(x_all, frame_mask_all, texts, rows, fusion, self.cfg, gen)
