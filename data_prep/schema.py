"""The shard schema: what one sample holds and what lies beside the shards.

The writer (data_prep) and the loader (pretrain) both import this module, so the format is
defined once. A sample is one clip (HowTo100M) or one video (finetune sets):

    <key>.feat.npy   float16 [T, D] frame features on a fixed grid (FeatureSpec.interval)
    <key>.json       metadata: video id, times in seconds, text, tokens of interest, task fields

Beside the shards (see docs/shard_format.md):

    shard-000000.tar            the samples
    shard-000000.rejects.jsonl  videos of this shard's plan that could not be used, with reason
    shard-000000.stats.json     counts and hashes; written last, its presence marks the shard complete
    sizes.json                  shard name -> sample count (the OpenCLIP convention)
    rejects.jsonl               all rejects, sorted by video id
    toi_df.json                 document frequency of tokens of interest (TACo's IDF weights)
    manifest.json               schema version, feature spec, tagger, inputs and hashes, counts
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 1

FEATURE_EXT = "feat.npy"
META_EXT = "json"

SIZES_FILE = "sizes.json"
MANIFEST_FILE = "manifest.json"
REJECTS_FILE = "rejects.jsonl"
TOI_DF_FILE = "toi_df.json"
FEATURE_STATS_FILE = "feature_stats.json"  # per-dimension mean and std of every frame of the shards

# Every input video is either in a shard or in the reject log with one of these reasons.
REJECT_REASONS = (
    "excluded",  # its id is in --exclude
    "missing_captions",  # listed in the CSV, absent from the caption file
    "malformed_captions",  # start/end/text not parallel lists of numbers and strings, end < start
    "empty_captions",  # no words left after de-duplication, or no clip with both text and frames
    "missing_features",  # no feature file for the video
    "unreadable_features",  # the feature file exists but cannot be decoded, or has the wrong shape
    "nonfinite_features",  # NaN or inf values (also after the cast to float16)
    "features_shorter_than_captions",  # the captions run past the end of the features
    "missing_annotations",  # finetune sets: a video without a usable query
    "unsafe_video_id",  # an id that would name a file outside the feature folder ("../x", "a/b")
)

KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def escape_id(video_id: str) -> str:
    """A valid key for any id: valid ids are kept; others are sanitised and get a hash suffix.

    WebDataset splits a key at its first dot, so ids such as DiDeMo's
    `12090392@N02_13482799053_87ef2fd8bc.mov` must not reach the tar as they are. The 64-bit
    hash of the original id keeps two ids that sanitise alike apart.
    """
    if KEY_RE.fullmatch(video_id):
        return video_id
    digest = hashlib.sha1(video_id.encode("utf-8")).hexdigest()[:16]
    return f"{_UNSAFE_CHARS.sub('-', video_id)}-{digest}"


def clip_key(video_id: str, clip_index: int) -> str:
    """Key of clip `clip_index` of a video: `<escaped id>_c<index>`."""
    return f"{escape_id(video_id)}_c{clip_index:04d}"


def check_key(key: str) -> str:
    if not KEY_RE.fullmatch(key):
        raise ValueError(f"invalid sample key {key!r}: only [A-Za-z0-9_-] allowed")
    return key


@dataclass(frozen=True)
class FeatureSpec:
    """What the frame features are; stored in the manifest so the loader need not guess."""

    names: tuple[str, ...]  # feature sources concatenated along D, e.g. ("resnet152", "slowfast")
    dims: tuple[int, ...]  # their dims, in the same order; D = sum(dims)
    interval: float  # seconds between frames of the stored grid (HERO: 1.5)
    layout: str  # source layout: "hero" (.npz, key `features`) or "howto100m" (2d/ + 3d/ .npy)
    normalisation: str = "none"  # "none" or "l2" (per source, per frame)
    dtype: str = "float16"
    alignment: str = "mean of source frames whose centre falls in the target window, else nearest"

    @property
    def dim(self) -> int:
        return sum(self.dims)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["names"], d["dims"], d["dim"] = list(self.names), list(self.dims), self.dim
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FeatureSpec:
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        fields["names"], fields["dims"] = tuple(d["names"]), tuple(d["dims"])
        return cls(**fields)


@dataclass
class Sample:
    """One sample before encoding: key, features [T, D] and JSON metadata."""

    key: str
    features: np.ndarray  # (T, D) float16
    meta: dict[str, Any] = field(default_factory=dict)


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


def dumps(obj: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no spaces, UTF-8 (byte-identical across runs)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_sample(sample: Sample) -> list[tuple[str, bytes]]:
    """The tar members of a sample, in a fixed order: (member name, bytes)."""
    check_key(sample.key)
    feats = sample.features
    if feats.ndim != 2 or feats.dtype != np.float16:
        raise ValueError(f"{sample.key}: features must be float16 [T, D], got {feats.dtype} {feats.shape}")
    meta = {"schema": SCHEMA_VERSION, **sample.meta}
    return [
        (f"{sample.key}.{FEATURE_EXT}", encode_npy(feats)),
        (f"{sample.key}.{META_EXT}", dumps(meta)),
    ]


def decode_sample(members: dict[str, bytes]) -> Sample:
    """Inverse of encode_sample, from a WebDataset-style dict (`__key__` + extensions)."""
    key = members["__key__"]
    meta = json.loads(members[META_EXT])
    if meta.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"{key}: schema {meta.get('schema')} != {SCHEMA_VERSION}")
    return Sample(key=key, features=decode_npy(members[FEATURE_EXT]), meta=meta)


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def stats_name(index: int) -> str:
    return f"shard-{index:06d}.stats.json"


def shard_rejects_name(index: int) -> str:
    return f"shard-{index:06d}.rejects.jsonl"
