"""DiDeMo (Distinct Describable Moments) -> WebDataset shards: one sample per video per split.

    python -m data_prep.didemo --annotations data/didemo --features feats/didemo \\
        --out s3://bucket/finetune/didemo [--shard-size 500 --workers 16 --resume]

--annotations holds train_data.json, val_data.json and test_data.json: lists of
`{annotation_id, description, video, times, ...}`. `times` are 5-second chunk indices from the
(usually four) annotators: chunks [s, e] are the moment [5s, 5(e+1)) seconds, one span each, all
kept in order (the official metric matches them). A video's duration is its features' length,
capped at 30 s (DiDeMo cut its videos to at most six chunks); the last chunk is partial, so a
span may end up to the end of the chunk that holds the video's end (+ --tolerance). Video names
hold '@' and '.', so keys are escaped (schema.escape_id). No subtitles. gt/ gets the three
files byte for byte.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Any

from data_prep import cli
from data_prep import finetune_common as fc
from data_prep.errors import DataPrepError

SPLITS = ("train", "val", "test")
CHUNK_SECONDS = 5.0
MAX_DURATION = 30.0


def chunk_span(chunks: list[float]) -> tuple[float, float]:
    """Chunk indices [s, e] -> seconds [5s, 5(e+1))."""
    return chunks[0] * CHUNK_SECONDS, (chunks[1] + 1) * CHUNK_SECONDS


def read_split(name: str, path: str) -> fc.Split:
    """One *_data.json: annotations grouped by video, in file order."""
    data = cli.load_json(path)
    if not isinstance(data, list):
        raise DataPrepError(f"{path}: expected a JSON list of annotations, got {type(data).__name__}")
    by_video: dict[str, list[fc.Query]] = defaultdict(list)
    for i, rec in enumerate(data):
        where = f"{path}[{i}]"
        times = fc.need_items(rec, "times", "span", where)
        query_id, text = fc.need(rec, "annotation_id", "id", where), fc.need(rec, "description", "str", where)
        query = fc.Query(query_id, text, tuple(chunk_span(t) for t in times), {"times": times})
        by_video[fc.need(rec, "video", "str", where)].append(query)
    videos = [fc.Video(vid, tuple(queries), max_duration=MAX_DURATION) for vid, queries in by_video.items()]
    return fc.Split(name, videos, train=name == "train", granularity=CHUNK_SECONDS)


def load(args: argparse.Namespace) -> fc.Dataset:
    paths = [fc.annotation_file(args.annotations, f"{name}_data.json") for name in SPLITS]
    splits = [read_split(name, path) for name, path in zip(SPLITS, paths, strict=True)]
    return fc.Dataset("didemo", splits, inputs=paths, gt_files=paths)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = fc.parser("python -m data_prep.didemo", __doc__)
    p.add_argument("--annotations", required=True, help="folder with {train,val,test}_data.json")
    fc.add_common_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    return fc.convert(load(args), args)


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
