"""A small synthetic corpus in the exact public formats, with planted, known structure.

Why: the real corpora are terabytes and licence-gated, but converters, loaders and training
need to be exercised end to end on a CPU in seconds. This module writes HowTo100M, TVR,
DiDeMo, How2R, How2QA, MSR-VTT and ActivityNet Captions files byte-for-byte in their public
layouts, generated from one hidden world so that "did pretraining learn anything" is measurable:

- concepts (nouns, verbs) have fixed random prototypes in a small latent space;
- each video is a timeline of events (one noun + one verb visible for 4-15 s), plus a
  background noun visible over long stretches that is never mentioned (visible, unmentioned);
- frame features are projections of the visible concepts' prototypes plus noise; appearance
  layouts mostly see nouns, motion layouts mostly see verbs;
- narration mentions ~70% of the events near their time, mixed with unrelated chatter;
- downstream queries describe one event, and the moment is that event's span;
- How2QA asks what an event's verb acts on: the answer is its noun, one wrong answer a noun
  shown in the same clip outside the span (only the time tells them apart), two are absent.

The numbers above are the default world's (`DEFAULT_WORLD`, world 0). `draw_world(n)` draws another
world per seed n >= 1 from a larger word bank: its own domains, synonyms (narration and queries may name
one concept differently), mention rate and timing, chatter, noise, feature dims and layout weights, and
non-negative features in half of them (`World`).

The ground truth goes to `planted.json`. Same seed and world -> byte-identical files. See
docs/synthetic_corpus.md for the formats, the scaling rule, the worlds and how to use the ground truth.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import string
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

DEFAULT_VIDEOS = 48  # HowTo100M videos; downstream sizes scale with videos / DEFAULT_VIDEOS
# The default world's (world 0's) settings; a drawn world has its own (`World`, `draw_world`).
LATENT_DIM = 24
LAYOUT_DIM = 32  # each layout (and each half of the HERO layout) has 32 dims
LATENT_NOISE = 0.2
FEATURE_NOISE = 0.05
MENTION_P = 0.7  # HowTo100M: chance an event is narrated
SUBTITLE_MENTION_P = 0.5  # TVR: chance an event is talked about in the subtitles
INTERVALS = {"hero": 1.5, "2d": 1.0, "3d": 1 / 1.5}  # seconds per feature row
LAYOUTS = {  # layout -> (noun weight, verb weight): appearance sees nouns, motion sees verbs
    "hero_appearance": (1.0, 0.25),
    "hero_motion": (0.25, 1.0),
    "howto_2d": (1.0, 0.25),
    "howto_3d": (0.25, 1.0),
}

# The default world's domains. category_1 | category_2 | nouns | verbs: a video draws all its concepts
# from one domain.
_DOMAIN_TABLE = """
Food and Entertaining | Recipes | onion tomato garlic carrot egg flour butter bowl pan knife | cut pour mix stir peel
Cars & Other Vehicles | Car Repair | engine wheel tire bolt battery wrench hose | screw remove tighten clean
Home and Garden | Painting | brush roller tray door shelf fence | paint sand clean
Hobbies and Crafts | Paper Crafts | paper scissors ribbon card tape box | fold cut wrap
"""
DOMAINS = [
    (c1.strip(), c2.strip(), tuple(nouns.split()), tuple(verbs.split()))
    for c1, c2, nouns, verbs in (row.split("|") for row in _DOMAIN_TABLE.strip().splitlines())
]
NOUNS = tuple(dict.fromkeys(n for d in DOMAINS for n in d[2]))
VERBS = tuple(dict.fromkeys(v for d in DOMAINS for v in d[3]))
_FORMS = (  # base third-person gerund
    "cut cuts cutting, pour pours pouring, mix mixes mixing, stir stirs stirring, peel peels peeling, "
    "screw screws screwing, remove removes removing, tighten tightens tightening, clean cleans cleaning, "
    "paint paints painting, sand sands sanding, fold folds folding, wrap wraps wrapping"
)
VERB_FORMS = {base: (third, gerund) for base, third, gerund in (f.split() for f in _FORMS.split(","))}
STOP_WORDS = frozenset(
    "i me my myself we our ours ourselves you your yours yourself yourselves he him his himself "
    "she her hers herself it its itself they them their theirs themselves what which who whom "
    "this that these those am is are was were be been being have has had having do does did "
    "doing a an the and but if or because as until while of at by for with about against "
    "between into through during before after above below to from up down in out on off over "
    "under again further then once here there when where why how all any both each few more "
    "most other some such no nor not only own same so than too very s t can will just don "
    "should now".split()
)

# Narration: lowercase, no punctuation, as YouTube auto-captions are.
MENTION_TEMPLATES = (
    "so now we are going to {verb} the {noun} like this",
    "next you want to {verb} the {noun} really carefully",
    "and then i just {verb} the {noun} right here",
    "okay so i am {ving} the {noun} now",
    "you can see me {ving} the {noun} here",
    "what i like to do is {verb} the {noun} first",
    "now {verb} the {noun} and make sure it is even",
    "go ahead and {verb} your {noun} for a bit",
    "alright let us {verb} this {noun} a little bit",
)
CHATTER = (
    "my chickens were really loud this morning",
    "do not forget to like and subscribe",
    "thanks so much for watching my channel",
    "my grandmother taught me this years ago",
    "the weather here has been crazy this week",
    "let me know in the comments what you think",
    "we went on vacation last summer and loved it",
    "i will put a link in the description below",
    "my neighbor asked me about this yesterday",
    "hey guys welcome back to another video",
)
UNRELATED_WORDS = tuple(sorted({w for s in CHATTER for w in s.split()} - STOP_WORDS))

# TV subtitles: "(Speaker:) Text." as in tvqa_preprocessed_subtitles.jsonl.
SHOWS = {
    "friends": ("Rachel", "Ross", "Monica", "Joey", "Chandler", "Phoebe"),
    "bbt": ("Sheldon", "Leonard", "Penny", "Howard", "Raj"),
    "castle": ("Castle", "Beckett", "Esposito", "Ryan"),
    "house": ("House", "Wilson", "Cuddy", "Foreman"),
    "grey": ("Meredith", "Cristina", "Derek", "Izzie"),
    "met": ("Ted", "Marshall", "Lily", "Barney", "Robin"),
}
SUB_MENTIONS = (
    "Could you {verb} the {noun} for me?",
    "I'm going to {verb} the {noun} now.",
    "Why are you {ving} the {noun}?",
    "Stop {ving} the {noun}!",
    "Did you {verb} the {noun} yet?",
)
SUB_CHATTER = (
    "I can't believe you just said that.",
    "We need to talk.",
    "Where were you last night?",
    "Oh my God!",
    "That is not what I meant.",
    "Are you kidding me?",
    "Okay, okay, I get it.",
    "You're gonna be late again.",
)
# Query templates per dataset ({who} a subject, {verbs}/{ving} verb forms).
TVR_DESC = {
    "v": ("{who} {verbs} the {noun}.", "{who} is {ving} the {noun} in the room."),
    "t": ("{who} talks about {ving} the {noun}.", "{who} asks someone to {verb} the {noun}."),
    "vt": ("{who} {verbs} the {noun} while talking about it.",),
}
DIDEMO_DESC = (
    "a person {verbs} the {noun}",
    "someone starts {ving} the {noun}",
    "camera shows a hand {ving} the {noun}",
    "first time someone {verbs} the {noun}",
)
HOW2R_DESC = (
    "a person {verbs} the {noun}",
    "first, the man {verbs} the {noun}",
    "someone is {ving} the {noun} with both hands",
    "after that, the woman {verbs} the {noun}",
)
HOW2QA_QUESTIONS = (  # what the event's verb acts on: its noun is the answer
    "what does the person {verb}?",
    "what is the man {ving}?",
    "in this part, what does the woman {verb}?",
    "what is someone {ving} here?",
)
HOW2QA_CLIP = 60  # seconds: HERO's How2 clips are windows [60w, 60w+60) of the YouTube video
MSRVTT_DESC = (
    "{who} is {ving} the {noun}",
    "{who} {verbs} {a_noun}",
    "a video of someone {ving} {a_noun}",
    "{who} {verbs} the {noun} in the video",
    "someone is showing how to {verb} {a_noun}",
    "{who} {verbs} the {noun} while talking",
)
MSRVTT_WHO = ("a man", "a woman", "a person", "someone", "a girl", "a chef")
ANET_DESC = (
    "A {who} is {ving} the {noun}.",
    "The {who} then {verbs} the {noun}.",
    "After that, the {who} {verbs} the {noun}.",
    "The {who} {verbs} the {noun} carefully.",
)
ANET_WHO = ("man", "woman", "person", "boy", "girl")
YT_CHARS = string.ascii_letters + string.digits + "-_"


# ---------------------------------------------------------------- worlds

Domain = tuple[str, str, tuple[str, ...], tuple[str, ...]]  # category_1, category_2, nouns, verbs

# The word bank drawn worlds pick domains from. category_1 | category_2 | nouns | verbs; "a/b" are
# one concept with two surface forms (its first is the concept's name). A concept in several domains
# is one concept (one prototype); its synonyms are written once. Single words only, no surface form
# in two concepts, none a noun and a verb, none in the templates or the chatter (tests check).
_BANK_TABLE = """
Food and Entertaining | Recipes | onion tomato garlic carrot potato bowl pan/skillet knife/blade pot/saucepan
    | cut/chop/slice pour stir peel mix/combine
Food and Entertaining | Baking | flour butter egg sugar dough oven cupcake/muffin batter
    | whisk/whip/beat knead bake sift/sieve
Cars & Other Vehicles | Car Repair | engine/motor wheel tire/tyre bolt battery wrench/spanner hose jack bumper
    | screw remove/detach tighten clean/wipe/scrub
Cars & Other Vehicles | Bike Repair | chain pedal saddle/seat tire rim brake gear/cog pump
    | oil/lubricate inflate adjust/tune loosen/unscrew clean
Home and Garden | Painting | brush roller tray door shelf fence wall ladder
    | paint/coat sand clean scrape
Home and Garden | Gardening | soil/dirt shovel/spade bulb bucket/pail rake hedge compost trowel
    | dig prune/trim sow/plant spray/mist
Home and Garden | Woodworking | plank/board hammer nail chisel screwdriver workbench dowel ruler
    | measure drill/bore carve/whittle polish/buff
Home and Garden | Cleaning | sink/basin counter/countertop window mirror floor sponge mop carpet/rug bucket
    | clean rinse/wash vacuum/hoover sweep polish
Hobbies and Crafts | Paper Crafts | paper/cardstock scissors ribbon card tape box/carton
    | fold/crease cut wrap attach
Hobbies and Crafts | Sewing | cloth/fabric needle thread/yarn button zipper/zip sleeve pocket collar
    | sew/stitch cut iron/press measure
Arts and Entertainment | Drawing | pencil eraser/rubber canvas easel ink palette sketchbook/notebook marker/pen
    | draw/sketch shade/hatch erase color/colour
Pets and Animals | Dog Grooming | dog/puppy comb leash towel paw ear shampoo/soap tail
    | groom feed walk rinse
"""


def _parse_bank(table: str) -> tuple[tuple[Domain, ...], dict[str, tuple[str, ...]]]:
    domains, synonyms = [], {}
    for row in table.strip().replace("\n    |", " |").splitlines():  # a domain's verbs continue its line
        c1, c2, nouns, verbs = (part.strip() for part in row.split("|"))
        names = []
        for words in (nouns.split(), verbs.split()):
            names.append(tuple(w.split("/")[0] for w in words))
            for forms in (tuple(w.split("/")) for w in words if "/" in w):
                if synonyms.setdefault(forms[0], forms) != forms:
                    raise ValueError(f"word bank: {forms[0]} has two synonym lists")
        domains.append((c1, c2, names[0], names[1]))
    for _, _, nouns, verbs in domains:
        for concept in nouns + verbs:
            synonyms.setdefault(concept, (concept,))
    return tuple(domains), synonyms


WORD_BANK, BANK_SYNONYMS = _parse_bank(_BANK_TABLE)  # BANK_SYNONYMS: concept -> its surface forms
_DOUBLED = frozenset("cut stir chop whip dig trim wrap scrub drip snip plug rub pat tap stop shop".split())


def verb_forms(base: str) -> tuple[str, str]:
    """(third person, gerund) of a verb by rule: -es after s/sh/ch/x/z/o, consonant+y -> -ies; the gerund
    drops a silent final e (not -ee/-ye/-oe), -ie -> -ying, and doubles the final consonant of the short
    verbs in _DOUBLED (cut -> cutting)."""
    if base.endswith(("s", "sh", "ch", "x", "z", "o")):
        third = base + "es"
    elif base.endswith("y") and base[-2:-1] not in tuple("aeiou"):
        third = base[:-1] + "ies"
    else:
        third = base + "s"
    if base in _DOUBLED:
        gerund = base + base[-1] + "ing"
    elif base.endswith("ie"):
        gerund = base[:-2] + "ying"
    elif base.endswith("e") and not base.endswith(("ee", "ye", "oe")):
        gerund = base[:-1] + "ing"
    else:
        gerund = base + "ing"
    return third, gerund


@dataclass(frozen=True)
class World:
    """Everything of a corpus's hidden structure besides the corpus seed (hashable: tuples only).

    `World()` is the default world (world 0, `DEFAULT_WORLD`); `draw_world(n)` draws world n >= 1.
    Concepts are what the features see; `forms` says how speech and queries name them.
    """

    seed: int = 0  # 0: the default world; n >= 1: draw_world(n)
    domains: tuple[Domain, ...] = tuple(DOMAINS)
    # every verb surface form -> (third person, gerund)
    verb_forms: tuple[tuple[str, str, str], ...] = tuple((b, t, g) for b, (t, g) in VERB_FORMS.items())
    # per concept: (concept, its surface forms, the form narration and subtitles use, the form queries,
    # captions and answers use)
    forms: tuple[tuple[str, tuple[str, ...], str, str], ...] = tuple((c, (c,), c, c) for c in NOUNS + VERBS)
    synonym_p: float = 0.0  # chance a concept with synonyms is named differently by narration and queries
    mention_p: float = MENTION_P  # HowTo100M: chance an event is narrated
    subtitle_mention_p: float = SUBTITLE_MENTION_P  # TVR: chance an event is talked about
    narration_offset: tuple[float, float] = (-2.0, 2.0)  # a mention is meant to start uniform(lo, hi) s after its event
    chatter_seconds: float = 40.0  # unrelated utterances: one per this many seconds of video, plus one
    latent_dim: int = LATENT_DIM
    latent_noise: float = LATENT_NOISE
    feature_noise: float = FEATURE_NOISE
    # (layout, dims, noun weight, verb weight); hero_appearance and howto_2d have the same dims, as have
    # hero_motion and howto_3d, so HowTo100M's 2d+3d and the HERO layout are equally wide
    layouts: tuple[tuple[str, int, float, float], ...] = tuple((k, LAYOUT_DIM, n, v) for k, (n, v) in LAYOUTS.items())
    non_negative: bool = False  # features ReLU'd and their noise clipped at 0, like real CNN features

    def __post_init__(self) -> None:
        lay = {name: dim for name, dim, _, _ in self.layouts}
        if sorted(lay) != sorted(LAYOUTS) or len(lay) != len(self.layouts):
            raise ValueError(f"world {self.seed}: layouts must be {sorted(LAYOUTS)}, got {sorted(lay)}")
        if lay["hero_appearance"] != lay["howto_2d"] or lay["hero_motion"] != lay["howto_3d"]:
            raise ValueError(f"world {self.seed}: hero appearance/motion dims must equal the 2d/3d dims: {lay}")
        for _, _, nouns, verbs in self.domains:
            if len(set(nouns)) != len(nouns) or len(set(verbs)) != len(verbs):
                raise ValueError(f"world {self.seed}: a domain repeats a concept: {nouns} {verbs}")
        if sorted(c for c, *_ in self.forms) != sorted(self.nouns + self.verbs):
            raise ValueError(f"world {self.seed}: forms must name every concept once")
        owner: dict[str, str] = {}
        for concept, alts, said, written in self.forms:
            if said not in alts or written not in alts:
                raise ValueError(f"world {self.seed}: {concept}: {said}/{written} not among {alts}")
            for form in alts:
                if owner.setdefault(form, concept) != concept:
                    raise ValueError(f"world {self.seed}: {form!r} names both {owner[form]} and {concept}")
        missing = {f for c in self.verbs for f in self.synonyms(c)} - {v for v, _, _ in self.verb_forms}
        if missing:
            raise ValueError(f"world {self.seed}: no verb forms for {sorted(missing)}")

    @cached_property
    def nouns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for d in self.domains for n in d[2]))

    @cached_property
    def verbs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v for d in self.domains for v in d[3]))

    @cached_property
    def _forms(self) -> dict[str, tuple[tuple[str, ...], str, str]]:
        return {c: (alts, said, written) for c, alts, said, written in self.forms}

    @cached_property
    def _verb_forms(self) -> dict[str, tuple[str, str]]:
        return {v: (t, g) for v, t, g in self.verb_forms}

    def synonyms(self, concept: str) -> tuple[str, ...]:
        return self._forms[concept][0]

    def said(self, concept: str) -> str:
        """The word narration and subtitles use for a concept."""
        return self._forms[concept][1]

    def written(self, concept: str) -> str:
        """The word queries, captions and answers use for a concept."""
        return self._forms[concept][2]

    def inflect(self, verb: str) -> tuple[str, str]:
        """(third person, gerund) of a verb surface form."""
        return self._verb_forms[verb]

    def layout(self, name: str) -> tuple[int, float, float]:
        """(dims, noun weight, verb weight) of a feature layout."""
        return next((d, n, v) for k, d, n, v in self.layouts if k == name)

    @property
    def hero_dims(self) -> tuple[int, int]:
        """(appearance, motion) dims of the HERO layout; its rows are appearance then motion."""
        return self.layout("hero_appearance")[0], self.layout("hero_motion")[0]

    def describe(self) -> dict[str, Any]:
        """Every field, as planted.json records a drawn world."""
        return {
            "seed": self.seed,
            "domains": [
                {"category_1": c1, "category_2": c2, "nouns": list(n), "verbs": list(v)}
                for c1, c2, n, v in self.domains
            ],
            "concepts": {
                c: {"forms": list(alts), "narration": said, "query": written} for c, alts, said, written in self.forms
            },
            "verb_forms": {v: [t, g] for v, t, g in self.verb_forms},
            "synonym_p": self.synonym_p,
            "mention_p": self.mention_p,
            "subtitle_mention_p": self.subtitle_mention_p,
            "narration_offset": list(self.narration_offset),
            "chatter_seconds": self.chatter_seconds,
            "latent_dim": self.latent_dim,
            "noise": {"latent": self.latent_noise, "feature": self.feature_noise},
            "layouts": {k: {"dim": d, "noun_weight": n, "verb_weight": v} for k, d, n, v in self.layouts},
            "non_negative": self.non_negative,
        }


DEFAULT_WORLD = World()
WORLD_DIMS = (24, 32, 48, 64)  # a drawn world's appearance and motion dims
WORLD_LATENT_DIMS = (16, 24, 32)


def draw_world(seed: int) -> World:
    """World `seed`: 0 is DEFAULT_WORLD; n >= 1 draws 4-6 of the word bank's domains and every rate,
    noise, dim and weight (ranges in docs/synthetic_corpus.md, "Worlds"). Deterministic per seed."""
    if seed == 0:
        return DEFAULT_WORLD
    if seed < 0:
        raise ValueError(f"need a world seed >= 0, got {seed}")
    rng = _rng(seed, "world")
    picked = sorted(int(i) for i in rng.choice(len(WORD_BANK), size=int(rng.integers(4, 7)), replace=False))
    domains = tuple(WORD_BANK[i] for i in picked)
    nouns, verbs = (list(dict.fromkeys(c for d in domains for c in d[k])) for k in (2, 3))
    synonym_p = _r2(rng.uniform(0.3, 0.8))
    forms = []
    for concept in nouns + verbs:
        alts = BANK_SYNONYMS[concept]
        if len(alts) > 1 and rng.random() < synonym_p:  # narration and queries name it differently
            said, written = (int(i) for i in rng.choice(len(alts), size=2, replace=False))
        else:
            said = written = int(rng.integers(len(alts)))
        forms.append((concept, alts, alts[said], alts[written]))
    mention_p = _r2(rng.uniform(0.4, 0.85))
    subtitle_mention_p = _r2(rng.uniform(0.3, 0.7))
    offset = (_r2(rng.uniform(-4.0, 0.0)), _r2(rng.uniform(1.0, 8.0)))
    chatter_seconds = _r2(rng.uniform(15.0, 60.0))
    latent_dim = int(rng.choice(WORLD_LATENT_DIMS))
    latent_noise, feature_noise = _r2(rng.uniform(0.1, 0.45)), _r2(rng.uniform(0.02, 0.2))
    appearance, motion = (int(d) for d in rng.choice(WORLD_DIMS, size=2))
    app_w = (_r2(rng.uniform(0.7, 1.0)), _r2(rng.uniform(0.0, 0.5)))  # (noun, verb): appearance sees nouns
    mot_w = (_r2(rng.uniform(0.0, 0.5)), _r2(rng.uniform(0.7, 1.0)))  # motion sees verbs
    non_negative = bool(rng.random() < 0.5)
    return World(
        seed=seed,
        domains=domains,
        verb_forms=tuple((f, *verb_forms(f)) for v in verbs for f in BANK_SYNONYMS[v]),
        forms=tuple(forms),
        synonym_p=synonym_p,
        mention_p=mention_p,
        subtitle_mention_p=subtitle_mention_p,
        narration_offset=offset,
        chatter_seconds=chatter_seconds,
        latent_dim=latent_dim,
        latent_noise=latent_noise,
        feature_noise=feature_noise,
        layouts=(
            ("hero_appearance", appearance, *app_w),
            ("hero_motion", motion, *mot_w),
            ("howto_2d", appearance, *app_w),
            ("howto_3d", motion, *mot_w),
        ),
        non_negative=non_negative,
    )


@dataclass
class Event:
    start: float
    end: float
    noun: str
    verb: str
    mentioned: bool = False


class Line(NamedTuple):
    start: float
    end: float
    text: str
    tag: int  # index of the event this line mentions, -1 for unrelated talk


@dataclass
class Video:
    vid: str
    duration: float
    domain: int
    background: str
    background_spans: list[tuple[float, float]]
    events: list[Event]
    lines: list[Line] = field(default_factory=list)  # narration or subtitles


# ---------------------------------------------------------------- randomness and the world


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    """An independent stream per (seed, purpose, item): output never depends on call order."""
    ints = [k if isinstance(k, int) else zlib.crc32(k.encode()) for k in keys]
    return np.random.default_rng([seed, *ints])


def _r2(x: float) -> float:
    return round(float(x), 2)


def _pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


def _world_keys(world: World) -> tuple[str | int, ...]:
    """Extra rng keys of a drawn world's prototypes and projections (none for the default world, whose
    keys are what they were before worlds existed), so worlds differ even with the same corpus seed."""
    return ("world", world.seed) if world.seed else ()


@lru_cache(maxsize=8)
def concept_prototypes(seed: int, world: World = DEFAULT_WORLD) -> dict[str, np.ndarray]:
    """Latent prototype (unit-ish norm) of every noun and verb; depends only on the seed and the world."""
    names = world.nouns + world.verbs
    dim = world.latent_dim
    protos = _rng(seed, "prototypes", *_world_keys(world)).normal(size=(len(names), dim)) / math.sqrt(dim)
    return dict(zip(names, protos, strict=True))


@lru_cache(maxsize=32)
def layout_projection(seed: int, layout: str, world: World = DEFAULT_WORLD) -> np.ndarray:
    """Fixed [layout dims, latent dims] map from latent space to one feature layout."""
    rng = _rng(seed, "projection", layout, *_world_keys(world))
    return rng.normal(size=(world.layout(layout)[0], world.latent_dim))


def num_rows(duration: float, interval: float) -> int:
    """Feature rows for a video: ceil(duration / interval), robust to float noise."""
    return math.ceil(round(duration / interval, 6))


def layout_features(video: Video, seed: int, layout: str, interval: float, world: World = DEFAULT_WORLD) -> np.ndarray:
    """[T, dims] float32: row k = projection of the concepts visible in [k*iv, (k+1)*iv) + noise
    (ReLU'd, noise clipped at 0, in a non-negative world)."""
    rows = num_rows(video.duration, interval)
    starts = np.arange(rows) * interval
    ends = starts + interval
    _, noun_w, verb_w = world.layout(layout)
    protos = concept_prototypes(seed, world)
    visible = [(s, e, video.background, noun_w) for s, e in video.background_spans]
    for ev in video.events:
        visible += [(ev.start, ev.end, ev.noun, noun_w), (ev.start, ev.end, ev.verb, verb_w)]
    latent = np.zeros((rows, world.latent_dim))
    for s, e, concept, weight in visible:
        frac = np.clip(np.minimum(ends, e) - np.maximum(starts, s), 0.0, None) / interval
        latent += weight * frac[:, None] * protos[concept]
    rng = _rng(seed, "features", layout, video.vid)  # keyed by id: a shared video matches
    latent += rng.normal(0.0, world.latent_noise, latent.shape)
    feats = latent @ layout_projection(seed, layout, world).T
    if world.non_negative:
        feats = np.maximum(feats, 0.0)
        feats = np.maximum(feats + rng.normal(0.0, world.feature_noise, feats.shape), 0.0)
    else:
        feats += rng.normal(0.0, world.feature_noise, feats.shape)
    return feats.astype(np.float32)


def hero_features(video: Video, seed: int, world: World = DEFAULT_WORLD) -> np.ndarray:
    """[T, appearance + motion dims] (64 in the default world): the appearance ("ResNet") dims then the
    motion ("SlowFast") dims, 1.5 s rows."""
    halves = [layout_features(video, seed, lay, INTERVALS["hero"], world) for lay in ("hero_appearance", "hero_motion")]
    return np.concatenate(halves, axis=1)


def _timeline(
    rng: np.random.Generator,
    duration: float,
    domain: int,
    world: World,
    span: tuple[float, float] = (4.0, 15.0),
    gap: tuple[float, float] = (1.0, 12.0),
    margin: float = 4.0,
    max_events: int = 1000,
) -> tuple[str, list[tuple[float, float]], list[Event]]:
    """Background noun + its long span, and non-overlapping events separated by gaps."""
    nouns, verbs = world.domains[domain][2], world.domains[domain][3]
    background = _pick(rng, nouns)
    bg_start = rng.uniform(0.0, 0.3) * duration
    bg_span = (_r2(bg_start), _r2(min(duration, bg_start + rng.uniform(0.4, 0.7) * duration)))
    foreground = [n for n in nouns if n != background]
    events: list[Event] = []
    t = rng.uniform(*gap) / 2
    while len(events) < max_events:
        length = rng.uniform(*span)
        if not events:  # every video gets at least one event
            length = min(length, duration - margin - t)
        if t + length > duration - margin:
            break
        events.append(Event(_r2(t), _r2(t + length), *_fresh_pair(rng, foreground, verbs, events)))
        t += length + rng.uniform(*gap)
    return background, [bg_span], events


def _fresh_pair(rng: np.random.Generator, nouns: Sequence[str], verbs: Sequence[str], events: list[Event]) -> tuple:
    """A (noun, verb) unlike the last 8 events', so a query names one moment in its clip."""
    recent = {(e.noun, e.verb) for e in events[-8:]}
    return _pick(rng, [(n, v) for n in nouns for v in verbs if (n, v) not in recent])


def _video(rng: np.random.Generator, vid: str, durations: tuple[float, float], world: World, **timeline: Any) -> Video:
    duration = _r2(rng.uniform(*durations))
    domain = int(rng.integers(len(world.domains)))
    background, spans, events = _timeline(rng, duration, domain, world, **timeline)
    return Video(vid, duration, domain, background, spans, events)


def _fill(template: str, ev: Event, world: World, spoken: bool, **extra: str) -> str:
    """A template filled with an event's noun and verb, in the words speech (spoken) or queries use."""
    name = world.said if spoken else world.written
    noun, verb = name(ev.noun), name(ev.verb)
    third, gerund = world.inflect(verb)
    a_noun = ("an " if noun[0] in "aeiou" else "a ") + noun
    return template.format(verb=verb, verbs=third, ving=gerund, noun=noun, a_noun=a_noun, **extra)


# ---------------------------------------------------------------- speech


def _chunks(rng: np.random.Generator, words: list[str]) -> list[list[str]]:
    """Split an utterance into caption lines of 3-8 words."""
    out = []
    while len(words) > 8:
        n = int(rng.integers(3, min(8, len(words) - 3) + 1))
        out.append(words[:n])
        words = words[n:]
    return out + [words]


def _speak(
    rng: np.random.Generator,
    utterances: list[tuple[float, str, int]],
    duration: float,
    split: bool,
) -> list[Line]:
    """Lay (desired time, text, event tag) utterances out in time, never overlapping.

    A mention pushed more than 3 s late is dropped (its event becomes unmentioned); chatter is
    dropped if it would delay the next mention or run past the end of the video.
    """
    order = sorted(utterances, key=lambda u: u[0])
    next_mention, upcoming = [], math.inf
    for desired, _, tag in reversed(order):
        next_mention.append(upcoming)
        upcoming = desired if tag >= 0 else upcoming
    lines: list[Line] = []
    free = 0.0
    for (desired, text, tag), limit in zip(order, reversed(next_mention), strict=True):
        t = _r2(max(desired, free + rng.uniform(0.1, 0.6)))
        late = t - desired > (3.0 if tag >= 0 else 8.0)
        spoken = []
        for words in _chunks(rng, text.split()) if split else [text.split()]:
            end = _r2(t + len(words) * rng.uniform(0.28, 0.42))
            spoken.append(Line(t, end, " ".join(words), tag))
            t = _r2(end + rng.uniform(0.0, 0.3))
        too_long = spoken[-1].end > duration - 0.5 or (tag < 0 and spoken[-1].end > limit)
        if not (late or too_long):
            lines += spoken
            free = spoken[-1].end
    return lines


def _mark_mentioned(video: Video) -> None:
    tags = {line.tag for line in video.lines}
    for i, ev in enumerate(video.events):
        ev.mentioned = i in tags


def _narrate(rng: np.random.Generator, video: Video, world: World) -> None:
    """HowTo100M-style ASR: mentions of ~70% of the events (±2 s) mixed with chatter (the default world's
    numbers; a drawn world's mention_p, narration_offset and chatter_seconds)."""
    utts = []
    lo, hi = world.narration_offset
    for i, ev in enumerate(video.events):
        if rng.random() < world.mention_p:
            at = max(0.0, ev.start + rng.uniform(lo, hi))  # drawn before the template
            utts.append((at, _fill(_pick(rng, MENTION_TEMPLATES), ev, world, spoken=True), i))
    for _ in range(int(video.duration // world.chatter_seconds) + 1):
        utts.append((rng.uniform(0, video.duration), _pick(rng, CHATTER), -1))
    video.lines = _speak(rng, utts, video.duration, split=True)
    _mark_mentioned(video)


def _subtitle(rng: np.random.Generator, video: Video, cast: Sequence[str], world: World) -> None:
    """TV-style subtitles: "(Name:) ..." lines, about half the events talked about (world.subtitle_mention_p)."""
    utts = []
    for i, ev in enumerate(video.events):
        if rng.random() < world.subtitle_mention_p:
            text = f"({_pick(rng, cast)}:) {_fill(_pick(rng, SUB_MENTIONS), ev, world, spoken=True)}"
            utts.append((max(0.0, ev.start + rng.uniform(-2, 2)), text, i))
    for _ in range(int(video.duration // 8)):
        utts.append((rng.uniform(0, video.duration), f"({_pick(rng, cast)}:) {_pick(rng, SUB_CHATTER)}", -1))
    video.lines = _speak(rng, utts, video.duration, split=False)
    _mark_mentioned(video)


def rolling_captions(rng: np.random.Generator, lines: list[Line], duration: float) -> dict[str, list]:
    """YouTube auto-caption display: segment i shows "L(i-1) L(i)" and outlives i+1's start;
    ~10% of the time a 0.01 s segment repeats the previous segment's text."""
    out: dict[str, list] = {"start": [], "end": [], "text": []}

    def add(start: float, end: float, text: str) -> None:
        out["start"].append(start)
        out["end"].append(end)
        out["text"].append(text)

    for i, line in enumerate(lines):
        shown = line.text if i == 0 else f"{lines[i - 1].text} {line.text}"
        if i + 1 == len(lines):
            add(line.start, line.end, shown)
            break
        nxt = lines[i + 1].start
        add(line.start, min(_r2(nxt + rng.uniform(0.05, 0.5)), duration), shown)
        if rng.random() < 0.1:
            add(_r2(nxt - 0.01), nxt, shown)
    return out


def cleaned_captions(lines: list[Line]) -> dict[str, list]:
    """caption.json: one segment per line, stop words removed, empty lines dropped."""
    out: dict[str, list] = {"start": [], "end": [], "text": []}
    for line in lines:
        text = " ".join(w for w in line.text.split() if w not in STOP_WORDS)
        if text:
            out["start"].append(line.start)
            out["end"].append(line.end)
            out["text"].append(text)
    return out


# ---------------------------------------------------------------- writers (deterministic bytes)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")


def _write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    _write_text(path, json.dumps(obj, indent=indent) + "\n")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    _write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _write_csv(path: Path, header: list[str] | None, rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerows(([header] if header else []) + rows)


def _write_npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.lib.format.write_array(f, arr, allow_pickle=False)


def _write_npz(path: Path, arr: np.ndarray) -> None:
    """Like np.savez(path, features=arr) but with a fixed zip timestamp (np.savez uses now)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    info = zipfile.ZipInfo("features.npy", date_time=(1980, 1, 1, 0, 0, 0))
    info.create_system = 3
    info.external_attr = 0o644 << 16
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(info, buf.getvalue())


def _planted(video: Video, world: World, with_lines: bool = False) -> dict:
    rec = {
        "duration": video.duration,
        "domain": world.domains[video.domain][1],
        "background": {"noun": video.background, "spans": [list(s) for s in video.background_spans]},
        "events": [
            {"start": e.start, "end": e.end, "noun": e.noun, "verb": e.verb, "mentioned": e.mentioned}
            for e in video.events
        ],
    }
    if with_lines:
        rec["asr_lines"] = [[ln.start, ln.end, ln.text] for ln in video.lines]
    return rec


# ---------------------------------------------------------------- ids, sizes, splits


def _youtube_ids(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    """11-char YouTube-like ids; every 4th has a '-' and every 4th a '_' somewhere inside."""
    ids: list[str] = []
    while len(ids) < n:
        chars = [_pick(rng, YT_CHARS) for _ in range(11)]
        if len(ids) % 4 in (1, 2):
            chars[int(rng.integers(1, 11))] = "-_"[len(ids) % 4 - 1]
        vid = "".join(chars)
        if vid not in taken:
            taken.add(vid)
            ids.append(vid)
    return ids


def _scaled(base: int, videos: int, minimum: int) -> int:
    """Downstream size rule: base * videos / DEFAULT_VIDEOS, rounded, at least `minimum`."""
    return max(minimum, round(base * videos / DEFAULT_VIDEOS))


def _split_labels(n: int, names: Sequence[str], fracs: Sequence[float]) -> list[str]:
    """Contiguous split labels; every split after the first gets at least one item."""
    counts = [max(1, round(n * f)) for f in fracs[1:]]
    labels = [names[0]] * (n - sum(counts))
    for name, count in zip(names[1:], counts, strict=True):
        labels += [name] * count
    return labels


def _split_by_weight(weights: Sequence[int], names: Sequence[str], fracs: Sequence[float]) -> list[str]:
    """Contiguous split labels with about `fracs` of the total weight each: an item goes where the
    middle of its weight falls; `_split_labels` when that would leave a split empty."""
    total, done, labels = sum(weights), 0, []
    bounds = np.cumsum(fracs)[:-1] * total
    for w in weights:
        labels.append(names[int(np.searchsorted(bounds, done + w / 2, side="right"))])
        done += w
    return labels if set(labels) == set(names) else _split_labels(len(weights), names, fracs)


# ---------------------------------------------------------------- datasets


def _narrated_video(seed: int, world: World, vid: str, durations: tuple[float, float]) -> Video:
    """A HowTo100M-style YouTube video: timeline plus ASR narration."""
    rng = _rng(seed, "video", vid)
    video = _video(rng, vid, durations, world)
    _narrate(rng, video, world)
    return video


def _write_asr_and_features(root: Path, seed: int, world: World, videos: list[Video], extractor: bool) -> None:
    raw = {v.vid: rolling_captions(_rng(seed, "rolling", v.vid), v.lines, v.duration) for v in videos}
    _write_json(root / "raw_caption.json", raw)
    hero_dir = root / "features" / "hero" if extractor else root / "features"
    for v in videos:
        _write_npz(hero_dir / f"{v.vid}.npz", hero_features(v, seed, world))
        if extractor:
            for sub in ("2d", "3d"):
                feats = layout_features(v, seed, f"howto_{sub}", INTERVALS[sub], world)
                _write_npy(root / "features" / sub / f"{v.vid}.npy", feats)


def _write_howto100m(root: Path, seed: int, world: World, videos: list[Video]) -> tuple[dict, dict]:
    rng = _rng(seed, "howto100m", "meta")
    tasks = [[int(t) for t in rng.integers(10_000, 130_000, size=3)] for _ in world.domains]
    rows = [[v.vid, *world.domains[v.domain][:2], int(rng.integers(1, 200)), _pick(rng, tasks[v.domain])]
            for v in videos]  # fmt: skip
    _write_csv(root / "HowTo100M_v1.csv", ["video_id", "category_1", "category_2", "rank", "task_id"], rows)
    _write_json(root / "caption.json", {v.vid: cleaned_captions(v.lines) for v in videos})
    _write_asr_and_features(root, seed, world, videos, extractor=True)
    planted = {"videos": {v.vid: _planted(v, world, with_lines=True) for v in videos}}
    return planted, {"videos": len(videos), "asr_lines": sum(len(v.lines) for v in videos)}


def _tvr_name(rng: np.random.Generator, show: str) -> str:
    ints = rng.integers([1, 1, 1, 0], [11, 25, 3, 30])
    name = f"s{ints[0]:02d}e{ints[1]:02d}_seg{ints[2]:02d}_clip_{ints[3]:02d}"
    return name if show == "bbt" else f"{show}_{name}"  # real TVR/TVQA: bbt clips have no prefix


def _write_tvr(root: Path, seed: int, world: World, n: int, min_val_queries: int = 0) -> tuple[dict, dict]:
    """n videos split 70/15/15, then more val videos until val holds `min_val_queries` queries."""
    rng = _rng(seed, "tvr")
    videos, shows, taken = [], [], set()

    def new_video() -> None:
        while True:
            show = _pick(rng, list(SHOWS))
            name = _tvr_name(rng, show)
            if name not in taken:
                break
        taken.add(name)
        vrng = _rng(seed, "video", name)
        video = _video(vrng, name, (60.0, 90.0), world, gap=(1.0, 8.0))
        _subtitle(vrng, video, SHOWS[show], world)
        videos.append(video)
        shows.append(show)

    while len(videos) < n:
        new_video()
    splits: dict[str, list] = {"train": [], "val": [], "test_public": []}
    video2dur: dict[str, dict] = {s: {} for s in splits}
    desc_id = 0

    def add_queries(video: Video, show: str, split: str) -> None:
        nonlocal desc_id
        video2dur[split][video.vid] = [video.duration, len(video2dur[split])]
        k = min(len(video.events), int(rng.integers(3, 6)))
        for i in sorted(rng.choice(len(video.events), size=k, replace=False)):
            ev = video.events[i]
            qtype = _pick(rng, ("t", "vt")) if ev.mentioned else "v"
            desc = _fill(_pick(rng, TVR_DESC[qtype]), ev, world, spoken=False, who=_pick(rng, SHOWS[show]))
            row = {
                "desc": desc,
                "duration": video.duration,
                "ts": [ev.start, ev.end],
                "desc_id": desc_id,
                "type": qtype,
                "vid_name": video.vid,
            }
            splits[split].append(row if split != "test_public" else {"desc": desc, "desc_id": desc_id})
            desc_id += 1

    for video, show, split in zip(videos, shows, _split_labels(n, list(splits), (0.7, 0.15, 0.15)), strict=True):
        add_queries(video, show, split)
    while len(splits["val"]) < min_val_queries:  # eval splits large enough to resolve a difference
        new_video()
        add_queries(videos[-1], shows[-1], "val")
    n = len(videos)
    for split, rows in splits.items():
        _write_jsonl(root / f"tvr_{split}_release.jsonl", rows)
    _write_json(root / "tvr_video2dur_idx.json", video2dur)
    subs = [
        {"vid_name": v.vid, "sub": [{"text": ln.text, "start": ln.start, "end": ln.end} for ln in v.lines]}
        for v in videos
    ]
    _write_jsonl(root / "tvqa_preprocessed_subtitles.jsonl", subs)
    for v in videos:
        _write_npz(root / "features" / f"{v.vid}.npz", hero_features(v, seed, world))
    return {"videos": {v.vid: _planted(v, world) for v in videos}}, {"videos": n, "queries": desc_id}


def _didemo_video(rng: np.random.Generator, name: str, world: World) -> tuple[Video, int]:
    """A 25-30 s video whose 1-3 events are aligned to DiDeMo's 5 s chunks."""
    duration = _r2(rng.uniform(25.0, 30.0))
    n_seg = math.ceil(duration / 5)
    domain = int(rng.integers(len(world.domains)))
    background, spans, _ = _timeline(rng, duration, domain, world, max_events=0)
    nouns = [x for x in world.domains[domain][2] if x != background]
    events, chunk = [], int(rng.integers(0, 2))
    while chunk < n_seg and len(events) < 3:
        last = min(chunk + int(rng.integers(0, 3)), n_seg - 1)
        end = min((last + 1) * 5.0, duration)
        if end - chunk * 5.0 < 3.0:  # a sliver of the last chunk is no moment
            break
        events.append(Event(chunk * 5.0, end, *_fresh_pair(rng, nouns, world.domains[domain][3], events)))
        chunk = last + 1 + int(rng.integers(0, 2))
    return Video(name, duration, domain, background, spans, events), n_seg


def _didemo_times(rng: np.random.Generator, s: int, e: int, n_seg: int) -> list[list[int]]:
    """Four annotators: the first exact, the others moved by one chunk ~30% of the time."""
    times = [[s, e]]
    for _ in range(3):
        a, b = s, e
        if rng.random() < 0.3:
            if rng.random() < 0.5:
                a = min(max(a + _pick(rng, (-1, 1)), 0), b)
            else:
                b = max(min(b + _pick(rng, (-1, 1)), n_seg - 1), a)
        times.append([a, b])
    return times


def _write_didemo(root: Path, seed: int, world: World, n: int) -> tuple[dict, dict]:
    rng = _rng(seed, "didemo")
    videos, taken = [], set()
    while len(videos) < n:
        user, photo = int(rng.integers(10_000_000, 100_000_000)), int(rng.integers(10**10, 10**11))
        owner = f"{user}@N{int(rng.integers(0, 100)):02d}"
        secret = "".join(_pick(rng, "0123456789abcdef") for _ in range(10))
        name = f"{owner}_{photo}_{secret}.{'mp4' if rng.random() < 0.1 else 'mov'}"
        if name not in taken:
            taken.add(name)
            videos.append((name, f"https://www.flickr.com/videos/{owner}/{photo}/"))
    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    planted, ann_id = {}, 0
    for (name, link), split in zip(videos, _split_labels(n, list(splits), (0.7, 0.15, 0.15)), strict=True):
        video, n_seg = _didemo_video(_rng(seed, "video", name), name, world)
        for ev in video.events:
            s, e = int(ev.start // 5), math.ceil(ev.end / 5) - 1
            splits[split].append(
                {
                    "annotation_id": ann_id,
                    "description": _fill(_pick(rng, DIDEMO_DESC), ev, world, spoken=False),
                    "video": name,
                    "times": _didemo_times(rng, s, e, n_seg),
                    "download_link": link,
                    "num_segments": n_seg,
                }
            )
            ann_id += 1
        planted[name] = _planted(video, world)
        _write_npz(root / "features" / f"{name}.npz", hero_features(video, seed, world))
    for split, rows in splits.items():
        _write_json(root / f"{split}_data.json", rows)
    return {"videos": planted}, {"videos": n, "queries": ann_id}


def _clips(video: Video) -> list[tuple[int, int, list[Event]]]:
    """Up to three 60 s windows [60w, 60w+60) holding at least one whole event (≤3 queried)."""
    out = []
    for w in range(int(video.duration // 60)):
        inside = [e for e in video.events if 60 * w <= e.start and e.end <= 60 * w + 60]
        if inside:
            out.append((60 * w, 60 * w + 60, inside[:3]))
    return out[:3]


def _howto_overlap(howto: list[Video]) -> list[Video]:
    """The HowTo100M videos How2R (and How2QA) also cut clips from, spread over the list."""
    candidates = [v for v in howto if _clips(v)]
    n_overlap = min(len(candidates), max(1, round(3 * len(howto) / DEFAULT_VIDEOS)))
    return [candidates[i * len(candidates) // n_overlap] for i in range(n_overlap)]


def _write_how2r(
    root: Path, seed: int, world: World, n_clips: int, howto: list[Video], taken: set[str]
) -> tuple[dict, dict]:
    """How2R clips from YouTube videos; a few are HowTo100M videos (real How2R overlaps it)."""
    overlap = _howto_overlap(howto)
    n_overlap = len(overlap)
    extras: list[Video] = []
    ids_rng = _rng(seed, "how2r", "ids")
    while len(extras) + n_overlap < 3 or sum(len(_clips(v)) for v in extras + overlap) < n_clips:
        extras.append(_narrated_video(seed, world, _youtube_ids(ids_rng, 1, taken)[0], (180.0, 300.0)))
    sources = extras + overlap  # overlaps last, so they land in val/test
    rng = _rng(seed, "how2r", "queries")
    csv_rows: dict[str, list] = {"train": [], "val": [], "test": []}
    value_rows: dict[str, list] = {s: [] for s in csv_rows}
    subs, clips_planted, desc_id = [], {}, 0
    for video, split in zip(sources, _split_labels(len(sources), list(csv_rows), (0.7, 0.15, 0.15)), strict=True):
        for st, ed, events in _clips(video):
            clip = f"{video.vid}_{st}_{ed}"
            clips_planted[clip] = split
            for ev in events:
                query = _fill(_pick(rng, HOW2R_DESC), ev, world, spoken=False)
                csv_rows[split].append([video.vid, f"[{st}:{ed}]", f"[{ev.start}:{ev.end}]", query])
                value_rows[split].append(
                    {
                        "desc": query,
                        "duration": 60.0,
                        "ts": [_r2(ev.start - st), _r2(ev.end - st)],
                        "desc_id": desc_id,
                        "vid_name": clip,
                    }
                )
                desc_id += 1
            sub = [
                {"text": ln.text, "start": _r2(max(ln.start - st, 0.0)), "end": _r2(min(ln.end - st, 60.0))}
                for ln in video.lines
                if ln.end > st and ln.start < ed
            ]
            subs.append({"vid_name": clip, "sub": sub})
    for split in csv_rows:
        _write_csv(root / f"how2r_{split}.csv", None, csv_rows[split])
        _write_jsonl(root / "value" / f"how2r_{split}_release.jsonl", value_rows[split])
    _write_jsonl(root / "value" / "how2r_subtitles.jsonl", subs)
    # VALUE's video idx: one numbering over all splits in a shuffled order, the test split named test_public
    order = _rng(seed, "how2r", "video2idx").permutation(len(clips_planted)).tolist()
    video2dur: dict[str, dict[str, list]] = {"train": {}, "val": {}, "test_public": {}}
    for (clip, split), idx in zip(clips_planted.items(), order, strict=True):
        video2dur["test_public" if split == "test" else split][clip] = [60, idx]
    _write_json(root / "value" / "how2r_video2dur_idx.json", video2dur)
    _write_asr_and_features(root, seed, world, sources, extractor=False)
    planted = {
        "overlap_with_howto100m": [v.vid for v in overlap],
        "clips": clips_planted,
        "videos": {v.vid: _planted(v, world, with_lines=True) for v in sources},
    }
    return planted, {"videos": len(sources), "clips": len(clips_planted), "queries": desc_id}


class _Question(NamedTuple):
    """A planted How2QA question on one event, and its wrong answers."""

    window: tuple[int, int]  # the clip: the 60 s grid window(s) holding the event
    event: Event
    in_clip: str  # a noun shown in the clip outside the event's span
    absent: tuple[str, str]  # nouns not shown in the clip, the video's domain first
    same_verb: bool  # in_clip is shown with the question's verb: only the span tells them apart


def _nouns_shown(video: Video, st: float, ed: float) -> dict[str, set[str]]:
    """Nouns visible somewhere in [st, ed) -> the verbs of their events there (none for the background)."""
    out: dict[str, set[str]] = {}
    for s, e in video.background_spans:
        if s < ed and e > st:
            out.setdefault(video.background, set())
    for ev in video.events:
        if ev.start < ed and ev.end > st:
            out.setdefault(ev.noun, set()).add(ev.verb)
    return out


def _questions(rng: np.random.Generator, video: Video, world: World) -> list[_Question]:
    """≤3 questions per clip, on the events whose clip shows another noun outside their span; at
    most one event per video crosses a grid line (its clip is two windows long)."""
    out: list[_Question] = []
    wide = False
    for ev in video.events:
        a = int(ev.start // HOW2QA_CLIP) * HOW2QA_CLIP
        window = (a, max(a + HOW2QA_CLIP, math.ceil(ev.end / HOW2QA_CLIP) * HOW2QA_CLIP))
        shown = _nouns_shown(video, a, min(window[1], video.duration))
        outside = [n for n in shown if n not in _nouns_shown(video, ev.start, ev.end)]
        crosses = window[1] - a > HOW2QA_CLIP
        if not outside or sum(q.window == window for q in out) == 3 or (crosses and wide):
            continue
        wide |= crosses
        same_verb = [n for n in outside if ev.verb in shown[n]]
        domain = [n for n in world.domains[video.domain][2] if n not in shown]
        others = [n for n in world.nouns if n not in shown and n not in domain]
        absent = [domain[i] for i in rng.permutation(len(domain))] + [others[i] for i in rng.permutation(len(others))]
        out.append(_Question(window, ev, _pick(rng, same_verb or outside), (absent[0], absent[1]), bool(same_verb)))
    return out


def _write_how2qa(
    root: Path, seed: int, world: World, n_clips: int, howto: list[Video], taken: set[str]
) -> tuple[dict, dict]:
    """How2QA: 4-way questions on events of 60 s clips of YouTube videos, a few of them How2R's
    HowTo100M videos (the only ones the main job leaves out of pretraining).

    The correct answer is the noun shown during the question's span; one wrong answer is a noun
    shown in the same clip outside the span, two are nouns the clip does not show. Two extra
    train rows are bad: one repeats its correct answer as a wrong one, one has an unquoted comma.
    """
    ask = lambda v: _questions(_rng(seed, "how2qa", "questions", v.vid), v, world)
    overlap = [(v, qs) for v in _howto_overlap(howto) if (qs := ask(v))]
    extras: list[tuple[Video, list[_Question]]] = []
    ids_rng = _rng(seed, "how2qa", "ids")
    while len(extras) + len(overlap) < 3 or sum(len({q.window for q in qs}) for _, qs in extras + overlap) < n_clips:
        video = _narrated_video(seed, world, _youtube_ids(ids_rng, 1, taken)[0], (180.0, 300.0))
        if qs := ask(video):
            extras.append((video, qs))
    sources = extras + overlap  # overlaps last, so they land in val/test
    rng = _rng(seed, "how2qa", "rows")
    rows: dict[str, list] = {"train": [], "val": [], "test": []}
    truth: dict[str, list] = {s: [] for s in rows}
    clips = {}
    labels = _split_by_weight([len(qs) for _, qs in sources], list(rows), (0.6, 0.25, 0.15))
    for (video, qs), split in zip(sources, labels, strict=True):
        for q in qs:
            ev, clip = q.event, f"{video.vid}_{q.window[0]}_{q.window[1]}"
            clips[clip] = split
            wrong = [f"the {world.written(n)}" for n in (q.in_clip, *q.absent)]
            wrong = [wrong[i] for i in rng.permutation(3)]
            question = _fill(_pick(rng, HOW2QA_QUESTIONS), ev, world, spoken=False)
            truth[split].append({"row": len(rows[split]), "clip": clip, "span": [ev.start, ev.end], "verb": ev.verb,
                                 "answer": ev.noun, "in_clip": q.in_clip, "absent": list(q.absent),
                                 "same_verb": q.same_verb, "reject": None})  # fmt: skip
            rows[split].append([video.vid, f"[{ev.start}:{ev.end}]", *wrong, question, f"the {world.written(ev.noun)}"])
    first, second = rows["train"][0], rows["train"][1 % len(rows["train"])]
    bad = [
        ("duplicate_answers", truth["train"][0]["clip"], [*first[:4], first[6].upper(), *first[5:]]),
        ("malformed_row", None, [*second[:5], "in this part", " " + second[5].replace(",", ""), second[6]]),
    ]
    for reason, clip, row in bad:
        truth["train"].append({"row": len(rows["train"]), "clip": clip, "reject": reason})
        rows["train"].append(row)
    for split, split_rows in rows.items():
        _write_csv(root / f"how2qa_{split}.csv", None, split_rows)
    _write_asr_and_features(root, seed, world, [v for v, _ in sources], extractor=False)
    planted = {
        "clip_length": HOW2QA_CLIP,
        "overlap_with_howto100m": [v.vid for v, _ in overlap],
        "clips": clips,
        "questions": truth,
        "videos": {v.vid: _planted(v, world, with_lines=True) for v, _ in sources},
    }
    counts = {split: len(split_rows) for split, split_rows in rows.items()}
    return planted, {"videos": len(sources), "clips": len(clips), **counts, "bad_rows": len(bad)}


def _write_msrvtt(
    root: Path, seed: int, world: World, n: int, taken: set[str], min_test_queries: int = 0
) -> tuple[dict, dict]:
    """n videos split 55/5/40 (at least `min_test_queries` / 0.4 when that is more); the 1k-A test
    (JSFusion) takes half of the test videos, or `min_test_queries` of them when that is more."""
    n = max(n, math.ceil(min_test_queries / 0.4))
    rng = _rng(seed, "msrvtt")
    labels = _split_labels(n, ["train", "validate", "test"], (0.55, 0.05, 0.4))
    urls = _youtube_ids(rng, n, taken)
    records, sentences, planted = [], [], {}
    for i, (split, url_id) in enumerate(zip(labels, urls, strict=True)):
        vid = f"video{i}"
        timeline = {"span": (3.0, 8.0), "gap": (0.5, 3.0), "margin": 0.5, "max_events": 3}
        video = _video(_rng(seed, "video", vid), vid, (10.0, 30.0), world, **timeline)
        start = _r2(rng.uniform(0, 300))
        records.append(
            {
                "category": int(rng.integers(0, 20)),
                "url": f"https://www.youtube.com/watch?v={url_id}",
                "video_id": vid,
                "start time": start,
                "end time": _r2(start + video.duration),
                "split": split,
                "id": i,
            }
        )
        for k in range(20):
            ev = video.events[k % len(video.events)]
            caption = _fill(_pick(rng, MSRVTT_DESC), ev, world, spoken=False, who=_pick(rng, MSRVTT_WHO))
            sentences.append({"caption": caption, "video_id": vid, "sen_id": len(sentences)})
        planted[vid] = _planted(video, world)
        _write_npz(root / "features" / f"{vid}.npz", hero_features(video, seed, world))
    info = {
        "contributor": "Microsoft MSM group",
        "data_created": "2016-04-14 14:30:20",
        "version": "1.0",
        "description": "MSR-VTT dataset",
        "year": "2016",
    }
    _write_json(root / "MSRVTT_data.json", {"info": info, "videos": records, "sentences": sentences})
    test = [i for i, s in enumerate(labels) if s == "test"]
    size = min(len(test), max(1, len(test) // 2, min_test_queries))
    jsfusion = sorted(int(i) for i in rng.choice(test, size=size, replace=False))
    train9k = [[f"video{i}"] for i in range(n) if i not in jsfusion]
    train7k = [[f"video{i}"] for i in range(n) if labels[i] != "test"]
    _write_csv(root / "MSRVTT_train.9k.csv", ["video_id"], train9k)
    _write_csv(root / "MSRVTT_train.7k.csv", ["video_id"], train7k)
    test_rows = [
        [f"ret{k}", f"msr{i}", f"video{i}", sentences[20 * i + int(rng.integers(20))]["caption"]]
        for k, i in enumerate(jsfusion)
    ]
    _write_csv(root / "MSRVTT_JSFUSION_test.csv", ["key", "vid_key", "video_id", "sentence"], test_rows)
    summary = {
        "videos": n,
        "sentences": len(sentences),
        "train9k": len(train9k),
        "train7k": len(train7k),
        "jsfusion_test": len(jsfusion),
    }
    return {"videos": planted}, summary


def _anet_sentences(rng: np.random.Generator, video: Video, world: World) -> list[str]:
    """Capitalised sentences with periods; all but the first usually start with a space."""
    who = _pick(rng, ANET_WHO)
    out = []
    for i, ev in enumerate(video.events):
        text = _fill(_pick(rng, ANET_DESC), ev, world, spoken=False, who=who)
        out.append((" " if i and rng.random() < 0.7 else "") + text[0].upper() + text[1:])
    return out


def _write_activitynet(root: Path, seed: int, world: World, n: int, taken: set[str]) -> tuple[dict, dict]:
    ids = [f"v_{vid}" for vid in _youtube_ids(_rng(seed, "activitynet", "ids"), n, taken)]
    files: dict[str, dict] = {"train": {}, "val_1": {}, "val_2": {}}
    planted = {}
    for vid, split in zip(ids, _split_labels(n, ["train", "val"], (2 / 3, 1 / 3)), strict=True):
        video = _video(
            _rng(seed, "video", vid), vid, (60.0, 180.0), world, span=(5.0, 25.0), gap=(2.0, 20.0), margin=3.0
        )
        stamps = [[ev.start, ev.end] for ev in video.events]
        for name in ("train",) if split == "train" else ("val_1", "val_2"):
            sents = _anet_sentences(_rng(seed, "activitynet", name, vid), video, world)
            files[name][vid] = {"duration": video.duration, "timestamps": stamps, "sentences": sents}
        planted[vid] = _planted(video, world)
        _write_npz(root / "features" / f"{vid}.npz", hero_features(video, seed, world))
    for name, data in files.items():
        _write_json(root / f"{name}.json", data)
    summary = {
        "videos": n,
        "train": len(files["train"]),
        "val": len(files["val_1"]),
        "sentences": sum(len(d["sentences"]) for f in files.values() for d in f.values()),
    }
    return {"videos": planted}, summary


# ---------------------------------------------------------------- entry points


def generate(
    out_dir: Path, videos: int = DEFAULT_VIDEOS, seed: int = 0, eval_queries: int = 0, world: int | World = 0
) -> dict:
    """Write the whole corpus under out_dir and return a summary of counts per dataset.

    eval_queries: at least this many queries in TVR's val split and MSR-VTT's 1k-A test (the
    splits the main job scores), added as extra videos of those splits (0: the scaling rule only).
    world: the world's seed (0: DEFAULT_WORLD; n >= 1: draw_world(n)), or a World.

    Existing files of the same names are overwritten; stale extra files are not removed, so
    use a fresh directory when changing --videos.
    """
    if videos < 1 or seed < 0 or eval_queries < 0:
        raise ValueError(f"need videos >= 1, seed >= 0, eval_queries >= 0, got {videos}, {seed}, {eval_queries}")
    w = world if isinstance(world, World) else draw_world(world)
    out = Path(out_dir)
    taken: set[str] = set()
    ids = _youtube_ids(_rng(seed, "howto100m", "ids"), videos, taken)
    howto = [_narrated_video(seed, w, vid, (90.0, 300.0)) for vid in ids]
    results = {
        "howto100m": _write_howto100m(out / "howto100m", seed, w, howto),
        "tvr": _write_tvr(out / "tvr", seed, w, _scaled(40, videos, 3), eval_queries),
        "didemo": _write_didemo(out / "didemo", seed, w, _scaled(30, videos, 3)),
        "how2r": _write_how2r(out / "how2r", seed, w, _scaled(30, videos, 3), howto, taken),
        "how2qa": _write_how2qa(out / "how2qa", seed, w, _scaled(40, videos, 3), howto, taken),
        "msrvtt": _write_msrvtt(out / "msrvtt", seed, w, _scaled(40, videos, 4), taken, eval_queries),
        "activitynet": _write_activitynet(out / "activitynet", seed, w, _scaled(30, videos, 2), taken),
    }
    appearance, motion = w.hero_dims
    planted = {
        "seed": seed,
        "howto100m_videos": videos,
        **({"world": w.describe()} if w != DEFAULT_WORLD else {}),  # world 0's planted.json is as it always was
        "vocabulary": {
            "nouns": list(w.nouns),
            "verbs": list(w.verbs),
            "verb_forms": {v: [t, g] for v, t, g in w.verb_forms},
            "unrelated_words": list(UNRELATED_WORDS),
            "domains": [
                {"category_1": c1, "category_2": c2, "nouns": list(n), "verbs": list(v)} for c1, c2, n, v in w.domains
            ],
        },
        "latent_dim": w.latent_dim,
        "noise": {"latent": w.latent_noise, "feature": w.feature_noise},
        "layouts": {k: {"noun_weight": n, "verb_weight": v} for k, _, n, v in w.layouts},
        "features": {
            "hero": {
                "dim": appearance + motion,
                "interval": INTERVALS["hero"],
                "appearance": [0, appearance],
                "motion": [appearance, appearance + motion],
            },
            "2d": {"dim": w.layout("howto_2d")[0], "interval": INTERVALS["2d"]},
            "3d": {"dim": w.layout("howto_3d")[0], "interval": round(INTERVALS["3d"], 6)},
        },
        "datasets": {name: part for name, (part, _) in results.items()},
    }
    _write_json(out / "planted.json", planted, indent=1)
    return {name: summary for name, (_, summary) in results.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--videos", type=int, default=DEFAULT_VIDEOS, help="HowTo100M videos; downstream sets scale proportionally"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-queries", type=int, default=0,
                        help="at least this many queries in TVR val and the MSR-VTT 1k-A test")  # fmt: skip
    parser.add_argument("--world", type=int, default=0,
                        help="the world's seed: 0 the default world, n >= 1 a drawn one (draw_world)")  # fmt: skip
    args = parser.parse_args(argv)
    print(json.dumps(generate(args.out, args.videos, args.seed, args.eval_queries, args.world), indent=1))


if __name__ == "__main__":
    main()
