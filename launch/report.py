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

import base64
import html
import math
import re
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from finetune.datasets import DATASETS

CI_DRAWS = 2000  # bootstrap draws
CI_LEVEL = 0.95


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
    cols = DATASETS[recipe].metrics
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
    """Per-objective pretraining losses against the step: a grid of panels, each on its own scale."""
    from finetune.plots import pyplot

    plt = pyplot()
    keys = sorted(k for k in metrics[0] if k.endswith("_loss"))
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
    steps = [m["step"] for m in metrics]
    for ax, key in zip(axes.flat, keys):
        ax.plot(steps, [m.get(key, float("nan")) for m in metrics])
        ax.set(title=key.removesuffix("_loss"), xlabel="optimizer step", ylabel="loss")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle("Pretraining loss per objective (each panel its own scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def metric_groups(summary: dict[str, Any], higher: dict[str, bool]) -> list[tuple[str, list[str]]]:
    """The metrics that share an axis: recalls and accuracies (%), then ranks; (axis label, metric labels)."""
    groups = [(name, [lb for lb in summary if higher[lb] is up])
              for name, up in (("%, higher is better", True), ("rank, lower is better", False))]  # fmt: skip
    return [(name, labels) for name, labels in groups if labels]


def variant_bars(summary: dict[str, dict[str, Any]], path: Path, title: str, higher: dict[str, bool]) -> None:
    """Mean +- std over seeds of every metric per variant (init), side by side: recalls and accuracies (%, higher
    is better) in one panel, ranks (lower is better) in another, each with its own axis."""
    from finetune.plots import pyplot

    plt = pyplot()
    groups = metric_groups(summary, higher)
    variants = [v for v in next(iter(summary.values())) if v != "difference"]
    seeds = max(len(summary[lb][v]["values"]) for lb in summary for v in variants)
    widths = [max(len(labels), 1.5) for _, labels in groups]
    fig, axes = plt.subplots(1, len(groups), figsize=(2.0 + 1.7 * sum(widths), 3.6), squeeze=False,
                             gridspec_kw={"width_ratios": widths})  # fmt: skip
    width = 0.8 / len(variants)
    for ax, (name, labels) in zip(axes[0], groups):
        for i, v in enumerate(variants):
            xs = [j + i * width for j in range(len(labels))]
            ax.bar(xs, [summary[lb][v]["mean"] for lb in labels], width, label=v, capsize=3,
                   yerr=[summary[lb][v]["std"] for lb in labels])  # fmt: skip
        ax.set_xticks([j + width * (len(variants) - 1) / 2 for j in range(len(labels))], labels, fontsize=8)
        ax.set(ylabel=name)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{title}: finetuned from the pretrained export vs from scratch (mean ± std over {seeds} "
                 f"seed{'s' if seeds > 1 else ''})",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: Path, zero_shot: dict[str, Any], finetune: dict[str, dict[str, list[dict]]],
          pretrain_metrics: list[dict[str, float]], heatmap: Path | None, header: str) -> tuple[str, dict]:  # fmt: skip
    """report.md, summary.json-able dict and the PNGs under `out`; returns (markdown, summary)."""
    out.mkdir(parents=True, exist_ok=True)
    parts = [
        header,
        "The same report with its figures embedded: `report.html` (what MLflow's artifact view shows).",
        "## Zero-shot text-to-video retrieval (held-out HowTo100M clips)",
        zero_shot_table(zero_shot),
    ]
    summary: dict[str, Any] = {"zero_shot": {k: v for k, v in zero_shot.items() if k != "ranks"}, "finetune": {}}
    for recipe, results in finetune.items():
        text, summ = finetune_table(recipe, results)
        summary["finetune"][recipe] = summ
        parts += [f"## {recipe}: finetuned from the pretrained export vs from scratch", text]
        higher = {m.label: m.higher for m in DATASETS[recipe].metrics}
        variant_bars(summ, out / f"{recipe}_variants.png", recipe, higher)
        parts.append(f"![{recipe} per variant]({recipe}_variants.png)")
    parts.append(
        f"Cells: mean ± std over seeds [{CI_LEVEL:.0%} CI]; `*`: the CI of the difference excludes 0 (a "
        f"bootstrap of {CI_DRAWS} draws over queries, paired between the two arms, and seeds); `†`: no "
        "per-query files, the difference exceeds twice its standard error over seeds."
    )
    loss_curves(pretrain_metrics, out / "pretrain_losses.png")
    parts += ["## Pretraining losses", "![per-objective losses](pretrain_losses.png)"]
    if heatmap is not None and heatmap.exists():
        shutil.copy(heatmap, out / "similarity.png")
        parts += [
            "## Query-video similarity (TVR val, pretrained, seed 0)",
            "![similarity](similarity.png)",
            "Each row is a query's scores, standardised over all videos; the red box is its own video and "
            "'rank k' that video's rank. A good model: every box the brightest of its row, no column bright "
            "in every row.",
        ]
    markdown = "\n\n".join(parts) + "\n"
    (out / "report.md").write_text(markdown)
    (out / "report.html").write_text(to_html(markdown, out))  # what MLflow's artifact view renders
    return markdown, summary


def _inline(text: str) -> str:
    """Escaped text with `code` and **bold**."""
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


def to_html(markdown: str, folder: Path) -> str:
    """The report as one self-contained page: the markdown this module writes (headings, paragraphs, pipe
    tables, images) with every figure embedded, so that it renders where relative links do not (MLflow's
    artifact view shows an .html artifact, but neither a .md's markup nor its relative images)."""
    body = []
    for block in markdown.strip().split("\n\n"):
        lines = block.splitlines()
        if block.startswith("#"):
            level = len(block) - len(block.lstrip("#"))
            body.append(f"<h{level}>{_inline(block.lstrip('#').strip())}</h{level}>")
        elif all(line.startswith("|") for line in lines):
            cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines if not set(line) <= set("|-: ")]
            head = "".join(f"<th>{_inline(c)}</th>" for c in cells[0])
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif m := re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", block.strip()):
            data = base64.b64encode((folder / m.group(2)).read_bytes()).decode()
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(m.group(1))}">'
                f"<figcaption>{_inline(m.group(1))}</figcaption></figure>"
            )
        else:
            body.append(f"<p>{_inline(block)}</p>")
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}figcaption{font-size:12px;color:#555}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Main job report</title><style>{style}</style>"
        f"</head><body>{''.join(body)}</body></html>\n"
    )
