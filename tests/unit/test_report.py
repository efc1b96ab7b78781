"""The report's confidence intervals (launch/report.py): the bootstrap over queries and seeds against
what a proportion's interval must be, its coverage, the pairing of a difference, and the tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from finetune.datasets import DATASETS
from launch import report


def test_interval_of_a_proportion_matches_the_normal_approximation() -> None:
    rng = np.random.default_rng(0)
    hits = 100.0 * (rng.random((1, 400)) < 0.3)  # one seed, 400 queries
    p = hits.mean() / 100
    lo, hi = report.interval(report.bootstrap([hits])[:, 0])
    half = 196 * math.sqrt(p * (1 - p) / 400)  # in points
    assert lo == pytest.approx(100 * p - half, abs=0.8) and hi == pytest.approx(100 * p + half, abs=0.8)


def test_intervals_cover_the_true_value_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(200):
        hits = 100.0 * (rng.random((1, 200)) < 0.3)
        lo, hi = report.interval(report.bootstrap([hits], draws=400, seed=int(rng.integers(1 << 30)))[:, 0])
        covered += lo <= 30.0 <= hi
    assert 0.89 <= covered / 200 <= 0.99


def test_a_difference_is_paired_over_queries() -> None:
    """Two arms on the same queries that differ on 10 of 300 queries: the paired interval excludes 0 and is
    far narrower than the arms' own; identical arms give exactly 0."""
    rng = np.random.default_rng(2)
    a = 100.0 * (rng.random((3, 300)) < 0.5)
    a[:] = a[0]  # every seed the same
    b = a.copy()
    b[:, :10] = 0.0
    a[:, :10] = 100.0  # a is better on 10 queries
    draws = report.bootstrap([a, b])
    lo, hi = report.interval(draws[:, 0] - draws[:, 1])
    own_lo, own_hi = report.interval(draws[:, 0])
    assert 0 < lo <= hi and hi - lo < (own_hi - own_lo) / 2
    same = report.bootstrap([a, a.copy()])
    assert report.interval(same[:, 0] - same[:, 1]) == (0.0, 0.0)


def test_seeds_widen_the_interval() -> None:
    """Same queries, seeds that disagree: resampling the seeds adds their spread to the interval."""
    rng = np.random.default_rng(3)
    base = 100.0 * (rng.random((1, 300)) < 0.4)
    calm = np.repeat(base, 3, axis=0)
    noisy = calm.copy()
    noisy[1, rng.permutation(300)[:60]] = 100.0  # one seed much better
    lo_c, hi_c = report.interval(report.bootstrap([calm])[:, 0])
    lo_n, hi_n = report.interval(report.bootstrap([noisy])[:, 0])
    assert hi_n - lo_n > 1.2 * (hi_c - lo_c)


def test_median_rank_interval() -> None:
    ranks = np.arange(1, 202, dtype=np.float64)[None]  # median 101
    lo, hi = report.interval(report.bootstrap([ranks], median=True)[:, 0])
    assert lo < 101 < hi and 80 < lo and hi < 122


def _runs(p: float, seeds: int, q: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(seeds):
        hits = (100.0 * (rng.random(q) < p)).tolist()
        ranks = [1.0 if h else float(rng.integers(2, 50)) for h in hits]
        per_query = {"R@1": hits, "R@5": hits, "R@10": hits, "MedR": ranks, "MeanR": ranks}
        recall = float(np.mean(hits))
        runs.append({"R@1": recall, "R@5": recall, "R@10": recall, "MedR": float(np.median(ranks)),
                     "MeanR": float(np.mean(ranks)), "per_query": per_query})  # fmt: skip
    return runs


def test_finetune_table_flags_a_difference_only_beyond_its_interval() -> None:
    clear = {"pretrained": _runs(0.6, 3, 200, 0), "scratch": _runs(0.2, 3, 200, 1)}
    text, summary = report.finetune_table("msrvtt", clear)
    assert summary["R@1"]["difference"]["beyond_noise"] and summary["R@1"]["difference"]["ci"][0] > 20
    assert "[" in text and " *" in text
    lo, hi = summary["R@1"]["pretrained"]["ci"]
    assert lo < summary["R@1"]["pretrained"]["mean"] < hi
    noise = {"pretrained": _runs(0.3, 3, 200, 2), "scratch": _runs(0.3, 3, 200, 3)}
    _, summary = report.finetune_table("msrvtt", noise)
    assert not summary["R@1"]["difference"]["beyond_noise"]
    legacy = {init: [{k: v for k, v in r.items() if k != "per_query"} for r in runs] for init, runs in clear.items()}
    text, summary = report.finetune_table("msrvtt", legacy)  # runs without per_query.json: the seeds alone
    assert "ci" not in summary["R@1"]["difference"] and "†" in text


def test_zero_shot_table_with_ranks() -> None:
    n = 50
    rows = lambda ranks: [{"key": str(i), "rank_t2v": r, "rank_taco": r} for i, r in enumerate(ranks)]  # noqa: E731
    good, bad = [1] * 30 + [20] * 20, [25] * n
    metrics = lambda ranks: {f"zeroshot_{s}_{k}": v for s in ("t2v", "taco") for k, v in {  # noqa: E731
        "R@1": 100 * np.mean([r <= 1 for r in ranks]), "R@5": 100 * np.mean([r <= 5 for r in ranks]),
        "R@10": 100 * np.mean([r <= 10 for r in ranks]), "MedR": float(np.median(ranks)),
        "MeanR": float(np.mean(ranks))}.items()}  # fmt: skip
    zs = {"clips": n, "pretrained": metrics(good), "random": metrics(bad),
          "ranks": {"pretrained": [rows(good)], "random": [rows(bad), rows(bad)]}}  # fmt: skip
    text = report.zero_shot_table(zs)
    diff_rows = [line for line in text.splitlines() if line.startswith("| pretrained - random init")]
    assert len(diff_rows) == 2 and all("+60.0" in r and " *" in r for r in diff_rows)
    assert "[" not in report.zero_shot_table({k: v for k, v in zs.items() if k != "ranks"})


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_figures_fit_a_viewer_and_keep_ranks_off_the_recall_axis(tmp_path) -> None:
    """The loss panels wrap into a grid (7 objectives were a 2100x280 strip); R@k and MedR get an axis each."""
    keys = ["gmr", "mfm_nce", "mlm", "self_contrast", "taco_l1", "taco_l2", "taco_l3"]
    metrics = [{"step": s, **{f"{k}_loss": 1.0 / s for k in keys}} for s in range(1, 11)]
    report.loss_curves(metrics, tmp_path / "losses.png")
    w, h = _png_size(tmp_path / "losses.png")
    assert w <= 1500 and w / h <= 2.0, (w, h)

    summary = report.finetune_table("msrvtt", {"pretrained": _runs(0.6, 3, 50, 0), "scratch": _runs(0.2, 3, 50, 1)})[1]
    higher = {m.label: m.higher for m in DATASETS["msrvtt"].metrics}
    groups = report.metric_groups(summary, higher)
    assert groups == [("%, higher is better", ["R@1", "R@5", "R@10"]), ("rank, lower is better", ["MedR"])]
    report.variant_bars(summary, tmp_path / "bars.png", "msrvtt", higher)
    assert _png_size(tmp_path / "bars.png")[0] <= 1500


def test_html_report_embeds_every_figure_and_table(tmp_path) -> None:
    """report.html renders where relative links do not (MLflow's artifact view): the figures inline, the
    tables as tables, the text escaped."""
    import base64
    import re

    png = tmp_path / "fig.png"
    report.loss_curves([{"step": 1, "a_loss": 1.0}, {"step": 2, "a_loss": 0.5}], png)
    markdown = "# Title\n\nText with `code` & <b>.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![the losses](fig.png)\n"
    page = report.to_html(markdown, tmp_path)
    sources = re.findall(r'src="([^"]+)"', page)
    assert len(sources) == 1 and sources[0].startswith("data:image/png;base64,")
    assert base64.b64decode(sources[0].split(",", 1)[1]) == png.read_bytes()
    assert "<h1>Title</h1>" in page and "<code>code</code> &amp; &lt;b&gt;." in page
    assert "<tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr>" in page and "---" not in page
    assert "<figcaption>the losses</figcaption>" in page


def test_heatmap_sample_standardises_per_query_and_ranks_each_own_video() -> None:
    """Rows spread over the queries that have a video; each row's z-scores over ALL videos (a naive loop);
    the box on the query's own video; the label's rank among all videos (1 + strictly better)."""
    import torch

    from finetune.plots import heatmap_sample

    g = torch.Generator().manual_seed(0)
    sim = torch.randn(30, 12, generator=g)
    gt_rows = torch.tensor([i % 12 if i % 5 else -1 for i in range(30)])  # every 5th query has no video
    queries = [{"text": f"q{i}", "video_id": f"v{int(gt_rows[i])}"} for i in range(30)]
    rows, cols, z, gt, labels = heatmap_sample(sim, gt_rows, queries, 6)
    have = [i for i in range(30) if gt_rows[i] >= 0]
    assert len(rows) == 6 and rows[0] == have[0] and rows[-1] == have[-1] and all(gt_rows[i] >= 0 for i in rows)
    for r, i in enumerate(rows):
        values = sim[i].tolist()
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        assert z[r].tolist() == pytest.approx([(v - mean) / std for v in values], abs=1e-5)
        own = int(gt_rows[i])
        assert cols[gt[r]] == own
        assert labels[r] == f"[rank {1 + sum(v > values[own] for v in values)}] q{i}"
    assert cols == list(dict.fromkeys(int(gt_rows[i]) for i in rows))
