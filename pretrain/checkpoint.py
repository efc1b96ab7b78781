"""Checkpoints that resume exactly, and the consolidated export.

Layout under `<run dir>/checkpoints/`:

    step_00000100/                 DeepSpeed's files (model, optimizer, scheduler states)
        train_state_rank{r}.pt     rank r's step, data position, RNG states, MLflow run id
        COMPLETE                   written by rank 0 after every rank saved: only such a
                                   checkpoint is ever picked as the latest
    step_00000100_universal/       made from it when resuming at another world size
    latest                         the newest complete tag, written after its COMPLETE (DeepSpeed's
                                   convention: zero_to_fp32.py and get_fp32_state_dict_from_zero_checkpoint
                                   find the checkpoint without an explicit tag)

A save that runs out of disk stops the run with one line saying so: where, how much is free, and
what the checkpoint needs (the size of the last complete one, when there is one); the partial
folder is removed, so it holds no space.

The export (`<run dir>/export/`) holds `config.yaml`, `model.safetensors` (fp32, gathered
from any ZeRO stage) and the tokenizer: what finetuning and anyone else loads.

`checkpoint.upload: s3://bucket/prefix` mirrors the run to object storage through s3fs: every
complete checkpoint goes to `<prefix>/checkpoints/<tag>/` (its COMPLETE marker last, so a
half-uploaded checkpoint is never taken as complete there either; the remote keeps the same
`keep_last`), the export to `<prefix>/export/`. A run whose directory holds no complete
checkpoint (a fresh node, a lost scratch disk) first pulls the latest complete one from there.
Rank 0 uploads, synchronously after the save (so a preempted job's checkpoint is uploaded
before it exits), each file with the loader's retries; the run directory is shared by the
ranks (a cluster filesystem), as DeepSpeed's checkpoints already assume.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pretrain import runtime

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
TAG_RE = re.compile(r"^step_(\d{8})$")


@dataclass
class CheckpointConfig:
    every: int = 100  # steps between checkpoints (0: only at the end)
    keep_last: int = 3
    resume: str = "auto"  # auto: the latest complete checkpoint of the run dir; none; or a checkpoint path
    export: bool = True
    upload: str | None = None  # s3://bucket/prefix: mirror complete checkpoints and the export there
    s3_endpoint: str | None = None  # None: AWS_ENDPOINT_URL or AWS itself


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def complete_tags(ckpt_dir: str) -> list[str]:
    """Complete checkpoints, oldest first."""
    if not os.path.isdir(ckpt_dir):
        return []
    tags = [t for t in os.listdir(ckpt_dir) if TAG_RE.match(t) and os.path.exists(os.path.join(ckpt_dir, t, COMPLETE))]
    return sorted(tags)


def find_resume(cfg: CheckpointConfig, ckpt_dir: str) -> tuple[str, str] | None:
    """(checkpoint dir, tag) to resume from, or None to start fresh."""
    if cfg.resume == "none":
        return None
    if cfg.resume == "auto":
        tags = complete_tags(ckpt_dir)
        return (ckpt_dir, tags[-1]) if tags else None
    path = cfg.resume.rstrip("/")
    if not os.path.exists(os.path.join(path, COMPLETE)):
        raise ValueError(f"checkpoint.resume {cfg.resume!r} is not a complete checkpoint (no {COMPLETE} file)")
    return os.path.dirname(path), os.path.basename(path)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    random.setstate(state["python"])


FULL_BELOW = 16 * 2**20  # bytes free under which a failed save counts as the disk being full


class DiskFull(OSError):
    """A checkpoint that did not fit on its disk (the partial folder is removed)."""


def _disk_full(exc: BaseException | None, folder: str) -> bool:
    """ENOSPC in the error's chain, or a filesystem left (nearly) without free space: torch's writer says
    only "unexpected pos ... iostream error" when the disk fills up."""
    while exc is not None:
        if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return shutil.disk_usage(folder).free < FULL_BELOW


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def save(engine, ckpt_dir: str, step: int, train_state: dict[str, Any], rank: int, world: int, keep_last: int) -> str:
    """Every rank: DeepSpeed's save + its own train state; rank 0 marks it complete, points `latest`
    at it and prunes. Out of disk: DiskFull, with the partial folder removed."""
    tag = tag_for(step)
    path = os.path.join(ckpt_dir, tag)
    try:
        runtime.save(engine, ckpt_dir, tag)
        torch.save({**train_state, "rng": rng_state()}, os.path.join(path, f"train_state_rank{rank}.pt"))
    except Exception as e:  # noqa: BLE001 - re-raised, as DiskFull when the disk is full
        if not _disk_full(e, ckpt_dir):
            raise
        shutil.rmtree(path, ignore_errors=True)
        previous = complete_tags(ckpt_dir)
        if previous:
            last = _folder_bytes(os.path.join(ckpt_dir, previous[-1])) / 2**30
            need = f"; the last complete checkpoint takes {last:.2f} GiB"
        else:  # fp32 weights + Adam's two moments (+ the master copy under mixed precision): ~16 bytes a parameter
            params = sum(getattr(q, "ds_numel", q.numel()) for q in engine.module.parameters())
            need = f"; a checkpoint of this model takes about {16 * params / 2**30:.2f} GiB"
        free = shutil.disk_usage(ckpt_dir).free / 2**30
        raise DiskFull(
            errno.ENOSPC,
            f"no space left on device for checkpoint {path}: {free:.2f} GiB free on that "
            f"filesystem{need}; the partial checkpoint was removed (free space, lower "
            "checkpoint.keep_last, or point run.output_dir elsewhere)",
        ) from None
    runtime.barrier()
    if rank == 0:
        with open(os.path.join(path, COMPLETE + ".tmp"), "w") as f:
            json.dump({"step": step, "world_size": world}, f)
        os.replace(os.path.join(path, COMPLETE + ".tmp"), os.path.join(path, COMPLETE))
        with open(os.path.join(ckpt_dir, "latest.tmp"), "w") as f:
            f.write(tag)
        os.replace(os.path.join(ckpt_dir, "latest.tmp"), os.path.join(ckpt_dir, "latest"))
        _prune(ckpt_dir, keep_last, newest=tag)
    runtime.barrier()
    return path


def _prune(ckpt_dir: str, keep_last: int, newest: str) -> None:
    """Keep the last `keep_last` complete checkpoints; drop older ones and stale partial ones."""
    tags = complete_tags(ckpt_dir)
    drop = tags[: max(0, len(tags) - keep_last)]
    drop += [
        t
        for t in os.listdir(ckpt_dir)
        if (TAG_RE.match(t) and t not in tags and t < newest)
        or (t.endswith("_universal") and t[: -len("_universal")] not in tags[-keep_last:])
    ]
    for t in drop:
        shutil.rmtree(os.path.join(ckpt_dir, t), ignore_errors=True)


def saved_world_size(ckpt_dir: str, tag: str) -> int:
    with open(os.path.join(ckpt_dir, tag, COMPLETE)) as f:
        return int(json.load(f)["world_size"])


def prepare_universal(ckpt_dir: str, tag: str, rank: int) -> str:
    """Convert `tag` to DeepSpeed's universal checkpoint once (rank 0); returns the universal tag."""
    out_tag = f"{tag}_universal"
    if rank == 0 and not os.path.exists(os.path.join(ckpt_dir, out_tag, COMPLETE)):
        shutil.rmtree(os.path.join(ckpt_dir, out_tag), ignore_errors=True)
        log.info("converting %s/%s to a universal checkpoint for a new world size", ckpt_dir, tag)
        runtime.to_universal(ckpt_dir, tag, out_tag)
        for name in os.listdir(os.path.join(ckpt_dir, tag)):
            if name.startswith("train_state_rank"):
                shutil.copy(os.path.join(ckpt_dir, tag, name), os.path.join(ckpt_dir, out_tag, name))
        shutil.copy(os.path.join(ckpt_dir, tag, COMPLETE), os.path.join(ckpt_dir, out_tag, COMPLETE))
    runtime.barrier()
    return out_tag


def load_train_state(ckpt_dir: str, tag: str, rank: int, same_world: bool) -> dict[str, Any]:
    """This rank's train state; at another world size, rank 0's (its RNG states are not restored)."""
    name = f"train_state_rank{rank if same_world else 0}.pt"
    state = torch.load(os.path.join(ckpt_dir, tag, name), map_location="cpu", weights_only=True)
    if same_world:
        set_rng_state(state["rng"])
    return state


def _export_text_encoder(module: Any, state: dict[str, Any], out_dir: str, tokenizer: Any) -> None:
    """The text encoder alone as a Hugging Face model folder (config.json, model.safetensors, tokenizer):
    `AutoModel.from_pretrained(out_dir)` loads it without this project."""
    from safetensors.torch import save_file

    holder = module if hasattr(module, "text") else getattr(module, "backbone", None)
    if holder is None or not hasattr(holder, "text"):
        return
    prefix = "text." if holder is module else "backbone.text."
    weights = {k[len(prefix) :]: v.contiguous() for k, v in state.items() if k.startswith(prefix)}
    os.makedirs(out_dir, exist_ok=True)
    holder.text.config.save_pretrained(out_dir)
    save_file(weights, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)


def export(
    engine, ckpt_dir: str, tag: str, out_dir: str, config_yaml: str, tokenizer, zero_stage: int, rank: int
) -> None:
    """Consolidated export (rank 0 writes): config.yaml (every model field resolved), model.safetensors
    (fp32), the tokenizer, and text_encoder/ (the text encoder as a Hugging Face model folder)."""
    from safetensors.torch import save_file

    if rank == 0:
        if zero_stage == 0:
            state = {k: v.detach().float().cpu() for k, v in engine.module.state_dict().items()}
        else:
            state = runtime.fp32_state_dict(ckpt_dir, tag)
        os.makedirs(out_dir, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out_dir, "model.safetensors"))
        with open(os.path.join(out_dir, "config.yaml"), "w") as f:
            f.write(config_yaml)
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)
        _export_text_encoder(engine.module, state, os.path.join(out_dir, "text_encoder"), tokenizer)
        log.info("exported %d tensors to %s", len(state), out_dir)
    runtime.barrier()


class Mirror:
    """The run's copy in object storage (checkpoint.upload)."""

    def __init__(self, url: str, endpoint: str | None, keep_last: int):
        import fsspec

        from data_prep.storage import s3_options
        from pretrain.s3retry import RetryPolicy

        self.url, self.keep_last, self.retry = url.rstrip("/"), keep_last, RetryPolicy()
        options = s3_options(endpoint) if url.startswith("s3://") else {}
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **options)

    def _call(self, fn, what: str):
        from pretrain.s3retry import retry_call

        return retry_call(fn, self.url, self.retry, what)

    def _put_tree(self, local: str, remote: str, last: str | None = None) -> None:
        """Upload a folder file by file; `last` (a marker) after everything else."""
        names = sorted(os.listdir(local), key=lambda n: n == last)
        for name in names:
            src, dst = os.path.join(local, name), f"{remote}/{name}"
            if os.path.isdir(src):
                self._put_tree(src, dst)
            else:
                self._call(lambda: self.fs.put_file(src, dst), "checkpoint upload")  # noqa: B023 - called at once

    def remote_tags(self) -> list[str]:
        """Complete checkpoints in the mirror, oldest first."""
        pattern = f"{self.root}/checkpoints/*/{COMPLETE}"
        found = self._call(lambda: self.fs.glob(pattern), "checkpoint listing")
        return sorted(t for t in (p.rstrip("/").split("/")[-2] for p in found) if TAG_RE.match(t))

    def push_checkpoint(self, ckpt_dir: str, tag: str) -> None:
        self._put_tree(os.path.join(ckpt_dir, tag), f"{self.root}/checkpoints/{tag}", last=COMPLETE)
        for old in self.remote_tags()[: -self.keep_last]:  # the marker first: never a complete-looking partial
            self._call(lambda: self.fs.rm_file(f"{self.root}/checkpoints/{old}/{COMPLETE}"), "checkpoint prune")  # noqa: B023
            self._call(lambda: self.fs.rm(f"{self.root}/checkpoints/{old}", recursive=True), "checkpoint prune")  # noqa: B023
        log.info("uploaded checkpoint %s to %s/checkpoints/", tag, self.url)

    def push_export(self, export_dir: str) -> None:
        self._put_tree(export_dir, f"{self.root}/export")
        log.info("uploaded the export to %s/export/", self.url)

    def pull_latest(self, ckpt_dir: str) -> str | None:
        """Download the mirror's latest complete checkpoint into ckpt_dir (COMPLETE last); its tag."""
        tags = self.remote_tags()
        if not tags:
            return None
        tag, local = tags[-1], os.path.join(ckpt_dir, tags[-1])
        shutil.rmtree(local, ignore_errors=True)
        remote = f"{self.root}/checkpoints/{tag}"
        files = [f for f in self._call(lambda: self.fs.find(remote), "checkpoint listing") if not f.endswith(COMPLETE)]
        for f in [*files, f"{remote}/{COMPLETE}"]:
            dst = os.path.join(local, os.path.relpath(f, remote))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            self._call(lambda: self.fs.get_file(f, dst), "checkpoint download")  # noqa: B023 - called at once
        log.info("pulled checkpoint %s from %s", tag, self.url)
        return tag


def mirror_for(cfg: CheckpointConfig) -> Mirror | None:
    return Mirror(cfg.upload, cfg.s3_endpoint, cfg.keep_last) if cfg.upload else None
