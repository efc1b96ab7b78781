"""Moment retrieval in a video corpus (VCMR), shared by TVR, DiDeMo and How2R (docs/design.md section 6).

    video + subtitles -> T_cross -> ctx (V, M, d)           HERO's cross-modal context, one vector per frame
    query            -> tokens y -> q_vr (the sentence vector), q_span (from the words)   (d) each
    VR score          s(q, v) = max_t cos(q_vr, ctx_t) / tau                   HERO's video-level score
    span logits       st_t, ed_t = conv_st(x), conv_ed(x),  x_t = cos(q_span, ctx_t) / tau_span     XML's ConvSE
                      q_span = sum_p a_p normalize(W y_p): the query's words pooled (task.span_query)

Training: VR by symmetric InfoNCE over the videos and queries of all ranks (gathered with
gradient, local loss: docs/design.md section 5), plus cross-entropy of the start and end frames
within the positive video, weighted by `span_weight`.

Inference (finetune/moment_search.py): log p(v|q) over all videos from the VR scores, top-K
videos, start/end log-softmax within each video, moments up to `max_moment_frames`, temporal
NMS, 100 predictions per query: VCMR, SVMR (within the ground-truth video) and VR, written in
TVR's submission format and scored by finetune/moment_eval.py exactly as TVR's evaluator.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from finetune import data, moment_eval, plots, ranks, value_submission
from finetune.alignment import (
    AlignConfig,
    AlignPooling,
    build_pooling,
    frames_in_span,
    global_alignment_loss,
    inner_words,
    segment_alignment_loss,
)
from finetune.mesm import Mesm, MesmConfig, enc_loss, fw_loss, segment_features, sentence_features, ss_loss
from finetune.moment_search import Corpus, Packed, SearchConfig, search_corpus_packed, search_single_packed
from finetune.task import Predictions, Terms, total
from pretrain.distributed import gather_no_grad, gather_with_grad, local_rows, rank_and_world
from pretrain.runtime import full_copies

log = logging.getLogger(__name__)


@dataclass
class MomentConfig:
    temperature: float = 0.05  # tau of the VR InfoNCE; inference divides the VR scores by it too
    span_weight: float = 1.0  # weight of the start + end cross-entropy
    conv_kernel: int = 5  # frames seen by the start/end convolution
    # query_vr starts as the identity (q_vr = the backbone's sentence vector, so the VR cosine starts in the space
    # pretraining built) or random (a fresh nn.Linear, scrambling it) (docs/evidence.md, issue 6)
    vr_query_init: str = "identity"
    # the span head's query: "words" = attention pooling of the query's word tokens (XML's modular query
    # pooling, started uniform, W the identity) scored by cosine against the frames, i.e. at step 0 the mean of
    # TACo's token-frame similarities (eq. 4's s(x^f, y^p)) that pretraining's L2 shapes; "cls" = a random
    # linear map of the [CLS] scored by ctx_t . q / sqrt(d). Either way the start/end convolutions start as
    # edge detectors (docs/evidence.md section 5, issue 6)
    span_query: str = "words"
    span_temperature: float = 0.1  # "words": the cosines are divided by it before the start/end convolutions
    search: SearchConfig = field(default_factory=SearchConfig)
    align: AlignConfig = field(default_factory=AlignConfig)  # multi-level alignment (finetune/alignment.py)
    mesm: MesmConfig = field(default_factory=MesmConfig)  # MESM's aligner and losses (finetune/mesm.py)

    def validate(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"task.temperature must be > 0, got {self.temperature}")
        if self.span_weight < 0:
            raise ValueError(f"task.span_weight must be >= 0, got {self.span_weight}")
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise ValueError(f"task.conv_kernel must be odd and >= 1, got {self.conv_kernel}")
        if self.vr_query_init not in ("identity", "random"):
            raise ValueError(f"task.vr_query_init must be identity or random, got {self.vr_query_init!r}")
        if self.span_query not in ("words", "cls"):
            raise ValueError(f"task.span_query must be words or cls, got {self.span_query!r}")
        if not self.span_temperature > 0:
            raise ValueError(f"task.span_temperature must be > 0, got {self.span_temperature}")
        self.search.validate()
        self.align.validate()
        self.mesm.validate()


class MomentHead(nn.Module):
    def __init__(self, d: int, kernel: int, mesm: Mesm | None = None, vr_query_init: str = "identity",
                 span_query: str = "words", span_temperature: float = 0.1,
                 align_pooling: AlignPooling | None = None):  # fmt: skip
        super().__init__()
        self.mesm = mesm  # MESM's aligner: the span head reads its output
        self.align_pooling = align_pooling  # multi-level alignment's E_L / E_V (None: alignment off)
        self.span_query, self.span_temperature = span_query, span_temperature  # MomentConfig
        self.query_vr = nn.Linear(d, d)
        self.query_span = nn.Linear(d, d)
        if vr_query_init == "identity":  # MomentConfig.vr_query_init
            _identity(self.query_vr)
        if span_query == "words":  # start in the token-frame space pretraining built, all words weighted alike
            _identity(self.query_span)
            self.word_attn = nn.Linear(d, 1)
            nn.init.zeros_(self.word_attn.weight)
            nn.init.zeros_(self.word_attn.bias)
        self.st_conv = nn.Conv1d(1, 1, kernel, padding=kernel // 2)
        self.ed_conv = nn.Conv1d(1, 1, kernel, padding=kernel // 2)
        _edge_init(self.st_conv, rising=True)  # a bump of x starts where it rises and ends where it falls
        _edge_init(self.ed_conv, rising=False)

    def span_query_vector(self, q_tok: Tensor, q_mask: Tensor) -> Tensor:
        """q_span (B, d) from the query's token encodings q_tok (B, N, d) and mask (B, N).

        "words": sum_p a_p normalize(W y_p) / temperature, a = softmax over the words of w . y_p, so that
        q_span . normalize(ctx_t) = sum_p a_p cos(W y_p, ctx_t) / temperature. "cls": W [CLS]."""
        if self.span_query == "cls":
            return self.query_span(q_tok[:, 0])
        words = inner_words(q_mask)  # (B, N)
        words[:, 0] |= ~words.any(1)  # a query without words: its [CLS]
        y = F.normalize(self.query_span(q_tok), dim=-1)  # (B, N, d)
        a = self.word_attn(q_tok).squeeze(-1).masked_fill(~words, float("-inf")).softmax(1)  # (B, N)
        return torch.einsum("bn,bnd->bd", a, y) / self.span_temperature  # (B, d)

    def span_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Start and end logits (..., M) from the query-frame similarities x (..., M)."""
        shape, m = x.shape, x.shape[-1]
        flat = x.reshape(-1, 1, m)  # (R, 1, M)
        return self.st_conv(flat).view(shape), self.ed_conv(flat).view(shape)


def build_head(backbone: nn.Module, cfg: MomentConfig) -> MomentHead:
    mc = backbone.config
    mesm = Mesm(mc.hidden, mc.heads, mc.ffn, mc.dropout, cfg.mesm) if cfg.mesm.enabled else None
    return MomentHead(mc.hidden, cfg.conv_kernel, mesm, cfg.vr_query_init, cfg.span_query, cfg.span_temperature,
                      build_pooling(mc.hidden, cfg.align))  # fmt: skip


def _identity(layer: nn.Linear) -> None:
    nn.init.eye_(layer.weight)
    nn.init.zeros_(layer.bias)


@torch.no_grad()
def _edge_init(conv: nn.Conv1d, rising: bool) -> None:
    """Start a 1-channel convolution as an edge detector of x: (sum of x over the frames from t on, t
    included) - (sum over the frames before t) for a start, the mirror image for an end, per frame seen."""
    k = conv.kernel_size[0]
    offsets = torch.arange(k) - k // 2  # conv1d is a cross-correlation: out_t = sum_o w_o x_{t+o}
    w = torch.where(offsets >= 0, 1.0, -1.0) if rising else torch.where(offsets <= 0, 1.0, -1.0)
    conv.weight.copy_(w.view(1, 1, k) / k)
    conv.bias.zero_()


def encode_videos(model: nn.Module, batch: dict) -> Tensor:
    """ctx (B, M, d): frames contextualised with the subtitles (when given) by T_cross."""
    bb, frame_mask = model.backbone, batch["frame_mask"]  # (B, M)
    e_v = bb.embed_video(batch["frames"], frame_mask)  # (B, M, d)
    if "sub_input_ids" in batch:
        e_s = bb.embed_text(batch["sub_input_ids"], batch["sub_attention_mask"])  # (B, Ns, d)
        ctx, _ = bb.cross(e_v, frame_mask, e_s, batch["sub_attention_mask"])  # (B, M, d)
    else:
        ctx, _ = bb.cross(e_v, frame_mask, e_v[:, :0], frame_mask[:, :0])  # (B, M, d)
    return ctx * frame_mask.unsqueeze(-1)  # (B, M, d)


def encode_queries(model: nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
    """(q_vr L2-normalised, q_span), each (B, d): q_vr from the query's sentence vector (the backbone's
    text pooling, pretrain/pooling.py), q_span per task.span_query."""
    q_vr, q_span, _ = encode_query_tokens(model, batch)
    return q_vr, q_span


def encode_query_tokens(model: nn.Module, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
    """(q_vr, q_span, q_tok (B, N, d)): the projections and the token encodings MESM reads."""
    q_mask = batch["attention_mask"]  # (B, N)
    q_tok = model.backbone.embed_text(batch["input_ids"], q_mask)  # (B, N, d)
    q_vr = F.normalize(model.head.query_vr(model.backbone.sentence(q_tok, q_mask)), dim=-1)  # (B, d)
    return q_vr, model.head.span_query_vector(q_tok, q_mask), q_tok


def video_scores(q_vr: Tensor, ctx_n: Tensor, frame_mask: Tensor) -> Tensor:
    """max over valid frames of cos(q, ctx_t): (Q, V) from q_vr (Q, d) and ctx_n (V, M, d), both normalised."""
    cos = torch.einsum("qd,vmd->qvm", q_vr, ctx_n)  # (Q, V, M)
    return cos.masked_fill_(~frame_mask[None], -2.0).amax(dim=-1)  # (Q, V); in place: no second (Q, V, M)


def span_frames(frames: Tensor, span_query: str) -> Tensor:
    """The frames (..., d) as the span head scores them: unit vectors ("words") or / sqrt(d) ("cls")."""
    return F.normalize(frames, dim=-1) if span_query == "words" else frames / math.sqrt(frames.shape[-1])


def frame_similarity(q_span: Tensor, ctx: Tensor, span_query: str) -> Tensor:
    """x_t, the span head's input, for paired rows: (B, M) from q_span (B, d), ctx (B, M, d)."""
    return torch.einsum("bd,bmd->bm", q_span, span_frames(ctx, span_query))  # (B, M)


def masked_ce(logits: Tensor, mask: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy over the valid frames only: logits, mask (B, M), target (B,)."""
    return F.cross_entropy(logits.masked_fill(~mask, float("-inf")), target)


def mesm_forward(model: nn.Module, batch: dict, ctx: Tensor, q_tok: Tensor,
                 cfg: MesmConfig) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
    """MESM in training: the aligned feature F (B, M, d) and its losses (eq. 2, 5, 6) that are on."""
    mesm, bb = model.head.mesm, model.backbone
    frame_mask, q_mask, span = batch["frame_mask"], batch["attention_mask"], batch["span"]  # (B, M), (B, N), (B, 2)
    losses: dict[str, Tensor] = {}
    f_v_enh = mesm.enhance_video(ctx, q_tok, q_mask)  # (B, M, d)
    if cfg.fw:
        recon = mesm.reconstruct_words(q_tok, batch["word_mask"], ctx, frame_mask)  # (B, N, d)
        losses["fw"] = fw_loss(bb.mlm_logits(recon), batch["input_ids"], inner_words(q_mask))
    q_enh, q_enh_mask = q_tok, q_mask
    if cfg.ss:
        ids, cmask = batch["context_ids"], batch["context_mask"]  # (B, K, Nc) each
        b, k, n = ids.shape
        c_tok = bb.embed_text(ids.view(b * k, n), cmask.view(b * k, n)).view(b, k, n, -1)  # (B, K, Nc, d)
        gen = mesm.generate_token(sentence_features(c_tok, cmask), cmask.any(-1), ctx, frame_mask)  # (B, d)
        q_enh = torch.cat([gen[:, None], q_tok], 1)  # (B, 1+N, d) F_q^enh
        q_enh_mask = torch.cat([q_mask[:, :1], q_mask], 1)  # (B, 1+N)
        index: dict[str, int] = {}
        videos = torch.tensor([index.setdefault(key, len(index)) for key in batch["keys"]], device=ctx.device)  # (B,)
        losses["ss"] = ss_loss(q_enh, q_enh_mask, segment_features(ctx, span), span, videos, cfg.gamma, cfg.tau)
    aligned = mesm.align(f_v_enh, q_enh, q_enh_mask) * frame_mask[..., None]  # (B, M, d)
    if cfg.enc:
        losses["enc"] = enc_loss(mesm.saliency_logits(aligned), span, frame_mask)
    return aligned, losses


def moment_loss(model: nn.Module, batch: dict, cfg: MomentConfig) -> tuple[Tensor, dict[str, float]]:
    """VR InfoNCE over all ranks (both directions) + start/end cross-entropy in the positive video,
    plus the multi-level alignment and MESM losses that are on."""
    frame_mask = batch["frame_mask"]  # (B, M)
    ctx = encode_videos(model, batch)  # (B, M, d)
    q_vr, q_span, q_tok = encode_query_tokens(model, batch)  # (B, d), (B, d), (B, N, d)
    ctx_all, q_all = gather_with_grad(ctx), gather_with_grad(q_vr)  # (K_g, M_g, d), (K_g, d)
    mask_all = gather_no_grad(frame_mask, pad_value=False)  # (K_g, M_g)
    rows = local_rows(q_all.shape[0], q_vr.shape[0])
    targets = torch.arange(rows.start, rows.stop, device=ctx.device)  # (B,)
    q2v = video_scores(q_vr, F.normalize(ctx_all, dim=-1), mask_all) / cfg.temperature  # (B, K_g)
    v2q = video_scores(q_all, F.normalize(ctx, dim=-1), frame_mask).T / cfg.temperature  # (B, K_g)
    vr_loss = 0.5 * (F.cross_entropy(q2v, targets) + F.cross_entropy(v2q, targets))
    frames, mesm_losses = mesm_forward(model, batch, ctx, q_tok, cfg.mesm) if cfg.mesm.enabled else (ctx, {})
    st, ed = model.head.span_logits(frame_similarity(q_span, frames, cfg.span_query))  # (B, M) each
    span = batch["span"]  # (B, 2)
    span_loss = masked_ce(st, frame_mask, span[:, 0]) + masked_ce(ed, frame_mask, span[:, 1])
    terms: Terms = {"vr_loss": (1.0, vr_loss), "span_loss": (cfg.span_weight, span_loss)}
    terms.update({f"mesm_{k}_loss": (getattr(cfg.mesm, k), v) for k, v in mesm_losses.items()})
    if cfg.align.enabled:  # E_L: the query pooled per task.align.pooling (its words or its [CLS])
        e_l = model.head.align_pooling.language(q_tok, batch["attention_mask"])  # (B, d)
    if cfg.align.glob:  # E_V: the video encoding pooled (its frames weighted, or their mean)
        e_v = model.head.align_pooling.video(ctx, frame_mask)  # (B, d)
        terms["align_glob_loss"] = (cfg.align.glob, global_alignment_loss(e_l, e_v, cfg.align.margin))
    if cfg.align.seg:  # section 4.4: the ground-truth moment is the true segment, no false language sample
        true_frames = frames_in_span(span, ctx.shape[1])  # (B, M)
        no_answer = torch.zeros(len(span), dtype=torch.long, device=ctx.device)
        terms["align_seg_loss"] = (cfg.align.seg, segment_alignment_loss(e_l[:, None], ctx, frame_mask, true_frames,
                                                                         no_answer, cfg.align.margin))  # fmt: skip
    return total(terms)


# ---------------------------------------------------------------- corpus inference


@dataclass
class EncodedCorpus:
    ctx: Tensor | None  # (V, M, d); None once no longer needed
    frame_mask: Tensor  # (V, M)
    meta: list[dict[str, Any]]  # per video: video_id, duration, interval, frames (before any cut)

    @property
    def index(self) -> dict[str, int]:
        return {m["video_id"]: i for i, m in enumerate(self.meta)}


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _stack_padded(rows: list[Tensor], dims: int, like: Tensor) -> Tensor:
    """rows (n_i, ...) padded along their first `dims` dims to the longest and stacked: (R, ...); (0, ...) shaped
    like `like`'s rows when there are none."""
    if not rows:
        return like[:0]
    longest = [max(r.shape[i] for r in rows) for i in range(dims)]
    out = []
    for r in rows:
        pad: list[int] = [0, 0] * (r.dim() - dims)
        for i in reversed(range(dims)):
            pad += [0, longest[i] - r.shape[i]]
        out.append(F.pad(r, pad))
    return torch.stack(out)


@torch.no_grad()
def encode_corpus(engine: Any, loader: Any, device: torch.device, encode: Any = None) -> EncodedCorpus:
    """Every video of the split, spread over the ranks (finetune/ranks.py): every rank reads them all in the
    loader's order and encodes the batches that are its own (batch b: rank b % W), plus spare forwards so that
    every rank runs as many (ZeRO-3 needs them all); the encodings are gathered, in the loader's order.
    encode(model, batch) -> (B, M, d): `encode_videos` (T_cross's context) unless given."""
    encode = encode or encode_videos
    rank, world = rank_and_world()
    ctxs, masks, meta, sizes, last = [], [], [], [], None
    for b, batch in enumerate(loader):
        masks.extend(batch["frame_mask"].unbind(0))
        meta.extend(batch["meta"])
        sizes.append(len(batch["meta"]))
        if ranks.owner(b, world) == rank:
            last = engine(encode, _to(batch, device)).float()  # (B, M_b, d)
            ctxs.append(last)
        spare = batch
    for _ in range(ranks.most_units(world, len(sizes)) - len(ranks.units_of(rank, world, len(sizes)))):
        last = engine(encode, _to(spare, device)).float()  # dropped: padding of the forwards
    mask = _stack_padded(masks, 1, masks[0][None]).to(device)  # (V, M)
    local = last.new_zeros(sum(len(c) for c in ctxs), mask.shape[1], last.shape[-1])  # (V_r, M, d) zero-padded
    row = 0
    for c in ctxs:  # this rank's batches, copied once into their rows
        local[row : row + len(c), : c.shape[1]] = c
        row += len(c)
    ctx = ranks.rows_in_unit_order(local, sizes)  # (V, M, d)
    return EncodedCorpus(ctx, mask, meta)


@torch.no_grad()
def encode_query_set(engine: Any, queries: list[dict], make_batch: Any, batch_size: int, device: torch.device,
                     tokens: bool = False) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:  # fmt: skip
    """(q_vr (Q, d), q_span (Q, d), and with `tokens` the token encodings (Q, N, d) and mask (Q, N)) of the
    queries, in batches of `batch_size` (make_batch: a list of queries -> a tokenised batch) spread over the
    ranks like the videos: each rank tokenises and encodes its own batches, the results are gathered."""
    starts = range(0, len(queries), batch_size)
    sizes = [len(queries[s : s + batch_size]) for s in starts]

    def encode(unit: int) -> tuple[Tensor, ...]:
        batch = _to(make_batch(queries[starts[unit] : starts[unit] + batch_size]), device)
        a, b, t = engine(encode_query_tokens, batch)  # (B, d), (B, d), (B, N, d)
        return a.float(), b.float(), t.float(), batch["attention_mask"]

    mine, spare = ranks.spread(len(starts), encode, lambda: encode(0))
    like = mine[0] if mine else spare
    q_vr = ranks.rows_in_unit_order(torch.cat([m[0] for m in mine]) if mine else like[0][:0], sizes)  # (Q, d)
    q_span = ranks.rows_in_unit_order(torch.cat([m[1] for m in mine]) if mine else like[1][:0], sizes)  # (Q, d)
    if not tokens:
        return q_vr, q_span, None, None
    tok = _stack_padded([t for m in mine for t in m[2].unbind(0)], 1, like[2])  # (Q_r, N_r, d)
    mask = _stack_padded([x for m in mine for x in m[3].unbind(0)], 1, like[3])  # (Q_r, N_r)
    return q_vr, q_span, ranks.rows_in_unit_order(tok, sizes), ranks.rows_in_unit_order(mask, sizes, False)


def mesm_pairs(model: nn.Module, pairs: dict) -> Tensor:
    """MESM at inference for (query, video) pairs: the aligned feature F (P, M, d). The query's
    other sentences are unknown in a corpus, so SS-MESM's token comes from the [MASK] alone."""
    mesm, dtype = model.head.mesm, model.backbone.dtype
    ctx, q_tok = pairs["ctx"].to(dtype), pairs["q_tok"].to(dtype)  # (P, M, d), (P, N, d)
    frame_mask, q_mask = pairs["frame_mask"], pairs["q_mask"]  # (P, M), (P, N)
    f_v_enh = mesm.enhance_video(ctx, q_tok, q_mask)  # (P, M, d)
    if mesm.ss is not None:
        gen = mesm.generate_token(None, None, ctx, frame_mask)  # (P, d)
        q_tok, q_mask = torch.cat([gen[:, None], q_tok], 1), torch.cat([q_mask[:, :1], q_mask], 1)
    return mesm.align(f_v_enh, q_tok, q_mask) * frame_mask[..., None]  # (P, M, d)


def candidate_similarity(q_span: Tensor, frames_x: Tensor, v_rows: Tensor) -> Tensor:
    """x (Qc, K, M), the span head's input, of each query q_span (Qc, d) in its candidate videos v_rows (Qc, K),
    from the span frames of the corpus frames_x (V, M, d). Few candidates (SVMR: its one video; Qc * K <= V):
    their frames gathered (Qc, K, M, d); many (VCMR): one (Qc, d) @ (d, V*M) product, then the rows of the
    candidates (faster on a CPU than gathering, a GEMM against a memory copy)."""
    v, m, d = frames_x.shape
    if v_rows.numel() <= v:
        return torch.einsum("qd,qkmd->qkm", q_span, frames_x[v_rows])  # (Qc, K, M)
    x = (q_span @ frames_x.view(v * m, d).T).view(-1, v, m)  # (Qc, V, M)
    return x.gather(1, v_rows[..., None].expand(-1, -1, m))  # (Qc, K, M)


def conv_span_logits(x: Tensor, st_w: Tensor, st_b: Tensor, ed_w: Tensor, ed_b: Tensor) -> tuple[Tensor, Tensor]:
    """MomentHead.span_logits with its convolutions' weights given (runtime.full_copies of them), in float32
    whatever the model's precision (bf16 logits tie often, and every tie costs the search a full sort): start
    and end logits (..., M) from x (..., M)."""
    flat = x.reshape(-1, 1, x.shape[-1]).float()  # (R, 1, M)
    pad = st_w.shape[-1] // 2
    st = F.conv1d(flat, st_w.float(), st_b.float(), padding=pad)  # (R, 1, M)
    return st.view(x.shape), F.conv1d(flat, ed_w.float(), ed_b.float(), padding=pad).view(x.shape)


def svmr_predictions(queries: list[dict], found: dict[int, list], video2idx: dict[str, int]) -> list[list]:
    """Per query, its SVMR predictions: `found[i]` for a query whose video was searched, else one empty span
    `[idx, 0.0, 0.0, 0.0]` on its video, a miss at any IoU that TVR's eval.py can read (it fails on [])."""
    return [found[i] if i in found else [[video2idx[q["video_id"]], 0.0, 0.0, 0.0]] for i, q in enumerate(queries)]


def search_corpus_of(encoded: EncodedCorpus, video2idx: dict[str, int]) -> Corpus:
    return Corpus(
        frame_counts=encoded.frame_mask.sum(1), intervals=[m["interval"] for m in encoded.meta],
        durations=[m["duration"] for m in encoded.meta],
        video_idx=torch.tensor([video2idx[m["video_id"]] for m in encoded.meta]),
    )  # fmt: skip


def ground_truth(queries: list[dict]) -> list[dict]:
    """The split's queries as the TVR evaluator's ground truth lines (DiDeMo: all annotator spans)."""
    out = []
    for q in queries:
        spans = q["spans"]
        line = {"desc_id": q["query_id"], "desc": q["text"], "vid_name": q["video_id"],
                "ts": spans[0] if len(spans) == 1 else spans}  # fmt: skip
        if "type" in q:
            line["type"] = q["type"]
        out.append(line)
    return out


@dataclass(kw_only=True)
class MomentPredictions(Predictions):
    """A moment task's predictions on a split, in TVR's submission format (finetune/moment_eval.py)."""

    submission: dict[str, Any]  # video2idx, VCMR, VR; SVMR with the ground truth
    vr_scores: Tensor  # (R, V) the first queries' VR scores against every video (the heatmap's)

    def write_predictions(self, folder: str, recipe: str, split: str) -> dict[str, str]:
        """<recipe>_<split>_submission.json (TVR's format); How2R also VALUE's (finetune/value_submission.py)."""
        video2idx = self.submission["video2idx"]
        files = {"submission": os.path.join(folder, f"{recipe}_{split}_submission.json")}
        moment_eval.write_submission(files["submission"], video2idx,
                                     {k: v for k, v in self.submission.items() if k != "video2idx"})  # fmt: skip
        if recipe == "how2r":  # what How2R's leaderboard reads: VALUE's format (idx: data_prep --video2dur)
            files["value_submission"] = os.path.join(folder, value_submission.file_name(split))
            value_submission.write(files["value_submission"], value_submission.from_tvr(self.submission),
                                   video2idx.values())  # fmt: skip
        return files

    def leaderboard_zip(self, path: str, recipe: str, val_files: dict[str, str], test_files: dict[str, str]) -> bool:
        """TVR's Codalab layout (finetune/moment_eval.py); How2R: VALUE's (finetune/value_submission.py)."""
        if recipe == "how2r":
            value_submission.value_zip(path, val_files["value_submission"], test_files["value_submission"])
        else:
            moment_eval.codalab_zip(path, val_files["submission"], test_files["submission"])
        return True

    def plots(self, folder: str, title: str, heatmap_queries: int) -> dict[str, str]:
        return plots.retrieval_plots(self.vr_ranks(), self.vr_scores, self.gt_rows, self.queries, folder, title,
                                     heatmap_queries)  # fmt: skip

    def vr_ranks(self) -> Tensor:
        """(Q,) 1-based rank of each query's video in its VR predictions; 10**9 if absent."""
        ranks = torch.full(self.gt_rows.shape, 10**9, dtype=torch.long)  # (Q,)
        idx = self.submission["video2idx"]
        for i, (q, entry) in enumerate(zip(self.queries, self.submission["VR"])):
            videos = [p[0] for p in entry["predictions"]]
            target = idx.get(q["video_id"])
            if target in videos:
                ranks[i] = videos.index(target) + 1
        return ranks


class StageTimer:
    """Wall and CPU seconds of an evaluation's stages, logged as one line "eval timing {...}"
    (benchmarks/tvr_eval.py reads it): started/ended (epoch seconds), seconds and cpu_seconds per stage (CPU:
    this process, all its threads), this process's peak RSS in MiB."""

    def __init__(self) -> None:
        self.started, self.seconds, self.cpu, self._last = (
            time.time(),
            {},
            {},
            (time.perf_counter(), time.process_time()),
        )

    def lap(self, stage: str) -> None:
        now = (time.perf_counter(), time.process_time())
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now[0] - self._last[0]
        self.cpu[stage] = self.cpu.get(stage, 0.0) + now[1] - self._last[1]
        self._last = now

    def log(self, split: str) -> None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        line = {"split": split, "started": self.started, "ended": time.time(), "rss_mib": rss,
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
                "cpu_seconds": {k: round(v, 3) for k, v in self.cpu.items()}}  # fmt: skip
        log.info("eval timing %s", json.dumps(line))


def gathered(packed: Packed, sizes: list[int]) -> Packed:
    """Every rank's packed predictions of its units (query chunks of `sizes` queries), in unit order."""
    rows, counts = ranks.ragged_in_unit_order(packed.rows, packed.counts, sizes)
    return Packed(rows, counts)


@dataclass
class MomentTask:
    """The moment-retrieval recipe's task: its loss and its evaluation on a split."""

    cfg: MomentConfig
    uniform_frames: bool = False  # the time grid is kept
    chunk: int = 256  # (query, video) pairs per MESM forward at inference

    @property
    def row_options(self) -> data.RowOptions:
        mesm = self.cfg.mesm
        return data.RowOptions(context_sentences=mesm.context_sentences if mesm.ss else 0,
                               word_mask_ratio=mesm.mask_ratio if mesm.fw else 0.0)  # fmt: skip

    def build_head(self, backbone: nn.Module) -> nn.Module:
        return build_head(backbone, self.cfg)

    def loss(self, model: nn.Module, batch: dict, step: int) -> tuple[Tensor, dict[str, float]]:
        return moment_loss(model, batch, self.cfg)

    @torch.no_grad()
    def predict(self, engine: Any, dcfg: data.FinetuneDataConfig, split: str, tokenizer: Any,
                device: torch.device, with_gt: bool) -> MomentPredictions:  # fmt: skip
        """VCMR and VR over the split's corpus; with_gt also SVMR and the official metrics."""
        timer = StageTimer()
        video2idx = data.load_video2idx(dcfg, split)
        queries = data.load_queries(dcfg, split)
        timer.lap("annotations")
        loader = data.build_loader(dcfg, split, tokenizer, 0, 1, False, uniform=False)
        encoded = encode_corpus(engine, loader, device)
        timer.lap("videos")
        cut = sum(m["frames"] > dcfg.max_frames for m in encoded.meta)
        if cut:
            log.warning("%s: %d of %d videos cut to data.max_frames=%d frames; moments past it cannot be found",
                        split, cut, len(encoded.meta), dcfg.max_frames)  # fmt: skip
        pad_id = int(tokenizer.pad_token_id or 0)
        tokenise = lambda qs: next(data.query_batches(qs, tokenizer, dcfg.max_query_len, len(qs), pad_id))  # noqa: E731
        mesm_on = self.cfg.mesm.enabled
        q_vr, q_span, q_tok, q_mask = encode_query_set(engine, queries, tokenise, dcfg.eval_batch_size, device,
                                                       tokens=mesm_on)  # fmt: skip
        timer.lap("queries")
        corpus = search_corpus_of(encoded, video2idx)
        ctx, mask = encoded.ctx, encoded.frame_mask  # (V, M, d), (V, M)
        ctx_n = F.normalize(ctx, dim=-1)  # (V, M, d)
        frames_x = ctx_n if self.cfg.span_query == "words" else span_frames(ctx, self.cfg.span_query)  # (V, M, d)
        if not mesm_on:  # only MESM reads the encodings themselves: (V, M, d) float32 less held
            ctx = encoded.ctx = None
        v, m, d = frames_x.shape
        head = getattr(engine, "module", engine).head
        convs = full_copies([head.st_conv.weight, head.st_conv.bias, head.ed_conv.weight, head.ed_conv.bias])

        def vr_scores(q0: int, q1: int) -> Tensor:
            return video_scores(q_vr[q0:q1], ctx_n, mask) / self.cfg.temperature  # (Qc, V)

        def span_logits(q_rows: Tensor, v_rows: Tensor) -> tuple[Tensor, Tensor]:
            if mesm_on:  # the span head reads MESM's F of each (query, candidate video) pair: in the engine
                qi, vi = q_rows[:, None].expand_as(v_rows).flatten(), v_rows.flatten()  # (P,)
                x = torch.cat([mesm_similarity(qi[i : i + self.chunk], vi[i : i + self.chunk])
                               for i in range(0, len(qi), self.chunk)]).view(*v_rows.shape, m)  # fmt: skip
                return engine(lambda model, _: model.head.span_logits(x.to(model.backbone.dtype)), {})
            x = candidate_similarity(q_span[q_rows], frames_x, v_rows)  # (Qc, K, M)
            return conv_span_logits(x, *convs)  # outside the engine: no forward to keep in step

        def mesm_similarity(qi: Tensor, vi: Tensor) -> Tensor:
            pairs = {"ctx": ctx[vi], "frame_mask": mask[vi], "q_tok": q_tok[qi], "q_mask": q_mask[qi]}
            aligned = engine(mesm_pairs, pairs).float()  # (P, M, d)
            return frame_similarity(q_span[qi], aligned, self.cfg.span_query)  # (P, M)

        # the search spread over the ranks by query chunk, except with MESM, whose forwards every rank runs all of
        rank, world = rank_and_world() if not mesm_on else (0, 1)
        scfg, n_q = self.cfg.search, len(queries)
        vcmr_p, vr_p = search_corpus_packed(vr_scores, span_logits, n_q, corpus, scfg, part=(rank, world))
        sizes = [min(scfg.query_chunk, n_q - q0) for q0 in range(0, n_q, scfg.query_chunk)]
        vcmr, vr = (gathered(p, sizes).lists() for p in (vcmr_p, vr_p))  # tensors between the ranks, lists after
        timer.lap("search")
        sub: dict[str, Any] = {"video2idx": video2idx}
        entry = [{"desc_id": q["query_id"], "desc": q["text"]} for q in queries]
        sub["VCMR"] = [{**e, "predictions": p} for e, p in zip(entry, vcmr)]
        index = encoded.index
        gt_rows = torch.tensor([index.get(q["video_id"], -1) for q in queries])  # (Q,) -1: not in the corpus
        if with_gt:
            have = (gt_rows >= 0).nonzero().flatten()  # queries whose video is searchable
            svmr_p = search_single_packed(span_logits, have, gt_rows[have], corpus, scfg, part=(rank, world))
            chunks = [min(scfg.moment_chunk, len(have) - c0) for c0 in range(0, len(have), scfg.moment_chunk)]
            svmr = gathered(svmr_p, chunks).lists()
            per_query = svmr_predictions(queries, dict(zip(have.tolist(), svmr)), video2idx)
            sub["SVMR"] = [{**e, "predictions": p} for e, p in zip(entry, per_query)]
            timer.lap("svmr")
        sub["VR"] = [{**e, "predictions": p} for e, p in zip(entry, vr)]
        out = MomentPredictions(queries=queries, gt_rows=gt_rows, info={"videos": len(encoded.meta), "videos_cut": cut},
                                submission=sub, vr_scores=vr_scores(0, min(len(queries), 64)))  # fmt: skip
        if with_gt:
            durations = {m["video_id"]: m["duration"] for m in encoded.meta}
            out.metrics, out.per_query = moment_eval.evaluate_with_hits(sub, ground_truth(queries), durations=durations)
        timer.lap("metrics")
        timer.log(split)
        return out
