"""Reading precomputed frame features in the two public layouts, on one frame grid.

- `hero`: `<dir>/<video>.npz` with key `features`, [T, D] at a fixed interval (HERO: 1.5 s,
  ResNet-152 2048-d + SlowFast 2304-d).
- `howto100m`: the HowTo100M extractor's `<dir>/2d/<video>.npy` (2D CNN, 1 feature per
  second) and `<dir>/3d/<video>.npy` (3D CNN, 1.5 features per second).

Alignment to the stored grid of `interval` seconds (`resample`): source frame j covers
[j*s, (j+1)*s); target frame k covers [k*t, (k+1)*t). Target k is the mean of the source
frames whose centre lies in its window; a window that holds no centre (upsampling) takes the
source frame that contains its own centre. With s == t this is the identity. The two sources
of the `howto100m` layout are aligned separately, cut to the shorter length and concatenated.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from data_prep.errors import DataPrepError, Rejected
from data_prep.schema import FeatureSpec

HOWTO100M_RATES = {"2d": 1.0, "3d": 1.0 / 1.5}  # seconds per source frame
EXTRACT_MANIFEST = "extract_manifest.json"  # provenance that data_prep.extract writes next to its features


def resample(feats: np.ndarray, src_interval: float, dst_interval: float) -> np.ndarray:
    """Align [T, D] features from a `src_interval` grid to a `dst_interval` grid (see above)."""
    if math.isclose(src_interval, dst_interval):
        return feats
    n_src = len(feats)
    n_dst = max(1, math.ceil(round(n_src * src_interval / dst_interval, 6)))
    centres = (np.arange(n_src) + 0.5) * src_interval  # (T_src,)
    owner = np.minimum((centres // dst_interval).astype(np.int64), n_dst - 1)  # (T_src,)
    sums = np.zeros((n_dst, feats.shape[1]), dtype=np.float64)  # (T_dst, D)
    np.add.at(sums, owner, feats.astype(np.float64))
    counts = np.bincount(owner, minlength=n_dst)  # (T_dst,)
    out = sums / np.maximum(counts, 1)[:, None]
    empty = counts == 0
    if empty.any():
        k = np.nonzero(empty)[0]
        nearest = np.minimum(((k + 0.5) * dst_interval // src_interval).astype(np.int64), n_src - 1)
        out[k] = feats[nearest]
    return out.astype(np.float32)


@dataclass(frozen=True)
class FeatureReader:
    """Reads one video's features in `layout` and returns them on the `interval` grid."""

    root: str
    layout: str = "hero"
    interval: float = 1.5  # the stored grid
    src_interval: float = 1.5  # the hero layout's own interval
    normalisation: str = "none"

    def paths(self, video_id: str) -> list[str]:
        """The video's feature files; an id that would leave the feature folder is Rejected."""
        if not video_id or video_id in (".", "..") or "/" in video_id or "\\" in video_id or "\0" in video_id:
            raise Rejected("unsafe_video_id", f"{video_id!r} would name a file outside {self.root}")
        if self.layout == "hero":
            return [os.path.join(self.root, f"{video_id}.npz")]
        if self.layout == "howto100m":
            return [os.path.join(self.root, kind, f"{video_id}.npy") for kind in HOWTO100M_RATES]
        raise ValueError(f"unknown feature layout {self.layout!r} (hero or howto100m)")

    def read(self, video_id: str) -> tuple[np.ndarray, str]:
        """Features [T, D] float32 on the grid and the sha256 of the source files; or Rejected."""
        parts, sha = [], hashlib.sha256()
        rates = [self.src_interval] if self.layout == "hero" else list(HOWTO100M_RATES.values())
        for path, rate in zip(self.paths(video_id), rates):
            if not os.path.exists(path):
                raise Rejected("missing_features", os.path.basename(path))
            with open(path, "rb") as f:
                data = f.read()
            sha.update(data)
            feats = _decode(data, path)
            if not np.isfinite(feats).all():
                raise Rejected("nonfinite_features", f"{os.path.basename(path)} holds NaN or inf")
            parts.append(_normalise(resample(feats, rate, self.interval), self.normalisation))
        length = min(len(p) for p in parts)
        return np.concatenate([p[:length] for p in parts], axis=1), sha.hexdigest()

    def spec(self, dims: tuple[int, ...]) -> FeatureSpec:
        names = ("features",) if self.layout == "hero" else tuple(HOWTO100M_RATES)
        return FeatureSpec(names, dims, self.interval, self.layout, self.normalisation)

    def probe_dims(self, video_id: str) -> tuple[int, ...]:  # noqa: D401
        """Per-source dims, read from one video (for the feature spec in the manifest)."""
        dims = []
        for path in self.paths(video_id):
            with open(path, "rb") as f:
                dims.append(int(_decode(f.read(), path).shape[1]))
        return tuple(dims)


def _decode(data: bytes, path: str) -> np.ndarray:
    """[T, D] float32 from .npy bytes or an .npz with key `features`; Rejected if unreadable."""
    name = os.path.basename(path)
    try:
        if path.endswith(".npz"):
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                if "features" not in archive.files:
                    raise Rejected("unreadable_features", f"{name}: no key 'features' in {archive.files}")
                feats = archive["features"]
        else:
            feats = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # zlib: a damaged deflate stream
        raise Rejected("unreadable_features", f"{name}: {e}") from None
    if feats.ndim != 2 or feats.shape[0] == 0 or feats.shape[1] == 0 or feats.dtype.kind != "f":
        raise Rejected("unreadable_features", f"{name}: expected float [T, D], got {feats.dtype} {feats.shape}")
    return feats.astype(np.float32)


def _normalise(feats: np.ndarray, how: str) -> np.ndarray:
    if how == "none":
        return feats
    if how == "l2":
        return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-6)
    raise ValueError(f"unknown normalisation {how!r} (none or l2)")


def to_float16(feats: np.ndarray, video_id: str) -> np.ndarray:
    """Cast to float16, rejecting values that overflow it."""
    half = feats.astype(np.float16)
    if not np.isfinite(half).all():
        raise Rejected("nonfinite_features", f"{video_id}: values beyond float16 range")
    return half


def probe_dims(reader: FeatureReader, video_ids: list[str], sample: int = 15) -> tuple[int, ...]:
    """The feature dims of the corpus: the most common among up to `sample` readable videos
    spread over the list (one odd file must not set the spec that rejects all the others)."""
    step = max(1, len(video_ids) // (sample * 2))
    seen: dict[tuple[int, ...], int] = {}
    for vid in video_ids[::step]:
        try:
            dims = reader.probe_dims(vid)
        except (Rejected, OSError):
            continue
        seen[dims] = seen.get(dims, 0) + 1
        if sum(seen.values()) >= sample:
            break
    if not seen:
        raise DataPrepError(f"{reader.root}: no readable feature file for any of {len(video_ids)} videos")
    return max(seen, key=lambda d: seen[d])  # first seen wins a tie
