"""The plots a researcher looks at after an evaluation: recall@K curves and a query-video
similarity heatmap of a sample (FEEL Figure 5). matplotlib is imported here only, lazily, with
the Agg backend (no display on a cluster node)."""

from __future__ import annotations

import os
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


def similarity_heatmap(
    sim: Tensor,
    rows: Sequence[str],
    cols: Sequence[str],
    path: str,
    title: str,
    gt: Sequence[int] | None = None,
    colorbar: str = "score",
    caption: str = "",
    axes: tuple[str, str] = ("video", "query"),
) -> None:
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


HEATMAP_CAPTION = (
    "Each row is one query: its scores against the sampled queries' own videos, as standard deviations "
    "from that query's mean score over all {videos} videos of the split (so rows compare). The red box "
    "is the query's own video; '[rank k]' is that video's rank among all {videos}. A good model: every "
    "box is the brightest cell of its row (rank 1), and no column is bright in every row (a video that "
    "wins every query is a hub, not a match)."
)


def heatmap_sample(sim: Tensor, gt_rows: Tensor, queries: list[dict], n: int) -> tuple:
    """Up to n queries with a video, spread over the split; their scores standardised per query over all
    videos; the columns (each sampled query's own video, in order), each row's box and label with its rank.
    Returns (rows, cols, z (rows, all videos), gt column per row, labels)."""
    have = [i for i in range(sim.shape[0]) if gt_rows[i] >= 0]
    rows = [have[round(j * (len(have) - 1) / max(n - 1, 1))] for j in range(min(n, len(have)))] if have else []
    rows = list(dict.fromkeys(rows))
    cols = list(dict.fromkeys(int(gt_rows[i]) for i in rows))
    s = sim[rows].float()  # (R, V)
    z = (s - s.mean(dim=1, keepdim=True)) / s.std(dim=1, keepdim=True).clamp_min(1e-12)
    own = torch.tensor([int(gt_rows[i]) for i in rows], dtype=torch.long)
    ranks = 1 + (s > s.gather(1, own[:, None])).sum(dim=1)  # (R,)
    labels = [f"[rank {int(r)}] {queries[i]['text']}" for i, r in zip(rows, ranks)]
    return rows, cols, z, [cols.index(int(c)) for c in own], labels


def retrieval_plots(ranks: Tensor, sim: Tensor, gt_rows: Tensor, queries: list[dict], folder: str, title: str,
                    heatmap_queries: int) -> dict[str, str]:  # fmt: skip
    """recall_at_k.png from each query's video rank (Q,) and similarity.png from the query-video scores of the
    first queries sim (R, V), `heatmap_queries` of them sampled; {"recall_plot": path, "heatmap": path}."""
    recall = os.path.join(folder, "recall_at_k.png")
    recall_curve({"video retrieval": ranks}, recall, title)
    heat = os.path.join(folder, "similarity.png")
    rows, cols, z, gt, labels = heatmap_sample(sim, gt_rows, queries, heatmap_queries)
    videos = [str(queries[i]["video_id"]) for i in rows]
    similarity_heatmap(z[:, cols], labels, list(dict.fromkeys(videos)), heat,
                       f"{title}: query-video scores, per query", gt=gt, colorbar="z-score over all videos, per query",
                       caption=HEATMAP_CAPTION.format(videos=sim.shape[1]))  # fmt: skip
    return {"recall_plot": recall, "heatmap": heat}
