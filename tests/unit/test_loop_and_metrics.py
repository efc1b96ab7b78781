"""The training loop's bookkeeping with a stand-in engine, and the retrieval metrics against brute force."""

from __future__ import annotations

import json
import math
import os
import statistics
import time

import pytest
import torch

from pretrain import metrics
from pretrain.loop import Meter, NonFiniteLoss, Trainer, TrainState


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


def _trainer(losses: list[float], tmp_path, device: torch.device, accum: int = 1, max_steps: int = 3,
             max_bad: int = 3) -> Trainer:  # fmt: skip
    """A Trainer on `device` whose compute returns `losses` in turn; it checks that the batch arrives there."""
    it = iter(losses)

    def compute(model, batch, step):
        assert batch["x"].device.type == device.type  # the loop moved the batch to the device
        value = next(it)
        return torch.tensor(value, device=device), {"toy_loss": value, "loss": value}

    batches = Batches({"keys": ["a"], "x": torch.zeros(1)} for _ in losses)
    return Trainer(FakeEngine(accum), batches, compute, _NoTracker(), TrainState(), str(tmp_path), max_steps,
                   max_bad_steps=max_bad, device=device)  # fmt: skip


BATCH = {"keys": ["a"], "x": torch.zeros(1)}  # a batch as the loader gives it: on the CPU


class _NoTracker:
    def log_metrics(self, metrics, step):
        pass


def test_non_finite_losses_are_skipped_and_counted(tmp_path, device) -> None:
    trainer = _trainer([1.0, math.nan, 2.0, math.inf, 3.0], tmp_path, device)
    for _ in range(5):
        trainer._micro_step(BATCH)
    assert trainer.state.step == 3 and trainer.state.skipped == 2 and trainer.state.micro_steps == 5
    assert trainer.engine.backwards == 3 and trainer.state.bad_in_a_row == 0


def test_too_many_non_finite_losses_in_a_row_stop_the_run(tmp_path, device) -> None:
    trainer = _trainer([1.0, math.nan, math.nan, math.nan], tmp_path, device, max_bad=3)
    trainer._micro_step(BATCH)
    trainer._micro_step(BATCH)
    trainer._micro_step(BATCH)
    with pytest.raises(NonFiniteLoss, match="3 non-finite losses in a row"):
        trainer._micro_step(BATCH)


def test_gradient_accumulation_counts_optimizer_steps(tmp_path, device) -> None:
    trainer = _trainer([1.0, 2.0, math.nan, 3.0, 4.0], tmp_path, device, accum=2)
    done = [trainer._micro_step(BATCH) for _ in range(5)]
    assert done == [False, True, False, False, True]  # the skipped micro-step does not close a window
    assert trainer.state.step == 2 and trainer.engine.updates == 2


class _SlowBatches(Batches):
    """Batches that take `wait` seconds each to arrive, as a loader that cannot keep up."""

    def __init__(self, items, wait: float):
        super().__init__(items)
        self.wait = wait

    def __iter__(self):
        for item in super().__iter__():
            time.sleep(self.wait)
            yield item


@pytest.mark.parametrize("peak", [None, 1e9])
def test_throughput_data_wait_and_mfu_are_logged_every_step(tmp_path, peak) -> None:
    """tokens_per_s counts the text tokens (padding excluded), data_wait_frac the time spent waiting for the
    loader, mfu the batches' FLOPs against the peak over the same window; no peak (the CPU): no mfu."""
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)  # 5 tokens a batch
    batches = _SlowBatches([{"keys": ["a", "b"], "attention_mask": mask} for _ in range(4)], wait=0.05)
    compute = lambda model, batch, step: (torch.tensor(1.0), {"loss": 1.0})  # noqa: E731
    trainer = Trainer(FakeEngine(accum=2), batches, compute, _NoTracker(), TrainState(), str(tmp_path), 2,
                      flops=lambda batch: 1e6, peak_flops=peak)  # fmt: skip
    trainer.save = lambda: ""  # the stand-in engine has nothing to save
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert 0.5 < row["data_wait_frac"] <= 1.0, row  # the compute takes next to nothing: the loader is slow
        assert 0 < row["tokens_per_s"] <= 10 / 0.1, row  # 2 batches of 5 tokens, each after a 0.05 s wait
        assert row["step_s"] >= 0.1 and 0 <= row["sync_wait_s"] <= row["sync_wait_max_s"] < 0.1, row  # one rank
        if peak is None:
            assert "mfu" not in row
        else:  # the same window: FLOPs / peak per second against tokens per second
            assert row["mfu"] * peak / 2e6 == pytest.approx(row["tokens_per_s"] / 10), row


def test_each_rank_has_its_own_slot_for_its_all_reduce_wait(tmp_path) -> None:
    """The loss all-reduce's wait travels in rank's own slot of the log line's all-reduce (no process group here:
    the sum is this rank's alone); step_s is the window's mean over ranks; the slowest rank waited least."""
    trainer = Trainer(FakeEngine(), Batches(), None, _NoTracker(), TrainState(), str(tmp_path), 1, rank=1, world=2)
    trainer._meter.seconds, trainer._meter.sync = 3.0, 0.25
    _, out = trainer._summed_over_ranks()
    assert out["sync_wait_max_s"] == 0.25 and out["sync_wait_s"] == 0.125 and out["slowest_rank"] == 0.0
    assert out["step_s"] == 1.5  # 3 s of this rank's (the other's 0 here) over 2 ranks
    summed = trainer._throughput(Meter(seconds=9.0), [0.6, 0.02, 0.4])  # rank 1 is the one the others wait for
    assert summed["slowest_rank"] == 1.0 and summed["sync_wait_max_s"] == 0.6 and summed["step_s"] == 4.5


def test_the_loss_all_reduce_is_timed(tmp_path) -> None:
    trainer = _trainer([1.0], tmp_path, torch.device("cpu"))
    trainer._micro_step(BATCH)
    assert trainer._meter.sync > 0.0


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


class _Embedder(torch.nn.Module):
    """embed_text / embed_video of pretrain/model.py with fixed random tables; the engine calls compute(self, batch)."""

    def __init__(self, d: int = 6, pooling: str = "mean"):
        super().__init__()
        self.pooling = pooling
        g = torch.Generator().manual_seed(3)
        self.words, self.proj = torch.randn(20, d, generator=g), torch.randn(4, d, generator=g)

    def forward(self, compute, batch):
        return compute(self, batch)

    def embed_text(self, ids, mask):
        return self.words[ids]

    def embed_video(self, frames, mask):
        return frames @ self.proj

    def sentence(self, y, mask):
        from pretrain.pooling import pool_text

        return pool_text(y, mask, self.pooling)


def _zeroshot_batches(g: torch.Generator) -> list[dict]:
    """Two batches of different text and frame lengths, with padding and texts without tokens of interest."""
    out = []
    for b, n, m in ((4, 5, 6), (3, 7, 4)):
        lengths, frames = torch.randint(2, n + 1, (b,), generator=g), torch.randint(1, m + 1, (b,), generator=g)
        mask = torch.arange(n)[None] < lengths[:, None]
        toi = torch.rand(b, n, generator=g) * (torch.rand(b, n, generator=g) < 0.5) * mask
        toi[0] = 0.0  # the first text of each batch: sentence level only
        out.append({"input_ids": torch.randint(0, 20, (b, n), generator=g), "attention_mask": mask,
                    "toi_weight": toi, "frames": torch.randn(b, m, 4, generator=g),
                    "frame_mask": torch.arange(m)[None] < frames[:, None]})  # fmt: skip
    return out


@pytest.mark.parametrize("similarity,pooling", [("dot", "mean"), ("cosine", "mean"), ("dot", "cls")])
def test_zero_shot_scores_match_their_definitions(similarity: str, pooling: str) -> None:
    """zeroshot_t2v: sim(sentence vector, mean frame); zeroshot_taco: that + sum over the tokens of interest
    of the best frame's sim (TACo section 3.3), each clip's text against every clip's video, naively; sim is
    pretraining's TACo similarity (dot product, or cosine), the sentence vector the model's text pooling
    (the mean of the valid tokens, or [CLS])."""
    from pretrain import zeroshot
    from pretrain.objectives.taco import TacoConfig

    model = _Embedder(pooling=pooling)
    batches = _zeroshot_batches(torch.Generator().manual_seed(0))
    rows = [{k: v[i] for k, v in b.items()} for b in batches for i in range(len(b["input_ids"]))]
    cfg = TacoConfig(similarity=similarity)
    dot = lambda a, b: float((a * b).sum())  # noqa: E731
    sim = (lambda a, b: dot(a, b) / (a.norm() * b.norm())) if similarity == "cosine" else dot  # noqa: E731
    sentence, taco = torch.zeros(len(rows), len(rows)), torch.zeros(len(rows), len(rows))
    for i, t in enumerate(rows):
        y = model.embed_text(t["input_ids"], None)  # (N, d)
        for j, v in enumerate(rows):
            x = model.embed_video(v["frames"], None)[v["frame_mask"]]  # (valid M, d)
            valid = y[t["attention_mask"]]  # (n, d)
            sentence[i, j] = sim(valid.mean(0) if pooling == "mean" else y[0], x.mean(0))
            tokens = [p for p in range(len(y)) if t["attention_mask"][p] and t["toi_weight"][p] > 0]
            taco[i, j] = sentence[i, j] + sum(max(sim(y[p], f) for f in x) for p in tokens)
    got = zeroshot.evaluate(model, batches, torch.device("cpu"), max_samples=100, taco=cfg)
    for name, sim in (("t2v", sentence), ("taco", taco)):
        want = metrics.text_to_video(sim)
        assert {k: got[f"zeroshot_{name}_{k}"] for k in want} == pytest.approx(want), name
    assert not torch.equal(sentence.argsort(1), taco.argsort(1))  # the token term changes the ranking here
    assert model.training  # the training mode is restored
    five = zeroshot.evaluate(model, batches, torch.device("cpu"), max_samples=5, taco=cfg)
    assert five["zeroshot_taco_MeanR"] == pytest.approx(metrics.text_to_video(taco[:5, :5])["MeanR"])


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
