"""How2QA (HERO's HowTo100M video QA) -> WebDataset shards: one sample per clip per split.

    python -m data_prep.how2qa --train how2qa_train.csv --val how2qa_val.csv --test how2qa_test.csv \\
        --captions raw_caption.json --features feats/how2qa --out s3://bucket/finetune/how2qa

A split file is the public CSV without header, one question per row:
`youtube_id,[st:ed],wrong1,wrong2,wrong3,question,correct_answer` (st, ed absolute seconds in the
YouTube video). A row without exactly 7 fields (an unquoted comma makes it ambiguous) or with an
unreadable window is not guessed: it is dropped as `malformed_row`, as are rows whose correct
answer repeats a wrong one (`duplicate_answers`) or with an empty answer (`empty_text`). Query
ids are the 0-based row numbers.

A question's clip is the grid window of --clip-length L (HERO: 60 s) that holds its span:
a = floor(st / L) * L, b = max(a + L, ceil(ed / L) * L), clip id `{youtube_id}_{a}_{b}` (How2R's
form); questions of one clip are one sample. Features: `<clip id>.npz` when it exists, else the
YouTube video's file cut to the window; a window past the end of the features is cut there (the
clip is shorter). Span [st - a, ed - a]; duration the clip's. Subtitles as How2R's. The 4
answers are stored in a permuted order fixed by sha256(`{split}:{query_id}`) (`permutation`),
as the extras `answers` and `answer_idx`. gt/ gets the CSVs byte for byte and
how2qa_<split>_answers.jsonl `{query_id, video_id, question, answers, answer_idx, ts}`.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
from typing import Any, NamedTuple

from data_prep import cli, how2r
from data_prep import finetune_common as fc
from data_prep.errors import DataPrepError

SPLITS = ("train", "val", "test")
FIELDS = ("youtube_id", "[st:ed]", "wrong1", "wrong2", "wrong3", "question", "correct_answer")
PERMUTATIONS = tuple(itertools.permutations(range(4)))  # the 24 orders of (wrong1, wrong2, wrong3, correct)


class Question(NamedTuple):
    """One well-formed row: its clip, the query (span relative to the clip) and the ground-truth line."""

    clip_id: str
    query: fc.Query
    gt: dict[str, Any]


def seconds(x: float) -> str:
    """A clip bound as How2R's clip ids write it: 120, 127.5."""
    return f"{x:.3f}".rstrip("0").rstrip(".")


def clip_window(st: float, ed: float, length: float) -> tuple[float, float]:
    """The grid window [a, b) of `length` seconds that holds [st, ed] (several windows when it crosses one)."""
    a = math.floor(round(st / length, 6)) * length
    return a, max(a + length, math.ceil(round(ed / length, 6)) * length)


def permutation(split: str, query_id: int) -> tuple[int, ...]:
    """The order of (wrong1, wrong2, wrong3, correct) to store: the k-th of PERMUTATIONS,
    k = the first 8 bytes of sha256(f"{split}:{query_id}"), big-endian, mod 24."""
    digest = hashlib.sha256(f"{split}:{query_id}".encode()).digest()
    return PERMUTATIONS[int.from_bytes(digest[:8], "big") % len(PERMUTATIONS)]


def answer_problem(answers: list[str]) -> tuple[str, str] | None:
    """Why the 4 answers (wrong1-3, correct; stripped) cannot make a question, or None."""
    empty = [FIELDS[2 + i] for i, a in enumerate(answers) if not a]
    if empty:
        return "empty_text", f"empty answer(s): {', '.join(empty)}"
    same = [FIELDS[2 + i] for i, a in enumerate(answers[:3]) if a.lower() == answers[3].lower()]
    if same:
        return "duplicate_answers", f"the correct answer {answers[3]!r} is also {', '.join(same)}"
    return None


def parse_row(split: str, row_index: int, where: str, row: list[str], length: float) -> Question | fc.Query:
    """A row as a Question, or (malformed) as a query that names no clip, with its problem."""
    if len(row) != len(FIELDS):
        detail = f"{where}: {len(row)} fields, expected {len(FIELDS)} ({','.join(FIELDS)}; quote commas)"
        return fc.Query(row_index, "", (), problem=("malformed_row", detail))
    youtube_id, window = row[0].strip(), row[1]
    try:
        st, ed = (float(x) for x in how2r.parse_window(window, where))
    except DataPrepError as e:
        return fc.Query(row_index, "", (), problem=("malformed_row", str(e)))
    if not youtube_id:
        return fc.Query(row_index, "", (), problem=("malformed_row", f"{where}: empty youtube_id"))
    a, b = clip_window(st, ed, length)
    clip_id = f"{youtube_id}_{seconds(a)}_{seconds(b)}"
    given = [x.strip() for x in (*row[2:5], row[6])]  # wrong1-3, correct
    order = permutation(split, row_index)
    answers, answer_idx = [given[i] for i in order], order.index(3)
    span = (round(st - a, 3), round(ed - a, 3))
    question = row[5].strip()
    extras = {"answers": answers, "answer_idx": answer_idx}
    query = fc.Query(row_index, question, (span,), extras, problem=answer_problem(given))
    gt = {"query_id": row_index, "video_id": clip_id, "question": question, **extras, "ts": list(span)}
    return Question(clip_id, query, gt)


def read_split(split: str, path: str, length: float) -> tuple[list[Question], list[fc.Query]]:
    """(the well-formed rows, the malformed ones as queries with their problem), in file order."""
    questions, malformed = [], []
    for row_index, (where, row) in enumerate(fc.csv_records(path)):
        parsed = parse_row(split, row_index, where, row, length)
        (questions if isinstance(parsed, Question) else malformed).append(parsed)
    return questions, malformed


def load(args: argparse.Namespace) -> fc.Dataset:
    reader, subtitles = cli.feature_reader(args), fc.read_tvr_subtitles(args.subtitles)
    captions = how2r.caption_source(args.captions)
    paths = {name: getattr(args, name) for name in SPLITS if getattr(args, name)}
    splits, gt = [], {}
    for name, path in paths.items():
        questions, malformed = read_split(name, path, args.clip_length)
        clips: dict[str, list[fc.Query]] = {}
        for q in questions:
            clips.setdefault(q.clip_id, []).append(q.query)
        # duration None: the window cut at the features' end, read before planning
        videos = [how2r.make_video(c, None, qs, reader, subtitles, captions) for c, qs in clips.items()]
        splits.append(fc.Split(name, videos, train=name == "train", loose_queries=malformed))
        gt[f"how2qa_{name}_answers.jsonl"] = b"".join(json.dumps(q.gt).encode() + b"\n" for q in questions)
    inputs = [*paths.values(), args.captions, args.subtitles]
    return fc.Dataset("how2qa", splits, inputs=inputs, gt_files=list(paths.values()), gt_extra=gt)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = fc.parser("python -m data_prep.how2qa", __doc__)
    for name in SPLITS:
        p.add_argument(f"--{name}", default=None, help=f"the {name} split's CSV")
    p.add_argument("--captions", default=None, help="HowTo100M-format raw_caption.json of the YouTube videos")
    p.add_argument("--subtitles", default=None, help="TVR-format subtitles by clip id")
    p.add_argument("--clip-length", type=float, default=60.0, help="seconds of HERO's clip grid")
    fc.add_common_args(p)
    args = p.parse_args(argv)
    if not any(getattr(args, name) for name in SPLITS):
        p.error("give at least one of --train, --val, --test")
    if args.clip_length <= 0:
        p.error("--clip-length must be positive")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    return fc.convert(load(args), args)


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
