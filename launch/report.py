"""The main job's report: what pretraining bought, as tables (markdown) and plots (PNG).

- zero-shot text-to-video retrieval on held-out clips: the pretrained model against the same
  architecture with random video and cross-modal layers, and chance (K / N);
- finetuning from the pretrained export against from scratch: mean +- sample std over seeds of
  the benchmark metrics (TVR: VCMR 0.5-r1, 0.7-r1, VR r1; MSR-VTT: R@1, R@5, R@10, MedR), the
  difference of the means;
- 95% confidence intervals from each query's share of the metrics (the runs' per_query.json, the
  zero-shot predictions files): a bootstrap of 2000 draws that resamples the queries (the same
  draw for both arms of a difference: paired) and each arm's seeds; a difference is flagged when
  its interval excludes 0. Runs without per-query files fall back to the seeds alone (twice the
  standard error of the difference);
- per-objective pretraining loss curves, the metrics per variant, the similarity heatmap.
"""

from __future__ import annotations

import math
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CI_DRAWS = 2000  # bootstrap draws
CI_LEVEL = 0.95

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


def bootstrap(arms: Sequence[np.ndarray], median: bool = False, draws: int = CI_DRAWS, seed: int = 0) -> np.ndarray:
    """(draws, len(arms)): each arm's metric under resampling. An arm is (seeds, queries) of per-query values
    whose mean (or median) over the queries is the metric of a seed; the metric of an arm is the mean over
    its seeds. Every draw resamples the queries once for all arms (they are scored on the same queries:
    paired) and each arm's seeds with replacement."""
    rng = np.random.default_rng(seed)
    q = rng.integers(0, arms[0].shape[1], (draws, arms[0].shape[1]))  # (B, Q)
    stats = []
    for arm in arms:
        s = rng.integers(0, arm.shape[0], (draws, arm.shape[0]))  # (B, S)
        values = arm[s[:, :, None], q[:, None, :]]  # (B, S, Q)
        per_seed = np.median(values, axis=-1) if median else values.mean(axis=-1)  # (B, S)
        stats.append(per_seed.mean(axis=-1))  # (B,)
    return np.stack(stats, axis=1)


def interval(samples: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """The percentile interval of bootstrap samples."""
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def per_query(runs: Sequence[dict], path: Sequence[str]) -> np.ndarray | None:
    """(seeds, queries) of the runs' per-query values at `path`, None when a run has no per_query."""
    rows = [r.get("per_query") for r in runs]
    if any(row is None for row in rows):
        return None
    arrays = [np.asarray(metric_values(row, path), dtype=np.float64) for row in rows]
    return np.stack(arrays) if len({len(a) for a in arrays}) == 1 else None


def metric_values(tree: dict[str, Any], path: Sequence[str]) -> list[float]:
    value: Any = tree
    for key in path:
        value = value[key]
    return value


def headline(summary: dict[str, Any]) -> dict[str, float]:
    """The report's numbers as flat metric names: zero-shot/<model>/<metric> and
    <recipe>/<init>/<metric> (means over seeds), <recipe>/difference/<metric>."""
    out: dict[str, float] = {}
    for model in ("pretrained", "random"):
        out |= {f"zero-shot/{model}/{k.removeprefix('zeroshot_')}": float(v)
                for k, v in summary["zero_shot"].get(model, {}).items() if k.startswith("zeroshot_")}  # fmt: skip
    for recipe, metrics in summary["finetune"].items():
        for label, arms in metrics.items():
            for arm, entry in arms.items():
                out[f"{recipe}/{arm}/{label}"] = float(entry["value"] if arm == "difference" else entry["mean"])
    return out


def table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])


ZERO_SHOT_COLUMNS = ("R@1", "R@5", "R@10", "MedR", "MeanR")


def zero_shot_arms(zs: dict[str, Any], score: str) -> dict[str, np.ndarray] | None:
    """model -> (seeds, queries) ranks of the score, from the predictions files the zero-shot stage keeps."""
    ranks = zs.get("ranks")
    if not ranks:
        return None
    return {model: np.asarray([[row[f"rank_{score}"] for row in rows] for rows in per_seed], dtype=np.float64)
            for model, per_seed in ranks.items()}  # fmt: skip


def _column(ranks: np.ndarray, column: str) -> tuple[np.ndarray, bool]:
    """Per-query values whose mean (or median, True) over queries is the column's metric."""
    if column.startswith("R@"):
        return 100.0 * (ranks <= int(column[2:])), False
    return ranks, column == "MedR"


def zero_shot_table(zs: dict[str, Any]) -> str:
    """Pretrained vs random init (mean of seeds) vs chance, per score; with the per-query ranks, each cell's
    95% CI and a row for the difference pretrained - random init."""
    n = int(zs["clips"])
    rows = [["model", "score", *ZERO_SHOT_COLUMNS]]
    for score, key in (("sentence", "t2v"), ("TACo L1+L2", "taco")):  # pretrain/zeroshot.py
        arms = zero_shot_arms(zs, key)
        for name, model, m in (("pretrained", "pretrained", zs["pretrained"]),
                               ("random init (mean of seeds)", "random", zs["random"])):  # fmt: skip
            cells = []
            for col in ZERO_SHOT_COLUMNS:
                cell = f"{m[f'zeroshot_{key}_{col}']:.1f}"
                if arms is not None:
                    values, median = _column(arms[model], col)
                    lo, hi = interval(bootstrap([values], median)[:, 0])
                    cell += f" [{lo:.1f}, {hi:.1f}]"
                cells.append(cell)
            rows.append([name, score, *cells])
        if arms is not None:
            cells = []
            for col in ZERO_SHOT_COLUMNS:
                (pre, median), (rnd, _) = _column(arms["pretrained"], col), _column(arms["random"], col)
                draws = bootstrap([pre, rnd], median)
                diff = zs["pretrained"][f"zeroshot_{key}_{col}"] - zs["random"][f"zeroshot_{key}_{col}"]
                lo, hi = interval(draws[:, 0] - draws[:, 1])
                beyond = (lo > 0) if col.startswith("R@") else (hi < 0)
                cells.append(f"{diff:+.1f} [{lo:+.1f}, {hi:+.1f}]{' *' if beyond else ''}")
            rows.append(["pretrained - random init", score, *cells])
    rows.append(["chance", "", *(f"{100 * min(k, n) / n:.1f}" for k in (1, 5, 10)), f"{(n + 1) / 2:.1f}",
                 f"{(n + 1) / 2:.1f}"])  # fmt: skip
    return table(rows)


def finetune_table(recipe: str, results: dict[str, list[dict]]) -> tuple[str, dict[str, Any]]:
    """Rows pretrained / scratch / difference for one recipe; results: init -> per-seed metrics (each with
    its "per_query" values, when the run wrote them). Cells: mean ± std over seeds [95% CI]."""
    cols = METRICS[recipe]
    rows = [["init", *(c[0] for c in cols)]]
    summary: dict[str, Any] = {}
    for init, runs in results.items():
        cells = []
        for label, path, _ in cols:
            values = [metric(r, path) for r in runs]
            m, s = mean_std(values)
            entry = {"mean": m, "std": s, "values": values}
            arm = per_query(runs, path)
            if arm is not None:
                entry["ci"] = interval(bootstrap([arm], median=label == "MedR")[:, 0])
            summary.setdefault(label, {})[init] = entry
            ci = f" [{entry['ci'][0]:.1f}, {entry['ci'][1]:.1f}]" if "ci" in entry else ""
            cells.append(f"{m:.2f} ± {s:.2f}{ci}")
        rows.append([f"{init} (n={len(runs)})", *cells])
    if {"pretrained", "scratch"} <= results.keys():
        cells = []
        for label, path, higher in cols:
            pre, scr = summary[label]["pretrained"], summary[label]["scratch"]
            arms = [per_query(results["pretrained"], path), per_query(results["scratch"], path)]
            if all(a is not None for a in arms) and arms[0].shape[1] == arms[1].shape[1]:
                draws = bootstrap(arms, median=label == "MedR")
                diff, (lo, hi) = pre["mean"] - scr["mean"], interval(draws[:, 0] - draws[:, 1])
                beyond = lo > 0 if higher else hi < 0
                summary[label]["difference"] = {"value": diff, "ci": (lo, hi), "beyond_noise": beyond}
                cells.append(f"{diff:+.2f} [{lo:+.1f}, {hi:+.1f}]{' *' if beyond else ''}")
            else:
                diff, beyond = compare(pre["values"], scr["values"], higher)
                summary[label]["difference"] = {"value": diff, "beyond_noise": beyond}
                cells.append(f"{diff:+.2f}{' †' if beyond else ''}")
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
    summary: dict[str, Any] = {"zero_shot": {k: v for k, v in zero_shot.items() if k != "ranks"}, "finetune": {}}
    for recipe, results in finetune.items():
        text, summ = finetune_table(recipe, results)
        summary["finetune"][recipe] = summ
        parts += [f"## {recipe}: finetuned from the pretrained export vs from scratch", text]
        variant_bars(summ, out / f"{recipe}_variants.png", recipe)
        parts.append(f"![{recipe} per variant]({recipe}_variants.png)")
    parts.append(f"Cells: mean ± std over seeds [{CI_LEVEL:.0%} CI]; `*`: the CI of the difference excludes 0 (a "
                 f"bootstrap of {CI_DRAWS} draws over queries, paired between the two arms, and seeds); `†`: no "
                 "per-query files, the difference exceeds twice its standard error over seeds.")
    loss_curves(pretrain_metrics, out / "pretrain_losses.png")
    parts += ["## Pretraining losses", "![per-objective losses](pretrain_losses.png)"]
    if heatmap is not None and heatmap.exists():
        shutil.copy(heatmap, out / "similarity.png")
        parts += ["## Query-video similarity (TVR val, pretrained, seed 0)", "![similarity](similarity.png)"]
    markdown = "\n\n".join(parts) + "\n"
    (out / "report.md").write_text(markdown)
    return markdown, summary
