"""ActivityNet Captions (paragraph-to-video retrieval) -> WebDataset shards, one sample per video.

    python -m data_prep.activitynet --annotations data/activitynet --features feats/activitynet \\
        --out s3://bucket/finetune/activitynet [--shard-size 500 --workers 16 --resume]

--annotations holds train.json, val_1.json and (optional) val_2.json:
`{"v_xxx": {duration, timestamps: [[st, ed], ...], sentences: [...]}}`. Each video has one
query, its paragraph: the sentences stripped and joined with a space, whose span is the whole
video; the sample also keeps the sentences and their timestamps as released. Splits train,
val_1 (the usual test) and val_2. gt/ gets val_1.json and val_2.json byte for byte.
"""

from __future__ import annotations

import argparse
from typing import Any

from data_prep import cli
from data_prep import finetune_common as fc
from data_prep.errors import DataPrepError

SPLITS = {"train": True, "val_1": True, "val_2": False}  # split -> required


def read_video(vid: str, rec: Any, where: str) -> fc.Video:
    """One video and its paragraph query (the query id is the video id: one paragraph each)."""
    duration = fc.need(rec, "duration", "number", where)
    sentences = fc.need_items(rec, "sentences", "str", where)
    stamps = fc.need_items(rec, "timestamps", "span", where)
    if len(stamps) != len(sentences):
        raise DataPrepError(f"{where}: {len(sentences)} sentences but {len(stamps)} timestamps")
    paragraph = " ".join(s.strip() for s in sentences)
    query = fc.Query(vid, paragraph, None, {"sentences": sentences, "timestamps": stamps})
    return fc.Video(vid, (query,), duration=float(duration))


def read_split(name: str, path: str) -> fc.Split:
    data = fc.check(cli.load_json(path), "object", path)
    videos = [read_video(vid, rec, f"{path}[{vid!r}]") for vid, rec in data.items()]
    return fc.Split(name, videos, train=name == "train")


def load(args: argparse.Namespace) -> fc.Dataset:
    paths = {name: fc.annotation_file(args.annotations, f"{name}.json", required) for name, required in SPLITS.items()}
    found = {name: path for name, path in paths.items() if path}
    splits = [read_split(name, path) for name, path in found.items()]
    gt = [path for name, path in found.items() if name != "train"]
    return fc.Dataset("activitynet", splits, inputs=list(found.values()), gt_files=gt)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = fc.parser("python -m data_prep.activitynet", __doc__)
    p.add_argument("--annotations", required=True, help="folder with train.json, val_1.json (and val_2.json)")
    fc.add_common_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    return fc.convert(load(args), args)


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
