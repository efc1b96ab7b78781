"""The hidden world a corpus is drawn from: its settings (`World`, `draw_world`), keyed randomness,
concept prototypes, their projection into feature layouts, and the timelines of events in videos."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any, NamedTuple

import numpy as np

from .vocab import BANK_SYNONYMS, DOMAINS, NOUNS, VERB_FORMS, VERBS, WORD_BANK, Domain, verb_forms

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


# ---------------------------------------------------------------- worlds


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
    rng = keyed_rng(seed, "world")
    picked = sorted(int(i) for i in rng.choice(len(WORD_BANK), size=int(rng.integers(4, 7)), replace=False))
    domains = tuple(WORD_BANK[i] for i in picked)
    nouns, verbs = (list(dict.fromkeys(c for d in domains for c in d[k])) for k in (2, 3))
    synonym_p = round2(rng.uniform(0.3, 0.8))
    forms = []
    for concept in nouns + verbs:
        alts = BANK_SYNONYMS[concept]
        if len(alts) > 1 and rng.random() < synonym_p:  # narration and queries name it differently
            said, written = (int(i) for i in rng.choice(len(alts), size=2, replace=False))
        else:
            said = written = int(rng.integers(len(alts)))
        forms.append((concept, alts, alts[said], alts[written]))
    mention_p = round2(rng.uniform(0.4, 0.85))
    subtitle_mention_p = round2(rng.uniform(0.3, 0.7))
    offset = (round2(rng.uniform(-4.0, 0.0)), round2(rng.uniform(1.0, 8.0)))
    chatter_seconds = round2(rng.uniform(15.0, 60.0))
    latent_dim = int(rng.choice(WORLD_LATENT_DIMS))
    latent_noise, feature_noise = round2(rng.uniform(0.1, 0.45)), round2(rng.uniform(0.02, 0.2))
    appearance, motion = (int(d) for d in rng.choice(WORLD_DIMS, size=2))
    app_w = (round2(rng.uniform(0.7, 1.0)), round2(rng.uniform(0.0, 0.5)))  # (noun, verb): appearance sees nouns
    mot_w = (round2(rng.uniform(0.0, 0.5)), round2(rng.uniform(0.7, 1.0)))  # motion sees verbs
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


def keyed_rng(seed: int, *keys: str | int) -> np.random.Generator:
    """An independent stream per (seed, purpose, item): output never depends on call order."""
    ints = [k if isinstance(k, int) else zlib.crc32(k.encode()) for k in keys]
    return np.random.default_rng([seed, *ints])


def round2(x: float) -> float:
    """x rounded to 2 decimals, as a Python float (times and rates are written so)."""
    return round(float(x), 2)


def pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    """One of items, uniformly."""
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
    protos = keyed_rng(seed, "prototypes", *_world_keys(world)).normal(size=(len(names), dim)) / math.sqrt(dim)
    return dict(zip(names, protos, strict=True))


@lru_cache(maxsize=32)
def layout_projection(seed: int, layout: str, world: World = DEFAULT_WORLD) -> np.ndarray:
    """Fixed [layout dims, latent dims] map from latent space to one feature layout."""
    rng = keyed_rng(seed, "projection", layout, *_world_keys(world))
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
    rng = keyed_rng(seed, "features", layout, video.vid)  # keyed by id: a shared video matches
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


def draw_timeline(
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
    background = pick(rng, nouns)
    bg_start = rng.uniform(0.0, 0.3) * duration
    bg_span = (round2(bg_start), round2(min(duration, bg_start + rng.uniform(0.4, 0.7) * duration)))
    foreground = [n for n in nouns if n != background]
    events: list[Event] = []
    t = rng.uniform(*gap) / 2
    while len(events) < max_events:
        length = rng.uniform(*span)
        if not events:  # every video gets at least one event
            length = min(length, duration - margin - t)
        if t + length > duration - margin:
            break
        events.append(Event(round2(t), round2(t + length), *fresh_pair(rng, foreground, verbs, events)))
        t += length + rng.uniform(*gap)
    return background, [bg_span], events


def fresh_pair(rng: np.random.Generator, nouns: Sequence[str], verbs: Sequence[str], events: list[Event]) -> tuple:
    """A (noun, verb) unlike the last 8 events', so a query names one moment in its clip."""
    recent = {(e.noun, e.verb) for e in events[-8:]}
    return pick(rng, [(n, v) for n in nouns for v in verbs if (n, v) not in recent])


def draw_video(
    rng: np.random.Generator, vid: str, durations: tuple[float, float], world: World, **timeline: Any
) -> Video:
    """A video of a random duration and domain, with its timeline (no speech yet)."""
    duration = round2(rng.uniform(*durations))
    domain = int(rng.integers(len(world.domains)))
    background, spans, events = draw_timeline(rng, duration, domain, world, **timeline)
    return Video(vid, duration, domain, background, spans, events)


def fill(template: str, ev: Event, world: World, spoken: bool, **extra: str) -> str:
    """A template filled with an event's noun and verb, in the words speech (spoken) or queries use."""
    name = world.said if spoken else world.written
    noun, verb = name(ev.noun), name(ev.verb)
    third, gerund = world.inflect(verb)
    a_noun = ("an " if noun[0] in "aeiou" else "a ") + noun
    return template.format(verb=verb, verbs=third, ving=gerund, noun=noun, a_noun=a_noun, **extra)
