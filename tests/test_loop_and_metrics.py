"""The training loop's bookkeeping with a stand-in engine, and the retrieval metrics against brute force."""

from __future__ import annotations

import math
import os
import statistics

import pytest
import torch

from pretrain import metrics
from pretrain.loop import NonFiniteLoss, Trainer, TrainState


class FakeEngine:
    """Just enough of a DeepSpeed engine: accumulation boundaries, step counting, lr, grad norm."""

    def __init__(self, accum: int = 1):
        self.accum, self.micro, self.updates, self.backwards = accum, 0, 0, 0
        self.training = True

    def __call__(self, compute, batch):
        return compute(None, batch)

    def is_gradient_accumulation_boundary(self) -> bool:
        return (self.micro + 1) % self.accum == 0

    def backward(self, loss) -> None:
        self.backwards += 1

    def step(self) -> None:
        if self.is_gradient_accumulation_boundary():
            self.updates += 1
        self.micro += 1

    def get_lr(self) -> list[float]:
        return [1e-4]

    def get_global_grad_norm(self) -> float:
        return 1.0


class Batches(list):
    def state_dict(self) -> dict:
        return {}


def _trainer(losses: list[float], tmp_path, accum: int = 1, max_steps: int = 3, max_bad: int = 3) -> Trainer:
    it = iter(losses)

    def compute(model, batch, step):
        value = next(it)
        return torch.tensor(value), {"toy_loss": value, "loss": value}

    batches = Batches({"keys": ["a"], "x": torch.zeros(1)} for _ in losses)
    return Trainer(FakeEngine(accum), batches, compute, _NoTracker(), TrainState(), str(tmp_path), max_steps,
                   max_bad_steps=max_bad)


class _NoTracker:
    def log_metrics(self, metrics, step):
        pass


def test_non_finite_losses_are_skipped_and_counted(tmp_path) -> None:
    trainer = _trainer([1.0, math.nan, 2.0, math.inf, 3.0], tmp_path)
    for _ in range(5):
        trainer._micro_step({"keys": ["a"]})
    assert trainer.state.step == 3 and trainer.state.skipped == 2 and trainer.state.micro_steps == 5
    assert trainer.engine.backwards == 3 and trainer.state.bad_in_a_row == 0


def test_too_many_non_finite_losses_in_a_row_stop_the_run(tmp_path) -> None:
    trainer = _trainer([1.0, math.nan, math.nan, math.nan], tmp_path, max_bad=3)
    trainer._micro_step({"keys": ["a"]})
    trainer._micro_step({"keys": ["a"]})
    trainer._micro_step({"keys": ["a"]})
    with pytest.raises(NonFiniteLoss, match="3 non-finite losses in a row"):
        trainer._micro_step({"keys": ["a"]})


def test_gradient_accumulation_counts_optimizer_steps(tmp_path) -> None:
    trainer = _trainer([1.0, 2.0, math.nan, 3.0, 4.0], tmp_path, accum=2)
    done = [trainer._micro_step({"keys": ["a"]}) for _ in range(5)]
    assert done == [False, True, False, False, True]  # the skipped micro-step does not close a window
    assert trainer.state.step == 2 and trainer.engine.updates == 2


def _brute_ranks(sim: torch.Tensor, gt: torch.Tensor) -> list[int]:
    ranks = []
    for q in range(sim.shape[0]):
        target = sim[q, gt[q]].item()
        ranks.append(1 + sum(1 for v in range(sim.shape[1]) if sim[q, v].item() > target))
    return ranks


@pytest.mark.parametrize("seed", range(5))
def test_recall_and_ranks_match_brute_force(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    sim = torch.randint(0, 4, (30, 12), generator=g).float()  # many ties
    gt = torch.randint(0, 12, (30,), generator=g)
    ranks = _brute_ranks(sim, gt)
    got = metrics.text_to_video(sim, gt, ks=(1, 5, 10))
    for k in (1, 5, 10):
        assert got[f"R@{k}"] == pytest.approx(100.0 * sum(r <= k for r in ranks) / len(ranks))
    assert got["MedR"] == pytest.approx(statistics.median(ranks))
    assert got["MeanR"] == pytest.approx(sum(ranks) / len(ranks))


def test_diagonal_ground_truth_by_default() -> None:
    sim = torch.eye(4) + 0.1
    assert metrics.text_to_video(sim)["R@1"] == 100.0
    assert metrics.text_to_video(-sim)["R@1"] == 0.0


def test_ranks_from_a_faked_slurm_job_of_4_nodes_x_8_gpus(monkeypatch) -> None:
    from pretrain import runtime

    monkeypatch.setattr(os, "environ", dict(os.environ))  # setup_environment writes RANK etc.: keep it here
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(var, None)
    os.environ["MASTER_PORT"] = "29500"
    seen = set()
    for node in range(4):
        for gpu in range(8):
            os.environ.update(SLURM_PROCID=str(node * 8 + gpu), SLURM_LOCALID=str(gpu), SLURM_NTASKS="32")
            for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
                os.environ.pop(var, None)
            rank, local, world = runtime.setup_environment()
            assert (rank, local, world) == (node * 8 + gpu, gpu, 32)
            assert os.environ["RANK"] == str(rank) and os.environ["WORLD_SIZE"] == "32"
            seen.add(rank)
    assert seen == set(range(32))


def test_a_multi_rank_job_without_master_port_is_an_error(monkeypatch) -> None:
    from pretrain import runtime

    monkeypatch.setattr(os, "environ", dict(os.environ))
    for var in ("RANK", "LOCAL_RANK", "MASTER_PORT", "SLURM_PROCID"):
        os.environ.pop(var, None)
    os.environ.update(WORLD_SIZE="2", RANK="1")
    with pytest.raises(RuntimeError, match="MASTER_PORT"):
        runtime.setup_environment()
