"""Rank information and the one helper for cross-rank communication inside losses.

Contrastive losses want negatives from every rank. The recipe (open_clip's "local loss"):

1. gather the features of all ranks WITH gradient (`gather_with_grad`, built on
   `torch.distributed.nn.functional.all_gather`, whose backward sums, for each rank's slice,
   the gradients that every rank computed for it);
2. compute the loss for this rank's rows only (`local_rows`), against all gathered columns;
3. let DeepSpeed average the parameter gradients over ranks (its default).

The average over the W ranks is then the gradient of (1/W) sum_r L_r, i.e. of the
single-process loss over the global batch (equal local batch sizes). What each piece is for:

- Without the gather's gradient (plain `dist.all_gather`, local slice put back), a rank's loss
  cannot reach the other ranks' features: the encoders get 1/W of their gradient (loss over all
  rows) or lose the cross-rank terms (local loss).
- With the gradient but the loss over ALL rows on every rank, each rank's encoder gradient is
  W times its share (the gather's backward sums W identical copies). DeepSpeed's mean over
  ranks cancels that factor, so the averaged gradient is still exact, but every rank computes
  the whole (W*B)^2 loss; the local loss gives the same gradient for 1/W of that work. The
  "W times too large" of the design notes holds for the per-rank gradient, or under a
  sum-reduce (Horovod's op=Sum), not after DeepSpeed's averaging (docs/design.md section 5).

`tests/integration/test_distributed.py` checks these four combinations with two gloo processes.

Everything here is the identity (or a no-op) when torch.distributed is not initialised or has
one rank, so the same loss code runs in a single CPU process.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def rank_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the launcher's environment, read in one place.

    torchrun and the DeepSpeed launcher set RANK/LOCAL_RANK/WORLD_SIZE; `srun` sets
    SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS. The torchrun variables win when both are present
    (torchrun inside a Slurm allocation), and a plain process is (0, 0, 1).
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env.get("LOCAL_RANK", "0")), int(env["WORLD_SIZE"])
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", "0")), int(env["SLURM_NTASKS"])
    return 0, 0, 1


def is_distributed() -> bool:
    """True when torch.distributed is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """(rank, world_size) of the initialised process group, (0, 1) without one."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _comm_device(x: Tensor | None = None) -> torch.device:
    """Device for small bookkeeping tensors: NCCL only moves CUDA tensors, gloo any CPU tensor."""
    if x is not None:
        return x.device
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gathered_shapes(x: Tensor) -> list[torch.Size]:
    """Shape of `x` on every rank (one small all_gather)."""
    shape = torch.tensor(x.shape, dtype=torch.long, device=_comm_device(x))  # (ndim,)
    shapes = [torch.empty_like(shape) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, shape)
    return [torch.Size(s.tolist()) for s in shapes]


def _pad_to_common_shape(x: Tensor, pad_value: float | bool) -> Tensor:
    """Pad every dim but the batch dim to the largest size over ranks; assert equal batch sizes.

    Loaders pad frames and tokens to the longest sample of their own batch, so M and N may
    differ between ranks; the padding added here is masked out like the loader's own (gather
    the masks with pad_value=False). Unequal batch sizes would break `local_rows`, so they are
    an error rather than silently mis-aligned rows.
    """
    shapes = _gathered_shapes(x)
    batch_sizes = [s[0] for s in shapes]
    if len(set(batch_sizes)) != 1:
        raise ValueError(f"gather needs the same local batch size on every rank, got {batch_sizes} (by rank)")
    if any(len(s) != x.dim() for s in shapes):
        raise ValueError(f"gather needs the same number of dims on every rank, got shapes {shapes}")
    target = [max(s[d] for s in shapes) for d in range(x.dim())]
    pad: list[int] = []
    for d in reversed(range(1, x.dim())):  # F.pad lists the last dim first
        pad += [0, target[d] - x.shape[d]]
    return F.pad(x, pad, value=float(pad_value)) if any(pad) else x


def gather_with_grad(x: Tensor, pad_value: float = 0.0) -> Tensor:
    """Concatenate `x` (B, ...) of every rank along dim 0 -> (W*B, ...), differentiably.

    The backward sums, for each rank's slice, the gradients that all ranks computed for it,
    which is what makes the local-loss recipe in the module docstring exact. Dims other than 0
    are padded with `pad_value` to the largest size over ranks. Identity with one rank.
    """
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    x = _pad_to_common_shape(x, pad_value)  # (B, ...)
    with warnings.catch_warnings():  # torch 2.13 points to a private module instead; this one works on gloo and NCCL
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
        parts = all_gather(x)  # W x (B, ...)
    return torch.cat(parts, dim=0)  # (W*B, ...)


@torch.no_grad()
def gather_no_grad(x: Tensor, pad_value: float | bool = 0) -> Tensor:
    """Concatenate `x` (B, ...) of every rank along dim 0 without gradient (masks, weights, ids).

    Booleans travel as uint8 (not every backend moves bool tensors). Same padding rule as
    `gather_with_grad`; identity with one rank.
    """
    if not is_distributed():
        return x
    is_bool = x.dtype == torch.bool
    y = _pad_to_common_shape(x.to(torch.uint8) if is_bool else x, pad_value).contiguous()  # (B, ...)
    parts = [torch.empty_like(y) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, y)
    out = torch.cat(parts, dim=0)  # (W*B, ...)
    return out.bool() if is_bool else out


def local_rows(global_batch: int, local_batch: int) -> slice:
    """This rank's rows in a tensor gathered by `gather_with_grad` (ranks in order)."""
    rank, world = rank_and_world()
    if global_batch != local_batch * world:
        raise ValueError(f"gathered batch {global_batch} != local batch {local_batch} x world size {world}")
    return slice(rank * local_batch, (rank + 1) * local_batch)


def broadcast_choice(index: int) -> int:
    """Rank 0's `index` on every rank (HERO: every rank must run the same sampled objective)."""
    if not is_distributed():
        return index
    choice = torch.tensor([index], dtype=torch.long, device=_comm_device())  # (1,)
    dist.broadcast(choice, src=0)
    return int(choice.item())
