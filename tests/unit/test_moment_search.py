"""VCMR / SVMR corpus search against a brute force over every (video, start, end), and NMS against a naive greedy."""

from __future__ import annotations

import math
import random

import pytest
import torch

from finetune.moment_search import (
    POSITIVE_INTS,
    Corpus,
    Packed,
    SearchConfig,
    in_row_order,
    ranked_topk,
    search_corpus,
    search_single,
    temporal_nms,
)

Q, V, M = 5, 7, 9
COUNTS = [9, 1, 4, 7, 2, 9, 5]  # one video of a single frame, two at M
GARBAGE = 50.0  # logits at frames past a video's end: large, so any masking bug wins the ranking


class FakeModel:
    """Random continuous scores (no ties): vr (Q, V), start and end logits (Q, V, M) with garbage padding."""

    def __init__(self, seed: int = 0, counts: list[int] = COUNTS, queries: int = Q):
        g = torch.Generator().manual_seed(seed)
        v = len(counts)
        self.vr = torch.randn(queries, v, generator=g) * 2  # (Q, V)
        pad = torch.arange(M) >= torch.tensor(counts)[:, None]  # (V, M)
        self.st = torch.randn(queries, v, M, generator=g).masked_fill(pad, GARBAGE)  # (Q, V, M)
        self.ed = torch.randn(queries, v, M, generator=g).masked_fill(pad, GARBAGE)  # (Q, V, M)
        self.vr_calls: list[tuple[int, int]] = []

    def vr_scores(self, q0: int, q1: int) -> torch.Tensor:
        self.vr_calls.append((q0, q1))
        return self.vr[q0:q1]  # (q1 - q0, V)

    def span_logits(self, q_rows: torch.Tensor, v_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.st[q_rows[:, None], v_rows], self.ed[q_rows[:, None], v_rows]  # (Qc, K, M) each


def corpus(counts: list[int] = COUNTS, interval: float | torch.Tensor = 1.5, durations: list[float] | None = None):
    v = len(counts)
    durs = durations if durations is not None else [c * 1.5 for c in counts]
    return Corpus(torch.tensor(counts), interval, durs, torch.arange(v) * 10 + 3)


def log_softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    lse = top + math.log(sum(math.exp(x - top) for x in xs))
    return [x - lse for x in xs]


def brute_force(model: FakeModel, q: int, c: Corpus, cfg: SearchConfig, videos: list[int] | None = None,
                single: bool = False) -> list[list]:  # fmt: skip
    """Every moment of every (allowed) video of query q, scored from the equations, best first."""
    log_pv = log_softmax([float(s) / cfg.vr_temperature for s in model.vr[q]])
    out = []
    for v in videos if videos is not None else range(len(c.frame_counts)):
        n, step, dur = int(c.frame_counts[v]), float(c.intervals[v]), float(c.durations[v])
        lst = log_softmax([float(x) for x in model.st[q, v, :n]])
        led = log_softmax([float(x) for x in model.ed[q, v, :n]])
        for i in range(n):
            for j in range(i, n):
                if cfg.min_moment_frames <= j - i + 1 <= cfg.max_moment_frames:
                    score = (0.0 if single else log_pv[v]) + lst[i] + led[j]
                    out.append([int(c.video_idx[v]), i * step, min((j + 1) * step, dur), score])
    return sorted(out, key=lambda p: -p[3])


def naive_nms(preds: list[list], thr: float, limit: int | None = None) -> list[list]:
    """TVR-style greedy, one prediction at a time: drop it if IoU > thr with a kept one of its video."""
    kept: list[list] = []
    for p in sorted(preds, key=lambda p: -p[3]):
        if len(kept) == limit:
            break
        ok = True
        for k in kept:
            if k[0] != p[0]:
                continue
            inter = max(0.0, min(p[2], k[2]) - max(p[1], k[1]))
            union = max(p[2], k[2]) - min(p[1], k[1])
            if union > 0 and inter / union > thr:
                ok = False
                break
        if ok:
            kept.append(p)
    return kept


def assert_same(got: list[list], want: list[list]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g[0] == w[0] and g[1:3] == pytest.approx(w[1:3], abs=1e-9), (g, w)
        assert g[3] == pytest.approx(w[3], abs=1e-4), (g, w)


NO_NMS = dict(nms_iou=0.0, min_moment_frames=1, max_moment_frames=4)


def test_full_search_equals_brute_force():
    model, c = FakeModel(), corpus()
    cfg = SearchConfig(top_videos=V, candidates=40, predictions=30, **NO_NMS)
    vcmr, vr = search_corpus(model.vr_scores, model.span_logits, Q, c, cfg)
    assert len(vcmr) == len(vr) == Q
    for q in range(Q):
        assert_same(vcmr[q], brute_force(model, q, c, cfg)[:30])


def test_all_moments_when_few_and_types_are_plain():
    """predictions above the number of moments: all of them, in order; plain Python numbers (JSON)."""
    model, c = FakeModel(1), corpus()
    cfg = SearchConfig(top_videos=V, candidates=500, predictions=500, **NO_NMS)
    vcmr, vr = search_corpus(model.vr_scores, model.span_logits, Q, c, cfg)
    for q in range(Q):
        want = brute_force(model, q, c, cfg)
        assert len(want) == sum(min(n, 4) * (2 * n - min(n, 4) + 1) // 2 for n in COUNTS)
        assert_same(vcmr[q], want)
        assert all(type(p[0]) is int and all(type(x) is float for x in p[1:]) for p in vcmr[q] + vr[q])


def test_top_k_videos_only():
    model, c = FakeModel(2), corpus()
    cfg = SearchConfig(top_videos=3, candidates=40, predictions=20, **NO_NMS)
    vcmr, vr = search_corpus(model.vr_scores, model.span_logits, Q, c, cfg)
    for q in range(Q):
        top3 = model.vr[q].argsort(descending=True)[:3].tolist()
        assert {p[0] for p in vcmr[q]} <= {int(c.video_idx[v]) for v in top3}
        assert_same(vcmr[q], brute_force(model, q, c, cfg, videos=top3)[:20])


def test_vr_ranking():
    model, c = FakeModel(3), corpus()
    _, vr = search_corpus(model.vr_scores, model.span_logits, Q, c, SearchConfig(top_videos=2, predictions=5))
    for q in range(Q):
        lp = log_softmax(model.vr[q].tolist())
        order = sorted(range(V), key=lambda v: -lp[v])[:5]
        assert [p[0] for p in vr[q]] == [int(c.video_idx[v]) for v in order]
        assert [p[3] for p in vr[q]] == pytest.approx([lp[v] for v in order], abs=1e-5)
        assert all(p[1] == p[2] == 0.0 for p in vr[q])


def test_masking_and_single_frame_video():
    """No moment past a video's frames; the 1-frame video has exactly one moment, log p(v|q) + 0 + 0."""
    model, c = FakeModel(4), corpus()
    cfg = SearchConfig(top_videos=V, candidates=500, predictions=500, **NO_NMS)
    vcmr, _ = search_corpus(model.vr_scores, model.span_logits, Q, c, cfg)
    ends = {int(c.video_idx[v]): COUNTS[v] * 1.5 for v in range(V)}
    for q in range(Q):
        assert all(p[2] <= ends[p[0]] + 1e-9 for p in vcmr[q])
        single = [p for p in vcmr[q] if p[0] == int(c.video_idx[1])]
        assert [p[1:3] for p in single] == [[0.0, 1.5]]
        assert single[0][3] == pytest.approx(log_softmax(model.vr[q].tolist())[1], abs=1e-5)


def test_time_conversion_and_clipping():
    """st/ed are multiples of each video's interval; the end is clipped to the duration."""
    counts = [4, 3]
    model = FakeModel(5, counts=counts, queries=2)
    intervals = torch.tensor([2.0, 0.5])
    c = corpus(counts, interval=intervals, durations=[7.1, 1.5])  # 4 x 2 s frames but 7.1 s long
    cfg = SearchConfig(top_videos=2, candidates=100, predictions=100, **NO_NMS)
    vcmr, _ = search_corpus(model.vr_scores, model.span_logits, 2, c, cfg)
    spans = {(p[0], p[1], p[2]) for p in vcmr[0]}
    assert (3, 6.0, 7.1) in spans and (3, 0.0, 7.1) in spans  # the last frame's end clipped to 7.1 s
    assert (3, 0.0, 2.0) in spans and (13, 0.5, 1.5) in spans and (13, 0.0, 0.5) in spans
    for v, st, ed in spans:
        step = 2.0 if v == 3 else 0.5
        assert st / step == int(st / step) and (ed == 7.1 or ed / step == int(ed / step))
    assert_same(vcmr[0], brute_force(model, 0, c, cfg))


def test_frames_past_the_duration_give_empty_not_negative_spans():
    """More frames than the duration holds: starts are clipped too, so ed >= st (zero-length spans)."""
    model = FakeModel(11, counts=[3], queries=1)
    cfg = SearchConfig(top_videos=1, candidates=10, predictions=10, **NO_NMS)
    vcmr, _ = search_corpus(model.vr_scores, model.span_logits, 1, corpus([3], durations=[2.0]), cfg)
    assert sorted(p[1:3] for p in vcmr[0]) == [[0.0, 1.5], [0.0, 2.0], [0.0, 2.0], [1.5, 2.0], [1.5, 2.0], [2.0, 2.0]]


def test_min_moment_frames():
    model, c = FakeModel(6), corpus()
    cfg = SearchConfig(top_videos=V, candidates=60, predictions=60, nms_iou=1.0, min_moment_frames=3,
                       max_moment_frames=5)  # fmt: skip
    vcmr, _ = search_corpus(model.vr_scores, model.span_logits, Q, c, cfg)
    for q in range(Q):
        assert_same(vcmr[q], brute_force(model, q, c, cfg)[:60])
        assert all(round((p[2] - p[1]) / 1.5) >= 3 for p in vcmr[q])


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_search_with_nms_equals_brute_force_then_greedy(thr: float):
    model, c = FakeModel(7), corpus()
    cfg = SearchConfig(top_videos=V, candidates=15, predictions=15, nms_iou=thr, max_moment_frames=4)
    vcmr, _ = search_corpus(model.vr_scores, model.span_logits, Q, c, cfg)
    suppressed_any = False
    for q in range(Q):
        everything = brute_force(model, q, c, cfg)
        suppressed_any |= len(naive_nms(everything[:15], thr)) < 15  # the first `candidates` are not enough
        assert_same(vcmr[q], naive_nms(everything, thr, 15))
        for a in range(len(vcmr[q])):  # no two kept moments of a video overlap by more than thr
            for b in range(a):
                assert vcmr[q][a][0] != vcmr[q][b][0] or iou(vcmr[q][a], vcmr[q][b]) <= thr
    assert suppressed_any


def iou(a: list, b: list) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[1], b[1]))
    return inter / (a[2] - a[1] + b[2] - b[1] - inter)


@pytest.mark.parametrize("videos", [3, 12])  # same-video pairs: many (IoU at every pair), few (at those only)
def test_temporal_nms_against_naive_greedy(videos):
    rng = random.Random(0)
    rows, c = 20, 30
    st = torch.tensor([[rng.choice([0.0, 1.5, 3.0, 4.5]) + rng.choice([0.0, 0.5]) for _ in range(c)]
                       for _ in range(rows)], dtype=torch.float64)  # fmt: skip  # repeated values: IoU = thr exactly
    ed = st + torch.tensor([[rng.choice([0.0, 0.5, 1.5, 3.0]) for _ in range(c)] for _ in range(rows)])
    video = torch.randint(0, videos, (rows, c), generator=torch.Generator().manual_seed(0))
    valid = torch.rand(rows, c, generator=torch.Generator().manual_seed(1)) > 0.1
    for thr in (0.0, 1 / 3, 0.5, 0.9):
        keep = temporal_nms(st, ed, video, valid, thr)
        for r in range(rows):
            preds = [[int(video[r, j]), float(st[r, j]), float(ed[r, j]), float(c - j)] for j in range(c)]
            want = naive_nms([p for p, ok in zip(preds, valid[r].tolist()) if ok], thr)
            assert [p for p, ok in zip(preds, keep[r].tolist()) if ok] == want, (thr, r)


@pytest.mark.parametrize("videos", [2, 12])
@pytest.mark.parametrize("limit, block", [(None, 7), (5, 7), (12, 4), (40, 256)])
def test_temporal_nms_in_blocks_with_a_limit(limit, block, videos):
    """Blocks of any size and a cap on the kept ones: the first `limit` survivors of the greedy over all."""
    rng = random.Random(1)
    rows, c = 12, 40
    st = torch.tensor([[rng.choice([0.0, 1.5, 3.0]) + rng.random() for _ in range(c)] for _ in range(rows)],
                      dtype=torch.float64)  # fmt: skip
    ed = st + torch.rand(rows, c, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3
    video = torch.randint(0, videos, (rows, c), generator=torch.Generator().manual_seed(3))
    valid = torch.rand(rows, c, generator=torch.Generator().manual_seed(4)) > 0.1
    keep = temporal_nms(st, ed, video, valid, 0.5, limit=limit, block=block)
    for r in range(rows):
        preds = [[int(video[r, j]), float(st[r, j]), float(ed[r, j]), float(c - j)] for j in range(c)]
        want = naive_nms([p for p, ok in zip(preds, valid[r].tolist()) if ok], 0.5, limit)
        assert [p for p, ok in zip(preds, keep[r].tolist()) if ok] == want, r


def test_peaked_scores_still_give_100_predictions_per_query():
    """TVR-like lengths and peaked start/end logits: most of the best 200 moments overlap, so NMS of the best
    200 alone leaves fewer than 100; the search widens its pool and every VCMR and SVMR entry has 100."""
    counts = [40, 60, 44, 52, 58, 41]  # 1.5 s frames: 60-90 s videos
    queries, m = 5, max(counts)
    model = FakeModel(12, counts=counts, queries=queries)
    t = torch.arange(m, dtype=torch.float32)
    g = torch.Generator().manual_seed(13)
    centre = torch.rand(queries, len(counts), 1, generator=g) * torch.tensor(counts)[:, None]  # (Q, V, 1)

    def peak(shift: float) -> torch.Tensor:  # (Q, V, M): a bump of height 12 over N(0, 1) noise
        noise = torch.randn(queries, len(counts), m, generator=g)
        return 12.0 * torch.exp(-(((t - centre - shift) / 2.0) ** 2)) + noise

    pad = t >= torch.tensor(counts)[:, None]  # (V, M)
    model.st, model.ed = peak(0.0).masked_fill(pad, GARBAGE), peak(6.0).masked_fill(pad, GARBAGE)
    c = corpus(counts)
    cfg = SearchConfig(top_videos=len(counts), max_moment_frames=16)  # the defaults: 200 candidates, NMS 0.7, 100
    vcmr, _ = search_corpus(model.vr_scores, model.span_logits, queries, c, cfg)
    rows = torch.arange(queries)
    svmr = search_single(model.span_logits, rows, rows % len(counts), c, cfg)
    short_before = 0
    for q in range(queries):
        everything = brute_force(model, q, c, cfg)
        short_before += len(naive_nms(everything[:200], 0.7)) < 100
        assert len(vcmr[q]) == 100 and len(svmr[q]) == 100
        assert_same(vcmr[q], naive_nms(everything, 0.7, 100))
        mine = brute_force(model, q, c, cfg, videos=[q % len(counts)], single=True)
        short_before += len(naive_nms(mine[:200], 0.7)) < 100
        assert_same(svmr[q], naive_nms(mine, 0.7, 100))
    assert short_before >= queries  # the old search (NMS over the first 200 only) came up short here


def test_nms_comparison_is_strict():
    """IoU exactly at the threshold is kept (TVR suppresses IoU > threshold only)."""
    st = torch.tensor([[0.0, 1.0, 0.0]])  # [0, 2] vs [1, 3]: IoU 1/3; [0, 2] vs [0, 2] on another video
    ed = torch.tensor([[2.0, 3.0, 2.0]])
    keep = temporal_nms(st, ed, torch.tensor([[0, 0, 1]]), torch.ones(1, 3, dtype=torch.bool), 1 / 3)
    assert keep.tolist() == [[True, True, True]]
    keep = temporal_nms(st, ed, torch.tensor([[0, 0, 0]]), torch.ones(1, 3, dtype=torch.bool), 0.3)
    assert keep.tolist() == [[True, False, False]]


def test_single_video_search():
    model, c = FakeModel(8), corpus()
    q_rows, v_rows = torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([0, 3, 1, 6, 5, 2])
    for nms in (0.0, 0.5):
        cfg = SearchConfig(candidates=30, predictions=10, nms_iou=nms, max_moment_frames=4, moment_chunk=4)
        svmr = search_single(model.span_logits, q_rows, v_rows, c, cfg)
        for preds, q, v in zip(svmr, q_rows.tolist(), v_rows.tolist()):
            want = brute_force(model, q, c, cfg, videos=[v], single=True)
            assert_same(preds, naive_nms(want, nms, 10) if nms else want[:10])
            assert {p[0] for p in preds} == {int(c.video_idx[v])}
    assert len(svmr[2]) == 1 and svmr[2][0][3] == pytest.approx(0.0, abs=1e-6)  # the 1-frame video


def test_chunk_sizes_do_not_change_results():
    model, c = FakeModel(9, queries=11), corpus()
    base = dict(top_videos=4, candidates=30, predictions=12, nms_iou=0.5, max_moment_frames=4)
    cfg = lambda qc, mc: SearchConfig(query_chunk=qc, moment_chunk=mc, **base)
    run = lambda qc, mc: search_corpus(model.vr_scores, model.span_logits, 11, c, cfg(qc, mc))
    small = run(1, 1)
    assert model.vr_calls == [(q, q + 1) for q in range(11)]
    mixed, large = run(4, 3), run(64, 64)
    assert small == mixed == large


def test_ties_are_deterministic():
    """Equal values: ascending index, also when the tie straddles the k-th place."""
    x = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, 3.0, 0.0], [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]])
    vals, idx = ranked_topk(x, 3)
    assert idx.tolist() == [[1, 2, 4], [0, 1, 2]] and vals.tolist() == [[3.0, 3.0, 3.0], [5.0, 5.0, 5.0]]
    y = torch.randint(0, 4, (50, 300), generator=torch.Generator().manual_seed(0)).float()
    vals, idx = ranked_topk(y, 37)
    want_v, want_i = y.sort(dim=1, descending=True, stable=True)
    assert torch.equal(idx, want_i[:, :37]) and torch.equal(vals, want_v[:, :37])


def test_tied_moments_ordered_by_video_rank_then_start_then_length():
    counts = [3, 3]
    model = FakeModel(10, counts=counts, queries=1)
    model.vr[:] = 0.0  # both videos equally likely: rank by corpus row
    model.st[:, :, :3] = 0.0
    model.ed[:, :, :3] = 0.0  # every moment scores the same
    cfg = SearchConfig(top_videos=2, candidates=12, predictions=12, **NO_NMS)
    vcmr, _ = search_corpus(model.vr_scores, model.span_logits, 1, corpus(counts), cfg)
    spans = [(p[0], p[1] / 1.5, p[2] / 1.5 - 1) for p in vcmr[0]]
    assert spans == [(v, i, j) for v in (3, 13) for i in range(3) for j in range(i, 3)]


@pytest.mark.parametrize("field", [*POSITIVE_INTS, "vr_temperature"])
def test_config_validation_names_the_field(field: str):
    with pytest.raises(ValueError, match=field):
        search_corpus(FakeModel().vr_scores, FakeModel().span_logits, Q, corpus(), SearchConfig(**{field: 0}))


def test_config_validation_relations():
    SearchConfig().validate()
    with pytest.raises(ValueError, match="min_moment_frames"):
        SearchConfig(min_moment_frames=5, max_moment_frames=4).validate()
    with pytest.raises(ValueError, match="candidates"):
        SearchConfig(candidates=10, predictions=11).validate()
    with pytest.raises(ValueError, match="query_chunk"):
        SearchConfig(query_chunk=2.5).validate()
    with pytest.raises(ValueError, match="frame_counts"):
        corpus(counts=[3, 0])
    with pytest.raises(ValueError, match="durations"):
        Corpus(torch.tensor([3, 2]), 1.5, torch.tensor([1.0]), torch.arange(2))


def test_packed_predictions_give_the_same_lists_in_row_order() -> None:
    """Packed -> lists: video index back to int, float32 scores and float64 seconds exact; rounds that finish
    rows out of order (a pool doubled) put back in row order, each row's predictions in their order."""
    score = torch.tensor([0.1, -2.5, 1 / 3], dtype=torch.float32)
    round1 = Packed.of(torch.tensor([7, 3]), torch.tensor([0.0, 1.5], dtype=torch.float64),
                       torch.tensor([1.5, 3.0], dtype=torch.float64), score[:2], torch.tensor([2, 0]))  # fmt: skip
    round2 = Packed.of(torch.tensor([9]), torch.tensor([4.5], dtype=torch.float64),
                       torch.tensor([6.0], dtype=torch.float64), score[2:], torch.tensor([1]))  # fmt: skip
    out = in_row_order([(torch.tensor([2, 0]), round1), (torch.tensor([1]), round2)], 3).lists()
    s = score.tolist()
    assert out == [[], [[9, 4.5, 6.0, s[2]]], [[7, 0.0, 1.5, s[0]], [3, 1.5, 3.0, s[1]]]]
    assert all(type(p[0]) is int for preds in out for p in preds)
    assert Packed.cat([]).lists() == []
