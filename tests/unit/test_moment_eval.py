"""Moment-retrieval metrics against a brute-force reference, hand-computed cases, and every bad input."""

from __future__ import annotations

import json
import math
import random
import zipfile
from typing import Any

import numpy as np
import pytest

from finetune import moment_eval as me
from finetune.moment_eval import EvalInputError

THDS = (0.5, 0.7)
TOPKS = (1, 5, 10, 100)


# --- brute force, from the definition, one prediction at a time ---------------------------------


def ref_iou(a: list[float], b: list[float]) -> np.float32:
    """Hull IoU in float32 scalar arithmetic."""
    s1, e1, s2, e2 = (np.float32(x) for x in (a[0], a[1], b[0], b[1]))
    inter = max(np.float32(0), min(e1, e2) - max(s1, s2))
    hull = max(e1, e2) - min(s1, s2)
    return np.float32(0) if hull == 0 else np.float32(inter / hull)


def ref_correct(pred: list[float], vidx: int, ts: list[Any], thd: float) -> bool:
    if pred[0] != vidx:
        return False
    spans = ts if isinstance(ts[0], list) else [ts]
    need = 2 if len(spans) >= 4 else 1
    return sum(1 for s in spans if ref_iou(pred[1:3], s) >= np.float32(thd)) >= need


def ref_hits(task: str, preds: list[list[float]], vidx: int, ts: list[Any]) -> dict[str, bool]:
    preds = preds[:100]
    if task == "VR":
        return {f"r{k}": any(p[0] == vidx for p in preds[:k]) for k in TOPKS}
    pool = [p for p in preds if p[0] == vidx] if task == "SVMR" else preds
    return {f"{t}-r{k}": any(ref_correct(p, vidx, ts, t) for p in pool[:k]) for t in THDS for k in TOPKS}


def ref_pct(count: int, total: int) -> float:
    return math.nan if total == 0 else round(count / total * 100, 2)


def ref_evaluate(sub: dict[str, Any], gt: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    typed = all(g.get("type") is not None for g in gt)
    tasks = [t for t in ("VCMR", "SVMR", "VR") if t in sub]
    for task in tasks:
        by_id = {e["desc_id"]: e["predictions"] for e in sub[task]}
        rows = [
            (g.get("type"), ref_hits(task, by_id[g["desc_id"]], sub["video2idx"][g["vid_name"]], g["ts"])) for g in gt
        ]
        keys = list(rows[0][1])
        out[task] = {k: ref_pct(sum(h[k] for _, h in rows), len(rows)) for k in keys}
        if typed:
            by_type: dict[str, Any] = {}
            for ty in ("v", "t", "vt"):
                sel = [h for t, h in rows if t == ty]
                for k in keys:
                    by_type[f"{ty}-{k}"] = ref_pct(sum(h[k] for h in sel), len(sel))
            by_type["desc_type_ratio"] = " ".join(
                f"{ty} {ref_pct(sum(t == ty for t, _ in rows), len(rows))}" for ty in ("v", "t", "vt")
            )
            out[f"{task}_by_type"] = by_type
    return {k: out[k] for k in [*tasks, *(f"{t}_by_type" for t in tasks)] if k in out}


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Equal, key order included; NaN equals NaN (a type with no query)."""
    assert list(got) == list(want)
    for task in want:
        assert list(got[task]) == list(want[task]), task
        for key, w in want[task].items():
            g = got[task][key]
            if isinstance(w, float) and math.isnan(w):
                assert isinstance(g, float) and math.isnan(g), (task, key, g)
            else:
                assert g == w and type(g) is type(w), (task, key, g, w)


# --- random submissions with ties, edge spans and threshold hits ---------------------------------

GRID = [round(0.1 * i, 1) for i in range(31)]  # 0.0 .. 3.0: many IoUs land exactly on 0.5 and 0.7


def rand_span(rng: random.Random) -> list[float]:
    a, b = rng.choice(GRID), rng.choice(GRID)
    return [min(a, b), max(a, b)]  # a == b gives zero-length spans


def rand_case(seed: int, n_query: int = 40, didemo: bool = False, typed: bool = True) -> tuple[dict, list]:
    rng = random.Random(seed)
    names = [f"vid{i}" for i in range(6)]
    video2idx = {n: 100 + 7 * i for i, n in enumerate(names)}  # idx != position
    gt = []
    for q in range(n_query):
        ts = [rand_span(rng) for _ in range(rng.choice([4, 4, 5]))] if didemo else rand_span(rng)
        line = {"desc_id": 1000 + 3 * q, "desc": f"query {q}", "vid_name": rng.choice(names), "ts": ts}
        if typed:
            line["type"] = rng.choice(["v", "v", "t", "vt"])
        gt.append(line)
    sub: dict[str, Any] = {"video2idx": video2idx}
    for task in ("VCMR", "SVMR", "VR"):
        entries = []
        for g in rng.sample(gt, len(gt)):  # prediction order differs from gt order
            pool = [[video2idx[rng.choice(names)], *rand_span(rng)] for _ in range(rng.randint(1, 5))]
            n = rng.choice([0, 1, 3, 7, 12, 60, 100, 101, 130])  # fewer than k, and past 100
            preds = [[*rng.choice(pool), 0.0] for _ in range(n)]  # few distinct rows: duplicates
            scores = sorted((rng.choice([1.0, 0.5, 0.25]) for _ in preds), reverse=True)  # equal scores
            entries.append(
                {
                    "desc_id": g["desc_id"],
                    "desc": g["desc"],
                    "predictions": [[*p[:3], s] for p, s in zip(preds, scores)],
                }
            )
        sub[task] = entries
    return sub, gt


@pytest.mark.parametrize("seed", range(6))
def test_random_matches_brute_force(seed: int) -> None:
    sub, gt = rand_case(seed)
    got = me.evaluate(sub, gt)
    assert_same(got, ref_evaluate(sub, gt))
    assert 0 < got["VCMR"]["0.5-r100"] < 100  # the case exercises hits and misses


@pytest.mark.parametrize("seed", range(3))
def test_query_hits_average_to_the_metrics(seed: int) -> None:
    """Per query 100 or 0; their mean, rounded as the official code rounds, is each metric of the brute force."""
    sub, gt = rand_case(seed, didemo=seed == 2, typed=seed != 2)
    hits, want = me.query_hits(sub, gt), ref_evaluate(sub, gt)
    for task, keys in hits.items():
        for key, values in keys.items():
            assert len(values) == len(gt) and set(values) <= {0.0, 100.0}
            assert round(sum(values) / len(values), 2) == pytest.approx(want[task][key], abs=1e-9), (task, key)


@pytest.mark.parametrize("seed", range(3))
def test_evaluate_with_hits_is_evaluate_and_query_hits(seed: int) -> None:
    """The evaluation's one pass over the predictions gives what the two separate calls give."""
    sub, gt = rand_case(seed, didemo=seed == 2, typed=seed != 2)
    assert me.evaluate_with_hits(sub, gt) == (me.evaluate(sub, gt), me.query_hits(sub, gt))


@pytest.mark.parametrize("seed", range(3))
def test_random_didemo_matches_brute_force(seed: int) -> None:
    sub, gt = rand_case(100 + seed, didemo=True, typed=False)
    got = me.evaluate(sub, gt)
    assert_same(got, ref_evaluate(sub, gt))
    assert "VCMR_by_type" not in got


def test_random_mixed_types_give_no_by_type() -> None:
    sub, gt = rand_case(7)
    gt[3]["type"] = None  # How2R from CSV writes type null
    got = me.evaluate(sub, gt)
    assert_same(got, ref_evaluate(sub, gt))
    assert list(got) == ["VCMR", "SVMR", "VR"]


def test_eval_task_matches_evaluate_and_one_type_missing_is_nan() -> None:
    sub, gt = rand_case(8)
    for g in gt:
        g["type"] = "v" if g["type"] == "vt" else g["type"]  # no vt query: 0 / 0
    for task in ("VCMR", "SVMR", "VR"):
        got = me.eval_task(sub[task], sub["video2idx"], gt, task)
        assert_same(got, ref_evaluate({"video2idx": sub["video2idx"], task: sub[task]}, gt))
    assert math.isnan(got["VR_by_type"]["vt-r1"])
    assert got["VR_by_type"]["desc_type_ratio"].endswith("vt 0.0")


def test_brute_force_is_not_trivial() -> None:
    """The reference must notice a wrong answer: shift one prediction's video and the numbers move."""
    sub, gt = rand_case(9)
    before = ref_evaluate(sub, gt)["VR"]["r1"]
    gt_video = {g["desc_id"]: sub["video2idx"][g["vid_name"]] for g in gt}
    for e in sub["VR"]:
        if e["predictions"] and e["predictions"][0][0] == gt_video[e["desc_id"]]:
            e["predictions"][0][0] = -5  # every rank-1 hit becomes a miss
    sub["video2idx"]["ghost"] = -5
    assert before > 0 and ref_evaluate(sub, gt)["VR"]["r1"] == 0.0
    assert_same(me.evaluate(sub, gt), ref_evaluate(sub, gt))


# --- hand-computed cases --------------------------------------------------------------------------


def three_queries() -> tuple[dict, list]:
    """q1 right at rank 1; q2: a wrong-video copy first, IoU 0.6 at rank 2, exact at rank 7; q3: near misses."""
    v2i = {"a": 0, "b": 1, "c": 2, "d": 3}
    gt = [
        {"desc_id": 1, "desc": "q1", "vid_name": "a", "ts": [0, 10], "type": "v"},
        {"desc_id": 2, "desc": "q2", "vid_name": "b", "ts": [5, 15], "type": "t"},
        {"desc_id": 3, "desc": "q3", "vid_name": "c", "ts": [0, 2], "type": "vt"},
    ]
    preds = {
        1: [[0, 0, 10, 9.0]],
        2: [[0, 5, 15, 9.0], [1, 5, 11, 8.0], *([[3, 0, 1, 7.0]] * 4), [1, 5, 15, 6.0]],
        3: [[2, 2, 4, 9.0], [2, 1, 3, 8.0]],  # touching (IoU 0), IoU 1/3
    }
    entries = [{"desc_id": d, "desc": f"q{d}", "predictions": p} for d, p in preds.items()]
    return {"video2idx": v2i, "VCMR": entries, "SVMR": entries, "VR": entries}, gt


def test_three_queries_by_hand() -> None:
    sub, gt = three_queries()
    got = me.evaluate(sub, gt)
    third, two_thirds = 33.33, 66.67
    assert got["VCMR"] == {"0.5-r1": third, "0.5-r5": two_thirds, "0.5-r10": two_thirds, "0.5-r100": two_thirds,
                           "0.7-r1": third, "0.7-r5": third, "0.7-r10": two_thirds, "0.7-r100": two_thirds}  # fmt: skip
    # SVMR ranks q2's gt-video predictions only: IoU 0.6 first, the exact span second
    assert got["SVMR"] == {"0.5-r1": two_thirds, "0.5-r5": two_thirds, "0.5-r10": two_thirds,
                           "0.5-r100": two_thirds, "0.7-r1": third, "0.7-r5": two_thirds, "0.7-r10": two_thirds,
                           "0.7-r100": two_thirds}  # fmt: skip
    assert got["VR"] == {"r1": two_thirds, "r5": 100.0, "r10": 100.0, "r100": 100.0}
    by_type = got["VCMR_by_type"]
    assert (by_type["v-0.5-r1"], by_type["t-0.5-r1"], by_type["t-0.5-r5"], by_type["vt-0.5-r100"]) == (
        100.0,
        0.0,
        100.0,
        0.0,
    )
    assert got["VR_by_type"]["vt-r1"] == 100.0 and got["VR_by_type"]["t-r1"] == 0.0
    assert by_type["desc_type_ratio"] == "v 33.33 t 33.33 vt 33.33"
    assert list(got) == ["VCMR", "SVMR", "VR", "VCMR_by_type", "SVMR_by_type", "VR_by_type"]


def one_query(pred_spans: list[list[float]], ts: list[Any], vid: int = 0) -> dict[str, float]:
    sub = {
        "video2idx": {"a": 0, "b": 1},
        "VCMR": [{"desc_id": 0, "desc": "", "predictions": [[vid, *s, 1.0] for s in pred_spans]}],
    }
    return me.evaluate(sub, [{"desc_id": 0, "desc": "", "vid_name": "a", "ts": ts}])["VCMR"]


@pytest.mark.parametrize(
    ("pred", "ts", "at_05", "at_07"),
    [
        ([0, 1], [0, 2], 100.0, 0.0),  # IoU exactly 0.5
        ([0, 0.7], [0, 1], 100.0, 100.0),  # float32(0.7) >= float32(0.7): the threshold is compared in float32
        ([0, 0.69999999], [0, 1], 100.0, 100.0),  # float64 IoU < 0.7, float32 rounds it to 0.7
        ([0, 0.69], [0, 1], 100.0, 0.0),
        ([2, 4], [0, 2], 0.0, 0.0),  # touching: IoU 0
        ([3, 3], [3, 3], 0.0, 0.0),  # same instant: empty hull, IoU 0
        ([3, 3], [0, 6], 0.0, 0.0),  # zero-length prediction
        ([0, 6], [3, 3], 0.0, 0.0),  # zero-length gt
        ([1.5, 4.5], [1.5, 4.5], 100.0, 100.0),
        ([0, 10], [[0, 5], [0, 5], [5, 10], [20, 25]], 100.0, 0.0),  # DiDeMo: IoU 0.5 with 3 of 4 spans
        ([5, 10], [[0, 5], [0, 5], [5, 10], [20, 25]], 0.0, 0.0),  # DiDeMo: exact with only 1 span
        ([0, 5], [[0, 5], [0, 5], [5, 10], [20, 25]], 100.0, 100.0),  # DiDeMo: exact with 2
    ],
)
def test_single_prediction_by_hand(pred: list[float], ts: list[Any], at_05: float, at_07: float) -> None:
    got = one_query([pred], ts)
    assert (got["0.5-r1"], got["0.7-r1"]) == (at_05, at_07)


def test_wrong_video_never_counts() -> None:
    assert one_query([[0, 10]], [0, 10], vid=1)["0.5-r100"] == 0.0


def test_101st_prediction_is_ignored() -> None:
    miss = [[50, 60]] * 100
    assert one_query([*miss, [0, 10]], [0, 10])["0.5-r100"] == 0.0
    assert one_query([*miss[:99], [0, 10]], [0, 10])["0.5-r100"] == 100.0
    assert one_query([*miss, [-1, -5]], [0, 10])["0.5-r100"] == 0.0  # past 100: not even checked


def test_fewer_than_k_and_no_predictions() -> None:
    assert one_query([[0, 10]], [0, 10])["0.7-r100"] == 100.0
    assert one_query([], [0, 10]) == {k: 0.0 for k in one_query([[9, 9.5]], [0, 10])}


def test_elementwise_iou_shapes_and_values() -> None:
    preds = np.array([[0, 1], [0, 2], [2, 4], [1, 3], [5, 5]], dtype=np.float64)  # (5, 2)
    iou = me.elementwise_iou(preds, np.array([0, 2]))
    assert iou.dtype == np.float32 and iou.shape == (5,)
    assert iou.tolist() == [0.5, 1.0, 0.0, np.float32(1 / 3), 0.0]
    assert me.elementwise_iou(np.zeros((3, 4, 1, 2)), np.zeros((3, 1, 2, 2))).shape == (3, 4, 2)


def test_percentage_rounds_like_numpy() -> None:
    assert me.percentage(1, 3) == 33.33 and me.percentage(2, 3) == 66.67 and me.percentage(0, 5) == 0.0
    assert math.isnan(me.percentage(0, 0))


def test_full_size_shapes() -> None:
    """10,895 TVR-val-sized queries x 100 predictions go through in one vectorised pass."""
    rng = np.random.default_rng(0)
    q, names = 10_895, [f"v{i}" for i in range(2_000)]
    v2i = {n: i for i, n in enumerate(names)}
    gt_vid = rng.integers(0, len(names), q)
    gt = [{"desc_id": i, "desc": "", "vid_name": names[v], "ts": [1.0, 5.0], "type": "v"} for i, v in enumerate(gt_vid)]
    vids = rng.integers(0, len(names), (q, 100))
    vids[:, 0] = np.where(np.arange(q) % 2 == 0, gt_vid, vids[:, 0])  # half the queries right at rank 1
    entries = [
        {"desc_id": i, "desc": "", "predictions": [[int(v), 1.0, 5.0, 0.0] for v in row]} for i, row in enumerate(vids)
    ]
    got = me.evaluate({"video2idx": v2i, "VCMR": entries}, gt)["VCMR"]
    assert got["0.7-r1"] == me.percentage(int(sum(vids[:, 0] == gt_vid)), q) >= 50.0


# --- bad input ------------------------------------------------------------------------------------


def small() -> tuple[dict, list]:
    sub, gt = three_queries()
    return json.loads(json.dumps(sub)), gt  # entries no longer shared between tasks


def raises(sub: dict, gt: list, *words: str, **kw: Any) -> str:
    with pytest.raises(EvalInputError) as e:
        me.evaluate(sub, gt, **kw)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    return str(e.value)


def test_error_is_a_value_error() -> None:
    assert issubclass(EvalInputError, ValueError)


def test_gt_video_missing_from_video2idx() -> None:
    sub, gt = small()
    del sub["video2idx"]["b"]
    raises(sub, gt, "desc_id 2", "'b'", "video2idx")


def test_desc_id_mismatch_names_ids_and_counts() -> None:
    sub, gt = small()
    gt = gt + [{"desc_id": 50 + i, "desc": "", "vid_name": "a", "ts": [0, 1], "type": "v"} for i in range(7)]
    sub["VCMR"].append({"desc_id": 999, "desc": "", "predictions": []})
    msg = raises(sub, gt, "VCMR", "7 gt desc_ids", "[50, 51, 52, 53, 54, ...]", "1 predicted", "[999]")
    assert "55" not in msg


@pytest.mark.parametrize(
    ("pred", "words"),
    [
        ([0, 5, 2, 1.0], ("st > ed", "[0, 5, 2]")),
        ([0, -1, 2, 1.0], ("starts before 0",)),
        ([7, 0, 2, 1.0], ("video idx",)),
        ([0.5, 0, 2, 1.0], ("video idx",)),
        ([0, float("nan"), 2, 1.0], ("non-finite",)),
        ([0, 1], ("[video_idx, st, ed, score]",)),
        ("0,1,2", ("[video_idx, st, ed, score]",)),
    ],
)
def test_bad_prediction_names_query(pred: Any, words: tuple[str, ...]) -> None:
    sub, gt = small()
    sub["SVMR"][2]["predictions"].insert(1, pred)
    raises(sub, gt, "SVMR desc_id 3", *words)


def test_prediction_past_duration() -> None:
    sub, gt = small()
    durations = {"a": 12.0, "b": 13.0, "c": 20.0, "d": 30.0}  # desc_id 2 predicts [a, 5, 15] and [b, 5, 15]
    raises(sub, gt, "VCMR desc_id 2", "prediction 0", "duration", durations=durations, duration_tolerance=2.0)
    assert me.evaluate(sub, gt, durations=durations, duration_tolerance=3.0)["VR"]["r5"] == 100.0
    assert me.evaluate(sub, gt, durations={"c": 20.0})["VR"]["r5"] == 100.0  # a, b, d: unknown, unchecked


def test_gt_span_past_the_duration() -> None:
    """With durations, a gt span data_prep would drop as past_end is an error naming the query."""
    sub, gt = small()  # desc_id 2: b [5, 15]
    kw = {"durations": {"b": 13.0}, "duration_tolerance": 1.5}
    raises(sub, gt, "ground truth desc_id 2", "[5.0, 15.0]", "past the end of b", "13.0", **kw)
    gt[1]["ts"] = [13.0, 14.0]  # starts at the end
    raises(sub, gt, "ground truth desc_id 2", "past the end", **kw)
    gt[1]["ts"] = [5.0, 14.5]  # within the tolerance (and so are the predictions' ends, 15 s)
    assert me.evaluate(sub, gt, durations={"b": 13.0}, duration_tolerance=2.0)["VR"]["r5"] == 100.0


def test_errors_print_exact_values() -> None:
    sub, gt = small()
    sub["SVMR"][2]["predictions"].insert(1, [2, 91.29, 91.28999999999999, 1.0])
    raises(sub, gt, "[2, 91.29, 91.28999999999999] has st > ed")
    sub, gt = small()
    sub["SVMR"][2]["predictions"].insert(1, [99999999, 0, 2, 1.0])
    raises(sub, gt, "[99999999, 0, 2] names a video idx that is not in video2idx")


def test_a_query_without_features_gets_a_readable_miss() -> None:
    """SVMR of a query whose video has no features: `[]` (which TVR's eval.py fails on: its first step,
    np.array(predictions)[:, 0], raises IndexError) is refused; the placeholder moment.py writes is read,
    on the gt video, and misses at every IoU (hull IoU of [0, 0] with a span of positive length is 0)."""
    from finetune.moment import svmr_predictions

    sub, gt = small()
    sub["SVMR"][1]["predictions"] = []
    with pytest.raises(IndexError):
        np.array(sub["SVMR"][1]["predictions"])[:, 0]
    with pytest.raises(EvalInputError, match="desc_id 2.*no predictions"):
        me.validate_submission({"video2idx": sub["video2idx"], "SVMR": sub["SVMR"]}, ("SVMR",))
    queries = [{"video_id": g["vid_name"]} for g in gt]
    found = {0: sub["SVMR"][0]["predictions"], 2: sub["SVMR"][2]["predictions"]}
    placed = svmr_predictions(queries, found, sub["video2idx"])
    assert placed[1] == [[1, 0.0, 0.0, 0.0]] and placed[0] == found[0] and placed[2] == found[2]
    sub["SVMR"][1]["predictions"] = placed[1]
    me.validate_submission({"video2idx": sub["video2idx"], "SVMR": sub["SVMR"]}, ("SVMR",))
    pred, (st, ed) = np.array(placed[1])[:, :3], gt[1]["ts"]
    assert pred[0, 0] == sub["video2idx"][gt[1]["vid_name"]]
    hull_iou = max(0.0, min(pred[0, 2], ed) - max(pred[0, 1], st)) / (max(pred[0, 2], ed) - min(pred[0, 1], st))
    assert hull_iou == 0.0
    assert me.evaluate(sub, gt)["SVMR"]["0.5-r100"] == 33.33  # q1 a hit as before, q2 now a miss (q3 misses)


def test_duplicate_desc_ids() -> None:
    sub, gt = small()
    sub["VR"].append(dict(sub["VR"][0]))
    raises(sub, gt, "VR desc_id 1", "more than once")
    sub, gt = small()
    raises(sub, [*gt, dict(gt[0])], "desc_id 1", "more than once in the ground truth")


@pytest.mark.parametrize(
    ("ts", "words"),
    [
        ([[0, 5], [5, 10]], ("2 spans", "at least 4")),
        ([[0, 5], [5, 10], [0, 10]], ("3 spans",)),
        ([[0, 5]], ("1 spans",)),
        ([0, 5, 10], ("ts must be",)),
        ([5, 2], ("0 <= st <= ed",)),
        ("0-5", ("ts must be",)),
    ],
)
def test_bad_gt_spans(ts: Any, words: tuple[str, ...]) -> None:
    sub, gt = small()
    gt[1] = {**gt[1], "ts": ts}
    raises(sub, gt, "desc_id 2", *words)


def test_bad_gt_lines_and_submission_shape() -> None:
    sub, gt = small()
    raises(sub, [{**gt[0], "type": "x"}, *gt[1:]], "desc_id 1", "type")
    raises(sub, [{**gt[0], "desc_id": "1"}, *gt[1:]], "line 1", "desc_id")
    raises(sub, [], "empty")
    raises({"video2idx": sub["video2idx"]}, gt, "none of the tasks")
    raises({"VCMR": sub["VCMR"]}, gt, "video2idx")
    raises({**sub, "VR": {"desc_id": 1}}, gt, "VR", "list")
    raises({**sub, "VR": [{"desc_id": 1}]}, gt, "VR entry 0")
    raises(sub, gt, "(0, 1]", iou_thds=(0.0, 0.5))
    with pytest.raises(EvalInputError, match="task must be"):
        me.eval_task(sub["VR"], sub["video2idx"], gt, "MR")


# --- submission files -----------------------------------------------------------------------------


def valid_submission() -> dict[str, Any]:
    v2i = {"a": 0, "b": 1, "c": 2}
    moments = [
        {"desc_id": 1, "desc": "q1", "predictions": [[0, 0.0, 1.5, 2.0], [0, 1.5, 3.0, 2.0], [1, 0, 3, -1]]},
        {"desc_id": 2, "desc": "q2", "predictions": [[2, 0.0, 0.0, 0.0]]},
    ]
    videos = [
        {"desc_id": 1, "desc": "q1", "predictions": [[0, 0, 0, 2.0], [1, 0, 0, 2.0]]},
        {"desc_id": 2, "desc": "q2", "predictions": [[2, 0, 0, 1.0]]},
    ]
    return {"video2idx": v2i, "VCMR": moments, "SVMR": json.loads(json.dumps(moments)), "VR": videos}


def test_valid_submission_passes() -> None:
    me.validate_submission(valid_submission(), ("VCMR", "SVMR", "VR"))
    sub = valid_submission()
    del sub["SVMR"]
    me.validate_submission(sub, ("VCMR", "VR"))


def _break(sub: dict[str, Any], how: str) -> None:
    vcmr = sub["VCMR"][0]
    pred = vcmr["predictions"][0]
    if how == "video2idx value":
        sub["video2idx"]["a"] = 0.0
    elif how == "video2idx bool":
        sub["video2idx"]["a"] = True
    elif how == "video2idx key":
        sub["video2idx"][3] = 3
    elif how == "video2idx repeat":
        sub["video2idx"]["c"] = 1
    elif how == "no video2idx":
        del sub["video2idx"]
    elif how == "missing task":
        del sub["VR"]
    elif how == "extra key":
        sub["extra"] = 1
    elif how == "task not list":
        sub["VCMR"] = {}
    elif how == "entry not dict":
        sub["VCMR"][1] = [2, "q2", []]
    elif how == "entry extra key":
        vcmr["score"] = 1
    elif how == "entry missing key":
        del vcmr["desc"]
    elif how == "desc_id str":
        vcmr["desc_id"] = "1"
    elif how == "desc_id bool":
        vcmr["desc_id"] = True
    elif how == "desc not str":
        vcmr["desc"] = None
    elif how == "predictions not list":
        vcmr["predictions"] = tuple(vcmr["predictions"])
    elif how == "too many":
        vcmr["predictions"] = [list(pred)] * 101
    elif how == "3 elements":
        vcmr["predictions"][0] = pred[:3]
    elif how == "5 elements":
        vcmr["predictions"][0] = [*pred, 0]
    elif how == "float video idx":
        pred[0] = 0.0
    elif how == "str st":
        pred[1] = "0"
    elif how == "nan score":
        vcmr["predictions"][-1][3] = float("nan")
    elif how == "unknown video":
        pred[0] = 9
    elif how == "st > ed":
        pred[1], pred[2] = 2.0, 1.0
    elif how == "st < 0":
        pred[1] = -0.5
    elif how == "scores increase":
        vcmr["predictions"][-1][3] = 5.0
    elif how == "VR repeats video":
        sub["VR"][0]["predictions"][1][0] = 0
    elif how == "duplicate desc_id":
        sub["VCMR"][1]["desc_id"] = 1
    elif how == "no predictions":
        sub["SVMR"][1]["predictions"] = []


VIOLATIONS = {
    "video2idx value": "video2idx", "video2idx bool": "video2idx", "video2idx key": "video2idx",
    "video2idx repeat": "idx values repeat", "no video2idx": "submission keys", "missing task": "submission keys",
    "extra key": "submission keys", "task not list": "VCMR must be a list", "entry not dict": "VCMR entry 1",
    "entry extra key": "exactly the keys", "entry missing key": "exactly the keys", "desc_id str": "desc_id must be",
    "desc_id bool": "desc_id must be", "desc not str": "desc str", "predictions not list": "a list",
    "too many": "101 predictions", "3 elements": "prediction 0", "5 elements": "prediction 0",
    "float video idx": "prediction 0", "str st": "prediction 0", "nan score": "prediction 2",
    "unknown video": "video idx 9", "st > ed": "0 <= st <= ed", "st < 0": "0 <= st <= ed",
    "scores increase": "sorted by score", "VR repeats video": "distinct videos", "duplicate desc_id": "more than once",
    "no predictions": "SVMR entry 1 (desc_id 2): no predictions",
}  # fmt: skip


@pytest.mark.parametrize("how", list(VIOLATIONS))
def test_each_violation_fails(how: str) -> None:
    sub = valid_submission()
    _break(sub, how)
    with pytest.raises(EvalInputError) as e:
        me.validate_submission(sub, ("VCMR", "SVMR", "VR"))
    assert VIOLATIONS[how] in str(e.value)


def test_validate_arguments() -> None:
    with pytest.raises(EvalInputError, match="non-empty subset"):
        me.validate_submission(valid_submission(), ("VCMR", "MR"))
    with pytest.raises(EvalInputError, match="non-empty subset"):
        me.validate_submission(valid_submission(), ())
    with pytest.raises(EvalInputError, match="JSON object"):
        me.validate_submission([], ("VR",))
    sub = valid_submission()
    for task in ("VCMR", "SVMR"):
        sub[task][0]["predictions"] = sub[task][0]["predictions"][:2]
    me.validate_submission(sub, ("VCMR", "SVMR", "VR"), max_predictions=2)
    with pytest.raises(EvalInputError, match="at most 1"):
        me.validate_submission(sub, ("VCMR", "SVMR", "VR"), max_predictions=1)


def test_write_submission(tmp_path) -> None:
    sub = valid_submission()
    path = me.write_submission(tmp_path / "s.json", sub["video2idx"], {"VR": sub["VR"], "VCMR": sub["VCMR"]})
    written = json.loads(path.read_text())
    assert list(written) == ["video2idx", "VCMR", "VR"] and written["VR"] == sub["VR"]
    sub["VCMR"][0]["predictions"].reverse()  # ascending scores
    with pytest.raises(EvalInputError, match="sorted by score"):
        me.write_submission(tmp_path / "bad.json", sub["video2idx"], {"VCMR": sub["VCMR"]})
    assert not (tmp_path / "bad.json").exists()


def test_codalab_zip(tmp_path) -> None:
    val, test = tmp_path / "val.json", tmp_path / "test.json"
    val.write_text(json.dumps(valid_submission()))
    test.write_text(json.dumps(valid_submission()))  # with SVMR: stripped
    out = me.codalab_zip(tmp_path / "sub.zip", val, test)
    with zipfile.ZipFile(out) as z:
        assert sorted(z.namelist()) == ["tvr_test_public_submission.json", "tvr_val_submission.json"]
        got_val = json.loads(z.read("tvr_val_submission.json"))
        got_test = json.loads(z.read("tvr_test_public_submission.json"))
    assert got_val == valid_submission()
    assert list(got_test) == ["video2idx", "VCMR", "VR"] and got_test["VR"] == valid_submission()["VR"]


@pytest.mark.parametrize("which", ["val_without_svmr", "bad_test"])
def test_codalab_zip_refuses(tmp_path, which: str) -> None:
    val, test = valid_submission(), valid_submission()
    if which == "val_without_svmr":
        del val["SVMR"]
    else:
        test["VR"][0]["predictions"][0][0] = 42
    (tmp_path / "val.json").write_text(json.dumps(val))
    (tmp_path / "test.json").write_text(json.dumps(test))
    with pytest.raises(
        EvalInputError,
        match="val.json: submission keys" if which == "val_without_svmr" else "test.json: VR entry 0 .* video idx 42",
    ):
        me.codalab_zip(tmp_path / "sub.zip", tmp_path / "val.json", tmp_path / "test.json")
    assert not (tmp_path / "sub.zip").exists()


# --- files and command line -----------------------------------------------------------------------


def test_load_ground_truth_and_main(tmp_path, capsys) -> None:
    sub, gt = three_queries()
    (tmp_path / "gt.jsonl").write_text("\n".join(json.dumps(g) for g in gt) + "\n\n")
    (tmp_path / "sub.json").write_text(json.dumps(sub))
    assert me.load_ground_truth(tmp_path / "gt.jsonl") == gt
    argv = ["eval", "--submission", str(tmp_path / "sub.json"), "--gt", str(tmp_path / "gt.jsonl"),
            "--save", str(tmp_path / "m.json")]  # fmt: skip
    assert me.main(argv) == 0
    assert json.loads((tmp_path / "m.json").read_text()) == me.evaluate(sub, gt)
    (tmp_path / "gt.jsonl").write_text(json.dumps(gt[0]) + "\n{oops\n")
    with pytest.raises(EvalInputError, match="gt.jsonl:2"):
        me.load_ground_truth(tmp_path / "gt.jsonl")
    assert me.main(argv) == 2
    assert "error:" in capsys.readouterr().err


def test_main_durations_in_tvr_layout(tmp_path, capsys) -> None:
    """--durations takes TVR's {split: {vid: [duration, idx]}}; a null duration is not checked."""
    sub, gt = three_queries()
    (tmp_path / "gt.jsonl").write_text("\n".join(json.dumps(g) for g in gt))
    (tmp_path / "sub.json").write_text(json.dumps(sub))
    argv = ["eval", "--submission", str(tmp_path / "sub.json"), "--gt", str(tmp_path / "gt.jsonl"),
            "--durations", str(tmp_path / "dur.json"), "--tolerance", "0"]  # fmt: skip
    (tmp_path / "dur.json").write_text(json.dumps({"val": {"a": [15.0, 0], "b": [None, 1]}, "test": {"c": [4.0, 2]}}))
    assert me.main(argv) == 0
    (tmp_path / "dur.json").write_text(json.dumps({"val": {"a": [14.0, 0]}}))
    assert me.main(argv) == 2
    assert "VCMR desc_id 2: prediction 0" in capsys.readouterr().err


def test_eval_task_checks_video2idx() -> None:
    sub, gt = small()
    with pytest.raises(EvalInputError, match="video2idx"):
        me.eval_task(sub["VR"], {"a": "0", "b": 1, "c": 2, "d": 3}, gt, "VR")
    with pytest.raises(EvalInputError, match="JSON object"):
        me.evaluate([], gt)


@pytest.mark.parametrize("how", list(VIOLATIONS))
def test_fast_check_never_passes_a_violation(how: str) -> None:
    """validate_submission's vectorised pass (_task_valid) accepts no broken submission (the per-prediction loop,
    which names the problem, then runs), and accepts the valid one with float spans."""
    sub = valid_submission()
    for task in ("VCMR", "SVMR", "VR"):
        assert me._task_valid(sub[task], task, {0, 1, 2}, me.MAX_PREDICTIONS)
    _break(sub, how)
    ids = set(sub["video2idx"].values()) if isinstance(sub.get("video2idx"), dict) else set()
    tasks = [t for t in ("VCMR", "SVMR", "VR") if t in sub]
    if how not in ("video2idx value", "video2idx bool", "video2idx key", "video2idx repeat", "no video2idx",
                   "missing task", "extra key"):  # those are checked before the tasks  # fmt: skip
        assert not all(me._task_valid(sub[t], t, ids, me.MAX_PREDICTIONS) for t in tasks)


def test_fast_check_keeps_exact_int_comparisons() -> None:
    """Int spans past 2**53 are not compared as floats (they would round to equal): left to the exact loop."""
    sub = valid_submission()
    sub["VCMR"][0]["predictions"][0][1:3] = [2**53 + 1, 2**53]  # st > ed, equal as float64
    assert not me._task_valid(sub["VCMR"], "VCMR", {0, 1, 2}, me.MAX_PREDICTIONS)
    with pytest.raises(EvalInputError, match="0 <= st <= ed"):
        me.validate_submission(sub, ("VCMR", "SVMR", "VR"))


@pytest.mark.parametrize("seed", range(3))
def test_write_json_is_json_dumps(tmp_path, seed: int) -> None:
    """The chunked writer's file is json.dumps of the same object, byte for byte: random submissions (chunks
    that do not divide the lists, one longer than them), empty lists, non-ASCII and escaped text."""
    sub, _ = rand_case(seed)
    sub["VCMR"][0]["desc"] = 'caf\u00e9 "quoted" \\ back\nslash'
    sub["extra"], sub["nested"] = [], {"a": [1, 2.5, None]}
    for chunk in (1, 3, 7, 10**6):
        me.write_json(tmp_path / "s.json", sub, chunk=chunk)
        assert (tmp_path / "s.json").read_bytes() == json.dumps(sub).encode("utf-8"), chunk
    assert not list(tmp_path.glob("*.tmp"))
