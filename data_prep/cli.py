"""Command-line pieces shared by the converters: common options, input readers, error exit."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from data_prep.errors import DataPrepError
from data_prep.features import FeatureReader


def add_output_args(p: argparse.ArgumentParser, shard_size: int) -> None:
    p.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    p.add_argument("--shard-size", type=int, default=shard_size, help="samples per shard (about)")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--resume", action="store_true", help="finish an interrupted run: redo incomplete shards")
    p.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint (default: AWS_ENDPOINT_URL or AWS)")
    p.add_argument(
        "--tagger",
        default="auto",
        choices=("auto", "spacy", "heuristic"),
        help="POS tagger for TACo's tokens of interest (auto: spaCy if installed)",
    )


def add_feature_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--features", required=required, help="feature folder (see --feature-layout)")
    p.add_argument(
        "--feature-layout",
        default="hero",
        choices=("hero", "howto100m"),
        help="hero: <id>.npz key 'features'; howto100m: 2d/<id>.npy (1/s) + 3d/<id>.npy (1.5/s)",
    )
    p.add_argument("--interval", type=float, default=1.5, help="seconds between stored frames")
    p.add_argument("--src-interval", type=float, default=1.5, help="interval of the hero-layout files")
    p.add_argument("--normalisation", default="none", choices=("none", "l2"))


def feature_reader(args: argparse.Namespace) -> FeatureReader:
    if args.interval <= 0 or args.src_interval <= 0:
        raise DataPrepError("--interval and --src-interval must be positive")
    return FeatureReader(args.features, args.feature_layout, args.interval, args.src_interval, args.normalisation)


def load_json(path: str) -> Any:
    """A JSON input file, or one clear error that names it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataPrepError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataPrepError(f"{path}: not valid JSON ({e})") from None


def load_jsonl(path: str) -> list[Any]:
    """A JSON-lines input file, or one clear error that names the file and line."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise DataPrepError(f"{path}:{n}: not valid JSON ({e})") from None
    except FileNotFoundError:
        raise DataPrepError(f"{path}: file not found") from None
    return out


def load_id_list(path: str | None) -> set[str]:
    """Video ids to exclude: a JSON list, or a text file with one id per line (# comments)."""
    if not path:
        return set()
    if path.endswith(".json"):
        ids = load_json(path)
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise DataPrepError(f"{path}: expected a JSON list of video ids")
        return set(ids)
    try:
        with open(path, encoding="utf-8") as f:
            return {line.split("#")[0].strip() for line in f} - {""}
    except FileNotFoundError:
        raise DataPrepError(f"{path}: file not found") from None


def run(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> int:
    """Run a converter's main: log to stderr, turn a DataPrepError into one line and exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        main(argv)
    except DataPrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
