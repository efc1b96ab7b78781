"""Pretraining step overhead: the project's DeepSpeed step against a bare PyTorch loop, same model and batch.

    python benchmarks/pretrain_step.py [--repeats 12] [--steps 1] [--share both] [--write] [--profile]

What it measures: seconds per optimizer step, on the CPU, in one process (world size 1, gloo),
of the tiny preset (the default `ModelConfig`: the packaged 6-layer MiniLM text encoder, 384
hidden) on a synthetic loader-like batch (8 clips, up to 40 frames of 64-d, up to 48 tokens; the
keys of `pretrain.loader.collate`) with all five objectives through the `Combiner` (sum mode), with
the objectives' shared forward passes (`--share on`), each objective's own (`off`) or both
(`both`, the default: every variant twice, and the shared/separate ratio within each repeat; the
forward passes per step of each are counted too):

- project, ZeRO 0 and ZeRO 2: `Trainer._micro_step` of pretrain/loop.py itself, i.e.
  `engine(lambda m, b: compute(m, b, step), batch)`, the `_all_finite` all-reduce of the logged
  losses, `engine.backward`, `engine.step` (DeepSpeed's gradient clipping, a torch AdamW, the
  warmup schedule), on the engine from `runtime.build_engine`;
- bare: the same model (a copy of the same initial weights), the same batch, the same
  `Combiner`, with `loss.backward()`, `clip_grad_norm_(1.0)`, `torch.optim.AdamW.step()` (the
  same parameter groups and hyper-parameters) and `zero_grad(set_to_none=True)`.

Each repeat runs `--steps` steps of every variant in turn (the order rotates between repeats)
after warm-up steps, so the three see the same machine load; the ratio project/bare is taken
within a repeat, and the table gives medians and ranges over repeats. Every step is split into
forward (the compute inside the engine), the finite check (project only), backward and step by
timing the engine's calls. `--profile` adds a cProfile of a few project steps (ZeRO 0 and 2),
listing the DeepSpeed and torch functions with the most cumulative time. `--write` puts the
result under "## pretrain: training step overhead" in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for `python benchmarks/x.py`
import torch  # noqa: E402

from benchmarks._results import header, load, machine, write_section  # noqa: E402

SECTION = "## pretrain: training step overhead"
CLS, SEP, MASK = 101, 102, 103  # the MiniLM (BERT uncased) vocabulary's special ids
PHASES = ("forward", "finite check", "backward", "step")
STACK = ("torch", "deepspeed", "transformers")  # the versions in the results header
CLOCK = time.process_time  # CPU seconds of this process (all its threads): the phases, and the per-step CPU time


# ---------------------------------------------------------------- shared with taco_l3.py and zero_memory.py


def make_batch(
    batch: int = 8, frames: int = 40, tokens: int = 48, frame_dim: int = 64, vocab: int = 30522, seed: int = 0
) -> dict[str, Any]:
    """A loader-like batch (the keys and dtypes of `pretrain.loader.collate`), lengths varying per clip.

    Texts have tokens/2..tokens tokens ([CLS] ... [SEP]), clips frames/2..frames frames, the
    first sample of each at full length (the batch is padded to it); 15% of the words are MLM
    targets (80% [MASK], 10% random, 10% kept), about 40% are TACo tokens of interest with an
    IDF weight in [1, 6], 15% of the frames (at least one) are MFM-masked; padding is zero.
    """
    g = torch.Generator().manual_seed(seed)
    t_len = torch.randint(tokens // 2, tokens + 1, (batch,), generator=g)  # (B,)
    f_len = torch.randint(frames // 2, frames + 1, (batch,), generator=g)  # (B,)
    t_len[0], f_len[0] = tokens, frames
    text_mask = torch.arange(tokens) < t_len[:, None]  # (B, N)
    frame_mask = torch.arange(frames) < f_len[:, None]  # (B, M)
    pos = torch.arange(tokens).expand(batch, tokens)  # (B, N)
    ids = torch.randint(1000, vocab, (batch, tokens), generator=g)  # (B, N)
    ids[:, 0] = CLS
    ids = torch.where(pos == (t_len - 1)[:, None], SEP, ids).masked_fill(~text_mask, 0)  # (B, N)
    words = text_mask & (pos > 0) & (pos < (t_len - 1)[:, None])  # (B, N): not [CLS], [SEP] or padding
    u = torch.rand(batch, tokens, generator=g)  # (B, N)
    predict = words & (u < 0.15)  # (B, N)
    predict[:, 1] = True  # at least one target per text
    mlm_ids = torch.where(predict & (u < 0.12), MASK, ids)  # 80% of the targets -> [MASK]
    mlm_ids = torch.where(
        predict & (u >= 0.12) & (u < 0.135), torch.randint(1000, vocab, ids.shape, generator=g), mlm_ids
    )  # 10% random
    toi = words & (torch.rand(batch, tokens, generator=g) < 0.4)  # (B, N)
    idf = 1.0 + 5.0 * torch.rand(batch, tokens, generator=g)  # (B, N)
    mfm = frame_mask & (torch.rand(batch, frames, generator=g) < 0.15)  # (B, M)
    mfm[:, 0] = True
    x = torch.randn(batch, frames, frame_dim, generator=g) * frame_mask[..., None]  # (B, M, Dv)
    return {
        "input_ids": ids, "attention_mask": text_mask, "mlm_input_ids": mlm_ids,
        "mlm_labels": ids.masked_fill(~predict, -100), "toi_weight": idf * toi, "frames": x,
        "frame_mask": frame_mask, "mfm_mask": mfm, "keys": [f"clip{i:04d}" for i in range(batch)],
    }  # fmt: skip


def med_range(values: list[float], fmt: str = "{:.3f}") -> str:
    """'median (min-max)'."""
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


# ---------------------------------------------------------------- the step variants


class TimedEngine:
    """The DeepSpeed engine, with the time of each call the training loop makes recorded on `clock` (CPU
    seconds by default; benchmarks/device_check.py passes a wall clock that synchronises the GPU)."""

    def __init__(self, engine: Any, clock: Callable[[], float] = CLOCK):
        self.engine, self.clock = engine, clock
        self.times: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self._t = 0.0

    def __call__(self, compute: Callable, batch: dict) -> Any:
        t = self.clock()
        out = self.engine(compute, batch)
        self._t = self.clock()
        self.times["forward"] += self._t - t
        return out

    def is_gradient_accumulation_boundary(self) -> bool:
        t = self.clock()
        self.times["finite check"] += t - self._t  # the loop's `_all_finite` ran since the forward returned
        self._t = t
        return self.engine.is_gradient_accumulation_boundary()

    def backward(self, loss: torch.Tensor) -> None:
        t = self.clock()
        self.engine.backward(loss)
        self.times["backward"] += self.clock() - t

    def step(self) -> None:
        t = self.clock()
        self.engine.step()
        self.times["step"] += self.clock() - t


@dataclass
class Variant:
    name: str
    run_step: Callable[[int], float]  # step index -> loss
    times: dict[str, float]  # phase -> seconds, accumulated
    wall: list[float] = field(default_factory=list)  # wall seconds per step, one value per repeat
    cpu: list[float] = field(default_factory=list)  # CPU seconds per step, one value per repeat
    phases: list[dict[str, float]] = field(default_factory=list)  # per repeat: phase -> seconds per step


def project_variant(model: torch.nn.Module, stage: int, combiner: Any, batch: dict, run_dir: str,
                    suffix: str = "") -> Variant:  # fmt: skip
    """`Trainer._micro_step` on the engine of `runtime.build_engine` (ZeRO `stage`, fp32)."""
    from pretrain import runtime
    from pretrain.loop import Trainer, TrainState

    engine = runtime.build_engine(
        model,
        runtime.RuntimeConfig(zero_stage=stage),
        runtime.OptimConfig(),
        micro_batch=len(batch["keys"]),
        max_steps=10**6,
        world=1,
    )
    timed = TimedEngine(engine)
    trainer = Trainer(timed, None, combiner, None, TrainState(), run_dir, max_steps=10**9)

    def run_step(i: int) -> float:
        torch.manual_seed(i)  # the same dropout masks in every variant
        assert trainer._micro_step(batch), "the step did not complete an optimizer step"
        loss = trainer._window["loss"][-1]
        trainer._window.clear()
        return loss

    return Variant(f"project, ZeRO {stage}{suffix}", run_step, timed.times)


def bare_variant(model: torch.nn.Module, combiner: Any, batch: dict, suffix: str = "") -> Variant:
    """Plain PyTorch: the Combiner's loss, backward, clip_grad_norm_, AdamW step, zero_grad."""
    from pretrain import runtime

    cfg = runtime.OptimConfig()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        runtime.param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps
    )
    times = dict.fromkeys(PHASES, 0.0)

    def run_step(i: int) -> float:
        torch.manual_seed(i)
        t0 = CLOCK()
        loss, logs = combiner(model, batch, i)
        t1 = CLOCK()
        loss.backward()
        t2 = CLOCK()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = CLOCK()
        times["forward"] += t1 - t0
        times["backward"] += t2 - t1
        times["step"] += t3 - t2
        return float(logs["loss"])

    return Variant(f"bare PyTorch{suffix}", run_step, times)


PASSES = ("embed_text", "embed_video", "cross", "mcb_v2t", "mcb_t2v")  # the model's passes, counted per step


def count_forwards(model: torch.nn.Module, combiner: Any, batch: dict) -> dict[str, int]:
    """Calls of each of the model's passes in one step of `combiner` (no gradient; its forward only)."""
    calls = dict.fromkeys(PASSES, 0)
    originals = {name: getattr(model, name) for name in PASSES}

    def counting(name: str) -> Callable:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return originals[name](*args, **kwargs)

        return call

    for name in PASSES:
        setattr(model, name, counting(name))  # instance attributes: calls from inside the model count too
    try:
        with torch.no_grad():
            combiner(model, batch, 0)
    finally:
        for name in PASSES:
            delattr(model, name)
    return calls


def run_repeat(v: Variant, first: int, steps: int) -> None:
    for k in v.times:
        v.times[k] = 0.0
    t, c = time.perf_counter(), CLOCK()
    for i in range(first, first + steps):
        v.run_step(i)
    v.cpu.append((CLOCK() - c) / steps)
    v.wall.append((time.perf_counter() - t) / steps)
    v.phases.append({k: s / steps for k, s in v.times.items()})


def profile(variant: Variant, first: int, steps: int, top: int = 25) -> str:
    """cProfile of `steps` steps: the functions with the most cumulative time (own code and libraries)."""
    prof = cProfile.Profile()
    prof.enable()
    for i in range(first, first + steps):
        variant.run_step(i)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# ---------------------------------------------------------------- main


def measure(args: argparse.Namespace) -> tuple[list[Variant], dict[str, Any]]:
    from pretrain import runtime
    from pretrain.flops import PretrainFlops, TextEncoder, peak_flops
    from pretrain.model import ModelConfig, build_model, count_parameters
    from pretrain.objectives import Combiner, ObjectivesConfig

    runtime.init_distributed(runtime.RuntimeConfig())
    torch.manual_seed(0)
    model = build_model(ModelConfig())
    # Training mode everywhere, as after the project's first evaluation: `build_model` leaves the text
    # encoder in eval mode (Hugging Face's from_pretrained) and nothing in training calls .train() before
    # `zeroshot.evaluate` does (reported; a project fix). All variants get the same modes either way.
    model.train()
    batch = make_batch(args.batch, args.frames, args.tokens, model.config.frame_dim, model.vocab_size)
    shares = {"on": [True], "off": [False], "both": [False, True]}[args.share]
    combiners = {share: Combiner(ObjectivesConfig(share_passes=share)) for share in shares}
    suffix = {share: ("" if len(shares) == 1 else SUFFIX[share]) for share in shares}
    run_dir = tempfile.mkdtemp(prefix="pretrain-step-")
    variants = []
    for share, combiner in combiners.items():
        variants.append(bare_variant(copy.deepcopy(model), combiner, batch, suffix[share]))
        variants += [project_variant(copy.deepcopy(model), s, combiner, batch, run_dir, suffix[share])
                     for s in args.stages]  # fmt: skip
    first_losses = [v.run_step(0) for v in variants]  # the same weights, batch and dropout: the same loss
    for i in range(1, args.warmup):
        for v in variants:
            v.run_step(i)
    step = args.warmup
    for r in range(args.repeats):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            run_repeat(v, step, args.steps)
        step += args.steps
        print(
            f"repeat {r + 1}/{args.repeats}: "
            + ", ".join(f"{v.name} {v.wall[-1]:.2f} s wall {v.cpu[-1]:.2f} s CPU" for v in variants),
            flush=True,
        )
    text = TextEncoder.of(model.text.config)
    facts = {
        "params": count_parameters(model),
        "first_losses": first_losses,
        "frames": tuple(batch["frames"].shape),
        "tokens": tuple(batch["input_ids"].shape),
        "flops": {share: PretrainFlops(model.config, c.cfg, text, 1)(batch) for share, c in combiners.items()},
        "forwards": {share: count_forwards(model, c, batch) for share, c in combiners.items()},
        "peak": peak_flops(next(model.parameters()).device),
    }
    if args.profile:
        for v in variants:
            print(f"\n==== cProfile, {v.name}, {args.steps} steps ====\n{profile(v, step, args.steps)}")
    shutil.rmtree(run_dir, ignore_errors=True)  # the loop writes nothing there in _micro_step
    return variants, facts


SUFFIX = {True: ", shared passes", False: ", separate passes"}


def table(variants: list[Variant]) -> str:
    """One row a variant; the ratios against the first row (bare PyTorch; with --share both, its separate passes)."""
    bare = variants[0]
    lines = [
        "| variant | wall s/step | x first row, wall | CPU s/step | x first row, CPU | forward | finite check "
        "| backward | step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in variants:
        wall = [a / b for a, b in zip(v.wall, bare.wall)]
        cpu = [a / b for a, b in zip(v.cpu, bare.cpu)]
        phase = [f"{statistics.median(p[k] for p in v.phases):.3f}" for k in PHASES]
        lines.append(
            f"| {v.name} | {med_range(v.wall)} | {med_range(wall)} | {med_range(v.cpu)} | {med_range(cpu)} | "
            + " | ".join(phase)
            + " |"
        )
    return "\n".join(lines)


def sharing_lines(variants: list[Variant], facts: dict[str, Any]) -> list[str]:
    """With both settings: the forward passes per step of each, and each variant's shared/separate ratio of
    wall and CPU seconds per step (median (range) of the per-repeat ratios)."""
    forwards = facts["forwards"]
    lines = [f"- forward passes per step{SUFFIX[share] if len(forwards) > 1 else ''}: "
             + ", ".join(f"{name} {n}" for name, n in calls.items()) + f" ({sum(calls.values())} in all)"
             for share, calls in forwards.items()]  # fmt: skip
    if len(forwards) < 2:
        return lines
    by_name = {v.name: v for v in variants}
    for v in variants:
        if v.name.endswith(SUFFIX[True]):
            base = by_name[v.name.removesuffix(SUFFIX[True]) + SUFFIX[False]]
            wall = [a / b for a, b in zip(v.wall, base.wall)]
            cpu = [a / b for a, b in zip(v.cpu, base.cpu)]
            lines.append(f"- {v.name.removesuffix(SUFFIX[True])}: shared / separate passes, wall "
                         f"{med_range(wall)}, CPU {med_range(cpu)}")  # fmt: skip
    return lines


def flops_line(variants: list[Variant], facts: dict[str, Any]) -> str:
    """The analytic training FLOPs (pretrain/flops.py) per sample, each variant's GFLOP/s and, on a GPU of
    known peak, its MFU."""
    samples = facts["frames"][0]
    rates = []
    for v in variants:
        flops = facts["flops"][not v.name.endswith(SUFFIX[False])]
        rate = flops / statistics.median(v.wall)  # FLOP/s
        mfu = f", MFU {rate / facts['peak']:.1%}" if facts["peak"] else ""
        rates.append(f"{v.name} {rate / 1e9:.1f} GFLOP/s{mfu}")
    label = {share: f" ({SUFFIX[share][2:]})" if len(facts["flops"]) > 1 else "" for share in facts["flops"]}
    per_sample = ", ".join(f"{f / samples / 1e9:.2f} GFLOP{label[share]}" for share, f in facts["flops"].items())
    return f"analytic training FLOPs per sample: {per_sample}; " + ", ".join(rates)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--steps", type=int, default=1, help="steps per variant per repeat")
    p.add_argument("--warmup", type=int, default=2, help="steps per variant before timing")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--stages", type=int, nargs="+", default=[0, 2])
    p.add_argument(
        "--share",
        choices=("on", "off", "both"),
        default="both",
        help="the objectives' shared forward passes: on, off, or both (compared within each repeat)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: robust to other processes)")
    p.add_argument("--profile", action="store_true", help="cProfile a few steps of each variant afterwards")
    p.add_argument("--write", action="store_true", help=f'put the results under "{SECTION}" in RESULTS.md')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    info, load_before, t0 = machine(*STACK), load(), time.time()
    variants, facts = measure(args)
    body = table(variants)
    print("\n" + body)
    print(f"first-step losses (must agree): {facts['first_losses']}; wall {time.time() - t0:.0f} s")
    print(flops_line(variants, facts))
    print("\n".join(sharing_lines(variants, facts)))
    if args.write:
        command = "python benchmarks/pretrain_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
        lines = [
            SECTION,
            "",
            *header(info, command.strip()),
            f"- load average (1, 5, 15 min) before: {load_before}; after: {load()}; other processes (test "
            "runs) shared the 2 cores",
            f"- model: tiny preset, {facts['params'] / 1e6:.1f}M parameters, fp32; batch: frames "
            f"{facts['frames']}, tokens {facts['tokens']}, all five objectives (Combiner, sum mode); "
            "world size 1 (gloo)",
            f"- {args.warmup} warm-up steps, then {args.repeats} repeats x {args.steps} steps per variant, "
            "interleaved (order rotated); wall and CPU s/step: median (range) over repeats; x first row: median "
            "(range) of the per-repeat ratios; phase columns: median CPU seconds per step (the project's "
            "phases timed around its engine calls)",
            f"- first-step loss of each variant (same weights, batch, dropout seed; shared passes draw one dropout "
            f"mask per pass, not one per objective): {', '.join(f'{x:.6f}' for x in facts['first_losses'])}",
            *sharing_lines(variants, facts),
            f"- {flops_line(variants, facts)}",
            "",
            body,
            "",
        ]
        write_section(SECTION, "\n".join(lines))


if __name__ == "__main__":
    main()
