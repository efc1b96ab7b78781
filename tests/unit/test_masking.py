"""MLM and MFM masking (pretrain/masking.py): proportions, guarantees and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from pretrain import masking

CLS, SEP, MASK, UNK, PAD = 101, 102, 103, 100, 0
SPECIAL_IDS = (PAD, UNK, CLS, SEP, MASK)
VOCAB = 30522


def sequence(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """[CLS] + n ordinary token ids + [SEP], and its special-token mask."""
    ids = np.concatenate([[CLS], rng.integers(1000, VOCAB, size=n), [SEP]]).astype(np.int64)  # (n+2,)
    special = np.zeros(n + 2, dtype=bool)
    special[[0, -1]] = True
    return ids, special


def mask(ids: np.ndarray, special: np.ndarray, rng: np.random.Generator, **kw) -> tuple[np.ndarray, np.ndarray]:
    return masking.mask_tokens(ids, special, rng, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL_IDS, **kw)


def test_mlm_proportions_over_many_samples() -> None:
    rng = np.random.default_rng(0)
    targets = candidates = masked = swapped = kept = 0
    for _ in range(3000):
        ids, special = sequence(int(rng.integers(20, 60)), rng)
        corrupted, labels = mask(ids, special, rng)
        chosen = labels != masking.IGNORE_INDEX
        targets += chosen.sum()
        candidates += (~special).sum()
        masked += (corrupted[chosen] == MASK).sum()
        kept += (corrupted[chosen] == ids[chosen]).sum()
        swapped += ((corrupted[chosen] != MASK) & (corrupted[chosen] != ids[chosen])).sum()
    assert targets / candidates == pytest.approx(0.15, abs=0.005)
    assert masked / targets == pytest.approx(0.8, abs=0.015)
    assert swapped / targets == pytest.approx(0.1, abs=0.01)
    assert kept / targets == pytest.approx(0.1, abs=0.01)


def test_mlm_labels_corruption_and_specials() -> None:
    rng = np.random.default_rng(1)
    for _ in range(500):
        ids, special = sequence(int(rng.integers(1, 40)), rng)
        corrupted, labels = mask(ids, special, rng)
        chosen = labels != masking.IGNORE_INDEX
        assert chosen.sum() >= 1  # at least one target whenever there is a maskable token
        assert not chosen[special].any() and (corrupted[special] == ids[special]).all()
        np.testing.assert_array_equal(labels[chosen], ids[chosen])
        np.testing.assert_array_equal(corrupted[~chosen], ids[~chosen])  # nothing else changes
        assert not np.isin(corrupted[chosen & (corrupted != ids)], [PAD, UNK, CLS, SEP]).any()


def test_mlm_counts_short_texts_and_no_candidates() -> None:
    rng = np.random.default_rng(2)
    for n, expected in [(1, 1), (2, 1), (3, 1), (10, 2), (20, 3), (100, 15)]:
        ids, special = sequence(n, rng)
        _, labels = mask(ids, special, rng)
        assert (labels != masking.IGNORE_INDEX).sum() == expected == masking.num_to_mask(n, 0.15)
    ids = np.array([CLS, SEP])
    corrupted, labels = mask(ids, np.array([True, True]), rng)  # empty text: nothing to predict
    assert (labels == masking.IGNORE_INDEX).all() and (corrupted == ids).all()


def test_mlm_deterministic_given_generator() -> None:
    ids, special = sequence(50, np.random.default_rng(3))
    a = mask(ids, special, np.random.default_rng(7))
    b = mask(ids, special, np.random.default_rng(7))
    c = mask(ids, special, np.random.default_rng(8))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not (np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1]))


def test_random_tokens_uniform_over_non_special_ids() -> None:
    draws = masking.random_tokens(20000, 10, exclude=[0, 3, 9], rng=np.random.default_rng(4))
    values, counts = np.unique(draws, return_counts=True)
    assert values.tolist() == [1, 2, 4, 5, 6, 7, 8]
    assert counts.min() / counts.max() > 0.9


def test_mfm_proportion_at_least_one_and_determinism() -> None:
    rng = np.random.default_rng(5)
    masked = total = 0
    for _ in range(2000):
        t = int(rng.integers(1, 120))
        m = masking.mask_frames(t, rng)
        assert m.shape == (t,) and m.dtype == bool and m.sum() == max(1, round(0.15 * t))
        masked, total = masked + m.sum(), total + t
    assert masked / total == pytest.approx(0.15, abs=0.01)
    assert masking.mask_frames(1, rng).tolist() == [True]
    assert masking.mask_frames(0, rng).shape == (0,)
    a = masking.mask_frames(40, np.random.default_rng(9))
    np.testing.assert_array_equal(a, masking.mask_frames(40, np.random.default_rng(9)))


def test_crop_window() -> None:
    assert masking.crop_window(10, 32, np.random.default_rng(0)) == (0, 10)
    assert masking.crop_window(100, 32, None) == (0, 32)
    starts = {masking.crop_window(40, 32, np.random.default_rng(s))[0] for s in range(200)}
    assert starts == set(range(9))  # every window of 32 of 40 frames can be drawn
