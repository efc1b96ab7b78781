"""How2R's submission in the VALUE benchmark's own format, the file handed to VALUE's leaderboard.

VALUE scores How2R with VALUE-Leaderboard/EvaluationTools `scoring_program/evaluate_how2r.py`:
it reads `how2r/how2r_val_predictions.json` and `how2r/how2r_test_public_predictions.json` from
the uploaded zip, replaces any video2idx in them with the official one (`how2r_video2dur_idx.json`,
which data_prep.how2r takes as --video2dur), reads each VR prediction `idx` as `[idx, 0, 0, 0]`
and runs TVR's recall code without query types. Its README's format:

    {"VCMR": [{"desc_id": int, "desc": str, "predictions": [[video_idx, st, ed, score], ...]}, ...],
     "VR": [{"desc_id": int, "predictions": [video_idx, ...]}, ...]}

Our own metrics come from the TVR-format submission (finetune/moment_eval.py, the same recall
code); `from_tvr` turns that into this file. docs/evaluation.md has the details.

    python -m finetune.value_submission zip --val how2r_val_predictions.json \\
        --test how2r_test_public_predictions.json --out how2r_submission.zip
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from finetune.moment_eval import MAX_PREDICTIONS, EvalInputError, load_submission

TASK_DIR = "how2r"  # the zip's folder for How2R (VALUE's task name)
TASKS = ("VCMR", "VR")  # what VALUE scores for How2R; SVMR needs the gt video, which test_public hides
SPLITS = {"val": "val", "test": "test_public", "test_public": "test_public"}  # ours -> VALUE's


def file_name(split: str) -> str:
    """VALUE's name for a split's predictions: how2r_val_predictions.json, how2r_test_public_predictions.json."""
    return f"how2r_{SPLITS.get(split, split)}_predictions.json"


def from_tvr(sub: Mapping[str, Any]) -> dict[str, Any]:
    """A TVR-format submission (finetune/moment.py) in VALUE's format: VCMR as it is, VR as video idx lists."""
    return {
        "VCMR": [{"desc_id": e["desc_id"], "desc": e["desc"], "predictions": e["predictions"]} for e in sub["VCMR"]],
        "VR": [{"desc_id": e["desc_id"], "predictions": [p[0] for p in e["predictions"]]} for e in sub["VR"]],
    }


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and abs(x) < float("inf")


def _check_prediction(task: str, p: Any, where: str, video_ids: Collection[int] | None) -> None:
    if task == "VR":
        if not _is_int(p):
            raise EvalInputError(f"{where}: must be a video idx (int), got {p!r:.80}")
        idx = p
    else:
        if not (isinstance(p, list) and len(p) == 4 and _is_int(p[0]) and all(_is_finite(x) for x in p[1:])):
            raise EvalInputError(f"{where}: must be [video_idx (int), st, ed, score] of finite numbers, got {p!r:.80}")
        idx = p[0]
        if not 0 <= p[1] <= p[2]:
            raise EvalInputError(f"{where}: span [{p[1]}, {p[2]}] needs 0 <= st <= ed")
    if video_ids is not None and idx not in video_ids:
        raise EvalInputError(f"{where}: video idx {idx} is not in the official video2idx")


def _check_entry(task: str, e: Any, where: str, video_ids: Collection[int] | None, max_predictions: int) -> None:
    """One query: desc_id, predictions (non-empty: VALUE's scorer cannot read an empty list), desc optional."""
    allowed = {"desc_id", "desc", "predictions"}
    if not isinstance(e, dict) or not {"desc_id", "predictions"} <= set(e) <= allowed:
        keys = sorted(e) if isinstance(e, dict) else type(e).__name__
        raise EvalInputError(f"{where}: keys must be desc_id, predictions and optionally desc; got {keys}")
    if not _is_int(e["desc_id"]):
        raise EvalInputError(f"{where}: desc_id must be an int, got {e['desc_id']!r}")
    if "desc" in e and not isinstance(e["desc"], str):
        raise EvalInputError(f"{where}: desc must be a str")
    preds = e["predictions"]
    if not isinstance(preds, list) or not preds:
        raise EvalInputError(f"{where}: no predictions (a non-empty list is needed)")
    if len(preds) > max_predictions:
        raise EvalInputError(f"{where}: {len(preds)} predictions, at most {max_predictions} allowed")
    for n, p in enumerate(preds):
        _check_prediction(task, p, f"{where} prediction {n}", video_ids)
    if task == "VR" and len(set(preds)) != len(preds):
        raise EvalInputError(f"{where}: VR predictions must name distinct videos")
    if task == "VCMR":
        drops = [n for n in range(1, len(preds)) if preds[n][3] > preds[n - 1][3]]
        if drops:
            raise EvalInputError(f"{where}: predictions must be sorted by score, best first (prediction {drops[0]})")


def validate(sub: Any, video_ids: Collection[int] | None = None, max_predictions: int = MAX_PREDICTIONS) -> None:
    """Refuse what VALUE's How2R scorer cannot read or would miscount, naming the first problem.

    Keys exactly VCMR and VR, the same desc_ids in both, each once; every prediction as above, at
    least one and at most `max_predictions` per query; `video_ids`, when given, are the official
    idx of the split (a prediction naming another idx could never count).
    """
    if not isinstance(sub, dict) or set(sub) != set(TASKS):
        keys = sorted(sub, key=str) if isinstance(sub, dict) else type(sub).__name__
        raise EvalInputError(f"a VALUE How2R submission's keys must be {list(TASKS)}, got {keys}")
    ids = {}
    for task in TASKS:
        if not isinstance(sub[task], list) or not sub[task]:
            raise EvalInputError(f"{task} must be a non-empty list of queries")
        seen: set[int] = set()
        for n, e in enumerate(sub[task]):
            where = f"{task} entry {n} (desc_id {e.get('desc_id') if isinstance(e, dict) else None})"
            _check_entry(task, e, where, video_ids, max_predictions)
            if e["desc_id"] in seen:
                raise EvalInputError(f"{where}: desc_id appears more than once")
            seen.add(e["desc_id"])
        ids[task] = seen
    if ids["VCMR"] != ids["VR"]:
        raise EvalInputError(f"VCMR and VR must hold the same desc_ids ({len(ids['VCMR'] ^ ids['VR'])} differ)")


def write(path: str | Path, sub: Mapping[str, Any], video_ids: Collection[int] | None = None) -> Path:
    """Validate, then write the JSON; the file never exists in an invalid state."""
    validate(dict(sub), set(video_ids) if video_ids is not None else None)
    path = Path(path)
    path.write_text(json.dumps({task: sub[task] for task in TASKS}), encoding="utf-8")
    return path


def _validated_file(path: str | Path) -> dict[str, Any]:
    sub = load_submission(path)
    try:
        validate(sub)
    except EvalInputError as e:
        raise EvalInputError(f"{path}: {e}") from None
    return sub


def value_zip(out_zip: str | Path, val_path: str | Path, test_path: str | Path) -> Path:
    """VALUE's upload for How2R: how2r/how2r_val_predictions.json and how2r/how2r_test_public_predictions.json
    (VALUE wants both splits), after validating both, so a malformed file never reaches the leaderboard."""
    files = {file_name("val"): _validated_file(val_path), file_name("test_public"): _validated_file(test_path)}
    out_zip = Path(out_zip)
    with zipfile.ZipFile(out_zip, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, sub in files.items():
            z.writestr(f"{TASK_DIR}/{name}", json.dumps(sub))
    return out_zip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="How2R's VALUE leaderboard zip from val and test_public predictions")
    sub = p.add_subparsers(dest="command", required=True)
    zp = sub.add_parser("zip", help="check both files and write VALUE's upload zip")
    zp.add_argument("--val", required=True)
    zp.add_argument("--test", required=True, help="the test_public predictions")
    zp.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        print(value_zip(args.out, args.val, args.test))
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
