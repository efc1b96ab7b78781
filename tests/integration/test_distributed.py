"""pretrain/distributed.py: rank info, and the local-loss recipe with gathered negatives.

Two CPU processes (gloo) with a local batch of 3 each must reproduce one process with the
global batch of 6: the same TACo loss (L1 + L2 + L3, deterministic cascade negatives) and,
after averaging the gradients over ranks as DeepSpeed does, the same parameter gradients.
Rank 1 pads its batch to fewer frames and tokens than rank 0, as a loader padding per batch
would. Four recipes are compared: local or global loss, gather with or without gradient. Both
gradient-carrying gathers are exact after averaging (the local one at 1/W of the loss compute);
gathering without gradient is the negative control that shows the test can fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from test_objectives import TinyModel, make_batch
from torch import Tensor

from launch.pipeline import free_port
from pretrain.distributed import (
    broadcast_choice,
    gather_no_grad,
    gather_with_grad,
    local_rows,
    rank_info,
)
from pretrain.objectives.taco import Taco, TacoConfig, Texts, taco_losses

WORLD, LOCAL = 2, 3
CFG = TacoConfig(k_neg=2, tau1=0.5, tau2=0.5)
ENCODERS = ("word", "text_pos", "text_norm", "frame_proj", "frame_pos", "frame_norm")  # before the gather
FUSION = ("fuse", "modality", "score")  # used only on gathered features (L3)


def global_batch() -> dict[str, Tensor]:
    """6 pairs; the last 3 (rank 1) have at most 4 frames and 5 tokens."""
    return make_batch(WORLD * LOCAL, n=7, m=6, seed=11, frame_lengths=[6, 5, 6, 3, 4, 2],
                      text_lengths=[7, 6, 4, 5, 3, 5], toi_free=(4,))  # fmt: skip


def local_batch(rank: int) -> dict[str, Tensor]:
    """This rank's rows, with the padding cut to the longest sample of the local batch."""
    rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
    batch = {k: v[rows] for k, v in global_batch().items()}
    m, n = int(batch["frame_mask"].sum(1).max()), int(batch["attention_mask"].sum(1).max())
    return {k: v[:, :m] if k in ("frames", "frame_mask", "mfm_mask") else v[:, :n] for k, v in batch.items()}


def grads(model: torch.nn.Module) -> dict[str, Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def averaged(t: Tensor) -> Tensor:
    """Mean over ranks (DeepSpeed's gradient averaging)."""
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def gathered_taco(model: TinyModel, batch: dict[str, Tensor], local_loss: bool, with_grad: bool) -> dict[str, Tensor]:
    """TACo on gathered features, by hand: local rows or all rows; gather with or without gradient.

    Without gradient, the local features are put back into their slot (open_clip's default), so
    only this rank's features carry gradient.
    """
    x = model.embed_video(batch["frames"], batch["frame_mask"])  # (B, M, d)
    y = model.embed_text(batch["input_ids"], batch["attention_mask"])  # (B, N, d)
    fm, tm = gather_no_grad(batch["frame_mask"], False), gather_no_grad(batch["attention_mask"], False)  # (2B, .)
    rows = local_rows(WORLD * x.shape[0], x.shape[0])
    if with_grad:
        x_all, y_all = gather_with_grad(x), gather_with_grad(y)  # (2B, M, d), (2B, N, d)
    else:
        x_all, y_all = gather_no_grad(x.detach()), gather_no_grad(y.detach())  # (2B, M, d), (2B, N, d)
        x_all = torch.cat([x_all[: rows.start], F.pad(x, (0, 0, 0, x_all.shape[1] - x.shape[1])), x_all[rows.stop :]])
        y_all = torch.cat([y_all[: rows.start], F.pad(y, (0, 0, 0, y_all.shape[1] - y.shape[1])), y_all[rows.stop :]])
    toi = gather_no_grad(batch["toi_weight"])  # (2B, N)
    rows = rows if local_loss else slice(0, x_all.shape[0])
    texts = Texts(y_all, model.sentence(y_all, tm), tm, toi)
    return taco_losses(x_all, fm, texts, rows, model.fusion_score, CFG)


RECIPES = {  # name -> (local loss, gather with gradient)
    "local_with_grad": (True, True),
    "global_with_grad": (False, True),
    "local_no_grad": (True, False),
    "global_no_grad": (False, False),
}


def run_step(rank: int, recipe: str) -> dict:
    """One TACo step on this rank; loss parts and gradients averaged over ranks."""
    model = TinyModel()
    batch = local_batch(rank)
    if recipe == "objective":
        parts = Taco(CFG)(model, batch)
    else:
        parts = gathered_taco(model, batch, *RECIPES[recipe])
    sum(parts.values()).backward()
    averaged_grads = {k: averaged(v) for k, v in grads(model).items()}
    return {"parts": {k: averaged(v) for k, v in parts.items()}, "grads": averaged_grads}


def helper_checks(rank: int) -> dict:
    """gather padding, local_rows, broadcast_choice, the unequal-batch error."""
    ragged = torch.full((2, 3 - rank), float(rank + 1))  # rank 0: (2, 3), rank 1: (2, 2)
    rows = local_rows(4, 2)
    out = {"gathered": gather_with_grad(ragged), "rows": (rows.start, rows.stop), "choice": broadcast_choice(10 + rank)}
    out["mask"] = gather_no_grad(torch.ones(1, 2 + rank, dtype=torch.bool), pad_value=False)
    try:
        gather_with_grad(torch.zeros(1 + rank, 2))
        out["unequal"] = "no error"
    except ValueError as e:
        out["unequal"] = str(e)
    return out


def worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        result = {recipe: run_step(rank, recipe) for recipe in ("objective", *RECIPES)}
        result.update(helper_checks(rank))
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def one_rank() -> dict:
    model = TinyModel()
    parts = Taco(CFG)(model, global_batch())
    sum(parts.values()).backward()
    return {"parts": {k: v.detach() for k, v in parts.items()}, "grads": grads(model)}


def assert_matches(got: dict, want: dict, encoder_factor: float = 1.0) -> None:
    """Same loss parts; gradients equal, the encoders' (before the gather) scaled by encoder_factor."""
    for key, value in want["parts"].items():
        torch.testing.assert_close(got["parts"][key], value, msg=key)
    assert set(got["grads"]) == set(want["grads"])
    for name, value in want["grads"].items():
        assert name.startswith(ENCODERS + FUSION), name
        factor = encoder_factor if name.startswith(ENCODERS) else 1.0
        torch.testing.assert_close(got["grads"][name], factor * value, msg=name)


@pytest.mark.parametrize("recipe", ["objective", "local_with_grad"])
def test_local_loss_on_two_ranks_equals_one_rank(two_ranks, one_rank, recipe):
    assert_matches(two_ranks[0][recipe], one_rank)
    assert one_rank["parts"]["taco_l3_loss"] > 0 and one_rank["parts"]["taco_l2_loss"] > 0


def test_global_loss_with_grad_gather_is_also_exact(two_ranks, one_rank):
    """Every rank computing all rows: each rank's encoder gradient is W x its share (the gather's
    backward sums W identical copies), and DeepSpeed's mean over ranks cancels exactly that.
    Exact, but W x the loss compute; the local loss is the same gradient for 1/W of the work."""
    assert_matches(two_ranks[0]["global_with_grad"], one_rank)


def test_gather_without_grad_gets_the_encoder_gradients_wrong(two_ranks, one_rank):
    """The negative control: without the gather's gradient, the global loss gives the encoders
    1/W of their gradient and the local loss loses the cross-rank terms."""
    assert_matches(two_ranks[0]["global_no_grad"], one_rank, encoder_factor=1 / WORLD)
    with pytest.raises(AssertionError, match="frame_proj|word|text|frame"):
        assert_matches(two_ranks[0]["local_no_grad"], one_rank)


def test_gather_helpers(two_ranks):
    for rank, result in enumerate(two_ranks):
        torch.testing.assert_close(result["gathered"], torch.tensor([[1.0, 1, 1], [1, 1, 1], [2, 2, 0], [2, 2, 0]]))
        assert torch.equal(result["mask"], torch.tensor([[True, True, False], [True, True, True]]))
        assert result["rows"] == (2 * rank, 2 * rank + 2)
        assert result["choice"] == 10  # rank 0's
        assert "same local batch size" in result["unequal"] and "[1, 2]" in result["unequal"]


def test_rank_info_from_environment(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    assert rank_info() == (0, 0, 1)
    monkeypatch.setenv("SLURM_PROCID", "13")
    monkeypatch.setenv("SLURM_LOCALID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "32")
    assert rank_info() == (13, 5, 32)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert rank_info() == (3, 1, 8)  # torchrun / DeepSpeed launcher variables win


def test_single_process_helpers_are_identities():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x and gather_no_grad(x) is x
    assert local_rows(3, 3) == slice(0, 3) and broadcast_choice(4) == 4
    with pytest.raises(ValueError, match="world size"):
        local_rows(6, 3)
