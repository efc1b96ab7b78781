"""The main job's report: what pretraining bought, as tables (markdown) and plots (PNG).

- zero-shot text-to-video retrieval on held-out clips: the pretrained model against the same
  architecture with random video and cross-modal layers, and chance (K / N);
- finetuning from the pretrained export against from scratch: mean +- sample std over seeds of
  the benchmark metrics (TVR: VCMR 0.5-r1, 0.7-r1, VR r1; MSR-VTT: R@1, R@5, R@10, MedR), the
  difference of the means, and whether it exceeds twice its standard error (a rough "beyond
  seed noise" flag, not a significance test);
- per-objective pretraining loss curves, the metrics per variant, the similarity heatmap.
"""

from __future__ import annotations

import math
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# recipe -> (label, path in metrics.json, higher is better)
METRICS: dict[str, list[tuple[str, tuple[str, ...], bool]]] = {
    "tvr": [("VCMR 0.5-r1", ("VCMR", "0.5-r1"), True), ("VCMR 0.7-r1", ("VCMR", "0.7-r1"), True),
            ("VR r1", ("VR", "r1"), True), ("SVMR 0.5-r1", ("SVMR", "0.5-r1"), True)],
    "didemo": [("VCMR 0.5-r1", ("VCMR", "0.5-r1"), True), ("VR r1", ("VR", "r1"), True)],
    "how2r": [("VCMR 0.5-r1", ("VCMR", "0.5-r1"), True), ("VCMR 0.7-r1", ("VCMR", "0.7-r1"), True),
              ("VR r1", ("VR", "r1"), True)],
    "how2qa": [("accuracy", ("accuracy",), True)],
    "msrvtt": [("R@1", ("R@1",), True), ("R@5", ("R@5",), True), ("R@10", ("R@10",), True),
               ("MedR", ("MedR",), False)],
    "activitynet": [("R@1", ("R@1",), True), ("R@5", ("R@5",), True), ("MedR", ("MedR",), False)],
}  # fmt: skip


def metric(metrics: dict[str, Any], path: Sequence[str]) -> float:
    value: Any = metrics
    for key in path:
        value = value[key]
    return float(value)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def compare(a: Sequence[float], b: Sequence[float], higher: bool) -> tuple[float, bool]:
    """(mean(a) - mean(b), whether a is better by more than 2 standard errors of the difference)."""
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return diff, False
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    better = diff if higher else -diff
    return diff, better > 2 * se and better > 0


def table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])


def zero_shot_table(zs: dict[str, Any]) -> str:
    n = int(zs["clips"])
    rows = [["model", "score", "R@1", "R@5", "R@10", "MedR", "MeanR"]]
    for name, m in (("pretrained", zs["pretrained"]), ("random init (mean of seeds)", zs["random"])):
        for score, key in (("sentence cosine", "t2v"), ("TACo L1+L2", "taco")):  # pretrain/zeroshot.py
            rows.append([name, score, *(f"{m[f'zeroshot_{key}_{k}']:.1f}" for k in ("R@1", "R@5", "R@10", "MedR",
                                                                                     "MeanR"))])  # fmt: skip
    rows.append(["chance", "", *(f"{100 * min(k, n) / n:.1f}" for k in (1, 5, 10)), f"{(n + 1) / 2:.1f}",
                 f"{(n + 1) / 2:.1f}"])  # fmt: skip
    return table(rows)


def finetune_table(recipe: str, results: dict[str, list[dict]]) -> tuple[str, dict[str, Any]]:
    """Rows pretrained / scratch / difference for one recipe; results: init -> per-seed metrics."""
    cols = METRICS[recipe]
    rows = [["init", *(c[0] for c in cols)]]
    summary: dict[str, Any] = {}
    for init, runs in results.items():
        cells = []
        for label, path, _ in cols:
            m, s = mean_std([metric(r, path) for r in runs])
            summary.setdefault(label, {})[init] = {"mean": m, "std": s, "values": [metric(r, path) for r in runs]}
            cells.append(f"{m:.2f} ± {s:.2f}")
        rows.append([f"{init} (n={len(runs)})", *cells])
    if {"pretrained", "scratch"} <= results.keys():
        cells = []
        for label, _, higher in cols:
            diff, beyond = compare(summary[label]["pretrained"]["values"], summary[label]["scratch"]["values"], higher)
            summary[label]["difference"] = {"value": diff, "beyond_noise": beyond}
            cells.append(f"{diff:+.2f}{' *' if beyond else ''}")
        rows.append(["pretrained - scratch", *cells])
    return table(rows), summary


def loss_curves(metrics: list[dict[str, float]], path: Path) -> None:
    """Per-objective pretraining losses against the step (one panel each, their own scale)."""
    from finetune.plots import _pyplot

    plt = _pyplot()
    keys = sorted(k for k in metrics[0] if k.endswith("_loss"))
    fig, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 2.8), squeeze=False)
    steps = [m["step"] for m in metrics]
    for ax, key in zip(axes[0], keys):
        ax.plot(steps, [m.get(key, float("nan")) for m in metrics])
        ax.set(title=key.removesuffix("_loss"), xlabel="step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def variant_bars(summary: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Mean +- std of every metric per variant (init), side by side."""
    from finetune.plots import _pyplot

    plt = _pyplot()
    labels = list(summary)
    variants = [v for v in next(iter(summary.values())) if v != "difference"]
    fig, ax = plt.subplots(figsize=(1.6 * len(labels) + 2, 3.2))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        xs = [j + i * width for j in range(len(labels))]
        ax.bar(xs, [summary[lb][v]["mean"] for lb in labels], width, yerr=[summary[lb][v]["std"] for lb in labels],
               label=v, capsize=3)  # fmt: skip
    ax.set_xticks([j + width * (len(variants) - 1) / 2 for j in range(len(labels))], labels, fontsize=8)
    ax.set(title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(out: Path, zero_shot: dict[str, Any], finetune: dict[str, dict[str, list[dict]]],
          pretrain_metrics: list[dict[str, float]], heatmap: Path | None, header: str) -> tuple[str, dict]:  # fmt: skip
    """report.md, summary.json-able dict and the PNGs under `out`; returns (markdown, summary)."""
    out.mkdir(parents=True, exist_ok=True)
    parts = [header, "## Zero-shot text-to-video retrieval (held-out HowTo100M clips)", zero_shot_table(zero_shot)]
    summary: dict[str, Any] = {"zero_shot": zero_shot, "finetune": {}}
    for recipe, results in finetune.items():
        text, summ = finetune_table(recipe, results)
        summary["finetune"][recipe] = summ
        parts += [f"## {recipe}: finetuned from the pretrained export vs from scratch", text]
        variant_bars(summ, out / f"{recipe}_variants.png", recipe)
        parts.append(f"![{recipe} per variant]({recipe}_variants.png)")
    parts.append("`*`: the difference exceeds twice its standard error over seeds.")
    loss_curves(pretrain_metrics, out / "pretrain_losses.png")
    parts += ["## Pretraining losses", "![per-objective losses](pretrain_losses.png)"]
    if heatmap is not None and heatmap.exists():
        shutil.copy(heatmap, out / "similarity.png")
        parts += ["## Query-video similarity (TVR val, pretrained, seed 0)", "![similarity](similarity.png)"]
    markdown = "\n\n".join(parts) + "\n"
    (out / "report.md").write_text(markdown)
    return markdown, summary
