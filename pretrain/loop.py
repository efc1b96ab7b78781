"""The one training loop, shared by pretraining and the finetune recipes.

Each micro-step runs `compute(model, batch, step)` inside the DeepSpeed engine's forward
(so ZeRO-3 gathering and gradient-accumulation scaling apply), then backward and step. The
losses of all ranks are averaged for logging in the same all-reduce that decides, on every
rank alike, whether a non-finite loss skips the micro-step: skipped micro-steps are counted
and the run stops with a clear message after `max_bad_steps` in a row. `compute` returns its
logs as detached tensors (the pretraining Combiner) or floats; they are stacked on the device
into that one all-reduce and read back once after it (`.tolist()`), the step's only host sync:
the loss's finiteness is checked on the device too. The Combiner shares the forward passes of
objectives that encode the same inputs (pretrain/objectives/passes.py, docs/objectives.md). Rank 0 writes one
metrics.jsonl line per optimizer step and logs to MLflow every `log_every` steps. The train
state (step, data position, counters, MLflow run id) is checkpointed with the engine.

Throughput, per optimizer step (the window of its micro-steps: fetching the batches and
training on them; logging, evaluation and checkpoints fall outside): `tokens_per_s` (the text
tokens of all ranks, padding excluded), `data_wait_frac` (the share of the window spent waiting
for the loader, mean over ranks) and, when the Trainer has `flops` (the analytic training FLOPs
of a batch, pretrain/flops.py) and the device's `peak_flops`, `mfu` (FLOPs of all ranks /
(window x peak x world)). They are counted on the loader's CPU batches and summed over ranks in
the all-reduce of the step's log line, so they add no host sync to the step. `samples_per_s`
stays the mean since the run (re)started.

Where a step waits, for stragglers (docs/cluster.md): `step_s` (the window's length, mean over ranks)
and the seconds each rank spent in the step's loss all-reduce (`_all_finite`), the one point after
the forward where every rank meets: a rank that is there first waits for the slowest. They travel
one slot per rank in the log line's all-reduce: `sync_wait_s` (mean over ranks), `sync_wait_max_s`
(the longest any rank waited) and `slowest_rank` (the one that waited least: the others waited for
it). On the CPU (gloo) the all-reduce blocks, so the figure is the wait plus the transfer; on a GPU
its read back (the step's one host sync) also waits for the rank's own forward kernels, so every
rank shows about the slowest forward there, and only a host-side straggler (a slow CPU, a slow
loader) stands out.

Preemption: SIGUSR1 on any rank (`request_stop`) makes every rank checkpoint after the current
optimizer step and raise `Preempted`; pretrain/train.py then exits with PREEMPTED_EXIT and the
sbatch script requeues the job, whose restart resumes from that checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from pretrain import checkpoint, runtime
from pretrain.flops import peak_flops
from pretrain.loader import to_device

log = logging.getLogger(__name__)

Compute = Callable[[torch.nn.Module, dict, int], tuple[torch.Tensor, dict[str, torch.Tensor | float]]]
Evaluate = Callable[[int], dict[str, float]]  # step -> the metrics of an evaluation at that step


COLLAPSE_KEYS = ("sentence_cos", "video_cos")  # mean pairwise cosines of the batch's embeddings (the Combiner's)
COLLAPSE_WARN = 0.99  # above it every text (or video) looks the same: the embeddings have collapsed
PREEMPTED_EXIT = 3  # exit code of a run stopped by SIGUSR1 after its checkpoint (launch/ requeues it)


class NonFiniteLoss(RuntimeError):
    pass


class Preempted(Exception):
    """Raised after the checkpoint that a stop request (SIGUSR1) asked for."""

    on_every_rank = True  # every rank raises it after the same step (runtime.run_then_shutdown: they leave together)


@dataclass
class Meter:
    """What this rank's micro-steps since the last logged step took: seconds in all, seconds waiting for the
    loader, text tokens (padding excluded) and training FLOPs."""

    seconds: float = 0.0
    waiting: float = 0.0
    tokens: float = 0.0
    flops: float = 0.0
    sync: float = 0.0  # seconds in the loss all-reduce (waiting for the other ranks' forward); per rank, not summed

    def count(self, batch: dict, flops: Callable[[dict], float] | None) -> None:
        """Add a batch, still on the CPU: its tokens, and its FLOPs when `flops` is given."""
        mask = batch.get("attention_mask")
        self.tokens += float(mask.sum()) if torch.is_tensor(mask) else 0.0
        self.flops += flops(batch) if flops is not None else 0.0

    def values(self) -> list[float]:
        """The figures summed over ranks (not `sync`, which is gathered per rank)."""
        return [self.seconds, self.waiting, self.tokens, self.flops]


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    micro_steps: int = 0  # batches consumed (skipped ones included)
    skipped: int = 0  # micro-steps skipped for a non-finite loss
    bad_in_a_row: int = 0
    samples: int = 0  # global samples consumed
    mlflow_run_id: str | None = None
    loader: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trainer:
    engine: Any
    loader: Any  # iterable of batches with state_dict()/load_state_dict()
    compute: Compute
    tracker: Any
    state: TrainState
    run_dir: str
    max_steps: int
    log_every: int = 10
    max_bad_steps: int = 3
    checkpoint_every: int = 0
    keep_last: int = 3
    evaluate: Evaluate | None = None
    eval_every: int = 0
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    mirror: Any = None  # checkpoint.Mirror: every rank uploads its files of each checkpoint there
    flops: Callable[[dict], float] | None = None  # training FLOPs of one batch on this rank (pretrain/flops.py)
    peak_flops: float | None = None  # the device's peak FLOP/s; with `flops`, the loop logs mfu
    stop_requested: bool = False  # set by a signal handler on any rank
    _stop_agreed: bool = False  # every rank knows that some rank was asked to stop
    _window: dict[str, list[float]] = field(default_factory=dict)
    _meter: Meter = field(default_factory=Meter)

    @classmethod
    def from_config(cls, cfg: Any, engine: Any, loader: Any, compute: Compute, tracker: Any, state: TrainState,
                    rank: int, world: int, device: torch.device, evaluate: Evaluate | None = None,
                    mirror: Any = None, flops: Callable[[dict], float] | None = None) -> Trainer:  # fmt: skip
        """A Trainer for a run config (PretrainConfig, finetune's configs): its schedule from `run` (output_dir,
        max_steps, log_every, max_bad_steps), `checkpoint` (every, keep_last) and `eval.every`; MFU from
        `flops` and the device's peak (`pretrain.flops.peak_flops`) when both are known."""
        return cls(engine, loader, compute, tracker, state, run_dir=cfg.run.output_dir, max_steps=cfg.run.max_steps,
                   log_every=cfg.run.log_every, max_bad_steps=cfg.run.max_bad_steps,
                   checkpoint_every=cfg.checkpoint.every, keep_last=cfg.checkpoint.keep_last, evaluate=evaluate,
                   eval_every=cfg.eval.every, rank=rank, world=world, device=device, mirror=mirror, flops=flops,
                   peak_flops=peak_flops(device))  # fmt: skip

    def request_stop(self, signum: int = 0, frame: Any = None) -> None:
        """Signal handler: checkpoint after the current optimizer step, then stop (Preempted)."""
        self.stop_requested = True

    @property
    def ckpt_dir(self) -> str:
        return os.path.join(self.run_dir, "checkpoints")

    def fit(self) -> TrainState:
        """Train until max_steps; checkpoint periodically and at the end."""
        batches = self._batches()
        t0, samples0 = time.time(), self.state.samples
        while self.state.step < self.max_steps:
            start = time.perf_counter()
            batch = next(batches)
            self._meter.waiting += time.perf_counter() - start
            stepped = self._micro_step(batch)
            self._meter.seconds += time.perf_counter() - start
            if not stepped:
                continue
            step = self.state.step
            rate = (self.state.samples - samples0) / max(time.time() - t0, 1e-9)
            due = self.eval_every and step % self.eval_every == 0 or step == self.max_steps
            self._log_step(step, rate, self.evaluate(step) if self.evaluate and due else {})
            if self._stop_agreed and step < self.max_steps:
                log.warning("stop requested (%s): rank %d on %s checkpoints at step %d, then exits",
                            "SIGUSR1 received here" if self.stop_requested else "by another rank", self.rank,
                            runtime.host(), step)  # fmt: skip
                self.save()
                raise Preempted(f"stopped at step {step} on request; resume from {self.ckpt_dir}")
            if self.checkpoint_every and step % self.checkpoint_every == 0 and step < self.max_steps:
                self.save()
            if step == self.max_steps:
                break
        else:  # a resumed run that had already reached max_steps: its evaluation again, logged and printed
            if self.evaluate:
                results = self.evaluate(self.state.step)
                self.tracker.log_metrics(results, self.state.step)
                self._say_eval(self.state.step, results)
        self.save()
        return self.state

    def _batches(self) -> Iterator[dict]:
        """Batches forever, epoch after epoch (the loader keeps its own position)."""
        while True:
            yield from self.loader

    def _micro_step(self, batch: dict) -> bool:
        """One micro-batch; True when it completed an optimizer step."""
        self._meter.count(batch, self.flops)  # before the batch leaves the CPU: no device sync
        batch = to_device(batch, self.device)  # non_blocking from pinned memory; float16 frames -> float32 there
        step = self.state.step
        loss, logs = self.engine(lambda m, b: self.compute(m, b, step), batch)
        self.state.micro_steps += 1
        self.state.samples += len(batch["keys"]) * self.world if "keys" in batch else 0
        if not self._all_finite(loss, logs):
            self.state.skipped += 1
            self.state.bad_in_a_row += 1
            log.warning(
                "step %d: non-finite loss %s, micro-step skipped (%d in a row)", step, logs, self.state.bad_in_a_row
            )
            if self.state.bad_in_a_row >= self.max_bad_steps:
                raise NonFiniteLoss(
                    f"stopping at step {step}: {self.state.bad_in_a_row} non-finite losses in a row "
                    f"(run.max_bad_steps={self.max_bad_steps}); last losses {logs}"
                )
            return False
        self.state.bad_in_a_row = 0
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.backward(loss)
        self.engine.step()
        for k, v in logs.items():
            self._window.setdefault(k, []).append(v)
        if boundary:
            self.state.step += 1
        return boundary

    def _all_finite(self, loss: torch.Tensor, logs: dict[str, torch.Tensor | float]) -> bool:
        """Average the logged values over ranks (in place, as floats); the same finite/non-finite verdict
        on every rank.

        The same all-reduce carries the stop requests, so every rank stops at the same step. The logs that
        are tensors are stacked on the device and the floats join them in one host-to-device copy: one
        all-reduce and one read back (`.tolist()`), the step's only host sync."""
        keys = sorted(logs)
        on_device = [k for k in keys if torch.is_tensor(logs[k])]
        on_host = [k for k in keys if not torch.is_tensor(logs[k])]
        f64 = torch.float64
        device_values = [torch.isfinite(loss.detach()).to(f64)] + [logs[k].detach().to(f64) for k in on_device]
        host_values = torch.tensor([float(self.stop_requested)] + [float(logs[k]) for k in on_host], dtype=f64)
        values = torch.cat([torch.stack([v.reshape(()) for v in device_values]).to(self.device),
                            host_values.to(self.device)])  # fmt: skip
        start = time.perf_counter()  # around the read back the step has anyway: no host sync added
        t = runtime.all_reduce_sum(values).tolist()  # [finite ranks, logs on the device..., stop requests, floats...]
        self._meter.sync += time.perf_counter() - start
        finite_ranks, stops = t[0], t[len(on_device) + 1]
        summed = dict(zip(on_device, t[1 : len(on_device) + 1])) | dict(zip(on_host, t[len(on_device) + 2 :]))
        self._stop_agreed = self._stop_agreed or stops > 0
        logs.update({k: summed[k] / self.world for k in keys})
        return finite_ranks == self.world and all(math.isfinite(v) for v in summed.values())

    def _say_eval(self, step: int, results: dict[str, float]) -> None:
        if self.rank == 0 and results:
            log.info("step %d evaluation: %s", step, " ".join(f"{k} {v:.4g}" for k, v in sorted(results.items())))

    def _log_step(self, step: int, rate: float, evaluation: dict[str, float] | None = None) -> None:
        """metrics.jsonl (one line a step, with the step's evaluation when there is one), MLflow every
        log_every steps and at evaluations, the log."""
        means = {k: sum(v) / len(v) for k, v in self._window.items()}
        self._window.clear()
        skipped, throughput = self._summed_over_ranks()
        record = {
            "step": step, **means, "lr": self.engine.get_lr()[0], "grad_norm": _grad_norm(self.engine),
            "samples_per_s": rate, **throughput, "skipped_steps": self.state.skipped,
            **skipped, **(evaluation or {}),
        }  # fmt: skip
        if self.rank == 0:
            os.makedirs(self.run_dir, exist_ok=True)
            with open(os.path.join(self.run_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
        collapsed = {k: round(record[k], 5) for k in COLLAPSE_KEYS if record.get(k, 0.0) > COLLAPSE_WARN}
        if collapsed and self.rank == 0:
            log.warning(
                "step %d: embeddings collapsing, mean pairwise cosine %s > %s: texts (or videos) are no "
                "longer told apart (docs/objectives.md, collapse guard)",
                step,
                collapsed,
                COLLAPSE_WARN,
            )
        self._say_eval(step, evaluation or {})
        if step % self.log_every == 0 or step == self.max_steps or evaluation:
            self.tracker.log_metrics({k: v for k, v in record.items() if k != "step"}, step)
            if self.rank == 0:
                mfu = f" mfu {record['mfu']:.1%}" if "mfu" in record else ""
                slowest = int(record["slowest_rank"])
                waits = (f", all-reduce wait up to {record['sync_wait_max_s']:.2f} s (slowest: rank {slowest} on "
                         f"{runtime.host(slowest)})") if self.world > 1 else ""  # fmt: skip
                log.info(
                    "step %d/%d loss %.4f lr %.2e %.1f samples/s data wait %.0f%%%s step %.2f s%s",
                    step,
                    self.max_steps,
                    record.get("loss", float("nan")),
                    record["lr"],
                    rate,
                    100 * record["data_wait_frac"],
                    mfu,
                    record["step_s"],
                    waits,
                )

    def _summed_over_ranks(self) -> tuple[dict[str, float], dict[str, float]]:
        """One all-reduce, on every rank: (what the loaders of all ranks skipped so far, `_data_skipped`; the
        throughput of the window since the last logged step, `_throughput`). The window starts afresh. Each
        rank's all-reduce wait has its own slot (zeros elsewhere), so the sum holds every rank's."""
        from pretrain.loader import SKIP_KINDS

        counts = getattr(self.loader, "skipped", {})
        waits = [0.0] * self.world
        waits[self.rank] = self._meter.sync
        local = [float(counts.get(k, 0)) for k in SKIP_KINDS] + [float(sum(counts.values()))] + self._meter.values()
        total = runtime.all_reduce_sum(torch.tensor(local + waits, dtype=torch.float64, device=self.device)).tolist()
        self._meter = Meter()
        kinds, summed = len(SKIP_KINDS) + 1, len(local)
        return _data_skipped(total[:kinds]), self._throughput(Meter(*total[kinds:summed]), total[summed:])

    def _throughput(self, summed: Meter, waits: list[float]) -> dict[str, float]:
        """tokens_per_s of all ranks, data_wait_frac (mean over ranks), step_s (mean over ranks), the loss
        all-reduce's waits (`waits`: seconds, by rank) and, with flops and a known peak, mfu."""
        rank_seconds = max(summed.seconds, 1e-9)  # the window's length summed over ranks: world x its mean
        out = {
            "tokens_per_s": summed.tokens * self.world / rank_seconds,
            "data_wait_frac": summed.waiting / rank_seconds,
            "step_s": summed.seconds / self.world,
            "sync_wait_s": sum(waits) / self.world,
            "sync_wait_max_s": max(waits),
            "slowest_rank": float(min(range(self.world), key=waits.__getitem__)),  # the others waited for it
        }
        if self.flops is not None and self.peak_flops:
            out["mfu"] = summed.flops / (rank_seconds * self.peak_flops)
        return out

    def save(self) -> str:
        """A checkpoint of the engine and the train state (all ranks)."""
        self.state.loader = self.loader.state_dict()
        state = asdict(self.state)
        node_local = self.mirror is not None and self.mirror.node_local
        path = checkpoint.save(self.engine, self.ckpt_dir, self.state.step, state, self.rank, self.world,
                               self.keep_last, node_local)  # fmt: skip
        if self.mirror is not None:  # every rank uploads its own files; COMPLETE once all did
            metrics = os.path.join(self.run_dir, "metrics.jsonl")
            self.mirror.push_checkpoint(self.ckpt_dir, os.path.basename(path), self.rank, metrics)
        return path


def _data_skipped(total: list[float]) -> dict[str, float]:
    """metrics.jsonl's data_skipped (all kinds) and data_skipped_<kind> (`other` for kinds outside SKIP_KINDS)
    from the summed counts by kind, then the summed total."""
    from pretrain.loader import SKIP_KINDS

    by_kind = dict(zip(SKIP_KINDS, total))
    by_kind["other"] = total[-1] - sum(total[:-1])
    return {"data_skipped": total[-1], **{f"data_skipped_{k}": v for k, v in by_kind.items()}}


def _grad_norm(engine) -> float:
    norm = engine.get_global_grad_norm()
    if norm is None:
        return float("nan")
    return float(norm.item() if torch.is_tensor(norm) else norm)
