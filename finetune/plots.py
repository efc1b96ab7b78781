"""The plots a researcher looks at after an evaluation: recall@K curves and a query-video
similarity heatmap of a sample (FEEL Figure 5). matplotlib is imported here only, lazily, with
the Agg backend (no display on a cluster node)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import torch
from torch import Tensor


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def recall_curve(ranks: dict[str, Tensor], path: str, title: str, max_k: int = 100) -> None:
    """Recall@K for K = 1..max_k of each named rank vector (1-based ranks; > max_k never hits)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ks = torch.arange(1, max_k + 1)  # (K,)
    for name, r in ranks.items():
        recall = 100.0 * (r[None, :] <= ks[:, None]).float().mean(dim=1)  # (K,)
        ax.plot(ks.tolist(), recall.tolist(), label=name)
    ax.set_xscale("log")
    ax.set(xlabel="K", ylabel="recall@K (%)", title=title, ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _wrap(label: str, width: int, lines: int = 2) -> str:
    """The whole label on up to `lines` lines (an ellipsis only past that)."""
    out = textwrap.wrap(label, width) or [""]
    if len(out) > lines:
        out = out[:lines]
        out[-1] = out[-1][: width - 1] + "…"
    return "\n".join(out)


def similarity_heatmap(sim: Tensor, rows: Sequence[str], cols: Sequence[str], path: str, title: str,
                       gt: Sequence[int] | None = None, colorbar: str = "score", caption: str = "",
                       axes: tuple[str, str] = ("video", "query")) -> None:
    """sim (R, C): query rows against video columns (or `axes` (x, y) others). gt[r]: the column of row r's
    ground truth, boxed (-1: none); `caption` under the plot says how to read it."""
    plt = pyplot()
    labels = [_wrap(r, 48) for r in rows]
    height = 2.4 + 0.18 * sum(label.count("\n") + 1 for label in labels) + (0.6 if caption else 0)
    fig, ax = plt.subplots(figsize=(max(8.0, 5.0 + 0.35 * len(cols)), max(4.5, height)), layout="constrained")
    im = ax.imshow(sim.float().numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), list(cols), rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    for r, c in enumerate(gt or []):
        if c >= 0:
            ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.8))
    ax.set(xlabel=axes[0], ylabel=axes[1], title=title)
    fig.colorbar(im, ax=ax, label=colorbar)
    if caption:
        fig.supxlabel(textwrap.fill(caption, 130), fontsize=8, ha="left", x=0.01)
    fig.savefig(path, dpi=110)
    plt.close(fig)
