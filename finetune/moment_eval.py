"""Moment-retrieval metrics (VCMR, SVMR, VR) equal to TVR's official standalone evaluator.

TVR, How2R and DiDeMo share one submission format and one evaluator (jayleicn/TVRetrieval,
`standalone_eval/eval.py`; VALUE scores How2R with the same recall code, from its own file format:
finetune/value_submission.py); leaderboards quote its numbers, so ours must be the same numbers, not
merely the same idea: float32 IoU over the hull of the two spans, thresholds compared in float32,
the first 100 predictions per query, numpy rounding to 2 decimals. The evaluation here is
vectorised over all queries at once and refuses bad input with an `EvalInputError` that names
the query, where the official script crashes or silently miscounts. Semantics: docs/evaluation.md.

    python -m finetune.moment_eval eval --submission preds.json --gt tvr_val_release.jsonl [--save m.json]
    python -m finetune.moment_eval zip --val val.json --test test_public.json --out submission.zip
"""

from __future__ import annotations

import argparse
import array
import json
import math
import os
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

TASKS = ("VCMR", "SVMR", "VR")
DESC_TYPES = ("v", "t", "vt")  # TVR's query types: video-only, text (subtitle)-only, both
IOU_THDS = (0.5, 0.7)
TOPKS = (1, 5, 10, 100)
MAX_PREDICTIONS = 100  # the official evaluator reads only this many predictions per query
DIDEMO_MIN_SPANS = 4  # a gt `ts` with this many spans or more is DiDeMo's (one span per annotator)
DIDEMO_MIN_MATCHES = 2  # ... and a prediction must match at least this many of them
DURATION_TOLERANCE = 3.0  # seconds a predicted span may end past the video (data_prep's --tolerance)
CODALAB_VAL = "tvr_val_submission.json"
CODALAB_TEST = "tvr_test_public_submission.json"
CODALAB_TEST_TASKS = ("VCMR", "VR")  # test_public hides the gt video, so it has no SVMR


class EvalInputError(ValueError):
    """A submission or ground truth the official evaluator would crash on or miscount."""


@dataclass(frozen=True)
class GroundTruth:
    """The ground truth as arrays, one row per query, in the order of the gt file."""

    desc_ids: list[int]  # (Q,)
    video: np.ndarray  # (Q,) int64, video2idx[vid_name]
    spans: np.ndarray  # (Q, G, 2) float32, zero-padded past each query's spans
    span_mask: np.ndarray  # (Q, G) bool
    min_matches: np.ndarray  # (Q,) int64: 1, or DIDEMO_MIN_MATCHES for a DiDeMo query
    types: np.ndarray | None  # (Q,) int64 index into DESC_TYPES; None unless every query has one


@dataclass(frozen=True)
class Predictions:
    """One task's first MAX_PREDICTIONS predictions per query, rows aligned with GroundTruth."""

    video: np.ndarray  # (Q, P) int64, -1 where padded
    spans: np.ndarray  # (Q, P, 2) float32, zero where padded
    valid: np.ndarray  # (Q, P) bool, a prefix of each row


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _some(ids: Sequence[Any], n: int = 5) -> str:
    """Up to n ids for an error message, with an ellipsis when there are more."""
    head = ", ".join(repr(i) for i in ids[:n])
    return f"[{head}{', ...' if len(ids) > n else ''}]"


# --- loading -----------------------------------------------------------------------------------


def load_ground_truth(path: str | Path) -> list[dict[str, Any]]:
    """A TVR-format ground-truth file (JSON lines); a bad line is an error naming the line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise EvalInputError(f"{path}:{n}: not valid JSON ({e})") from None
    return out


def load_submission(path: str | Path) -> dict[str, Any]:
    """A submission JSON file, or an error naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            sub = json.load(f)
    except json.JSONDecodeError as e:
        raise EvalInputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(sub, dict):
        raise EvalInputError(f"{path}: a submission is a JSON object, got {type(sub).__name__}")
    return sub


# --- ground truth ------------------------------------------------------------------------------


def _gt_spans(ts: Any, where: str) -> list[tuple[float, float]]:
    """`ts` as a list of spans: one `[st, ed]`, or DiDeMo's >= 4 of them.

    The official code takes 2-3 spans for one span and crashes; a 1-span list too. We refuse all
    three so that a DiDeMo file converted with too few annotators is noticed, not miscounted.
    """
    if isinstance(ts, list) and len(ts) == 2 and all(_is_number(x) for x in ts):
        spans = [(float(ts[0]), float(ts[1]))]
    elif isinstance(ts, list) and ts and all(isinstance(s, list) and len(s) == 2 for s in ts):
        if len(ts) < DIDEMO_MIN_SPANS:
            raise EvalInputError(
                f"{where}: ts has {len(ts)} spans; the official evaluator takes one [st, ed] or, for DiDeMo, "
                f"at least {DIDEMO_MIN_SPANS} [st, ed] spans"
            )
        if not all(_is_number(x) for s in ts for x in s):
            raise EvalInputError(f"{where}: ts spans must hold finite numbers, got {ts!r:.80}")
        spans = [(float(s[0]), float(s[1])) for s in ts]
    else:
        raise EvalInputError(f"{where}: ts must be [st, ed] or a list of >= 4 [st, ed], got {ts!r:.80}")
    for st, ed in spans:
        if st < 0 or st > ed:
            raise EvalInputError(f"{where}: ground-truth span [{st}, {ed}] needs 0 <= st <= ed")
    return spans


def _gt_type(line: dict[str, Any], where: str) -> int | None:
    """The index of the line's TVR query type, None when it has none (How2R from CSV, DiDeMo)."""
    t = line.get("type")
    if t is None:
        return None
    if t not in DESC_TYPES:
        raise EvalInputError(f"{where}: type must be one of {list(DESC_TYPES)}, got {t!r}")
    return DESC_TYPES.index(t)


def ground_truth_table(
    gt: Sequence[dict[str, Any]],
    video2idx: Mapping[str, int],
    durations: Mapping[str, float | None] | None = None,
    duration_tolerance: float = DURATION_TOLERANCE,
) -> GroundTruth:
    """Check the gt lines against the submission's video2idx (and the videos' durations, when given:
    a span must start before the end and end by the duration + tolerance, as data_prep keeps them)
    and pack them into arrays."""
    if not gt:
        raise EvalInputError("the ground truth is empty")
    seen: set[int] = set()
    videos, spans, types = [], [], []
    for n, line in enumerate(gt, 1):
        if not isinstance(line, dict) or not _is_int(line.get("desc_id")):
            raise EvalInputError(f"ground truth line {n}: needs an int desc_id, got {line!r:.80}")
        desc_id = line["desc_id"]
        where = f"ground truth desc_id {desc_id}"
        if desc_id in seen:
            raise EvalInputError(f"{where}: appears more than once in the ground truth")
        seen.add(desc_id)
        vid = line.get("vid_name")
        if not isinstance(vid, str) or vid not in video2idx:
            raise EvalInputError(f"{where}: video {vid!r} is not in the submission's video2idx")
        videos.append(video2idx[vid])
        spans.append(_gt_spans(line.get("ts"), where))
        duration = (durations or {}).get(vid)
        for st, ed in spans[-1] if duration is not None else ():
            if st >= duration or ed > duration + duration_tolerance:
                raise EvalInputError(
                    f"{where}: ground-truth span [{st!r}, {ed!r}] is past the end of {vid} ({duration!r} s, "
                    f"+ {duration_tolerance!r} s tolerance)"
                )
        types.append(_gt_type(line, where))
    g = max(len(s) for s in spans)
    table = np.zeros((len(gt), g, 2), dtype=np.float32)  # (Q, G, 2)
    mask = np.zeros((len(gt), g), dtype=bool)  # (Q, G)
    for q, s in enumerate(spans):
        table[q, : len(s)] = s
        mask[q, : len(s)] = True
    n_spans = mask.sum(axis=1)  # (Q,)
    return GroundTruth(
        desc_ids=[line["desc_id"] for line in gt],
        video=np.asarray(videos, dtype=np.int64),
        spans=table,
        span_mask=mask,
        min_matches=np.where(n_spans >= DIDEMO_MIN_SPANS, DIDEMO_MIN_MATCHES, 1).astype(np.int64),
        types=None if any(t is None for t in types) else np.asarray(types, dtype=np.int64),
    )


# --- predictions -------------------------------------------------------------------------------


def _entries_by_desc_id(entries: Any, task: str, gt_ids: Sequence[int]) -> dict[int, list[Any]]:
    """{desc_id: predictions}, one entry per gt query and no other, or an error naming the ids."""
    if not isinstance(entries, list):
        raise EvalInputError(f"{task}: predictions must be a list, got {type(entries).__name__}")
    by_id: dict[int, list[Any]] = {}
    for n, e in enumerate(entries):
        if not isinstance(e, dict) or not _is_int(e.get("desc_id")) or not isinstance(e.get("predictions"), list):
            raise EvalInputError(f"{task} entry {n}: needs an int desc_id and a predictions list")
        if e["desc_id"] in by_id:
            raise EvalInputError(f"{task} desc_id {e['desc_id']}: appears more than once")
        by_id[e["desc_id"]] = e["predictions"]
    missing = sorted(set(gt_ids) - by_id.keys())
    extra = sorted(by_id.keys() - set(gt_ids))
    if missing or extra:
        raise EvalInputError(
            f"{task}: desc_ids in the predictions and the ground truth do not match: {len(missing)} gt desc_ids "
            f"have no predictions {_some(missing)}, {len(extra)} predicted desc_ids are not in the ground truth "
            f"{_some(extra)}"
        )
    return by_id


def _rows(preds: list[Any], limit: int, where: str) -> np.ndarray:
    """The first `limit` predictions' [video idx, st, ed] (the score is never read), float64."""
    try:
        rows = np.asarray([p[:3] for p in preds[:limit]], dtype=np.float64)  # (n, 3)
    except (TypeError, ValueError, KeyError):
        rows = None
    if rows is None or (len(rows) and rows.shape[1:] != (3,)):
        raise EvalInputError(f"{where}: each prediction must be [video_idx, st, ed, score] of numbers")
    return rows.reshape(-1, 3)


def _first_bad(bad: np.ndarray, task: str, desc_ids: Sequence[int], problem: str, rows: np.ndarray) -> None:
    """Raise for the first query with a bad prediction (`bad` (Q, P)), quoting that prediction."""
    if bad.any():
        q, p = np.argwhere(bad)[0]
        vid, st, ed = (_exact(x) for x in rows[q, p])
        raise EvalInputError(f"{task} desc_id {desc_ids[q]}: prediction {p} [{vid}, {st}, {ed}] {problem}")


def _exact(x: float) -> str:
    """A number as the JSON held it: 99999999, not 1e+08; 91.28999999999999, not 91.29."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def _video_durations(
    video2idx: Mapping[str, int], durations: Mapping[str, float | None]
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted video idx (V,) and their durations (V,), NaN where `durations` has no entry."""
    idx = np.asarray(sorted(video2idx.values()), dtype=np.int64)  # (V,)
    dur_by_idx = {video2idx[name]: float(d) for name, d in durations.items() if name in video2idx and d is not None}
    return idx, np.asarray([dur_by_idx.get(int(i), math.nan) for i in idx], dtype=np.float64)


def prediction_table(
    entries: Any,
    task: str,
    video2idx: Mapping[str, int],
    desc_ids: Sequence[int],
    durations: Mapping[str, float | None] | None = None,
    duration_tolerance: float = DURATION_TOLERANCE,
    max_predictions: int = MAX_PREDICTIONS,
) -> Predictions:
    """Pack one task's predictions in gt order, checking every prediction that counts.

    Predictions past `max_predictions` are ignored, unchecked, as the official evaluator ignores
    them. A query with no predictions counts as a miss (the official code crashes on it).
    """
    by_id = _entries_by_desc_id(entries, task, desc_ids)
    per_query = [_rows(by_id[d], max_predictions, f"{task} desc_id {d}") for d in desc_ids]
    counts = np.asarray([len(r) for r in per_query], dtype=np.int64)  # (Q,)
    width = max(int(counts.max()), 1)
    valid = np.arange(width)[None, :] < counts[:, None]  # (Q, P)
    rows = np.zeros((len(desc_ids), width, 3), dtype=np.float64)  # (Q, P, 3)
    rows[valid] = np.concatenate(per_query) if counts.sum() else np.zeros((0, 3))
    vid, st, ed = rows[..., 0], rows[..., 1], rows[..., 2]  # (Q, P) each
    _first_bad(valid & ~np.isfinite(rows).all(axis=-1), task, desc_ids, "holds a non-finite number", rows)
    known, dur = _video_durations(video2idx, durations or {})
    _first_bad(valid & ~np.isin(vid, known), task, desc_ids, "names a video idx that is not in video2idx", rows)
    _first_bad(valid & (st < 0), task, desc_ids, "starts before 0", rows)
    _first_bad(valid & (st > ed), task, desc_ids, "has st > ed", rows)
    if durations:
        pos = np.clip(np.searchsorted(known, vid), 0, len(known) - 1)  # (Q, P)
        past = valid & (ed > dur[pos] + duration_tolerance)  # NaN (no duration) compares False
        _first_bad(past, task, desc_ids, f"ends past the video's duration + {duration_tolerance} s", rows)
    return Predictions(
        video=np.where(valid, vid, -1).astype(np.int64),
        spans=rows[..., 1:3].astype(np.float32),  # float64 -> float32 rounds once, as float -> float32 does
        valid=valid,
    )


# --- metrics -----------------------------------------------------------------------------------


def elementwise_iou(spans: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of spans (..., 2) against gt (..., 2), broadcast, in float32 like the official code.

    The denominator is the hull of the two spans (max end - min start), not their union: for
    disjoint spans the two differ, but the intersection is 0 then, so the IoU does not. 0 where
    the hull is empty (both spans the same instant). Pairwise IoU in torch: finetune.moment_search's
    batched_pairwise_iou (NMS, seconds), finetune.mesm's pairwise_frame_iou (inclusive frames).
    """
    spans = np.asarray(spans, dtype=np.float32)
    gt = np.asarray(gt, dtype=np.float32)
    inter = np.maximum(np.float32(0), np.minimum(spans[..., 1], gt[..., 1]) - np.maximum(spans[..., 0], gt[..., 0]))
    hull = np.maximum(spans[..., 1], gt[..., 1]) - np.minimum(spans[..., 0], gt[..., 0])
    return np.divide(inter, hull, out=np.zeros_like(inter), where=hull != 0)


def same_video(preds: Predictions, truth: GroundTruth) -> np.ndarray:
    """(Q, P) bool: the prediction names the query's gt video."""
    return preds.valid & (preds.video == truth.video[:, None])


def correct_matrix(preds: Predictions, truth: GroundTruth, iou_thd: float) -> np.ndarray:
    """(Q, P) bool: right video and IoU >= iou_thd (DiDeMo: with at least 2 of the gt spans).

    The threshold is compared in float32, as numpy does for the official float32 IoU, so
    [0, 0.7] against [0, 1] (IoU float32(0.7) < 0.7) is correct at 0.7.
    """
    iou = elementwise_iou(preds.spans[:, :, None, :], truth.spans[:, None, :, :])  # (Q, P, G)
    over = (iou >= np.float32(iou_thd)) & truth.span_mask[:, None, :]  # (Q, P, G)
    return same_video(preds, truth) & (over.sum(axis=-1) >= truth.min_matches[:, None])


def hits_at_k(correct: np.ndarray, eligible: np.ndarray, k: int) -> np.ndarray:
    """(Q,) bool: a correct prediction among the first k eligible ones of each row (Q, P).

    Eligible is every prediction for VCMR and VR, and those on the gt video for SVMR, which
    ranks a query's gt-video predictions only.
    """
    rank = np.cumsum(eligible, axis=1)  # (Q, P), 1-based among eligible
    return (correct & eligible & (rank <= k)).any(axis=1)


def percentage(count: int, total: int) -> float:
    """count / total in percent, rounded to 2 decimals by numpy as the official code does; NaN for 0/0."""
    if total == 0:
        return math.nan  # the official code divides 0 by 0 for a type with no query
    return float(np.round(np.float64(count / total) * 100, 2))


def _task_hits(
    preds: Predictions, truth: GroundTruth, task: str, iou_thds: Sequence[float], topks: Sequence[int]
) -> dict[str, np.ndarray]:
    """{metric name: (Q,) bool hits}, in the official key order."""
    if task == "VR":
        return {f"r{k}": hits_at_k(same_video(preds, truth), preds.valid, k) for k in topks}
    eligible = same_video(preds, truth) if task == "SVMR" else preds.valid
    hits = {}
    for thd in iou_thds:
        correct = correct_matrix(preds, truth, thd)
        hits.update({f"{thd}-r{k}": hits_at_k(correct, eligible, k) for k in topks})
    return hits


def _by_type(hits: dict[str, np.ndarray], types: np.ndarray) -> dict[str, float | str]:
    """The official per-type table: "v-0.5-r1", ... and the "desc_type_ratio" string."""
    out: dict[str, float | str] = {}
    ratios = []
    for code, name in enumerate(DESC_TYPES):
        in_type = types == code  # (Q,)
        out.update(
            {f"{name}-{key}": percentage(int((h & in_type).sum()), int(in_type.sum())) for key, h in hits.items()}
        )
        ratios.append(f"{name} {percentage(int(in_type.sum()), len(types))}")
    out["desc_type_ratio"] = " ".join(ratios)
    return out


def _check_thresholds(iou_thds: Sequence[float]) -> None:
    """Above 0, so that "right video and IoU >= t" and the official "IoU zeroed on a wrong video >= t" agree."""
    if not iou_thds or not all(0 < t <= 1 for t in iou_thds):
        raise EvalInputError(f"IoU thresholds must be in (0, 1], got {list(iou_thds)}")


def _task_metrics(
    preds: Predictions, truth: GroundTruth, task: str, iou_thds: Sequence[float], topks: Sequence[int]
) -> dict[str, dict[str, float | str]]:
    return _hits_metrics(_task_hits(preds, truth, task, iou_thds, topks), truth, task)


def _hits_metrics(hits: dict[str, np.ndarray], truth: GroundTruth, task: str) -> dict[str, dict[str, float | str]]:
    """One task's metrics from its per-query hits (`_task_hits`)."""
    out: dict[str, dict[str, float | str]] = {task: {key: percentage(int(h.sum()), len(h)) for key, h in hits.items()}}
    if truth.types is not None:
        out[f"{task}_by_type"] = _by_type(hits, truth.types)
    return out


def _video2idx(video2idx: Any) -> dict[str, int]:
    """The submission's {vid_name: idx}, checked for its types only (the evaluator allows repeated idx)."""
    if not isinstance(video2idx, dict):
        raise EvalInputError("the submission needs a video2idx object {vid_name: idx}")
    bad = [k for k, v in video2idx.items() if not isinstance(k, str) or not _is_int(v)]
    if bad:
        raise EvalInputError(f"video2idx maps str -> int; bad entries for {_some(bad)}")
    return video2idx


def eval_task(
    predictions: list[dict[str, Any]],
    video2idx: Mapping[str, int],
    gt: Sequence[dict[str, Any]],
    task: str,
    iou_thds: Sequence[float] = IOU_THDS,
    topks: Sequence[int] = TOPKS,
    durations: Mapping[str, float | None] | None = None,
    duration_tolerance: float = DURATION_TOLERANCE,
) -> dict[str, dict[str, float | str]]:
    """One task's metrics: {task: {...}} plus {task + "_by_type": {...}} when every gt query has a type."""
    if task not in TASKS:
        raise EvalInputError(f"task must be one of {list(TASKS)}, got {task!r}")
    _check_thresholds(iou_thds)
    truth = ground_truth_table(gt, _video2idx(video2idx), durations, duration_tolerance)
    preds = prediction_table(predictions, task, video2idx, truth.desc_ids, durations, duration_tolerance)
    return _task_metrics(preds, truth, task, iou_thds, topks)


def evaluate(
    submission: dict[str, Any],
    gt: Sequence[dict[str, Any]],
    iou_thds: Sequence[float] = IOU_THDS,
    durations: Mapping[str, float | None] | None = None,
    duration_tolerance: float = DURATION_TOLERANCE,
) -> dict[str, dict[str, float | str]]:
    """Every task the submission holds, laid out like the official `eval_retrieval` output."""
    return evaluate_with_hits(submission, gt, iou_thds, durations, duration_tolerance)[0]


def evaluate_with_hits(
    submission: dict[str, Any],
    gt: Sequence[dict[str, Any]],
    iou_thds: Sequence[float] = IOU_THDS,
    durations: Mapping[str, float | None] | None = None,
    duration_tolerance: float = DURATION_TOLERANCE,
) -> tuple[dict[str, dict[str, float | str]], dict[str, dict[str, list[float]]]]:
    """(`evaluate`'s metrics, `query_hits`'s per-query hits) from one reading of the predictions."""
    if not isinstance(submission, dict):
        raise EvalInputError(f"a submission is a JSON object, got {type(submission).__name__}")
    video2idx = _video2idx(submission.get("video2idx"))
    tasks = [t for t in TASKS if t in submission]
    if not tasks:
        raise EvalInputError(f"the submission holds none of the tasks {list(TASKS)}")
    _check_thresholds(iou_thds)
    truth = ground_truth_table(gt, video2idx, durations, duration_tolerance)
    results, per_query = {}, {}
    for task in tasks:
        preds = prediction_table(submission[task], task, video2idx, truth.desc_ids, durations, duration_tolerance)
        hits = _task_hits(preds, truth, task, iou_thds, TOPKS)
        results.update(_hits_metrics(hits, truth, task))
        per_query[task] = {key: (100.0 * h).tolist() for key, h in hits.items()}
    metrics = {key: results[key] for key in [*tasks, *(f"{t}_by_type" for t in tasks)] if key in results}
    return metrics, per_query


def query_hits(
    submission: dict[str, Any],
    gt: Sequence[dict[str, Any]],
    iou_thds: Sequence[float] = IOU_THDS,
    durations: Mapping[str, float | None] | None = None,
) -> dict[str, dict[str, list[float]]]:
    """What `evaluate`'s recalls average, per query: {task: {key: 100.0 or 0.0 for each gt query, in gt
    order}}; the mean of a list is the metric (before the official rounding). For confidence intervals."""
    video2idx = _video2idx(submission.get("video2idx"))
    truth = ground_truth_table(gt, video2idx, durations)
    out = {}
    for task in (t for t in TASKS if t in submission):
        preds = prediction_table(submission[task], task, video2idx, truth.desc_ids, durations, DURATION_TOLERANCE)
        hits = _task_hits(preds, truth, task, iou_thds, TOPKS)
        out[task] = {key: (100.0 * h).tolist() for key, h in hits.items()}
    return out


# --- submission files --------------------------------------------------------------------------


def _check_prediction(p: Any, where: str, video_ids: set[int]) -> None:
    if not (isinstance(p, list) and len(p) == 4 and _is_int(p[0]) and all(_is_number(x) for x in p[1:])):
        raise EvalInputError(f"{where}: must be [video_idx (int), st, ed, score] with finite numbers, got {p!r:.80}")
    if p[0] not in video_ids:
        raise EvalInputError(f"{where}: video idx {p[0]} is not in video2idx")
    if not 0 <= p[1] <= p[2]:
        raise EvalInputError(f"{where}: span [{p[1]}, {p[2]}] needs 0 <= st <= ed")


def _check_entry(e: Any, where: str, task: str, video_ids: set[int], max_predictions: int) -> None:
    """One query's entry: exact keys and types, at most max_predictions, sorted best first."""
    if not isinstance(e, dict) or set(e) != {"desc_id", "desc", "predictions"}:
        keys = sorted(e) if isinstance(e, dict) else type(e).__name__
        raise EvalInputError(f"{where}: must have exactly the keys desc_id, desc, predictions; got {keys}")
    if not _is_int(e["desc_id"]) or not isinstance(e["desc"], str) or not isinstance(e["predictions"], list):
        raise EvalInputError(f"{where}: desc_id must be int, desc str and predictions a list")
    preds = e["predictions"]
    if not preds:
        raise EvalInputError(
            f"{where}: no predictions; TVR's eval.py fails on an empty list (IndexError): "
            "give a query that cannot be answered one that misses, e.g. [idx, 0, 0, score]"
        )
    if len(preds) > max_predictions:
        raise EvalInputError(f"{where}: {len(preds)} predictions, at most {max_predictions} allowed")
    for n, p in enumerate(preds):
        _check_prediction(p, f"{where} prediction {n}", video_ids)
    scores = [p[3] for p in preds]
    drops = [n for n in range(1, len(scores)) if scores[n] > scores[n - 1]]
    if drops:
        raise EvalInputError(f"{where}: predictions must be sorted by score, best first (prediction {drops[0]})")
    if task == "VR" and len({p[0] for p in preds}) != len(preds):
        raise EvalInputError(f"{where}: VR predictions must name distinct videos")


def _task_valid(entries: Any, task: str, video_ids: set[int], max_predictions: int) -> bool:
    """True when one task's entries pass every check of `_check_entry` and their desc_ids are distinct, tested
    on all predictions at once (numpy); False also for some valid input (an int subclass, a huge int), which
    `validate_submission` then checks one prediction at a time, as it does to name the first problem."""
    if type(entries) is not list:
        return False
    if not entries:
        return True
    keys, ids = {"desc_id", "desc", "predictions"}, set()
    for e in entries:
        if not (type(e) is dict and e.keys() == keys and type(e["desc_id"]) is int and type(e["desc"]) is str
                and type(e["predictions"]) is list and 1 <= len(e["predictions"]) <= max_predictions):  # fmt: skip
            return False
        ids.add(e["desc_id"])
    flat = [p for e in entries for p in e["predictions"]]
    if len(ids) != len(entries) or not all(type(p) is list and len(p) == 4 for p in flat):
        return False
    vid, *numbers = (list(map(itemgetter(i), flat)) for i in range(4))  # (n,) video idx; st, ed, score
    types = set(map(type, numbers[0])) | set(map(type, numbers[1])) | set(map(type, numbers[2]))
    if set(map(type, vid)) != {int} or not video_ids.issuperset(vid) or not types <= {int, float}:
        return False
    try:  # through array.array: twice as fast as np.array from a list of Python numbers
        st, ed, score = (np.frombuffer(array.array("d", x), dtype=np.float64) for x in numbers)  # (n,) each
    except OverflowError:  # an int too large for a float
        return False
    if int in types and not (np.abs([st, ed, score]) < 2**53).all():  # ints are exact in float64 below 2**53
        return False
    if not (np.isfinite(score).all() and np.isfinite(ed).all() and (0 <= st).all() and (st <= ed).all()):
        return False
    rises = score[1:] > score[:-1]  # (n - 1,) prediction i + 1 scored above prediction i ...
    rises[np.cumsum([len(e["predictions"]) for e in entries])[:-1] - 1] = False  # ... within an entry only
    if rises.any():
        return False
    return task != "VR" or all(len({p[0] for p in e["predictions"]}) == len(e["predictions"]) for e in entries)


def validate_submission(sub: Any, tasks: tuple[str, ...], max_predictions: int = MAX_PREDICTIONS) -> None:
    """Check the official schema before a submission leaves us, naming the first problem.

    Stricter than the evaluator, which reads what it can: this is for files we hand to Codalab.
    The top-level keys must be exactly video2idx and `tasks`.
    """
    if not isinstance(sub, dict):
        raise EvalInputError(f"a submission is a JSON object, got {type(sub).__name__}")
    unknown = [t for t in tasks if t not in TASKS]
    if not tasks or unknown:
        raise EvalInputError(f"tasks must be a non-empty subset of {list(TASKS)}, got {list(tasks)}")
    expected = {"video2idx", *tasks}
    if set(sub) != expected:
        raise EvalInputError(f"submission keys must be {sorted(expected)}, got {sorted(sub, key=str)}")
    video2idx = _video2idx(sub["video2idx"])
    if len(set(video2idx.values())) != len(video2idx):
        raise EvalInputError("video2idx must map each video to its own idx (idx values repeat)")
    video_ids = set(video2idx.values())
    if all(_task_valid(sub[task], task, video_ids, max_predictions) for task in tasks):
        return
    for task in tasks:  # something is wrong: the first problem, named
        if not isinstance(sub[task], list):
            raise EvalInputError(f"{task} must be a list, got {type(sub[task]).__name__}")
        seen: set[int] = set()
        for n, e in enumerate(sub[task]):
            where = f"{task} entry {n} (desc_id {e.get('desc_id') if isinstance(e, dict) else None})"
            _check_entry(e, where, task, video_ids, max_predictions)
            if e["desc_id"] in seen:
                raise EvalInputError(f"{where}: desc_id appears more than once")
            seen.add(e["desc_id"])


def write_submission(path: str | Path, video2idx: Mapping[str, int], tasks: Mapping[str, list[Any]]) -> Path:
    """Write a validated submission JSON; the file never exists in an invalid state."""
    validate_submission({"video2idx": dict(video2idx), **tasks}, tuple(tasks))
    sub = {"video2idx": dict(video2idx), **{t: tasks[t] for t in TASKS if t in tasks}}  # the official order
    path = Path(path)
    write_json(path, sub)
    return path


def write_json(path: str | Path, obj: dict[str, Any], chunk: int = 1024) -> None:
    """json.dumps(obj), byte for byte, written in pieces: each list value `chunk` items at a time (no string of
    the whole file, 132 MB for TVR val, and no second copy of it in UTF-8), through a temporary file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("{")
        for n, (key, value) in enumerate(obj.items()):
            f.write(f"{', ' if n else ''}{json.dumps(key)}: ")
            if not isinstance(value, list) or not value:
                f.write(json.dumps(value))
                continue
            f.write("[")
            for c in range(0, len(value), chunk):
                f.write(f"{', ' if c else ''}{json.dumps(value[c : c + chunk])[1:-1]}")  # the items, no brackets
            f.write("]")
        f.write("}")
    os.replace(tmp, path)


def _validated_file(path: str | Path, tasks: tuple[str, ...]) -> dict[str, Any]:
    """A submission file holding `tasks` (other tasks dropped), valid, or an error naming the file."""
    sub = {k: v for k, v in load_submission(path).items() if k == "video2idx" or k in tasks or k not in TASKS}
    try:
        validate_submission(sub, tasks)
    except EvalInputError as e:
        raise EvalInputError(f"{path}: {e}") from None
    return sub


def codalab_zip(out_zip: str | Path, val_submission_path: str | Path, test_submission_path: str | Path) -> Path:
    """TVR's Codalab upload: the val (VCMR, SVMR, VR) and test_public (VCMR, VR) files at the zip root.

    SVMR is dropped from the test file (test_public hides the gt video, so Codalab has none);
    both are validated first, so Codalab never sees a malformed file.
    """
    val = _validated_file(val_submission_path, TASKS)
    test = _validated_file(test_submission_path, CODALAB_TEST_TASKS)
    out_zip = Path(out_zip)
    with zipfile.ZipFile(out_zip, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(CODALAB_VAL, json.dumps(val))
        z.writestr(CODALAB_TEST, json.dumps(test))
    return out_zip


# --- command line ------------------------------------------------------------------------------


def _load_durations(path: str | None) -> dict[str, float | None] | None:
    """{vid_name: duration} from {vid_name: duration or [duration, idx]}, or TVR's {split: {...}} of those."""
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if raw and all(isinstance(v, dict) for v in raw.values()):  # tvr_video2dur_idx.json, data_prep's video2idx.json
        raw = {name: v for split in raw.values() for name, v in split.items()}
    return {name: v[0] if isinstance(v, list) else v for name, v in raw.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="TVR / How2R / DiDeMo moment-retrieval evaluation")
    sub = p.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="metrics of a submission against a ground-truth jsonl")
    ev.add_argument("--submission", required=True)
    ev.add_argument("--gt", required=True, help="ground truth, TVR jsonl format")
    ev.add_argument("--durations", help="JSON {vid_name: duration or [duration, idx]}: check predicted ends")
    ev.add_argument("--tolerance", type=float, default=DURATION_TOLERANCE, help="seconds past the duration allowed")
    ev.add_argument("--save", help="write the metrics JSON here")
    zp = sub.add_parser("zip", help="TVR Codalab zip from val and test_public submissions")
    zp.add_argument("--val", required=True)
    zp.add_argument("--test", required=True)
    zp.add_argument("--out", required=True)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "zip":
            print(codalab_zip(args.out, args.val, args.test))
            return 0
        metrics = evaluate(
            load_submission(args.submission),
            load_ground_truth(args.gt),
            durations=_load_durations(args.durations),
            duration_tolerance=args.tolerance,
        )
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(metrics, indent=4)
    print(text)
    if args.save:
        Path(args.save).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
