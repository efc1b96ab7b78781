"""What rank 0 does with a moment-retrieval submission after the search, before and after the fast paths.

    python benchmarks/submission_write.py --submission RUN/eval/val/step_N/tvr_val_submission.json [--repeats 3]
        [--write]

On a real submission file (TVR val: 10,895 queries x 100 predictions x VCMR, SVMR, VR; e.g. the one
benchmarks/tvr_eval.py leaves in its workdir), in one process, each step the old way, then the new one:
1. validate: `moment_eval.validate_submission` with its vectorised pass (`_task_valid`) against the
   per-prediction loop alone (the code before it);
2. write: `moment_eval.write_json` (chunks of json.dumps through a temporary file) against
   `Path.write_text(json.dumps(sub))`; the two files must be byte-identical;
3. metrics: `evaluate_with_hits` (one pass) against `evaluate` + `query_hits` (two), equal results.
Median seconds of `--repeats`; `--write` puts the table under "## finetune: writing a TVR submission" in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for `python benchmarks/x.py`
from benchmarks._results import header, load, machine, write_section  # noqa: E402
from finetune import moment_eval as me  # noqa: E402

SECTION = "## finetune: writing a TVR submission"


def timed(fn, repeats: int) -> tuple[float, object]:
    """(median seconds of `repeats` calls, the last result)."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--submission", required=True, help="a TVR-format submission with VCMR, SVMR and VR")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--write", action="store_true", help=f'put the results under "{SECTION}" in RESULTS.md')
    args = p.parse_args(argv)
    load_before = load()
    sub = me.load_submission(args.submission)
    tasks = tuple(t for t in me.TASKS if t in sub)
    gt = [{"desc_id": e["desc_id"], "desc": e["desc"], "vid_name": next(iter(sub["video2idx"])), "ts": [0.0, 1.5]}
          for e in sub[tasks[0]]]  # fmt: skip
    fast_check = me._task_valid
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old_path, new_path = Path(tmp) / "old.json", Path(tmp) / "new.json"
        for name, before, after in (
            ("validate_submission", lambda: me.validate_submission(sub, tasks), None),
            ("write the JSON", lambda: old_path.write_text(json.dumps(sub), encoding="utf-8"),
             lambda: me.write_json(new_path, sub)),
            ("metrics + per-query hits", lambda: (me.evaluate(sub, gt), me.query_hits(sub, gt)),
             lambda: me.evaluate_with_hits(sub, gt)),
        ):  # fmt: skip
            if after is None:  # the same function with and without its vectorised pass
                me._task_valid = lambda *a: False  # type: ignore[assignment]
                t_before, _ = timed(before, args.repeats)
                me._task_valid = fast_check
                t_after, _ = timed(before, args.repeats)
            else:
                t_before, want = timed(before, args.repeats)
                t_after, got = timed(after, args.repeats)
                if name == "metrics + per-query hits" and got != want:
                    raise SystemExit("evaluate_with_hits differs from evaluate + query_hits")
            rows.append((name, t_before, t_after))
            print(f"{name}: {t_before:.2f} s -> {t_after:.2f} s", flush=True)
        if old_path.read_bytes() != new_path.read_bytes():
            raise SystemExit("write_json's file differs from json.dumps'")
        size = new_path.stat().st_size
    table = ["| step | before s | after s | before / after |", "|---|---:|---:|---:|"]
    table += [f"| {n} | {b:.2f} | {a:.2f} | {b / a:.2f}x |" for n, b, a in rows]
    print("\n".join(table))
    if args.write:
        command = "python benchmarks/submission_write.py " + " ".join(argv if argv is not None else sys.argv[1:])
        queries = len(sub[tasks[0]])
        lines = [SECTION, "", *header(machine(), command.strip()),
                 f"- load average (1, 5, 15 min) before: {load_before}; after: {load()}",
                 f"- the submission: {queries} queries, tasks {', '.join(tasks)}, {size / 1e6:.0f} MB; median of "
                 f"{args.repeats} runs each, one process, each step the old way then the new one; ground truth: "
                 "every query on the first video",
                 "", *table, ""]  # fmt: skip
        write_section(SECTION, "\n".join(lines))


if __name__ == "__main__":
    main()
