"""runtime.compile: a training step of the model with its encoders compiled against the eager model.

    python benchmarks/compile_step.py [--backends aot_eager,inductor] [--steps 8] [--device cpu] [--write]

What it measures: forward + backward of all five objectives (the `Combiner`, sum mode) on the
tiny preset cut to 1 text and 1 cross layer, dropout off, on synthetic loader-like batches
(`benchmarks/pretrain_step.make_batch`: 8 clips, up to 16-24 frames of 64-d and 24-32 tokens;
two batch shapes in turn, as padding to the batch's longest makes them vary). For each variant
(eager, then `VideoLanguageModel.compile_encoders(backend)` per backend, what `runtime.compile:
true` does) a fresh model from the same seed runs `--steps` steps without an optimizer step, so
every variant sees the same weights and batches: the seconds of step 1 (tracing and compiling
the first shape), step 2 (the second shape: torch marks the sizes dynamic and compiles again),
the median of the later steps (run in rounds, a step of every variant a round, so that they
share the machine's load), and the largest relative difference of the loss from eager's over
all steps. On a GPU the clock synchronises the device. `--write` puts the table under
"## torch.compile (runtime.compile)" in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for `python benchmarks/x.py`
import torch  # noqa: E402

from benchmarks._results import header, load, machine, write_section  # noqa: E402

SECTION = "## torch.compile (runtime.compile)"
SHAPES = ((16, 24), (12, 32))  # (frames, tokens) of the two batch shapes, in turn


class Variant:
    """A fresh model from seed 0, eager (backend None) or with its encoders compiled by `backend`, and its
    steps' seconds and losses."""

    def __init__(self, backend: str | None, device: torch.device):
        from pretrain.model import ModelConfig, VideoLanguageModel
        from pretrain.objectives import Combiner, ObjectivesConfig

        torch.manual_seed(0)
        self.model = VideoLanguageModel(ModelConfig(text_layers=1, cross_layers=1, dropout=0.0)).to(device)
        if backend is not None:
            self.model.compile_encoders(backend)
        self.combiner, self.device = Combiner(ObjectivesConfig()), device
        self.seconds: list[float] = []
        self.losses: list[float] = []

    def step(self) -> None:
        """Forward + backward of the next batch (no optimizer step: every variant keeps the same weights)."""
        from benchmarks.pretrain_step import make_batch
        from pretrain.loader import to_device

        step = len(self.seconds)
        frames, tokens = SHAPES[step % len(SHAPES)]
        batch = to_device(make_batch(batch=8, frames=frames, tokens=tokens, seed=step), self.device)
        t0 = time.perf_counter()
        loss, _ = self.model(lambda m, b: self.combiner(m, b, step), batch)
        loss.backward()
        self.model.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - t0)
        self.losses.append(loss.item())


def run(backends: list[str], steps: int, device: torch.device) -> dict[str, Variant]:
    """Steps 1 and 2 of each variant in turn (the compilations), then the later steps in rounds, one step of
    every variant a round, so that they share the machine's load."""
    variants = {"eager": Variant(None, device), **{f"compiled, {b}": Variant(b, device) for b in backends}}
    for variant in variants.values():
        variant.step(), variant.step()
    for _ in range(steps - 2):
        for variant in variants.values():
            variant.step()
    return variants


def table(variants: dict[str, Variant]) -> str:
    eager = variants["eager"]
    eager_later = statistics.median(eager.seconds[2:])
    lines = [
        "| variant | step 1 s | step 2 s | later steps s (median) | x eager (later) | max relative loss difference |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, v in variants.items():
        later = statistics.median(v.seconds[2:])
        diff = max(abs(a - b) / abs(b) for a, b in zip(v.losses, eager.losses))
        lines.append(f"| {name} | {v.seconds[0]:.2f} | {v.seconds[1]:.2f} | {later:.3f} | {later / eager_later:.2f} "
                     f"| {diff:.1e} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default="aot_eager,inductor", help="torch.compile backends to compare with eager")
    p.add_argument("--steps", type=int, default=8, help="steps per variant (>= 3)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    p.add_argument("--write", action="store_true", help=f'put the results under "{SECTION}" in RESULTS.md')
    args = p.parse_args(argv)
    if args.steps < 3:
        p.error("--steps must be >= 3")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_start = load()
    variants = run(args.backends.split(","), args.steps, device)
    command = "python benchmarks/compile_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([
        SECTION, "", *header(machine("torch", "transformers"), command.strip()),
        f"- device {args.device}, {args.threads} torch thread(s); load average {load_start} at the start, {load()} "
        "at the end (shared cores: single numbers +-50%)",
        "- tiny preset, 1 text and 1 cross layer, dropout off, batch 8, all five objectives, forward + backward; "
        f"{args.steps} steps per variant, two batch shapes in turn, the later steps in rounds over the variants; a "
        "fresh model from seed 0 per variant",
        "- aot_eager traces and compiles the graphs (what runtime.compile's wiring needs) without generating "
        "kernels; inductor generates them (C++ on the CPU, Triton on a GPU). runtime.compile stays off by default "
        "until a GPU run shows the gain",
        "", table(variants), "",
    ])  # fmt: skip
    print(text)
    if args.write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
