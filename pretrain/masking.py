"""Masking for the pretraining objectives, as pure functions on one sample.

MLM (BERT; FEEL eq. 4) and MFM (HERO; FEEL eq. 5-6) choose what to hide in the data workers,
so the model and the losses only see the result. Every function takes an explicit
`np.random.Generator` and draws from nothing else, so the same generator state gives the same
masks on any machine, in any worker, in any order (the loader seeds one generator per sample
from (seed, epoch, sample key)).

How many positions are chosen: exactly `max(1, round(prob * n))` of the `n` candidates,
uniformly without replacement, as in BERT's original `create_pretraining_data.py` (rather
than an independent coin per position, as in HERO and Hugging Face's collator). Both give
15% on average; the fixed count has no variance and never masks nothing, which is what
"at least one" asks for.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

IGNORE_INDEX = -100  # label of positions the MLM loss ignores (torch's cross_entropy default)


def num_to_mask(n: int, prob: float) -> int:
    """How many of `n` candidates to mask: round(prob * n), at least one when n > 0."""
    if n <= 0:
        return 0
    return min(n, max(1, int(round(prob * n))))


def choose(candidates: np.ndarray, prob: float, rng: np.random.Generator) -> np.ndarray:
    """A sorted subset of the candidate indices, of size num_to_mask(len, prob)."""
    k = num_to_mask(len(candidates), prob)
    return np.sort(rng.choice(candidates, size=k, replace=False)) if k else candidates[:0]


def random_tokens(n: int, vocab_size: int, exclude: Iterable[int], rng: np.random.Generator) -> np.ndarray:
    """`n` token ids drawn uniformly from [0, vocab_size) minus `exclude` (the special tokens)."""
    excluded = sorted({int(e) for e in exclude if 0 <= int(e) < vocab_size})
    ids = rng.integers(0, vocab_size - len(excluded), size=n)  # (n,) in a gap-free range
    for e in excluded:  # ascending: shift past each excluded id, keeping the draw uniform
        ids = ids + (ids >= e)
    return ids.astype(np.int64)


def mask_tokens(
    input_ids: np.ndarray,
    special_mask: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Iterable[int] = (),
    prob: float = 0.15,
    mask_frac: float = 0.8,
    random_frac: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masked-LM corruption of one token sequence.

    `prob` of the non-special tokens (at least one when there are any) become targets; of the
    targets, `mask_frac` are replaced by [MASK], `random_frac` by a random non-special token and
    the rest kept. Returns (corrupted ids (N,), labels (N,)): labels hold the original id at
    targets and IGNORE_INDEX elsewhere. Special tokens ([CLS], [SEP], padding) are never chosen.
    """
    ids = np.asarray(input_ids, dtype=np.int64)  # (N,)
    candidates = np.flatnonzero(~np.asarray(special_mask, dtype=bool))  # (C,) maskable positions
    targets = choose(candidates, prob, rng)  # (K,)
    labels = np.full_like(ids, IGNORE_INDEX)  # (N,)
    labels[targets] = ids[targets]
    corrupted = ids.copy()  # (N,)
    u = rng.random(len(targets))  # (K,) one draw per target decides mask / random / keep
    corrupted[targets[u < mask_frac]] = mask_id
    swap = targets[(u >= mask_frac) & (u < mask_frac + random_frac)]
    corrupted[swap] = random_tokens(len(swap), vocab_size, special_ids, rng)
    return corrupted, labels


def mask_frames(num_frames: int, rng: np.random.Generator, prob: float = 0.15) -> np.ndarray:
    """HERO's MFM frame mask for one clip: (num_frames,) bool, `prob` of the frames, at least one."""
    mask = np.zeros(num_frames, dtype=bool)  # (M,)
    mask[choose(np.arange(num_frames), prob, rng)] = True
    return mask


def crop_window(num_frames: int, max_frames: int, rng: np.random.Generator | None) -> tuple[int, int]:
    """[start, end) of at most `max_frames` frames: a random window, or the first one without `rng`."""
    if num_frames <= max_frames:
        return 0, num_frames
    start = int(rng.integers(0, num_frames - max_frames + 1)) if rng is not None else 0
    return start, start + max_frames
