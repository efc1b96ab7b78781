"""The pretraining objectives against naive implementations written from the papers' equations.

Every reference below loops over examples, tokens and frames in plain Python on unpadded,
per-sample tensors (no masks, no vectorisation) and follows FEEL (eq. 4-16) and TACo (eq. 3-5,
cascade sampling) literally. The vectorised losses run on padded batches in float64 and must
agree to rounding. The objective classes run end to end on `TinyModel`, a stand-in for
pretrain/model.py implementing the same API with tiny layers; their references call that model
one sample at a time on the sample's valid frames and tokens, so they also check that batching
and padding change nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields

import pytest
import torch
from torch import Tensor, nn

from pretrain.objectives import (
    OBJECTIVES,
    Combiner,
    ObjectivesConfig,
    build_objective,
)
from pretrain.objectives.gmr import GMR, Converted, GMRConfig, convert, gmr_loss
from pretrain.objectives.mfm_nce import MFMNCE, MFMNCEConfig, mfm_nce_loss
from pretrain.objectives.mlm import MLM, MLMConfig, mlm_loss
from pretrain.objectives.self_contrast import (
    SelfContrast,
    SelfContrastConfig,
    convert_twice,
    self_contrast_loss,
    triplet_loss,
)
from pretrain.objectives.taco import (
    Taco,
    TacoConfig,
    Texts,
    choose_negatives,
    fusion_all_pairs,
    l3_all_pairs,
    taco_inference_scores,
    taco_losses,
    taco_pair_scores,
)
from pretrain.pooling import masked_mean, pool_text

DTYPE = torch.float64
VOCAB, DV, D = 23, 5, 8
CLS, MASK = 1, 2


# --------------------------------------------------------------------------- stand-ins


class TinyModel(nn.Module):
    """Stand-in for pretrain/model.py: the objectives' model API with tiny, padding-invariant layers."""

    def __init__(self, d: int = D, dv: int = DV, vocab: int = VOCAB, max_len: int = 16, seed: int = 0,
                 pooling: str = "mean"):  # fmt: skip
        super().__init__()
        self.pooling = pooling
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.word, self.text_pos, self.text_norm = nn.Embedding(vocab, d), nn.Embedding(max_len, d), nn.LayerNorm(d)
            self.frame_proj, self.frame_pos = nn.Linear(dv, d), nn.Embedding(max_len, d)
            self.frame_norm, self.modality = nn.LayerNorm(d), nn.Embedding(2, d)
            self.fuse, self.v2t, self.t2v = _layer(d), _layer(d), _layer(d)
            self.mfm, self.score = nn.Linear(d, d), nn.Linear(d, 1)
            self.mask_vec, self.regress = nn.Parameter(torch.randn(dv)), nn.Linear(d, dv)  # HERO's MFM pieces
        self.to(DTYPE)

    def embed_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        pos = torch.arange(input_ids.shape[1])  # (N,)
        return self.text_norm(self.word(input_ids) + self.text_pos(pos))  # (B, N, d)

    def sentence(self, e_t: Tensor, text_mask: Tensor) -> Tensor:
        return pool_text(e_t, text_mask, self.pooling)  # (B, d)

    def embed_video(self, frames: Tensor, frame_mask: Tensor) -> Tensor:
        pos = torch.arange(frames.shape[1])  # (M,)
        return self.frame_norm(self.frame_proj(frames) + self.frame_pos(pos))  # (B, M, d)

    def cross(self, e_v: Tensor, frame_mask: Tensor, e_t: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.cat([e_v + self.modality.weight[0], e_t + self.modality.weight[1]], dim=1)  # (B, M+N, d)
        h = self.fuse(h, src_key_padding_mask=~torch.cat([frame_mask, text_mask], dim=1))  # (B, M+N, d)
        return h[:, : e_v.shape[1]], h[:, e_v.shape[1] :]  # (B, M, d), (B, N, d)

    def mcb_v2t(self, o_v: Tensor, frame_mask: Tensor) -> Tensor:
        return self.v2t(o_v, src_key_padding_mask=~frame_mask)  # (B, M, d)

    def mcb_t2v(self, o_t: Tensor, text_mask: Tensor) -> Tensor:
        return self.t2v(o_t, src_key_padding_mask=~text_mask)  # (B, N, d)

    def mlm_logits(self, o_t: Tensor) -> Tensor:
        return o_t @ self.word.weight.T  # (B, N, V)

    def mfm_head(self, o_v: Tensor) -> Tensor:
        return self.mfm(o_v)  # (B, M, d)

    def mask_frames(self, frames: Tensor, mfm_mask: Tensor, learned: bool) -> Tensor:
        masked = mfm_mask[..., None]  # (B, M, 1)
        return frames.masked_fill(masked, 0.0) + (masked * self.mask_vec if learned else 0.0)  # (B, M, Dv)

    def mfm_regress(self, o_v: Tensor) -> Tensor:
        return self.regress(self.mfm(o_v))  # (B, M, Dv)

    def fusion_score(self, e_v: Tensor, frame_mask: Tensor, e_t: Tensor, text_mask: Tensor) -> Tensor:
        _, o_t = self.cross(e_v, frame_mask, e_t, text_mask)  # (P, N, d)
        return self.score(o_t[:, 0]).squeeze(-1)  # (P,)


def _layer(d: int) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True)


def make_batch(
    batch: int = 4,
    n: int = 7,
    m: int = 6,
    seed: int = 0,
    frame_lengths: list[int] | None = None,
    text_lengths: list[int] | None = None,
    toi_free: tuple[int, ...] = (1,),
) -> dict[str, Tensor]:
    """A loader-like batch, padded at the end, with junk in the padding so any leak shows."""
    g = torch.Generator().manual_seed(seed)
    t_len = torch.tensor(text_lengths) if text_lengths else torch.randint(3, n + 1, (batch,), generator=g)  # (B,)
    f_len = torch.tensor(frame_lengths) if frame_lengths else torch.randint(1, m + 1, (batch,), generator=g)  # (B,)
    text_mask = torch.arange(n) < t_len[:, None]  # (B, N)
    frame_mask = torch.arange(m) < f_len[:, None]  # (B, M)
    ids = torch.randint(3, VOCAB, (batch, n), generator=g).masked_fill(~text_mask, 0)  # (B, N)
    ids[:, 0] = CLS
    inner = text_mask & (torch.arange(n) > 0)  # (B, N): words, not [CLS]
    predict = _at_least_one(inner & (torch.rand(batch, n, generator=g) < 0.3), inner)  # (B, N)
    idf = torch.rand(batch, n, generator=g, dtype=DTYPE) * 2.5 + 0.5  # (B, N)
    toi = idf * (inner & (torch.rand(batch, n, generator=g) < 0.5))  # (B, N): about half the words
    toi[list(toi_free)] = 0.0
    frames = torch.randn(batch, m, DV, generator=g, dtype=DTYPE)  # (B, M, Dv)
    frames = torch.where(frame_mask[..., None], frames, 100 * torch.randn(batch, m, DV, generator=g, dtype=DTYPE))
    mfm = _at_least_one(frame_mask & (torch.rand(batch, m, generator=g) < 0.3), frame_mask)  # (B, M)
    return {
        "input_ids": ids, "attention_mask": text_mask, "mlm_input_ids": ids.masked_fill(predict, MASK),
        "mlm_labels": ids.masked_fill(~predict, -100), "toi_weight": toi, "frames": frames,
        "frame_mask": frame_mask, "mfm_mask": mfm,
    }  # fmt: skip


def _at_least_one(picked: Tensor, allowed: Tensor) -> Tensor:
    """`picked`, plus the first allowed position in rows where nothing was picked."""
    first = allowed & (allowed.cumsum(1) == 1)  # (B, L)
    return torch.where(picked.any(1, keepdim=True), picked, first)


def rows_of(x: Tensor, mask: Tensor) -> list[Tensor]:
    """The valid positions of each sample: padded (B, L, ...) -> list of (L_b, ...)."""
    return [x[b][mask[b]] for b in range(x.shape[0])]


def dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum()


def nce(logits: list[Tensor], positive: int) -> Tensor:
    """-log(exp(l_pos) / sum exp(l)) from a Python list of scalar logits."""
    return -logits[positive] + torch.stack(logits).exp().sum().log()


def mean(values: list[Tensor]) -> Tensor:
    return torch.stack(values).sum() / len(values)


# --------------------------------------------------------------------------- naive references


def naive_mlm(logits: list[Tensor], labels: list[Tensor]) -> Tensor:
    """FEEL eq. 4: mean over every predicted token of the batch of -log P(token)."""
    losses = []
    for lg, lb in zip(logits, labels):
        for pos in range(len(lb)):
            if lb[pos] != -100:
                losses.append(-lg[pos][lb[pos]] + lg[pos].exp().sum().log())
    return mean(losses)


def naive_mfm_nce(preds: list[Tensor], targets: list[Tensor], masked: list[Tensor], tau: float) -> Tensor:
    """FEEL eq. 5-6 / HERO: masked frame vs own original, other masked originals, unmasked outputs."""
    qs = [(b, f) for b in range(len(preds)) for f in range(len(preds[b])) if masked[b][f]]
    us = [(b, f) for b in range(len(preds)) for f in range(len(preds[b])) if not masked[b][f]]
    losses = []
    for b, f in qs:
        pos = dot(preds[b][f], targets[b][f]) / tau
        negs = [dot(preds[b][f], targets[c][g]) / tau for c, g in qs if (c, g) != (b, f)]
        negs += [dot(preds[b][f], preds[c][g]) / tau for c, g in us]
        losses.append(nce([pos, *negs], 0))
    return mean(losses)


def naive_mean(x: Tensor) -> Tensor:
    return sum(x[i] for i in range(len(x))) / len(x)


def naive_mse(a: list[Tensor], b: list[Tensor]) -> Tensor:
    total = torch.zeros((), dtype=DTYPE)
    for i in range(len(a)):
        for k in range(len(a[i])):
            total = total + (a[i][k] - b[i][k]) ** 2
    return total / (len(a) * len(a[0]))


def naive_gmr(e_v: list[Tensor], e_t: list[Tensor], e_v1: list[Tensor], e_t1: list[Tensor]) -> Tensor:
    """FEEL eq. 7-9 on unpadded sequences."""
    t2v = naive_mse([naive_mean(x) for x in e_v], [naive_mean(x) for x in e_v1])
    v2t = naive_mse([naive_mean(x) for x in e_t], [naive_mean(x) for x in e_t1])
    return t2v + v2t


def naive_conversion(model: TinyModel, s: dict[str, Tensor]) -> dict[str, Tensor]:
    """FEEL eq. 1-3 for one unpadded sample, from the model's primitives (not from `convert`):
    o_v, o_t = T_cross(e_v, e_t); e'_t = MCB_V2T(o_v); e'_v = MCB_T2V(o_t). Tensors are (1, L, d)."""
    ones_v, ones_t = s["frame_mask"], s["attention_mask"]  # all True: no padding
    e_v = model.embed_video(s["frames"], ones_v)
    e_t = model.embed_text(s["input_ids"], ones_t)
    h = torch.cat([e_v + model.modality.weight[0], e_t + model.modality.weight[1]], dim=1)  # eq. 1, by hand
    h = model.fuse(h)  # T_cross: every position valid
    o_v, o_t = h[:, : e_v.shape[1]], h[:, e_v.shape[1] :]
    return {"e_v": e_v, "e_t": e_t, "o_v": o_v, "o_t": o_t,
            "e_t1": model.v2t(o_v),  # eq. 2: MCB_V2T of the fused VIDEO
            "e_v1": model.t2v(o_t)}  # eq. 3: MCB_T2V of the fused TEXT  # fmt: skip


def naive_triplet(
    anchor: list[Tensor], positive: list[Tensor], negative: list[Tensor], margin: float, relative: bool = False
) -> Tensor:
    """max(0, |a-p| - |a-n| + margin), averaged over the batch; relative: margin x the batch's mean |a-n|."""
    dist = lambda u, v: math.sqrt(sum(float(u[k] - v[k]) ** 2 for k in range(len(u))))  # noqa: E731
    d_ap = [dist(a.detach(), p.detach()) for a, p in zip(anchor, positive)]
    d_an = [dist(a.detach(), n.detach()) for a, n in zip(anchor, negative)]
    m = margin * sum(d_an) / len(d_an) if relative else margin
    losses = [max(0.0, ap - an + m) for ap, an in zip(d_ap, d_an)]
    return torch.tensor(sum(losses) / len(losses), dtype=DTYPE)


def naive_taco(
    xs: list[Tensor],
    ys: list[Tensor],
    tois: list[Tensor],
    fusion: Callable[[Tensor, Tensor], Tensor],
    cfg: TacoConfig,
    rows: list[int] | None = None,
    pooling: str = "mean",
) -> dict[str, Tensor]:
    """TACo eq. 3, 4 (IDF weights normalised per sentence, mean over texts), 5 with cascade negatives.

    The sentence vector y_bar_i is the mean of the text's tokens (pooling "mean") or its [CLS] ("cls").
    xs[j] (M_j, d) video tokens, ys[i] (N_i, d) text tokens ([CLS] first), tois[i] (N_i,) weights,
    fusion(x_j, y_i) the fusion score of one pair; rows: the texts/videos whose losses count.
    """
    k_all = len(xs)
    rows = list(range(k_all)) if rows is None else rows

    def nrm(v: Tensor) -> Tensor:
        return v / v.norm() if cfg.similarity == "cosine" else v

    def x_bar(j: int) -> Tensor:
        return nrm(naive_mean(xs[j]))

    def y_bar(i: int) -> Tensor:
        return nrm(naive_mean(ys[i]) if pooling == "mean" else ys[i][0])

    def s(j: int, i: int, p: int) -> Tensor:  # max over frames of x_j^f . y_i^p
        return max((dot(nrm(xs[j][f]), nrm(ys[i][p])) for f in range(len(xs[j]))), key=lambda v: v.item())

    def toi(i: int) -> list[int]:
        return [p for p in range(len(tois[i])) if tois[i][p] > 0]

    def score(j: int, i: int) -> float:  # cascade alignment score of (v_j, t_i): eq. 3's + eq. 4's similarities
        with torch.no_grad():
            return float(dot(x_bar(j), y_bar(i)) / cfg.tau1 + sum(float(s(j, i, p)) for p in toi(i)) / cfg.tau2)

    l1 = mean([nce([dot(y_bar(i), x_bar(j)) / cfg.tau1 for j in range(k_all)], i) for i in rows])
    l2 = torch.zeros((), dtype=DTYPE)
    for i in rows:
        weight_sum = sum(float(tois[i][p]) for p in toi(i))
        for p in toi(i):
            l2 = l2 + tois[i][p] / weight_sum * nce([s(j, i, p) / cfg.tau2 for j in range(k_all)], i)
    k = min(cfg.k_neg, k_all - 1)
    l3_rows = []
    for i in rows:  # each text: own video + top-k negative videos
        negs = sorted((j for j in range(k_all) if j != i), key=lambda j: -score(j, i))[:k]
        l3_rows.append(nce([fusion(xs[j], ys[i]) for j in [i, *negs]], 0))
    for j in rows:  # each video: own text + top-k negative texts
        negs = sorted((i for i in range(k_all) if i != j), key=lambda i: -score(j, i))[:k]
        l3_rows.append(nce([fusion(xs[j], ys[i]) for i in [j, *negs]], 0))
    return {
        "taco_l1_loss": cfg.lambda1 * l1,
        "taco_l2_loss": cfg.lambda2 * l2 / len(rows),
        "taco_l3_loss": cfg.lambda3 * mean(l3_rows),
    }


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture()
def model(device: torch.device) -> TinyModel:
    return TinyModel().to(device)


@pytest.fixture()
def batch(device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in make_batch().items()}


def toy_fusion_fn(seed: int = 3) -> tuple[Callable, Callable]:
    """A padding-invariant fusion score for the pure TACo tests: batched version and one-pair version."""
    a = torch.randn(D, D, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)

    def batched(e_v: Tensor, frame_mask: Tensor, e_t: Tensor, text_mask: Tensor) -> Tensor:
        return (torch.tanh(masked_mean(e_v, frame_mask) @ a) * masked_mean(e_t, text_mask)).sum(-1)  # (P,)

    def one(x: Tensor, y: Tensor) -> Tensor:
        return dot(torch.tanh(naive_mean(x) @ a), naive_mean(y))

    return batched, one


def random_features(batch: dict[str, Tensor], seed: int = 5) -> tuple[Tensor, Tensor]:
    """Random video (B, M, d) and text (B, N, d) features for the pure-function tests."""
    g = torch.Generator().manual_seed(seed)
    b, m = batch["frame_mask"].shape
    x = torch.randn(b, m, D, generator=g, dtype=DTYPE)  # (B, M, d)
    y = torch.randn(b, batch["attention_mask"].shape[1], D, generator=g, dtype=DTYPE)  # (B, N, d)
    return x, y


def texts_of(batch: dict[str, Tensor], y: Tensor, pooling: str = "mean") -> Texts:
    """The batch's texts with their sentence vectors pooled by `pool_text` (checked against a loop below)."""
    tm = batch["attention_mask"]
    return Texts(y, pool_text(y, tm, pooling), tm, batch["toi_weight"])


def pure_taco(batch: dict[str, Tensor], x: Tensor, y: Tensor, cfg: TacoConfig, rows: slice | None = None,
              pooling: str = "mean") -> dict:  # fmt: skip
    fusion, _ = toy_fusion_fn()
    rows = rows or slice(0, x.shape[0])
    return taco_losses(x, batch["frame_mask"], texts_of(batch, y, pooling), rows, fusion, cfg)


def naive_pure_taco(batch: dict[str, Tensor], x: Tensor, y: Tensor, cfg: TacoConfig, rows: list[int] | None = None,
                    pooling: str = "mean"):  # fmt: skip
    _, fusion = toy_fusion_fn()
    xs, ys = rows_of(x, batch["frame_mask"]), rows_of(y, batch["attention_mask"])
    return naive_taco(xs, ys, rows_of(batch["toi_weight"], batch["attention_mask"]), fusion, cfg, rows, pooling)


def per_sample(batch: dict[str, Tensor], b: int) -> dict[str, Tensor]:
    """Sample b alone, cut to its valid frames and tokens (no padding at all)."""
    fm, tm = batch["frame_mask"][b], batch["attention_mask"][b]  # (M,), (N,)
    out = {k: v[b : b + 1][:, fm] for k, v in batch.items() if k in ("frames", "frame_mask", "mfm_mask")}
    out.update({k: v[b : b + 1][:, tm] for k, v in batch.items() if k not in out})
    return out


# --------------------------------------------------------------------------- MLM


def test_mlm_loss_matches_eq4(batch):
    logits = torch.randn(4, 7, VOCAB, dtype=DTYPE)  # (B, N, V)
    labels = batch["mlm_labels"]  # (B, N)
    got = mlm_loss(logits.flatten(0, 1), labels.flatten())
    torch.testing.assert_close(got, naive_mlm(list(logits), list(labels)))


def test_mlm_loss_without_predicted_tokens_is_zero():
    got = mlm_loss(torch.randn(5, VOCAB, dtype=DTYPE), torch.full((5,), -100))
    assert got.item() == 0.0


def test_mlm_objective_end_to_end(model, batch):
    got = MLM(MLMConfig())(model, batch)["mlm_loss"]
    logits, labels = [], []
    for b in range(4):
        s = per_sample(batch, b)
        e_t = model.embed_text(s["mlm_input_ids"], s["attention_mask"])
        e_v = model.embed_video(s["frames"], s["frame_mask"])
        _, o_t = model.cross(e_v, s["frame_mask"], e_t, s["attention_mask"])
        logits.append(model.mlm_logits(o_t)[0])
        labels.append(s["mlm_labels"][0])
    torch.testing.assert_close(got, naive_mlm(logits, labels))
    got.backward()
    assert model.word.weight.grad is not None and model.frame_proj.weight.grad.abs().sum() > 0  # video conditions MLM


# --------------------------------------------------------------------------- MFM-NCE


def mfm_inputs(batch: dict[str, Tensor], seed: int = 2) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(*batch["frame_mask"].shape, D, generator=g, dtype=DTYPE)  # (B, M, d)
    target = torch.randn(*batch["frame_mask"].shape, D, generator=g, dtype=DTYPE)  # (B, M, d)
    return pred, target


@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_mfm_nce_matches_eq5_6(batch, tau):
    pred, target = mfm_inputs(batch)
    fm, mfm = batch["frame_mask"], batch["mfm_mask"]
    got = mfm_nce_loss(pred, target, mfm, fm, tau)
    want = naive_mfm_nce(rows_of(pred, fm), rows_of(target, fm), rows_of(mfm, fm), tau)
    torch.testing.assert_close(got, want)


def test_mfm_nce_ignores_padded_frames(batch):
    pred, target = mfm_inputs(batch)
    fm, mfm = batch["frame_mask"], batch["mfm_mask"]
    before = mfm_nce_loss(pred, target, mfm, fm)
    junk = ~fm[..., None]  # (B, M, 1)
    after = mfm_nce_loss(pred + 50 * junk, target - 70 * junk, mfm | ~fm, fm)  # padding: new values, even "masked"
    torch.testing.assert_close(before, after)


def test_mfm_nce_one_masked_frame_per_sample():
    batch = make_batch(frame_lengths=[1, 4, 6, 2])
    fm = batch["frame_mask"]
    mfm = fm & (fm.cumsum(1) == 1)  # exactly the first frame of each sample; the 1-frame sample is all masked
    pred, target = mfm_inputs(batch)
    got = mfm_nce_loss(pred, target, mfm, fm)
    torch.testing.assert_close(got, naive_mfm_nce(rows_of(pred, fm), rows_of(target, fm), rows_of(mfm, fm), 1.0))


def test_mfm_nce_gradcheck():
    batch = make_batch(batch=2, m=3, frame_lengths=[2, 3])
    pred, target = (t.requires_grad_() for t in mfm_inputs(batch))
    fn = lambda p, t: mfm_nce_loss(p, t, batch["mfm_mask"], batch["frame_mask"], 0.7)
    assert torch.autograd.gradcheck(fn, (pred, target))


def naive_hero_mfm_nce(model: TinyModel, batch: dict[str, Tensor]) -> Tensor:
    """HERO's forward_mfm + mfm_nce (model/model.py) on an UNPADDED batch, one frame at a time.

    Input: masked frames zeroed + mask_embedding(1) (the mask vector), the others + mask_embedding(0)
    = 0. Prediction: feat_regress(o_v) at every frame. Targets: the raw input features of the masked
    frames. Logits of the i-th masked frame: [pred_i . target_j for every masked j] + [pred_i . pred_u
    for every unmasked u], / nce_temp (1.0); cross-entropy with target index i; mean over masked frames.
    """
    frames, mfm = batch["frames"], batch["mfm_mask"]  # (B, M, Dv), (B, M)
    preds, targets, negs = [], [], []
    for b in range(frames.shape[0]):
        m = len(mfm[b])
        inp = torch.stack([frames[b, f] * 0 + model.mask_vec if mfm[b, f] else frames[b, f] for f in range(m)])
        all_v, all_t = torch.ones(1, m, dtype=torch.bool), torch.ones(1, batch["input_ids"].shape[1], dtype=torch.bool)
        e_v = model.embed_video(inp[None], all_v)
        e_t = model.embed_text(batch["input_ids"][b : b + 1], all_t)
        o_v, _ = model.cross(e_v, all_v, e_t, all_t)
        for f in range(len(inp)):
            p = model.mfm_regress(o_v[0, f])  # (Dv,)
            if mfm[b, f]:
                preds.append(p)
                targets.append(frames[b, f])
            else:
                negs.append(p)
    losses = []
    for i, p in enumerate(preds):
        logits = [dot(p, t) / 1.0 for t in targets] + [dot(p, u) / 1.0 for u in negs]
        losses.append(nce(logits, i))
    return mean(losses)


def test_mfm_nce_default_is_hero_on_unpadded_inputs(model):
    batch = make_batch(frame_lengths=[6] * 4, text_lengths=[7] * 4)
    assert batch["frame_mask"].all() and batch["attention_mask"].all()  # nothing padded: HERO's loss is defined
    got = MFMNCE(MFMNCEConfig())(model, batch)["mfm_nce_loss"]
    torch.testing.assert_close(got, naive_hero_mfm_nce(model, batch))


def test_mfm_nce_raw_target_end_to_end(model, batch):
    got = MFMNCE(MFMNCEConfig())(model, batch)["mfm_nce_loss"]
    preds, targets, masked = [], [], []
    for b in range(4):
        s = per_sample(batch, b)
        m = s["mfm_mask"][0]  # (M_b,)
        inp = torch.stack([model.mask_vec if m[f] else s["frames"][0, f] for f in range(len(m))])[None]
        e_v = model.embed_video(inp, s["frame_mask"])
        e_t = model.embed_text(s["input_ids"], s["attention_mask"])
        o_v, _ = model.cross(e_v, s["frame_mask"], e_t, s["attention_mask"])
        preds.append(model.mfm_regress(o_v)[0])
        targets.append(s["frames"][0])
        masked.append(m)
    torch.testing.assert_close(got, naive_mfm_nce(preds, targets, masked, 1.0))


@pytest.mark.parametrize("learned", [True, False])
def test_mfm_nce_mask_vector_only_on_masked_frames(model, batch, monkeypatch, learned):
    seen, embed = [], model.embed_video
    monkeypatch.setattr(model, "embed_video", lambda frames, fm: (seen.append(frames), embed(frames, fm))[1])
    MFMNCE(MFMNCEConfig(mask_embedding=learned))(model, batch)
    x, mfm = seen[0], batch["mfm_mask"]  # the masked input (B, M, Dv)
    assert torch.equal(x[~mfm], batch["frames"][~mfm])  # unmasked and padded frames unchanged, junk included
    want = model.mask_vec.expand_as(x[mfm]) if learned else torch.zeros_like(x[mfm])
    assert torch.equal(x[mfm], want)


def test_mfm_nce_raw_target_takes_no_gradient(model, batch):
    frames = batch["frames"].clone().requires_grad_()
    mfm, fm = batch["mfm_mask"], batch["frame_mask"]
    MFMNCE(MFMNCEConfig())(model, {**batch, "frames": frames})["mfm_nce_loss"].backward()
    assert torch.all(frames.grad[mfm] == 0)  # a masked frame reaches the loss only as a target: fixed
    assert frames.grad[fm & ~mfm].abs().sum() > 0  # the unmasked frames do, as inputs
    assert model.regress.weight.grad.abs().sum() > 0 and model.mask_vec.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    frames.grad = None
    MFMNCE(MFMNCEConfig(target="embedded"))(model, {**batch, "frames": frames})["mfm_nce_loss"].backward()
    assert frames.grad[mfm].abs().sum() > 0  # the embedded target (not detached) does take gradient
    assert model.regress.weight.grad is None  # and the Dv head is not used


def test_mfm_nce_config_rejects_unknown_values():
    with pytest.raises(ValueError, match=r"target must be one of \('raw', 'embedded'\)"):
        MFMNCEConfig(target="features")
    with pytest.raises(ValueError, match=r"mask_embedding must be one of \(True, False\)"):
        MFMNCEConfig(mask_embedding="yes")


def test_mfm_nce_objective_end_to_end(model, batch):
    got = MFMNCE(MFMNCEConfig(target="embedded", mask_embedding=False))(model, batch)["mfm_nce_loss"]
    preds, targets, masked = [], [], []
    for b in range(4):
        s = per_sample(batch, b)
        zeroed = s["frames"] * ~s["mfm_mask"][..., None]
        e_v = model.embed_video(zeroed, s["frame_mask"])
        e_t = model.embed_text(s["input_ids"], s["attention_mask"])
        o_v, _ = model.cross(e_v, s["frame_mask"], e_t, s["attention_mask"])
        preds.append(model.mfm_head(o_v)[0])
        targets.append(model.embed_video(s["frames"], s["frame_mask"])[0])
        masked.append(s["mfm_mask"][0])
    torch.testing.assert_close(got, naive_mfm_nce(preds, targets, masked, 1.0))


# --------------------------------------------------------------------------- global modality reconstruction


def test_masked_mean_ignores_padding(batch):
    x, _ = random_features(batch)
    fm = batch["frame_mask"]
    want = torch.stack([naive_mean(r) for r in rows_of(x, fm)])
    torch.testing.assert_close(masked_mean(x, fm), want)
    torch.testing.assert_close(masked_mean(x + 9 * ~fm[..., None], fm), want)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pool_text_is_the_mean_of_the_valid_tokens_or_the_cls(batch, pooling):
    _, y = random_features(batch)
    tm = batch["attention_mask"]
    want = torch.stack([naive_mean(r) if pooling == "mean" else r[0] for r in rows_of(y, tm)])
    torch.testing.assert_close(pool_text(y, tm, pooling), want)
    torch.testing.assert_close(pool_text(y + 5 * ~tm[..., None], tm, pooling), want)  # padding never counts
    with pytest.raises(ValueError, match="pooling"):
        pool_text(y, tm, "max")


def test_gmr_objective_end_to_end(model, batch):
    """L_G (eq. 7-9) of the padded batch against eq. 1-3 + 7-9 computed sample by sample from the model's
    primitives; the conversion is written out here, so a wrong wiring in `convert` (say MCB_T2V for e'_t,
    or e'_v without T_cross) fails this test."""
    got = GMR(GMRConfig())(model, batch)["gmr_loss"]
    parts: list[list[Tensor]] = [[], [], [], []]
    for b in range(4):
        c = naive_conversion(model, per_sample(batch, b))
        for store, key in zip(parts, ("e_v", "e_t", "e_v1", "e_t1")):
            store.append(c[key][0])
    torch.testing.assert_close(got, naive_gmr(*parts))


def test_gmr_detach_targets_stops_gradient_into_targets(batch):
    x, y = (t.requires_grad_() for t in random_features(batch))
    x1, y1 = (t.detach().mul(2).requires_grad_() for t in (x, y))
    c = Converted(x, y, y1, x1, batch["frame_mask"], batch["attention_mask"])
    assert torch.autograd.grad(sum(gmr_loss(c, detach_targets=True)), (x, y), allow_unused=True) == (None, None)
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(sum(gmr_loss(c)), (x, y)))


# --------------------------------------------------------------------------- cross-modal self-contrasting


def test_triplet_matches_definition():
    g = torch.Generator().manual_seed(0)
    a, p, n = (torch.randn(6, D, generator=g, dtype=DTYPE) for _ in range(3))
    for margin in (0.0, 1.0, 5.0):
        torch.testing.assert_close(triplet_loss(a, p, n, margin), naive_triplet(list(a), list(p), list(n), margin))
    for margin in (0.0, 0.3, 0.9):
        want = naive_triplet(list(a), list(p), list(n), margin, relative=True)
        torch.testing.assert_close(triplet_loss(a, p, n, margin, relative=True), want)


def test_triplet_gradcheck():
    g = torch.Generator().manual_seed(1)
    a, p, n = (torch.randn(3, 4, generator=g, dtype=DTYPE, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda a, p, n: triplet_loss(a, p, n, 3.0), (a, p, n))


@pytest.mark.parametrize("eq15_negative", ["e_v_prime", "e_t_prime"])
def test_self_contrast_objective_end_to_end(model, batch, eq15_negative):
    cfg = SelfContrastConfig(margin=0.3, eq15_negative=eq15_negative)
    got = SelfContrast(cfg)(model, batch)["self_contrast_loss"]
    pooled: dict[str, list[Tensor]] = {k: [] for k in ("e_t", "e_t2", "e_t1", "e_v", "e_v2", "e_v1")}
    for b in range(4):
        s = per_sample(batch, b)
        c = naive_conversion(model, s)
        e_t1, e_v1 = c["e_t1"], c["e_v1"]  # (1, M, d) on frame positions, (1, N, d) on text positions
        h = model.fuse(torch.cat([e_v1 + model.modality.weight[0], c["e_t"] + model.modality.weight[1]], dim=1))
        o_v_sct = h[:, : e_v1.shape[1]]  # eq. 10: T_cross(e'_v, e_t), its video part
        h = model.fuse(torch.cat([c["e_v"] + model.modality.weight[0], e_t1 + model.modality.weight[1]], dim=1))
        o_t_scv = h[:, c["e_v"].shape[1] :]  # eq. 13: T_cross(e_v, e'_t), its text part
        e_t2, e_v2 = model.v2t(o_v_sct), model.t2v(o_t_scv)  # eq. 11, 14
        values = (c["e_t"], e_t2, e_t1, c["e_v"], e_v2, e_v1)
        for key, t in zip(pooled, values):
            pooled[key].append(naive_mean(t[0]))
    negative_v = pooled["e_v1"] if eq15_negative == "e_v_prime" else pooled["e_t1"]
    want = naive_triplet(pooled["e_t"], pooled["e_t2"], pooled["e_t1"], 0.3, relative=True)
    want = want + naive_triplet(pooled["e_v"], pooled["e_v2"], negative_v, 0.3, relative=True)
    assert want > 0  # the relative margin makes the hinge active here
    torch.testing.assert_close(got, want)
    absolute = SelfContrast(SelfContrastConfig(margin=2.0, relative_margin=False, eq15_negative=eq15_negative))
    want = naive_triplet(pooled["e_t"], pooled["e_t2"], pooled["e_t1"], 2.0)
    want = want + naive_triplet(pooled["e_v"], pooled["e_v2"], negative_v, 2.0)
    got = absolute(model, batch)["self_contrast_loss"]
    torch.testing.assert_close(got, want)


def test_self_contrast_detach_converted(model, batch):
    """Detached: L_SC sends no gradient through the first conversion (MCB_T2V only sees e''_v's pass)."""
    c = convert(model, batch)
    e_t2, e_v2 = convert_twice(model, c, detach_converted=True)
    l_t, l_v = self_contrast_loss(c, e_t2, e_v2, margin=100.0, detach_converted=True, relative_margin=False)
    grads = torch.autograd.grad(l_t + l_v, [c.e_v_prime, c.e_t_prime], allow_unused=True)
    assert all(g is None for g in grads)
    with pytest.raises(ValueError, match="eq15_negative"):
        SelfContrastConfig(eq15_negative="e_v")
    with pytest.raises(ValueError, match="margin"):
        SelfContrastConfig(margin=1.0)  # relative: a fraction below 1


# --------------------------------------------------------------------------- TACo


@pytest.mark.parametrize("similarity,pooling", [("dot", "mean"), ("cosine", "mean"), ("dot", "cls")])
def test_taco_matches_eq3_4_5(batch, similarity, pooling):
    x, y = random_features(batch)
    cfg = TacoConfig(similarity=similarity, tau1=0.3, tau2=0.5, k_neg=2, lambda2=0.5, lambda3=0.7)
    got, want = pure_taco(batch, x, y, cfg, pooling=pooling), naive_pure_taco(batch, x, y, cfg, pooling=pooling)
    for key in want:
        torch.testing.assert_close(got[key], want[key], msg=key)


def test_taco_local_rows_match_naive_rows(batch):
    """Loss for rows 2..3 against all 4 pairs: what a rank computes on gathered features."""
    x, y = random_features(batch)
    cfg = TacoConfig(k_neg=2)
    got, want = pure_taco(batch, x, y, cfg, slice(2, 4)), naive_pure_taco(batch, x, y, cfg, [2, 3])
    for key in want:
        torch.testing.assert_close(got[key], want[key], msg=key)


def test_taco_ignores_padded_frames_and_tokens(batch):
    x, y = random_features(batch)
    cfg = TacoConfig(k_neg=2)
    before = pure_taco(batch, x, y, cfg)
    fm, tm = batch["frame_mask"][..., None], batch["attention_mask"][..., None]
    after = pure_taco(batch, x + 30 * ~fm, y - 20 * ~tm, cfg)
    for key in before:
        torch.testing.assert_close(before[key], after[key], msg=key)


def test_taco_toi_free_texts_add_no_l2_and_no_nan():
    batch = make_batch(toi_free=(0, 1, 2, 3))
    x, y = random_features(batch)
    x.requires_grad_(), y.requires_grad_()
    out = pure_taco(batch, x, y, TacoConfig(k_neg=2))
    assert out["taco_l2_loss"].item() == 0.0
    sum(out.values()).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    one_free = make_batch(toi_free=(2,))  # one text without tokens of interest among others
    x, y = random_features(one_free)
    want = naive_pure_taco(one_free, x, y, TacoConfig(k_neg=2))
    torch.testing.assert_close(pure_taco(one_free, x, y, TacoConfig(k_neg=2))["taco_l2_loss"], want["taco_l2_loss"])


def test_taco_k_neg_larger_than_batch_equals_all_pairs(batch):
    """K' = 50 > batch - 1: clipped, every other pair is a candidate, so L3 is the all-pairs loss."""
    x, y = random_features(batch)
    got = pure_taco(batch, x, y, TacoConfig(k_neg=50))["taco_l3_loss"]
    fusion, _ = toy_fusion_fn()
    torch.testing.assert_close(got, l3_all_pairs(fusion, x, batch["frame_mask"], y, batch["attention_mask"]))
    torch.testing.assert_close(got, naive_pure_taco(batch, x, y, TacoConfig(k_neg=50))["taco_l3_loss"])


def test_taco_single_pair_batch_is_finite():
    """One pair in the global batch: no negative anywhere, so every loss is log(1) = 0 and, above all,
    nothing is NaN (k' = min(k_neg, K_g - 1) = 0 candidates besides the positive) and backward works."""
    batch = make_batch(batch=1, toi_free=())
    x, y = (t.requires_grad_() for t in random_features(batch))
    out = pure_taco(batch, x, y, TacoConfig())
    assert all(v.item() == 0.0 for v in out.values())
    sum(out.values()).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()


def test_cascade_picks_the_highest_scoring_negatives():
    batch = make_batch(batch=6, seed=4, toi_free=(3,))
    x, y = random_features(batch)
    fm = batch["frame_mask"]
    scores = taco_pair_scores(x, fm, texts_of(batch, y))  # (T, V)
    neg_v, neg_t = choose_negatives(x, fm, texts_of(batch, y), slice(0, 6), 3, TacoConfig())
    for i in range(6):
        by_video = sorted((j for j in range(6) if j != i), key=lambda j: -float(scores[i, j]))[:3]
        by_text = sorted((t for t in range(6) if t != i), key=lambda t: -float(scores[t, i]))[:3]
        assert neg_v[i].tolist() == by_video and neg_t[i].tolist() == by_text


def test_random_negatives_are_valid_and_seeded():
    batch = make_batch(batch=6, seed=4)
    x, y = random_features(batch)
    args = (x, batch["frame_mask"], texts_of(batch, y), slice(2, 4), 4)
    cfg = TacoConfig(cascade=False)
    a = choose_negatives(*args, cfg, torch.Generator().manual_seed(1))
    b = choose_negatives(*args, cfg, torch.Generator().manual_seed(1))
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    for negs in a:
        for own, row in zip((2, 3), negs.tolist()):
            assert own not in row and len(set(row)) == 4


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_taco_inference_sums_three_scores_over_every_pair(batch, similarity):
    """TACo section 3.4 against a naive loop over (text, video) pairs: eq. 3's sentence score / tau1 +
    the sum over the text's tokens of interest of eq. 4's s(x, y^p) / tau2 + the fusion score of the pair,
    the fusion module run on that pair alone (unpadded), through the chunked `fusion_all_pairs`."""
    x, y = random_features(batch)
    cfg = TacoConfig(similarity=similarity, tau1=0.5, tau2=2.0)
    xs, ys = rows_of(x, batch["frame_mask"]), rows_of(y, batch["attention_mask"])
    tois = rows_of(batch["toi_weight"], batch["attention_mask"])
    nrm = (lambda v: v / v.norm()) if similarity == "cosine" else (lambda v: v)
    batched, one = toy_fusion_fn()
    pair, total = torch.zeros(4, 4, dtype=DTYPE), torch.zeros(4, 4, dtype=DTYPE)
    for i in range(4):
        for j in range(4):
            pair[i, j] = dot(nrm(naive_mean(ys[i])), nrm(naive_mean(xs[j]))) / cfg.tau1
            for p in range(len(ys[i])):
                if tois[i][p] > 0:
                    pair[i, j] += max(float(dot(nrm(xs[j][f]), nrm(ys[i][p]))) for f in range(len(xs[j]))) / cfg.tau2
            total[i, j] = pair[i, j] + one(xs[j], ys[i])
    fm, tm = batch["frame_mask"], batch["attention_mask"]
    torch.testing.assert_close(taco_pair_scores(x, fm, texts_of(batch, y), cfg), pair)
    for chunk in (1, 3, 16):  # chunks that split a text's videos, and one chunk for all
        fusion = fusion_all_pairs(batched, x, fm, y, tm, chunk)  # (T, V)
        torch.testing.assert_close(taco_inference_scores(x, fm, texts_of(batch, y), fusion, cfg), total)


def test_taco_gradcheck():
    batch = make_batch(batch=3, n=4, m=3, seed=7, toi_free=())
    x, y = (t.requires_grad_() for t in random_features(batch))
    cfg = TacoConfig(k_neg=1, tau1=0.5, tau2=0.5)
    assert torch.autograd.gradcheck(lambda x, y: sum(pure_taco(batch, x, y, cfg).values()), (x, y), fast_mode=True)


def test_taco_lambda3_zero_skips_fusion(batch):
    x, y = random_features(batch)
    out = taco_losses(x, batch["frame_mask"], texts_of(batch, y), slice(0, 4), lambda *a: pytest.fail("fusion called"),
                      TacoConfig(lambda3=0.0))  # fmt: skip
    assert out["taco_l3_loss"].item() == 0.0


def test_taco_objective_end_to_end(model, batch):
    cfg = TacoConfig(k_neg=2)
    got = Taco(cfg)(model, batch)
    samples = [per_sample(batch, b) for b in range(4)]
    xs = [model.embed_video(s["frames"], s["frame_mask"])[0] for s in samples]
    ys = [model.embed_text(s["input_ids"], s["attention_mask"])[0] for s in samples]
    ones = lambda t: torch.ones(1, len(t), dtype=torch.bool)
    fusion = lambda x, y: model.fusion_score(x[None], ones(x), y[None], ones(y))[0]
    want = naive_taco(xs, ys, [s["toi_weight"][0] for s in samples], fusion, cfg)
    for key in want:
        torch.testing.assert_close(got[key], want[key], msg=key)
    sum(got.values()).backward()
    assert model.score.weight.grad.abs().sum() > 0 and model.frame_proj.weight.grad.abs().sum() > 0


def test_taco_random_negatives_objective_runs(model, batch):
    obj = Taco(TacoConfig(cascade=False, k_neg=2))
    a, b = obj(model, batch), Taco(TacoConfig(cascade=False, k_neg=2))(model, batch)
    torch.testing.assert_close(a["taco_l3_loss"], b["taco_l3_loss"])  # same seed, same negatives
    assert all(torch.isfinite(v) for v in a.values())


# --------------------------------------------------------------------------- registry and combiner


def test_registry_and_config_agree():
    config_fields = {f.name: f for f in fields(ObjectivesConfig)}
    for name, (config_cls, _) in OBJECTIVES.items():
        assert name in config_fields, f"ObjectivesConfig has no section for {name!r}"
        assert isinstance(getattr(ObjectivesConfig(), name), config_cls)
        assert build_objective(name, ObjectivesConfig()).name == name


def test_unknown_objective_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match=r"'mlmm'.*mlm, mfm_nce, gmr, self_contrast, taco"):
        Combiner(ObjectivesConfig(enabled=["mlm", "mlmm"]))
    with pytest.raises(ValueError, match="'itm'"):
        Combiner(ObjectivesConfig(weights={"itm": 1.0}))
    with pytest.raises(ValueError, match="mode"):
        Combiner(ObjectivesConfig(mode="round_robin"))
    with pytest.raises(ValueError, match="weights"):
        Combiner(ObjectivesConfig(enabled=["mlm"], weights={"mlm": 0.0}))


def test_omegaconf_sections_build():
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(OmegaConf.structured(ObjectivesConfig), {"taco": {"k_neg": 3}, "mode": "sample"})
    assert build_objective("taco", cfg).cfg.k_neg == 3
    assert OmegaConf.to_object(cfg).taco == TacoConfig(k_neg=3)
    with pytest.raises(Exception, match="k_negs"):
        OmegaConf.merge(OmegaConf.structured(ObjectivesConfig), {"taco": {"k_negs": 3}})


def test_combiner_sum_is_the_weighted_sum(model, batch):
    weights = {"mlm": 2.0, "mfm_nce": 0.5, "gmr": 1.0, "self_contrast": 0.25, "taco": 1.5}
    combiner = Combiner(ObjectivesConfig(weights=weights))
    total, logs = combiner(model, batch, step=0)
    want = 0.0
    for name, w in weights.items():
        for key, loss in build_objective(name, ObjectivesConfig())(model, batch).items():
            torch.testing.assert_close(logs[key], loss.detach(), msg=key)
            want += w * loss.item()
    torch.testing.assert_close(total.item(), want)
    assert logs["loss"] == pytest.approx(want) and all(logs[f"ran_{n}"] == 1.0 for n in weights)
    total.backward()


def test_combiner_sample_follows_weights_deterministically():
    cfg = ObjectivesConfig(enabled=["mlm", "gmr", "taco"], weights={"mlm": 6.0, "gmr": 3.0, "taco": 1.0}, mode="sample")
    first = [Combiner(cfg).choose(step) for step in range(4000)]
    assert first == [Combiner(cfg).choose(step) for step in range(4000)]  # same seed, same choices
    assert all(len(c) == 1 for c in first)
    counts = {n: sum(c == [n] for c in first) / 4000 for n in cfg.enabled}
    assert counts["mlm"] == pytest.approx(0.6, abs=0.03) and counts["gmr"] == pytest.approx(0.3, abs=0.03)
    assert counts["taco"] == pytest.approx(0.1, abs=0.02)
    other = ObjectivesConfig(enabled=cfg.enabled, weights=cfg.weights, mode="sample", seed=1)
    assert [Combiner(other).choose(s) for s in range(200)] != first[:200]


def test_combiner_sample_runs_one_objective(model, batch):
    cfg = ObjectivesConfig(enabled=["mlm", "gmr"], weights={"mlm": 1.0, "gmr": 1.0}, mode="sample")
    combiner = Combiner(cfg)
    for step in range(4):
        total, logs = combiner(model, batch, step)
        (name,) = combiner.choose(step)
        key = f"{name}_loss"
        assert set(logs) == {key, "loss", "ran_mlm", "ran_gmr", "sentence_cos", "video_cos"}
        assert logs[f"ran_{name}"] == 1.0
        assert total.item() == pytest.approx(logs[key])


def test_combiner_logs_the_embedding_spread(model, batch):
    """sentence_cos / video_cos: the mean cosine over the distinct pairs of the batch's sentence vectors
    (the mean of each text's valid tokens here) and of its videos' mean frames, against a loop."""
    _, logs = Combiner(ObjectivesConfig(enabled=["mlm"]))(model, batch, 0)
    samples = [per_sample(batch, b) for b in range(4)]
    with torch.no_grad():
        sents = [naive_mean(model.embed_text(s["input_ids"], s["attention_mask"])[0]) for s in samples]
        videos = [naive_mean(model.embed_video(s["frames"], s["frame_mask"])[0]) for s in samples]
    for key, vecs in (("sentence_cos", sents), ("video_cos", videos)):
        cos = [float(dot(a, b) / (a.norm() * b.norm())) for i, a in enumerate(vecs) for j, b in enumerate(vecs)
               if i != j]  # fmt: skip
        assert logs[key] == pytest.approx(sum(cos) / len(cos), abs=1e-5), key


def test_combiner_skips_zero_weight_objectives(model, batch):
    cfg = ObjectivesConfig(enabled=["mlm", "taco"], weights={"taco": 0.0})
    _, logs = Combiner(cfg)(model, batch, 0)
    assert "mlm_loss" in logs and "taco_l1_loss" not in logs
