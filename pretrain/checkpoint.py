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
Every rank uploads its own files (`upload_plan`: its ZeRO partitions and train_state_rank{r}.pt;
the files every rank reads, such as the ZeRO-0/1/2 model states, the lowest rank that sees them),
synchronously after the save (so a preempted job's checkpoint is uploaded before it exits), each
file with the loader's retries; the ranks then agree that every upload succeeded before rank 0
puts the COMPLETE marker, so a checkpoint some rank failed to upload is never complete remotely.
Rank 0 also keeps `<prefix>/metrics.jsonl` (uploaded before the marker): a run resumed on a node
whose run dir lacks the steps up to the checkpoint gets them from there, so each step stays once.

`checkpoint.node_local: true` (needs `upload`): each node has its own run dir, so no node holds a
whole checkpoint. The mirror is then the only place a checkpoint is complete: a run resumes from
the mirror's latest complete checkpoint, whatever its local folders hold, every rank downloading
what it reads (its own partitions, the shared files, COMPLETE), and rank 0 fetches the other ranks'
partitions of the last step before the consolidated export. Every node keeps its own local
COMPLETE markers, `latest` and `keep_last` pruning. Another world size is refused there (the
universal conversion needs every partition on one node).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pretrain import runtime

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
TAG_RE = re.compile(r"^step_(\d{8})$")
# A rank's own checkpoint files: DeepSpeed's ZeRO partitions ([bf16_]zero_pp_rank_<r>_mp_rank_00_*_states.pt,
# r the data-parallel rank, which is the global rank here: no model parallelism) and our train state.
OWN_FILE_RE = re.compile(r"(?:^|_)zero_pp_rank_(\d+)_|^train_state_rank(\d+)\.pt$")


@dataclass
class CheckpointConfig:
    every: int = 100  # steps between checkpoints (0: only at the end)
    keep_last: int = 3
    resume: str = "auto"  # auto: the latest complete checkpoint of the run dir; none; or a checkpoint path
    export: bool = True
    upload: str | None = None  # s3://bucket/prefix: mirror complete checkpoints and the export there
    s3_endpoint: str | None = None  # None: AWS_ENDPOINT_URL or AWS itself
    # Each node its own run dir (node-local disks): resume from `upload`, every rank fetching its files.
    node_local: bool = False


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


def save(engine, ckpt_dir: str, step: int, train_state: dict[str, Any], rank: int, world: int, keep_last: int,
         node_local: bool = False) -> str:  # fmt: skip
    """Every rank: DeepSpeed's save + its own train state; rank 0 (every rank when `node_local`: each node
    its own folder) marks it complete, points `latest` at it and prunes. Out of disk: DiskFull, with the
    partial folder removed."""
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
    if rank == 0 or node_local:  # ranks sharing a node's folder write the same bytes, each through its own name
        with open(os.path.join(path, f"{COMPLETE}.tmp{rank}"), "w") as f:
            json.dump({"step": step, "world_size": world}, f)
        os.replace(os.path.join(path, f"{COMPLETE}.tmp{rank}"), os.path.join(path, COMPLETE))
        with open(os.path.join(ckpt_dir, f"latest.tmp{rank}"), "w") as f:
            f.write(tag)
        os.replace(os.path.join(ckpt_dir, f"latest.tmp{rank}"), os.path.join(ckpt_dir, "latest"))
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


def file_owner(name: str) -> int | None:
    """The rank whose own file `name` (a path inside a checkpoint folder) is; None for a file every rank
    reads (the ZeRO-0/1/2 model states) or none needs (DeepSpeed's zero_to_fp32.py)."""
    m = OWN_FILE_RE.search(os.path.basename(name))
    return None if m is None else int(m.group(1) or m.group(2))


def upload_plan(seen: list[list[str]]) -> dict[str, int]:
    """Which rank uploads each file of a checkpoint, from the files each rank sees in its folder (`seen[r]`):
    the file's owner when it sees it, else the lowest rank that sees it. On a shared run dir every rank
    sees everything and uploads its own partitions (rank 0 the shared files); on node-local dirs each
    node's ranks upload what that node holds."""
    plan: dict[str, int] = {}
    for rank, names in enumerate(seen):
        for name in names:
            owner = file_owner(name)
            if owner == rank or (name not in plan and (owner is None or owner >= len(seen) or name not in seen[owner])):
                plan[name] = rank
    return plan


def _files(folder: str) -> list[str]:
    """The files under `folder` (relative paths), the COMPLETE marker and temporary files left out."""
    out = []
    for root, _, names in os.walk(folder):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), folder)
            if rel != COMPLETE and ".tmp" not in name:
                out.append(rel)
    return sorted(out)


def _all_gather(obj: Any) -> list[Any]:
    """`obj` of every rank, in rank order (one rank: [obj])."""
    if not torch.distributed.is_initialized():
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


class UploadError(RuntimeError):
    """A checkpoint some rank could not upload: the mirror's latest complete checkpoint stays the previous one."""


class Mirror:
    """The run's copy in object storage (checkpoint.upload)."""

    def __init__(self, url: str, endpoint: str | None, keep_last: int, node_local: bool = False):
        import fsspec

        from data_prep.storage import s3_options
        from pretrain.s3retry import RetryPolicy

        self.url, self.keep_last, self.retry = url.rstrip("/"), keep_last, RetryPolicy()
        self.node_local = node_local
        options = s3_options(endpoint) if url.startswith("s3://") else {}
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **options)

    def _call(self, fn, what: str):
        from pretrain.s3retry import retry_call

        return retry_call(fn, self.url, self.retry, what)

    def _put(self, src: str, dst: str) -> None:
        if "://" not in self.url:  # a local folder as the mirror (tests): object stores need no folders
            os.makedirs(os.path.dirname(dst), exist_ok=True)
        self._call(lambda: self.fs.put_file(src, dst), "checkpoint upload")

    def _put_tree(self, local: str, remote: str, last: str | None = None) -> None:
        """Upload a folder file by file; `last` (a marker) after everything else."""
        names = sorted(os.listdir(local), key=lambda n: n == last)
        for name in names:
            src, dst = os.path.join(local, name), f"{remote}/{name}"
            if os.path.isdir(src):
                self._put_tree(src, dst)
            else:
                self._put(src, dst)

    def remote_tags(self) -> list[str]:
        """Complete checkpoints in the mirror, oldest first."""
        pattern = f"{self.root}/checkpoints/*/{COMPLETE}"
        found = self._call(lambda: self.fs.glob(pattern), "checkpoint listing")
        return sorted(t for t in (p.rstrip("/").split("/")[-2] for p in found) if TAG_RE.match(t))

    def push_checkpoint(self, ckpt_dir: str, tag: str, rank: int = 0, metrics: str | None = None) -> None:
        """Every rank: upload this rank's share of `tag` (`upload_plan` over what each rank sees); once every
        rank's uploads succeeded, rank 0 uploads `metrics` (metrics.jsonl), then the COMPLETE marker, and prunes
        the mirror to `keep_last`. A failed upload on any rank: UploadError on every rank, naming it."""
        from pretrain.s3retry import describe

        local, remote = os.path.join(ckpt_dir, tag), f"{self.root}/checkpoints/{tag}"
        mine = _files(local)
        plan = upload_plan(_all_gather(mine))
        error = None
        try:
            for name in mine:
                if plan[name] == rank:
                    self._put(os.path.join(local, name), f"{remote}/{name}")
        except Exception as e:  # noqa: BLE001 - every rank learns of it below, then raises
            error = describe(e)
        failed = [(r, host, e) for r, (host, e) in enumerate(_all_gather((socket.gethostname(), error))) if e]
        if not failed and rank == 0:
            try:
                if metrics and os.path.exists(metrics):
                    self._put(metrics, f"{self.root}/metrics.jsonl")
                self._put(os.path.join(local, COMPLETE), f"{remote}/{COMPLETE}")
                self._prune()
            except Exception as e:  # noqa: BLE001
                error = describe(e)
        if not failed:
            failed = [(0, host, e) for host, e in _all_gather((socket.gethostname(), error))[:1] if e]
        if failed:
            who = "; ".join(f"rank {r} on {host}: {e}" for r, host, e in failed)
            raise UploadError(f"checkpoint {tag} was not uploaded to {self.url}/checkpoints/ ({who}); the mirror's "
                              "latest complete checkpoint is still the previous one")  # fmt: skip
        if rank == 0:
            log.info("uploaded checkpoint %s to %s/checkpoints/", tag, self.url)

    def _prune(self) -> None:
        for old in self.remote_tags()[: -self.keep_last]:  # the marker first: never a complete-looking partial
            self._call(lambda: self.fs.rm_file(f"{self.root}/checkpoints/{old}/{COMPLETE}"), "checkpoint prune")  # noqa: B023
            self._call(lambda: self.fs.rm(f"{self.root}/checkpoints/{old}", recursive=True), "checkpoint prune")  # noqa: B023

    def push_export(self, export_dir: str) -> None:
        self._put_tree(export_dir, f"{self.root}/export")
        log.info("uploaded the export to %s/export/", self.url)

    def pull(self, ckpt_dir: str, tag: str, wanted: Callable[[str], bool] = lambda name: True) -> int:
        """Download the files of the mirror's checkpoint `tag` that `wanted(relative path)` selects into
        ckpt_dir/tag, COMPLETE last; each through a temporary name of this process (the ranks of one node
        may fetch the same shared file at once). Returns the number of files fetched."""
        remote = f"{self.root}/checkpoints/{tag}"
        found = self._call(lambda: self.fs.find(remote), "checkpoint listing")
        files = sorted((f for f in found if not f.endswith(f"/{COMPLETE}")), key=str)
        count = 0
        for f in [*files, f"{remote}/{COMPLETE}"]:
            rel = os.path.relpath(f, remote)
            if rel != COMPLETE and not wanted(rel):
                continue
            dst = os.path.join(ckpt_dir, tag, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            tmp = f"{dst}.tmp{os.getpid()}"
            self._call(lambda: self.fs.get_file(f, tmp), "checkpoint download")  # noqa: B023 - called at once
            os.replace(tmp, dst)
            count += 1
        return count

    def pull_latest(self, ckpt_dir: str) -> str | None:
        """Download the mirror's latest complete checkpoint into ckpt_dir (COMPLETE last); its tag."""
        tags = self.remote_tags()
        if not tags:
            return None
        shutil.rmtree(os.path.join(ckpt_dir, tags[-1]), ignore_errors=True)
        self.pull(ckpt_dir, tags[-1])
        log.info("pulled checkpoint %s from %s", tags[-1], self.url)
        return tags[-1]

    def pull_metrics(self, run_dir: str, step: int) -> bool:
        """Replace <run_dir>/metrics.jsonl with the mirror's when the local one does not reach `step` (a run
        resumed on a node whose disk never saw those steps); True when it did."""
        path = os.path.join(run_dir, "metrics.jsonl")
        last = 0
        if os.path.exists(path):
            with open(path) as f:
                lines = [line for line in f if line.strip()]
            last = json.loads(lines[-1])["step"] if lines else 0
        remote = f"{self.root}/metrics.jsonl"
        if last >= step or not self._call(lambda: self.fs.exists(remote), "metrics listing"):
            return False
        self._call(lambda: self.fs.get_file(remote, f"{path}.tmp"), "metrics download")
        os.replace(f"{path}.tmp", path)
        log.info("metrics.jsonl reached step %d here; took the mirror's copy", last)
        return True


def mirror_for(cfg: CheckpointConfig) -> Mirror | None:
    return Mirror(cfg.upload, cfg.s3_endpoint, cfg.keep_last, cfg.node_local) if cfg.upload else None
