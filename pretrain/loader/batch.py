"""Samples -> model inputs: a raw sample tokenised, masked and cropped with its own generators
(`Processor`), a batch of them padded (`collate`), straight into shared memory in a worker, and
the batch moved to the training device (`to_device`).

Frames cross from the workers in `frames_dtype` (LoaderConfig.frames_dtype, default float16: the
shards' dtype, so nothing is rounded and a 4352-d batch is half the bytes of float32) and become
float32 on the device, in `to_device`: the model then sees the same numbers as from a float32 batch.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from pretrain import masking, text
from pretrain.loader.reading import RawSample

RNG_MLM, RNG_MFM, RNG_CROP = 0, 1, 2  # per-sample generator purposes
FRAMES_DTYPES = {"float16": torch.float16, "float32": torch.float32}  # LoaderConfig.frames_dtype


def sample_hash(seed: int, epoch: int, key: str) -> int:
    """64 bits identifying a sample in an epoch: the seed of its generators."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{epoch}:{key}".encode(), digest_size=8).digest(), "little")


def sample_rng(seed: int, epoch: int, key: str, purpose: int) -> np.random.Generator:
    """A generator for one sample and purpose, independent of worker, order and the other purposes:
    Philox keyed by (sample_hash, purpose); no SeedSequence, so creating one costs ~15 us."""
    return np.random.Generator(np.random.Philox(key=[sample_hash(seed, epoch, key), purpose]))


@dataclass
class Processor:
    """Turns a RawSample into the tensors of one batch row (runs in the stream's process)."""

    tokenizer: Any  # a Hugging Face fast tokenizer (offset mapping)
    idf: text.IdfTable
    max_text_len: int
    max_frames: int
    mlm_prob: float
    mfm_prob: float
    seed: int
    training: bool
    frames_dtype: str = "float16"  # of the batch's frames, as they cross from the worker (FRAMES_DTYPES)
    mask_id: int = field(init=False)
    vocab_size: int = field(init=False)
    special_ids: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        tok = self.tokenizer  # looked up once: these are slow properties of HF tokenizers
        self.mask_id, self.vocab_size, self.special_ids = tok.mask_token_id, len(tok), tuple(tok.all_special_ids)

    def frames(self, raw: RawSample, rng: np.random.Generator | None) -> np.ndarray:
        """(M, D): a window of the clip's features (random with `rng`, else the first), as a read-only
        view in the stored dtype (collate copies it into the batch in its frames_dtype)."""
        t, d = raw.shape
        feats = np.frombuffer(raw.npy, dtype=np.dtype(raw.dtype), count=t * d, offset=raw.header)  # (T*D,)
        feats = feats.reshape((t, d), order="F" if raw.fortran else "C")  # (T, D)
        start, end = masking.crop_window(t, self.max_frames, rng)
        return feats[start:end]  # (M, D)

    def masks(self, enc: text.EncodedText, num_frames: int, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """MLM input ids and labels (N,), and the MFM mask (M,), from the sample's own generators."""
        if not self.training:
            labels = np.full_like(enc.input_ids, masking.IGNORE_INDEX)  # (N,)
            return enc.input_ids.copy(), labels, np.zeros(num_frames, dtype=bool)
        mlm_ids, labels = masking.mask_tokens(
            enc.input_ids, enc.special_mask, np.random.Generator(np.random.Philox(key=[h, RNG_MLM])),
            mask_id=self.mask_id, vocab_size=self.vocab_size, special_ids=self.special_ids, prob=self.mlm_prob,
        )  # fmt: skip
        mfm = masking.mask_frames(num_frames, np.random.Generator(np.random.Philox(key=[h, RNG_MFM])), self.mfm_prob)
        return mlm_ids, labels, mfm

    def collate(self, samples: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
        """The batch of processed samples (a processor for another task brings its own)."""
        return collate(samples, pad_id, self.frames_dtype)

    def __call__(self, raw: RawSample, epoch: int) -> dict[str, Any]:
        h = sample_hash(self.seed, epoch, raw.key)
        meta = raw.meta
        enc = text.encode(str(meta.get("text", "")), meta.get("toi", []), self.tokenizer, self.max_text_len, self.idf)
        crop = np.random.Generator(np.random.Philox(key=[h, RNG_CROP])) if self.training else None
        frames = self.frames(raw, crop)  # (M, D)
        mlm_ids, labels, mfm = self.masks(enc, len(frames), h)
        return {
            "key": raw.key,
            "input_ids": torch.from_numpy(enc.input_ids),  # (N,)
            "mlm_input_ids": torch.from_numpy(mlm_ids),  # (N,)
            "mlm_labels": torch.from_numpy(labels),  # (N,)
            "toi_weight": torch.from_numpy(enc.toi_weight),  # (N,)
            "frames": frames,  # (M, D) numpy view, the stored dtype (float16)
            "mfm_mask": torch.from_numpy(mfm),  # (M,)
        }


def readonly_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over a read-only numpy view (the shard's bytes), only ever read: no copy, no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable array": it is only read
        return torch.from_numpy(np.asarray(array))


_SERIAL_ELEMENTS = 32768  # torch's intra-op grain size: a smaller copy never goes to the thread pool


def copy_serial(dst: torch.Tensor, src: torch.Tensor | None) -> None:
    """dst.copy_(src) (or zero_ without src) in row blocks below the grain size: calling thread only.

    torch converts float16 -> float32 ~10x faster than numpy, but a parallel copy waits for
    every intra-op thread: on a 2-core VM with another busy process a (40, 4352) copy took
    ~8 ms with 2 threads and ~0.03 ms with one. DataLoader workers have one thread anyway.
    """
    rows = max(1, _SERIAL_ELEMENTS // max(1, dst.shape[-1]))
    for r in range(0, len(dst), rows):
        if src is None:
            dst[r : r + rows].zero_()
        else:
            dst[r : r + rows].copy_(src[r : r + rows])


def frames_tensor(b: int, m: int, d: int, dtype: str = "float16") -> torch.Tensor:
    """An uninitialised (B, M, D) tensor of `dtype` (a FRAMES_DTYPES name); in a DataLoader worker it lives in
    shared memory already (as torch's default_collate does it), so handing the batch over copies nothing."""
    if dtype not in FRAMES_DTYPES:
        raise ValueError(f"frames dtype {dtype!r} is not one of {sorted(FRAMES_DTYPES)}")
    if get_worker_info() is None:
        return torch.empty(b, m, d, dtype=FRAMES_DTYPES[dtype])
    elem = torch.empty(0, dtype=FRAMES_DTYPES[dtype])
    storage = elem._typed_storage()._new_shared(b * m * d, device=elem.device)
    return elem.new(storage).resize_(b, m, d)


def collate(samples: Sequence[dict[str, Any]], pad_id: int = 0, frames_dtype: str = "float16") -> dict[str, Any]:
    """Pad one batch to its own longest text (N) and clip (M).

    Returns input_ids, mlm_input_ids (B, N) long (pad_id), attention_mask (B, N) bool,
    mlm_labels (B, N) long (-100 where not predicted), toi_weight (B, N) float32 (0 at padding),
    frames (B, M, D) in `frames_dtype` (0 at padding; `to_device` makes them float32), frame_mask,
    mfm_mask (B, M) bool, keys [B] str.
    """
    b = len(samples)
    n = max(len(s["input_ids"]) for s in samples)
    m = max(len(s["frames"]) for s in samples)
    d = samples[0]["frames"].shape[1]
    out = {
        "input_ids": torch.full((b, n), pad_id, dtype=torch.long),  # (B, N)
        "attention_mask": torch.zeros(b, n, dtype=torch.bool),  # (B, N)
        "mlm_input_ids": torch.full((b, n), pad_id, dtype=torch.long),  # (B, N)
        "mlm_labels": torch.full((b, n), masking.IGNORE_INDEX, dtype=torch.long),  # (B, N)
        "toi_weight": torch.zeros(b, n, dtype=torch.float32),  # (B, N)
        "frames": frames_tensor(b, m, d, frames_dtype),  # (B, M, D)
        "frame_mask": torch.zeros(b, m, dtype=torch.bool),  # (B, M)
        "mfm_mask": torch.zeros(b, m, dtype=torch.bool),  # (B, M)
        "keys": [s["key"] for s in samples],
    }
    frames = out["frames"]  # (B, M, D)
    for i, s in enumerate(samples):
        ln, lm = len(s["input_ids"]), len(s["frames"])
        for name in ("input_ids", "mlm_input_ids", "mlm_labels", "toi_weight"):
            out[name][i, :ln] = s[name]
        out["attention_mask"][i, :ln] = True
        copy_serial(frames[i, :lm], readonly_tensor(s["frames"]))  # (lm, D) stored dtype -> frames_dtype
        copy_serial(frames[i, lm:], None)  # (M - lm, D) padding
        out["frame_mask"][i, :lm] = True
        out["mfm_mask"][i, :lm] = s["mfm_mask"]
    return out


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on `device`, float16 ones (the frames) made float32 there; other values as they are.

    The copies are `non_blocking`: from pinned memory (LoaderConfig.pin_memory, on by default with CUDA) a
    host-to-device copy then overlaps with the work already queued, and from pageable memory (or to the
    CPU) it is an ordinary copy. The float32 cast runs on the device, after the copy of half the bytes.
    """
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device, non_blocking=True)
            v = v.float() if v.dtype == torch.float16 else v
        out[k] = v
    return out
