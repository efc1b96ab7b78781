"""The report's confidence intervals (launch/report.py): the bootstrap over queries and seeds against
what a proportion's interval must be, its coverage, the pairing of a difference, and the tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

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
        runs.append({"R@1": float(np.mean(hits)), "R@5": float(np.mean(hits)), "R@10": float(np.mean(hits)),
                     "MedR": float(np.median(ranks)), "MeanR": float(np.mean(ranks)), "per_query": per_query})
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
