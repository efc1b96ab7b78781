"""What is said in a video: HowTo100M-style narration, TV subtitles, and the two caption files made
from them (YouTube's rolling auto-captions and the cleaned caption.json)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .vocab import CHATTER, MENTION_TEMPLATES, STOP_WORDS, SUB_CHATTER, SUB_MENTIONS
from .world import Line, Video, World, fill, pick, round2


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
        t = round2(max(desired, free + rng.uniform(0.1, 0.6)))
        late = t - desired > (3.0 if tag >= 0 else 8.0)
        spoken = []
        for words in _chunks(rng, text.split()) if split else [text.split()]:
            end = round2(t + len(words) * rng.uniform(0.28, 0.42))
            spoken.append(Line(t, end, " ".join(words), tag))
            t = round2(end + rng.uniform(0.0, 0.3))
        too_long = spoken[-1].end > duration - 0.5 or (tag < 0 and spoken[-1].end > limit)
        if not (late or too_long):
            lines += spoken
            free = spoken[-1].end
    return lines


def _mark_mentioned(video: Video) -> None:
    tags = {line.tag for line in video.lines}
    for i, ev in enumerate(video.events):
        ev.mentioned = i in tags


def narrate(rng: np.random.Generator, video: Video, world: World) -> None:
    """HowTo100M-style ASR: mentions of ~70% of the events (±2 s) mixed with chatter (the default world's
    numbers; a drawn world's mention_p, narration_offset and chatter_seconds)."""
    utts = []
    lo, hi = world.narration_offset
    for i, ev in enumerate(video.events):
        if rng.random() < world.mention_p:
            at = max(0.0, ev.start + rng.uniform(lo, hi))  # drawn before the template
            utts.append((at, fill(pick(rng, MENTION_TEMPLATES), ev, world, spoken=True), i))
    for _ in range(int(video.duration // world.chatter_seconds) + 1):
        utts.append((rng.uniform(0, video.duration), pick(rng, CHATTER), -1))
    video.lines = _speak(rng, utts, video.duration, split=True)
    _mark_mentioned(video)


def subtitle(rng: np.random.Generator, video: Video, cast: Sequence[str], world: World) -> None:
    """TV-style subtitles: "(Name:) ..." lines, about half the events talked about (world.subtitle_mention_p)."""
    utts = []
    for i, ev in enumerate(video.events):
        if rng.random() < world.subtitle_mention_p:
            text = f"({pick(rng, cast)}:) {fill(pick(rng, SUB_MENTIONS), ev, world, spoken=True)}"
            utts.append((max(0.0, ev.start + rng.uniform(-2, 2)), text, i))
    for _ in range(int(video.duration // 8)):
        utts.append((rng.uniform(0, video.duration), f"({pick(rng, cast)}:) {pick(rng, SUB_CHATTER)}", -1))
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
        add(line.start, min(round2(nxt + rng.uniform(0.05, 0.5)), duration), shown)
        if rng.random() < 0.1:
            add(round2(nxt - 0.01), nxt, shown)
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
