"""Pretraining objectives: one module each, one interface, one explicit registry, one combiner.

An objective is built from its config dataclass and called as `objective(model, batch, passes)`;
it returns named losses (`{"mlm_loss": tensor}`; TACo returns three). `passes`
(pretrain/objectives/passes.py) is the step's memo of forward passes: objectives that encode the
same inputs share one pass (`share_passes`, on by default; without `passes` an objective runs its
own). The training loop only sees the `Combiner`, which runs the enabled objectives every step
(`mode="sum"`, weighted) or one objective per step sampled by weight (`mode="sample"`, HERO; the
choice is broadcast from rank 0 so every rank runs the same one), and returns its logs as detached
tensors: no host sync in the step (the loop converts them after its one all-reduce).

Adding an objective: its module (config dataclass + class with `name` and `__call__`), one
line in `OBJECTIVES`, and one field in `ObjectivesConfig` named like the registry key.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from pretrain.distributed import broadcast_choice
from pretrain.objectives.gmr import GMR, GMRConfig
from pretrain.objectives.mfm_nce import MFMNCE, MFMNCEConfig
from pretrain.objectives.mlm import MLM, MLMConfig
from pretrain.objectives.passes import Passes
from pretrain.objectives.self_contrast import SelfContrast, SelfContrastConfig
from pretrain.objectives.taco import Taco, TacoConfig
from pretrain.pooling import masked_mean

Batch = dict[str, Tensor]  # the loader's batch; keys in docs/objectives.md


class VideoTextModel(Protocol):
    """What the objectives call on the model (pretrain/model.py); it returns representations only."""

    def embed_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor: ...  # (B, N, d)

    def sentence(self, e_t: Tensor, text_mask: Tensor) -> Tensor: ...  # (B, d): the text pooling (pretrain/pooling.py)

    def embed_video(self, frames: Tensor, frame_mask: Tensor) -> Tensor: ...  # (B, M, d)

    def cross(self, e_v: Tensor, frame_mask: Tensor, e_t: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]: ...

    def mcb_v2t(self, o_v: Tensor, frame_mask: Tensor) -> Tensor: ...  # (B, M, d)

    def mcb_t2v(self, o_t: Tensor, text_mask: Tensor) -> Tensor: ...  # (B, N, d)

    def mlm_logits(self, o_t: Tensor) -> Tensor: ...  # (B, N, V)

    def mfm_head(self, o_v: Tensor) -> Tensor: ...  # (B, M, d)

    def mask_frames(self, frames: Tensor, mfm_mask: Tensor, learned: bool) -> Tensor: ...  # (B, M, Dv)

    def mfm_regress(self, o_v: Tensor) -> Tensor: ...  # (B, M, Dv)

    def fusion_score(self, e_v: Tensor, frame_mask: Tensor, e_t: Tensor, text_mask: Tensor) -> Tensor: ...  # (P,)


class Objective(Protocol):
    """One pretraining objective."""

    name: str

    def __call__(self, model: VideoTextModel, batch: Batch, passes: Passes | None = None) -> dict[str, Tensor]: ...


# name -> (config dataclass, builder taking that config)
OBJECTIVES: dict[str, tuple[type, Callable[[Any], Objective]]] = {
    "mlm": (MLMConfig, MLM),
    "mfm_nce": (MFMNCEConfig, MFMNCE),
    "gmr": (GMRConfig, GMR),
    "self_contrast": (SelfContrastConfig, SelfContrast),
    "taco": (TacoConfig, Taco),
}
MODES = ("sum", "sample")


@dataclass
class ObjectivesConfig:
    """Which objectives run, how they combine, and each one's options."""

    enabled: list[str] = field(default_factory=lambda: list(OBJECTIVES))
    weights: dict[str, float] = field(default_factory=dict)  # name -> weight (missing = 1.0); sample: ratio
    mode: str = "sum"  # "sum": weighted sum every step | "sample": one objective per step, P ~ weight
    seed: int = 0  # the sampled objective is a function of (seed, step): exact on resume
    share_passes: bool = True  # one forward per distinct input a step (objectives/passes.py); False: one per objective
    mlm: MLMConfig = field(default_factory=MLMConfig)
    mfm_nce: MFMNCEConfig = field(default_factory=MFMNCEConfig)
    gmr: GMRConfig = field(default_factory=GMRConfig)
    self_contrast: SelfContrastConfig = field(default_factory=SelfContrastConfig)
    taco: TacoConfig = field(default_factory=TacoConfig)


def check_names(names: list[str]) -> None:
    """ValueError naming the first unknown objective and listing the known ones."""
    for name in names:
        if name not in OBJECTIVES:
            raise ValueError(f"unknown objective {name!r}; known objectives: {', '.join(OBJECTIVES)}")


def validate(cfg: ObjectivesConfig) -> None:
    """Reject unknown names, unknown modes, negative weights, an empty or zero-weight selection."""
    check_names(list(cfg.enabled))
    check_names(list(cfg.weights))
    if cfg.mode not in MODES:
        raise ValueError(f"objectives mode must be one of {MODES}, got {cfg.mode!r}")
    if len(set(cfg.enabled)) != len(cfg.enabled):
        raise ValueError(f"objective listed twice in enabled: {list(cfg.enabled)}")
    weights = [cfg.weights.get(name, 1.0) for name in cfg.enabled]
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise ValueError(f"objective weights must be >= 0 with at least one > 0, got {dict(cfg.weights)}")


def objective_config(name: str, cfg: ObjectivesConfig) -> Any:
    """The objective's own section of the config, as its config dataclass."""
    check_names([name])
    config_cls = OBJECTIVES[name][0]
    section = getattr(cfg, name, None)
    if section is None:
        return config_cls()
    if not isinstance(section, config_cls):  # e.g. an OmegaConf DictConfig section
        return config_cls(**dict(section))
    return section


def build_objective(name: str, cfg: ObjectivesConfig) -> Objective:
    """The registry's builder applied to the objective's own section of the config."""
    return OBJECTIVES[name][1](objective_config(name, cfg))


def mean_pairwise_cosine(v: Tensor) -> Tensor:
    """The mean cosine () over the distinct pairs of rows of v (B, d): near 1 when every row points the same way."""
    n = v.shape[0]
    if n < 2:
        return v.new_full((), float("nan"), dtype=torch.float32)
    u = F.normalize(v.float(), dim=-1)  # (B, d)
    return ((u @ u.T).sum() - n) / (n * (n - 1))


@torch.no_grad()
def embedding_spread(model: VideoTextModel, batch: Batch, passes: Passes | None = None) -> dict[str, Tensor]:
    """The collapse guard: mean pairwise cosine of the batch's sentence vectors and of its videos' mean
    frames (the vectors TACo's L1 compares); near 1 means every text (or video) looks the same. With the
    step's `passes` it reuses the objectives' unmasked encodings (no extra forward when one ran)."""
    passes = passes or Passes(model, batch)
    text_mask, frame_mask = batch["attention_mask"], batch["frame_mask"]  # (B, N), (B, M)
    sentences = model.sentence(passes.text().detach(), text_mask)  # (B, d)
    videos = masked_mean(passes.video().detach(), frame_mask)  # (B, d)
    return {"sentence_cos": mean_pairwise_cosine(sentences), "video_cos": mean_pairwise_cosine(videos)}


class Combiner:
    """Runs the enabled objectives for a step and returns (total loss, named logs as detached tensors ()).

    sum: total = sum over objectives of weight * (sum of its named losses), every step.
    sample: one objective per step drawn with probability weight / sum(weights) from a
    generator seeded by (seed, step), the choice taken from rank 0; its losses count with
    weight 1 (the weights are the sampling ratio, as in HERO). Objectives with weight 0 never run.
    Every step gets one `Passes` memo (shared by the objectives and the collapse guard when
    `share_passes`); the logs stay on the device, so the step has no host sync.
    """

    def __init__(self, cfg: ObjectivesConfig):
        validate(cfg)
        self.cfg = cfg
        self.names = [name for name in cfg.enabled if cfg.weights.get(name, 1.0) > 0]
        self.weights = [float(cfg.weights.get(name, 1.0)) for name in self.names]
        self.objectives = {name: build_objective(name, cfg) for name in self.names}

    def choose(self, step: int) -> list[str]:
        """The objectives that run at `step` (all of them in sum mode; one, the same on every rank, in sample)."""
        if self.cfg.mode == "sum":
            return list(self.names)
        rng = random.Random(f"{self.cfg.seed}:{step}")
        index = rng.choices(range(len(self.names)), weights=self.weights)[0]
        return [self.names[broadcast_choice(index)]]

    def __call__(self, model: VideoTextModel, batch: Batch, step: int) -> tuple[Tensor, dict[str, Tensor | float]]:
        """(total loss to backpropagate, {every *_loss, "loss": total, "sentence_cos", "video_cos": the
        collapse guard (`embedding_spread`), each a detached tensor (); "ran_<name>": 1.0 or 0.0})."""
        chosen = self.choose(step)
        passes = Passes(model, batch, share=self.cfg.share_passes)
        total: Tensor | None = None
        logs: dict[str, Tensor | float] = {}
        for name in chosen:
            weight = 1.0 if self.cfg.mode == "sample" else self.weights[self.names.index(name)]
            for key, loss in self.objectives[name](model, batch, passes).items():
                if key in logs:
                    raise ValueError(f"objective {name!r} returned {key!r}, which another objective also returned")
                logs[key] = loss.detach()
                total = weight * loss if total is None else total + weight * loss
        assert total is not None, "no objective returned a loss"
        logs["loss"] = total.detach()
        logs.update(embedding_spread(model, batch, passes))
        logs.update({f"ran_{name}": float(name in chosen) for name in self.names})
        return total, logs
