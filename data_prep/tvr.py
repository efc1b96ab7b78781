"""TVR (TV show Retrieval) -> WebDataset shards: one sample per video per split.

    python -m data_prep.tvr --annotations data/tvr --subtitles data/tvr/tvqa_preprocessed_subtitles.jsonl \\
        --features feats/tvr --out s3://bucket/finetune/tvr [--shard-size 500 --workers 16 --resume]

--annotations holds the release under its official names: tvr_train_release.jsonl,
tvr_val_release.jsonl, tvr_test_public_release.jsonl (optional) and tvr_video2dur_idx.json.
Splits train, val and test_public. A split's videos are those tvr_video2dur_idx.json lists for it
(the only list of the test videos), with TVR's own durations and idx; the test queries hold only
desc and desc_id, so they name no video and go to test_public/queries.jsonl. gt/ gets the release
files byte for byte. Output layout: docs/finetune_sets.md.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from data_prep import cli
from data_prep import finetune_common as fc
from data_prep.asr import Segment
from data_prep.errors import DataPrepError

log = logging.getLogger("data_prep.tvr")

SPLITS = {
    "train": "tvr_train_release.jsonl",
    "val": "tvr_val_release.jsonl",
    "test_public": "tvr_test_public_release.jsonl",
}
VIDEO2DUR = "tvr_video2dur_idx.json"


def read_video2dur(path: str) -> dict[str, dict[str, list]]:
    """tvr_video2dur_idx.json: `{split: {vid_name: [duration, idx]}}`, checked."""
    data = fc.check(cli.load_json(path), "object", path)
    for split, videos in data.items():
        for vid, entry in fc.check(videos, "object", f"{path}: {split!r}").items():
            fc.check(entry, "duration_idx", f"{path}: {split!r}: {vid!r}")
    return data


def corpus_key(video2dur: dict[str, Any], split: str, path: str) -> str:
    """The split's key in tvr_video2dur_idx.json (`test_public`, also accepted as `test`)."""
    for key in (split, "test") if split == "test_public" else (split,):
        if key in video2dur:
            return key
    raise DataPrepError(f"{path}: no split {split!r} (has {sorted(video2dur)})")


def make_split(name: str, path: str, corpus: dict[str, list], subtitles: dict[str, tuple[Segment, ...]]) -> fc.Split:
    """The split's videos (all of the corpus) with their queries; test queries stay loose."""
    by_video: dict[str, list[fc.Query]] = {vid: [] for vid in corpus}
    loose = []
    for where, vid, _, query in fc.read_tvr_queries(path, with_video=name != "test_public", need_type=True):
        if vid is None:
            loose.append(query)
        elif vid not in by_video:
            raise DataPrepError(f"{where}: video {vid!r} is not listed for {name!r} in {VIDEO2DUR}")
        else:
            by_video[vid].append(query)
    videos = [
        fc.Video(vid, tuple(queries), duration=float(corpus[vid][0]), subtitles=subtitles.get(vid, ()))
        for vid, queries in by_video.items()
    ]
    return fc.Split(name, videos, train=name == "train", loose_queries=loose)


def load(args: argparse.Namespace) -> fc.Dataset:
    """Parse the release into splits; TVR's own video2idx is kept."""
    dur_path = fc.annotation_file(args.annotations, VIDEO2DUR)
    video2dur = read_video2dur(dur_path)
    if not args.subtitles:
        log.warning("no --subtitles: samples get empty subtitles")
    subtitles = fc.read_tvr_subtitles(args.subtitles)
    splits, files, v2i = [], [], {}
    for name, filename in SPLITS.items():
        path = fc.annotation_file(args.annotations, filename, required=name != "test_public")
        if path:
            corpus = video2dur[corpus_key(video2dur, name, dur_path)]
            splits.append(make_split(name, path, corpus, subtitles))
            files.append(path)
            v2i[name] = corpus
    return fc.Dataset("tvr", splits, [*files, dur_path, args.subtitles], [*files, dur_path], video2idx=v2i)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = fc.parser("python -m data_prep.tvr", __doc__)
    p.add_argument("--annotations", required=True, help="folder with the TVR release files under their official names")
    p.add_argument("--subtitles", default=None, help="tvqa_preprocessed_subtitles.jsonl")
    fc.add_common_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    return fc.convert(load(args), args)


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
