"""MSR-VTT (text-to-video retrieval) -> WebDataset shards: one sample per video per split.

    python -m data_prep.msrvtt --annotations data/msrvtt --features feats/msrvtt \\
        --out s3://bucket/finetune/msrvtt [--shard-size 500 --workers 16 --resume]

--annotations holds MSRVTT_data.json (`sentences: [{sen_id, video_id, caption}]`),
MSRVTT_train.9k.csv and MSRVTT_train.7k.csv (header `video_id`) and MSRVTT_JSFUSION_test.csv
(`key,vid_key,video_id,sentence`). Splits: train_9k and train_7k (each video with all its
captions as queries, ids sen_id), test_1ka (the 1k-A test: each JSFusion video with its one
sentence, id `key`). Spans are the whole video, whose duration is its features' length.
gt/ gets the three CSV files byte for byte.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Any

from data_prep import cli
from data_prep import finetune_common as fc

DATA = "MSRVTT_data.json"
TRAIN = {"train_9k": "MSRVTT_train.9k.csv", "train_7k": "MSRVTT_train.7k.csv"}
TEST = ("test_1ka", "MSRVTT_JSFUSION_test.csv")


def read_captions(path: str) -> dict[str, list[fc.Query]]:
    """MSRVTT_data.json's sentences by video id, in file order (whole-video queries)."""
    sentences = fc.need(fc.check(cli.load_json(path), "object", path), "sentences", "list", path)
    out: dict[str, list[fc.Query]] = defaultdict(list)
    for i, rec in enumerate(sentences):
        where = f"{path}: sentences[{i}]"
        query = fc.Query(fc.need(rec, "sen_id", "id", where), fc.need(rec, "caption", "str", where), None)
        out[fc.need(rec, "video_id", "str", where)].append(query)
    return out


def train_split(name: str, path: str, captions: dict[str, list[fc.Query]]) -> fc.Split:
    """The videos a train CSV lists, each with all its captions."""
    ids = dict.fromkeys(row["video_id"] for _, row in fc.csv_table(path, ("video_id",)))
    return fc.Split(name, [fc.Video(vid, tuple(captions.get(vid, ()))) for vid in ids], train=True)


def test_split(name: str, path: str) -> fc.Split:
    """The JSFusion videos, each with its one test sentence."""
    by_video: dict[str, list[fc.Query]] = defaultdict(list)
    for _, row in fc.csv_table(path, ("key", "video_id", "sentence")):
        by_video[row["video_id"]].append(fc.Query(row["key"], row["sentence"], None))
    return fc.Split(name, [fc.Video(vid, tuple(queries)) for vid, queries in by_video.items()])


def load(args: argparse.Namespace) -> fc.Dataset:
    data = fc.annotation_file(args.annotations, DATA)
    captions = read_captions(data)
    train = {name: fc.annotation_file(args.annotations, f) for name, f in TRAIN.items()}
    test = fc.annotation_file(args.annotations, TEST[1])
    splits = [train_split(name, path, captions) for name, path in train.items()] + [test_split(TEST[0], test)]
    return fc.Dataset("msrvtt", splits, inputs=[data, *train.values(), test], gt_files=[test, *train.values()])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = fc.parser("python -m data_prep.msrvtt", __doc__)
    p.add_argument("--annotations", required=True, help="folder with MSRVTT_data.json and the split CSV files")
    fc.add_common_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    return fc.convert(load(args), args)


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
