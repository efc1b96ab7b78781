"""Analytic training FLOPs of a pretraining step, for throughput and MFU (docs/design.md section 5).

Counted the way `torch.utils.flop_counter` counts: a matmul (m, k) x (k, n) is 2mkn FLOPs, and
attention's QK^T and AV are matmuls too; elementwise ops, softmax, LayerNorm, GELU, embedding
lookups, poolings and the losses' reductions are not counted (neither counts them). Per sample,
with d = model.hidden, F = model.ffn, Dv = model.frame_dim, the text encoder's H hidden, F_t
feed-forward, V words and L_t layers, N text positions and M frames (padded: padding is computed):

    layer(L, w, f) = 2L(4w^2 + 2wf) + 4L^2 w      one transformer layer over L positions: QKV and
                                                  output projections, feed-forward, QK^T and AV
    text    = L_t layer(N, H, F_t) (+ 2NHd for the projection when H != d)
    frames  = 2M Dv d                             the frames' input projection
    video   = model.video_layers layer(M, d, F)
    cross(L) = model.cross_layers layer(L, d, F),  mcb(L) = model.mcb_layers layer(L, d, F)

A pass that is trained costs 3x its forward (the backward computes the gradient of each matmul's
input and of its weight, 2x); the frames' projection 2x, as the raw frames need no gradient (3x
under MFM's learned mask vector, which does); a pass under no_grad 1x. Activation checkpointing
recomputes forwards that are not counted: this is model FLOPs utilisation, not hardware FLOPs.
Without shared passes (`objectives.share_passes=False`) each objective runs its own passes, so
per sample:

    guard          text + video + frames + 2 (2Bd), no grad (the Combiner's collapse guard: its two
                   (B, B) cosine matrices over the B samples of this rank)
    mlm            3(text + video + cross(M+N)) + 2 frames + 3 p_mlm (2dH + 2HV)      p_mlm: MLM targets
    mfm_nce        3(text + video + cross(M+N)) + 3 frames (2 without the mask vector) + head + NCE
                   raw: head 3M(2d^2 + 2d Dv); NCE over the local batch's masked (q per sample) and
                   unmasked valid frames: q B (2 * 2q Dv + 3 * 2(v - q) Dv), v valid frames per sample
                   (the targets are fixed, so their matmul's backward is 1x); embedded: d for Dv, a
                   d^2 head, and the target pass embed_video(frames) (1x when detached)
    gmr            3(text + video + cross(M+N) + mcb(M) + mcb(N)) + 2 frames
    self_contrast  gmr's passes + 3(cross(2N) + mcb(N) + cross(2M) + mcb(M))
    taco           3(text + video) + 2 frames + 3(2K d + 2 p_toi K M d)      L1 and L2 against K = B x world
                   + 2(2K d + 2 p_toi K M d)                                the cascade's scores, no grad
                                                                            (random negatives: none)
                   + 2(k + 1) 3(cross(M+N) + 2d)                             L3: the fusion of the sampled
                   pairs, k = min(k_neg, K - 1) negatives per text and per video; none when lambda3 = 0

With shared passes (the default, pretrain/objectives/passes.py) a pass that several objectives
(or the guard) use is counted once, 3x when any of them takes its gradient, else 1x. The shareable
passes: text (of input_ids), text of mlm_input_ids, video (frames + video, of the plain frames),
video of MFM's masked frames, MLM's and MFM-NCE's T_cross, and GMR's first pass cross(M+N) + mcb(M)
+ mcb(N), which self-contrasting shares; the rest above is each objective's own (the guard's
cosines, heads, self-contrasting's second passes, TACo's scores and fusion pairs). With all five
objectives the text encoder runs twice a step instead of six times.

`sum` mode adds the enabled objectives (weight > 0) and the guard; `sample` mode their mean
weighted by the sampling probabilities, so its per-step MFU is right on average only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pretrain.model import ModelConfig, resolve, text_config
from pretrain.objectives import ObjectivesConfig, objective_config, validate
from pretrain.objectives.mlm import IGNORE

TRAIN, ONE_GRAD, NO_GRAD = 3, 2, 1  # (forward + backward) / forward of a matmul: both operands' gradients, one, none

# Dense bf16 tensor-core peaks from NVIDIA's data sheets, first match in the device name wins.
PEAK_BF16 = (("H100 PCIe", 756e12), ("H200 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))


def peak_flops(device: torch.device | str) -> float | None:
    """The device's peak dense bf16 FLOP/s, or None (the CPU, an unknown GPU): then no MFU is logged."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


def layer_flops(length: float, width: int, ffn: int) -> float:
    """Forward FLOPs of one transformer layer over one sequence of `length` positions."""
    return 2 * length * (4 * width * width + 2 * width * ffn) + 4 * length * length * width


@dataclass(frozen=True)
class TextEncoder:
    """The text encoder's sizes, from its Hugging Face config (already cut to model.text_layers)."""

    layers: int
    hidden: int
    ffn: int
    vocab: int

    @classmethod
    def of(cls, hf_config: Any) -> TextEncoder:
        return cls(hf_config.num_hidden_layers, hf_config.hidden_size, hf_config.intermediate_size,
                   hf_config.vocab_size)  # fmt: skip

    @classmethod
    def load(cls, cfg: ModelConfig) -> TextEncoder:
        """From the encoder's config on disk (no weights loaded), cut as model.text_layers says."""
        cfg = resolve(cfg)
        enc = cls.of(text_config(cfg))
        return cls(cfg.text_layers or enc.layers, enc.hidden, enc.ffn, enc.vocab)


@dataclass(frozen=True)
class Workload:
    """One rank's batch as the count needs it: padded lengths and, per sample, what the objectives pick."""

    text_len: int  # N, padded
    frames: int  # M, padded
    batch: int = 1  # samples on this rank
    world: int = 1
    mlm_tokens: float | None = None  # MLM targets; None: the loader's mlm_prob x N
    masked_frames: float | None = None  # MFM-masked frames; None: the loader's mfm_prob x M
    valid_frames: float | None = None  # None: M
    toi_tokens: float = 0.0  # TACo's tokens of interest (a small term: give the batch's count)

    @classmethod
    def of_batch(cls, batch: dict, world: int) -> Workload:
        """Counted on the loader's batch while it is still on the CPU (no device sync)."""
        text_mask, frame_mask = batch["attention_mask"], batch["frame_mask"]  # (B, N), (B, M)
        (b, n), m = text_mask.shape, frame_mask.shape[1]
        per_sample = lambda x: float(x.sum()) / b  # noqa: E731
        return cls(n, m, b, world, per_sample(batch["mlm_labels"] != IGNORE),
                   per_sample(batch["mfm_mask"] & frame_mask), per_sample(frame_mask),
                   per_sample((batch["toi_weight"] > 0) & text_mask))  # fmt: skip


Pass = tuple[str, Any, bool]  # (kind, masked or which inputs, MFM's learned mask vector)
Need = tuple[dict[Pass, bool], float]  # (the passes an objective uses: key -> gradient flows back, its own FLOPs)
TEXT: Pass = ("text", False, False)  # embed_text(input_ids)
VIDEO: Pass = ("video", False, False)  # embed_video(frames)
CONVERTED: Pass = ("converted", False, False)  # FEEL eq. 1-3 on the plain inputs: T_cross, MCB_V2T, MCB_T2V


class Costs:
    """Forward FLOPs per sample of the model's pieces, and each objective's training FLOPs (module doc)."""

    def __init__(self, cfg: ModelConfig, text: TextEncoder, w: Workload):
        from pretrain.loader import LoaderConfig

        rates = LoaderConfig()
        self.cfg, self.t, self.w = cfg, text, w
        self.n, self.m, self.k = w.text_len, w.frames, w.batch * w.world
        self.p_mlm = w.mlm_tokens if w.mlm_tokens is not None else rates.mlm_prob * self.n
        self.q = w.masked_frames if w.masked_frames is not None else rates.mfm_prob * self.m
        self.v = w.valid_frames if w.valid_frames is not None else float(self.m)

    def stack(self, layers: int, length: float) -> float:
        return layers * layer_flops(length, self.cfg.hidden, self.cfg.ffn)

    def text(self) -> float:
        t, d = self.t, self.cfg.hidden
        return t.layers * layer_flops(self.n, t.hidden, t.ffn) + (2 * self.n * t.hidden * d if t.hidden != d else 0)

    def frames(self) -> float:
        return 2 * self.m * self.cfg.frame_dim * self.cfg.hidden

    def video(self) -> float:
        return self.stack(self.cfg.video_layers, self.m)

    def cross(self, length: float) -> float:
        return self.stack(self.cfg.cross_layers, length)

    def mcb(self, length: float) -> float:
        return self.stack(self.cfg.mcb_layers, length)

    def shared(self, key: Pass, grad: bool) -> float:
        """Training FLOPs of one of the passes objectives can share (pretrain/objectives/passes.py), run once:
        3x its forward when a gradient flows back through it, else 1x (the frames' projection 2x, 3x under
        MFM's learned mask vector)."""
        kind, masked, learned = key
        if kind == "cross":
            return TRAIN * self.cross(self.m + self.n)
        if kind == "converted":  # T_cross over the plain inputs, then both MCBs
            return TRAIN * (self.cross(self.m + self.n) + self.mcb(self.m) + self.mcb(self.n))
        if not grad:
            return NO_GRAD * (self.text() if kind == "text" else self.video() + self.frames())
        if kind == "text":
            return TRAIN * self.text()
        return TRAIN * self.video() + (TRAIN if learned else ONE_GRAD) * self.frames()

    def guard(self) -> Need:
        cosines = 2 * 2 * self.w.batch * self.cfg.hidden  # the two (B, B) matrices of pairwise cosines
        return {TEXT: False, VIDEO: False}, NO_GRAD * cosines

    def mlm(self, _: Any) -> Need:
        d, h, v = self.cfg.hidden, self.t.hidden, self.t.vocab
        passes = {(TEXT[0], True, False): True, VIDEO: True, ("cross", "mlm", False): True}
        return passes, TRAIN * self.p_mlm * (2 * d * h + 2 * h * v)

    def mfm_nce(self, opts: Any) -> Need:
        d, dv, q = self.cfg.hidden, self.cfg.frame_dim, self.q
        learned = opts.mask_embedding
        passes = {TEXT: True, ("video", True, learned): True, ("cross", "mfm", learned): True}
        if opts.target == "raw":
            head, width, positives = TRAIN * self.m * (2 * d * d + 2 * d * dv), dv, ONE_GRAD
        else:
            detached = opts.detach_targets
            passes[VIDEO] = not detached  # the target pass embed_video(frames)
            head, width, positives = TRAIN * self.m * 2 * d * d, d, ONE_GRAD if detached else TRAIN
        nce = q * self.w.batch * (positives * 2 * q * width + TRAIN * 2 * (self.v - q) * width)
        return passes, head + nce

    def gmr(self, _: Any) -> Need:
        return {TEXT: True, VIDEO: True, CONVERTED: True}, 0.0

    def self_contrast(self, opts: Any) -> Need:
        twice = self.cross(2 * self.n) + self.mcb(self.n) + self.cross(2 * self.m) + self.mcb(self.m)
        return self.gmr(opts)[0], TRAIN * twice

    def taco(self, opts: Any) -> Need:
        d, k = self.cfg.hidden, self.k
        scores = 2 * k * d + 2 * self.w.toi_tokens * k * self.m * d  # L1's and L2's similarities to K videos
        out = TRAIN * scores
        if opts.lambda3 != 0:
            negatives = min(opts.k_neg, k - 1)
            cascade = NO_GRAD * 2 * scores if opts.cascade else 0.0
            out += cascade + 2 * (negatives + 1) * TRAIN * (self.cross(self.m + self.n) + 2 * d)
        return {TEXT: True, VIDEO: True}, out

    def step(self, needs: list[Need], share: bool) -> float:
        """Training FLOPs per sample of a step whose objectives (and guard) need `needs`: each distinct pass
        once when `share` (with a gradient when any of them wants one), else every objective's own."""
        own = sum(extra for _, extra in needs)
        if not share:
            return own + sum(self.shared(key, grad) for passes, _ in needs for key, grad in passes.items())
        union: dict[Pass, bool] = {}
        for passes, _ in needs:
            for key, grad in passes.items():
                union[key] = union.get(key, False) or grad
        return own + sum(self.shared(key, grad) for key, grad in union.items())


# objective name (pretrain.objectives.OBJECTIVES) -> its passes and own training FLOPs per sample given its options
OBJECTIVE_FLOPS = {"mlm": Costs.mlm, "mfm_nce": Costs.mfm_nce, "gmr": Costs.gmr, "self_contrast": Costs.self_contrast,
                   "taco": Costs.taco}  # fmt: skip


def workload_flops(model_cfg: ModelConfig, objectives_cfg: ObjectivesConfig, w: Workload,
                   text: TextEncoder | None = None) -> float:  # fmt: skip
    """Training FLOPs (forward + backward) per sample of one step of the enabled objectives (module doc);
    text: the text encoder's sizes (None: read from its config on disk)."""
    validate(objectives_cfg)
    cfg = resolve(model_cfg)
    costs = Costs(cfg, text or TextEncoder.load(cfg), w)
    weights = {name: float(objectives_cfg.weights.get(name, 1.0)) for name in objectives_cfg.enabled}
    weights = {name: weight for name, weight in weights.items() if weight > 0}
    share = getattr(objectives_cfg, "share_passes", True)
    needs = {name: OBJECTIVE_FLOPS[name](costs, objective_config(name, objectives_cfg)) for name in weights}
    if objectives_cfg.mode == "sum":
        return costs.step([costs.guard(), *needs.values()], share)
    total = sum(weights.values())  # sample: one objective (and the guard) per step, P = weight / total
    return sum(weight / total * costs.step([costs.guard(), needs[name]], share) for name, weight in weights.items())


def train_flops_per_sample(model_cfg: ModelConfig, objectives_cfg: ObjectivesConfig, text_len: int, frames: int,
                           text: TextEncoder | None = None, **counts: Any) -> float:  # fmt: skip
    """`workload_flops` at N = text_len, M = frames; counts: the other fields of `Workload` (batch, world,
    mlm_tokens, masked_frames, valid_frames, toi_tokens)."""
    return workload_flops(model_cfg, objectives_cfg, Workload(text_len, frames, **counts), text)


@dataclass(frozen=True)
class PretrainFlops:
    """The training FLOPs of one rank's batch (the loop's `flops`): its samples x `workload_flops`."""

    model: ModelConfig  # resolved
    objectives: ObjectivesConfig
    text: TextEncoder
    world: int

    def __call__(self, batch: dict) -> float:
        w = Workload.of_batch(batch, self.world)
        return w.batch * workload_flops(self.model, self.objectives, w, self.text)
