"""The plots a researcher looks at after an evaluation: recall@K curves and a query-video
similarity heatmap of a sample (FEEL Figure 5). matplotlib is imported here only, lazily, with
the Agg backend (no display on a cluster node)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def recall_curve(ranks: dict[str, Tensor], path: str, title: str, max_k: int = 100) -> None:
    """Recall@K for K = 1..max_k of each named rank vector (1-based ranks; > max_k never hits)."""
    plt = _pyplot()
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


def similarity_heatmap(sim: Tensor, rows: Sequence[str], cols: Sequence[str], path: str, title: str) -> None:
    """sim (R, C): query rows against video columns; the ground truth sits on the diagonal when sorted so."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 2 + 0.25 * len(cols)), max(4.0, 1 + 0.22 * len(rows))))
    im = ax.imshow(sim.float().numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), [c[:16] for c in cols], rotation=90, fontsize=5)
    ax.set_yticks(range(len(rows)), [r[:24] for r in rows], fontsize=5)
    ax.set(xlabel="video", ylabel="query", title=title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
