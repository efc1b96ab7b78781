"""The finetuned model: the pretraining backbone plus a task head, and its initialisation from a
pretraining run.

`init.checkpoint` may name
- a pretraining export (`<run>/export/`, model.safetensors: fp32, any ZeRO stage), the default
  way and the one to share;
- a pretraining run directory (its export/ when present, else its latest complete checkpoint);
- a DeepSpeed checkpoint (`<run>/checkpoints/step_N/` or the `checkpoints/` folder: the latest
  complete one) saved with ZeRO stage 0-2, whose model file holds the whole module (in the
  training precision: bf16 weights are cast up; the fp32 master copy is in the optimizer files).

Nothing is unpickled unsafely: safetensors, or torch.load(weights_only=True). A ZeRO-3
checkpoint keeps only partitions in the optimizer files, which need a full unpickle: use the
export (training writes it at the end) instead. Every backbone tensor must be in the checkpoint
with its shape; otherwise the error names the tensors that differ.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pretrain import checkpoint

log = logging.getLogger(__name__)

DS_MODEL_FILE = "mp_rank_00_model_states.pt"


# The backbone's tensors that read raw frame features: their shape follows the feature dim.
FRAME_INPUT = ("frame_mean", "frame_std", "frame_proj.weight", "frame_proj.bias", "mfm_regress_out.weight",
               "mfm_regress_out.bias", "mfm_mask_vector")  # fmt: skip


@dataclass
class InitConfig:
    checkpoint: str | None = None  # pretraining export / run dir / DeepSpeed checkpoint; None: from scratch
    # True: a checkpoint of another feature dim than the finetune set's keeps everything but the layers that
    # read raw features (FRAME_INPUT), which start fresh (with the finetune set's frame statistics); a warning
    reinit_frame_input: bool = False


class TaskModel(nn.Module):
    """backbone (pretrain.model.VideoLanguageModel) + head (the task's own parameters)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, compute: Callable[[TaskModel, dict], Any], batch: dict) -> Any:
        """Run a task's loss or inference inside the engine's forward (see VideoLanguageModel.forward)."""
        return compute(self, batch)


def resolve_checkpoint(path: str) -> tuple[str, str]:
    """('safetensors' | 'deepspeed', file) for an init.checkpoint path; FileNotFoundError otherwise."""
    path = path.rstrip("/")
    candidates = [path, os.path.join(path, "export")]
    for p in candidates:
        if os.path.isfile(os.path.join(p, "model.safetensors")):
            return "safetensors", os.path.join(p, "model.safetensors")
        if os.path.isfile(os.path.join(p, DS_MODEL_FILE)):
            return "deepspeed", os.path.join(p, DS_MODEL_FILE)
    for ckpt_dir in (path, os.path.join(path, "checkpoints")):
        tags = checkpoint.complete_tags(ckpt_dir)
        if tags:
            return "deepspeed", os.path.join(ckpt_dir, tags[-1], DS_MODEL_FILE)
    raise FileNotFoundError(
        f"init.checkpoint {path}: no model.safetensors (export), {DS_MODEL_FILE} or complete checkpoint found"
    )


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The backbone's fp32 tensors from an export or a DeepSpeed stage 0-2 checkpoint (no unsafe pickle)."""
    kind, file = resolve_checkpoint(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        return load_file(file)
    saved = torch.load(file, map_location="cpu", weights_only=True)
    module = saved["module"]
    if any(v.numel() == 0 for v in module.values()) and saved.get("param_shapes"):
        raise ValueError(
            f"init.checkpoint {file}: a ZeRO-3 checkpoint holds only partitions; "
            "use the run's export/ (model.safetensors) instead"
        )
    return {k: v.float() for k, v in module.items()}


def load_backbone(backbone: nn.Module, path: str, reinit_frame_input: bool = False) -> int:
    """Copy a pretraining checkpoint into the backbone; every tensor must match, except, with
    `reinit_frame_input`, the FRAME_INPUT tensors when the feature dims differ (they keep their fresh
    init). Returns the number of tensors taken from the checkpoint (fewer than the backbone has when
    the frame input starts fresh)."""
    state = read_state_dict(path)
    own = backbone.state_dict()
    other_dim = any(k in state and state[k].shape != own[k].shape for k in FRAME_INPUT)
    if reinit_frame_input and other_dim:
        theirs = state["frame_mean"].shape[0] if "frame_mean" in state else state["frame_proj.weight"].shape[1]
        log.warning("init.reinit_frame_input: %s holds %d-d frame features, the model takes %d-d: %s start fresh",
                    path, theirs, own["frame_mean"].shape[0], ", ".join(FRAME_INPUT))  # fmt: skip
        state = {k: v for k, v in state.items() if k not in FRAME_INPUT} | {k: own[k] for k in FRAME_INPUT}
    fresh = len(FRAME_INPUT) if reinit_frame_input and other_dim else 0
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)  # fmt: skip
    if missing or unexpected or shapes:
        kinds = (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
        parts = [f"{name} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                 for name, keys in kinds if keys]  # fmt: skip
        hint = ("; a checkpoint of another feature dim needs init.reinit_frame_input=true"
                if other_dim and not reinit_frame_input else "")  # fmt: skip
        raise ValueError(f"init.checkpoint {path} does not match model config: " + "; ".join(parts) + hint)
    backbone.load_state_dict(state, strict=True)
    log.info("initialised %d backbone tensors from %s", len(state) - fresh, path)
    return len(state) - fresh
