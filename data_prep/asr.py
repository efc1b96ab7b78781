"""HowTo100M ASR captions: validation, de-duplication of the rolling text, and clips.

The raw captions are YouTube auto-captions in their rolling two-line display: segment i shows
the tail of segment i-1 followed by new words, segments overlap in time, and some repeat the
previous one exactly for a few milliseconds. `dedup_rolling` keeps each word once:

Only a segment that starts before the previous one ends is taken as rolling (the cleaned
`caption.json` has sequential lines, where two equal consecutive lines are both kept):

- a rolling segment whose text equals the previous segment's text is dropped;
- otherwise the longest prefix of its words that equals a suffix of the words emitted so far
  (looking back at most `window` words) is removed when it covers at least every word the
  previous kept segment added (a rolling repeat; a shorter match is a new line that happens
  to start with the previous line's last word), and the rest is kept, timed from the
  segment's start to its end clipped at the next kept segment's start (no overlap in time).

Clips are then cut from the de-duplicated segments in one of two ways:

- `clips_by_seconds` (FEEL): fixed windows of `clip_seconds`; a segment belongs to the window
  that holds its midpoint; windows without words are dropped.
- `clips_by_words` (TACo): adjacent segments are merged until the text has at least
  `min_words` words; a short remainder joins the previous clip.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from data_prep.errors import Rejected


class Segment(NamedTuple):
    start: float
    end: float
    text: str


def parse_captions(entry: Any) -> list[Segment]:
    """Validate one video's `{"start": [...], "end": [...], "text": [...]}`; raise Rejected."""
    if not isinstance(entry, dict) or not all(k in entry for k in ("start", "end", "text")):
        raise Rejected("malformed_captions", "expected an object with start, end and text lists")
    starts, ends, texts = entry["start"], entry["end"], entry["text"]
    if not (isinstance(starts, list) and isinstance(ends, list) and isinstance(texts, list)):
        raise Rejected("malformed_captions", "start, end and text must be lists")
    if not len(starts) == len(ends) == len(texts):
        raise Rejected("malformed_captions", f"lengths differ: {len(starts)}, {len(ends)}, {len(texts)}")
    segments = []
    for i, (s, e, t) in enumerate(zip(starts, ends, texts)):
        if not _is_number(s) or not _is_number(e) or not isinstance(t, str):
            raise Rejected("malformed_captions", f"segment {i}: bad types {s!r}, {e!r}, {type(t).__name__}")
        if e < s or s < 0:
            raise Rejected("malformed_captions", f"segment {i}: start {s} end {e}")
        segments.append(Segment(float(s), float(e), t))
    segments.sort(key=lambda seg: seg.start)  # stable: equal starts keep the file's order
    return segments


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def dedup_rolling(segments: list[Segment], window: int = 32) -> list[Segment]:
    """Remove the rolling repetition of YouTube auto-captions (see module docstring)."""
    kept: list[Segment] = []
    emitted: list[str] = []
    previous_text = None
    previous_new = 0  # words the last kept segment added
    previous_end = -math.inf
    for seg in segments:
        words = seg.text.split()
        rolling = seg.start <= previous_end  # a rolling line overlaps the one it continues
        previous_end = max(previous_end, seg.end)
        if not words or (rolling and seg.text == previous_text):
            continue
        previous_text = seg.text
        overlap = _overlap(emitted[-window:], words, at_least=max(1, previous_new)) if rolling else 0
        new = words[overlap:]
        if not new:
            continue
        emitted.extend(new)
        previous_new = len(new)
        kept.append(Segment(seg.start, seg.end, " ".join(new)))
    return [
        Segment(s.start, min(s.end, nxt.start) if nxt.start > s.start else s.end, s.text)
        for s, nxt in zip(kept, kept[1:] + [Segment(math.inf, math.inf, "")])
    ]


def _overlap(tail: list[str], words: list[str], at_least: int) -> int:
    """Length of the longest prefix of `words` that is a suffix of `tail`, if >= `at_least`, else 0.

    A rolling segment repeats at least all the words the previous segment added; a shorter
    match ("pour the water" then "water it well") is a new line that happens to repeat a word.
    """
    for n in range(min(len(tail), len(words)), at_least - 1, -1):
        if tail[-n:] == words[:n]:
            return n
    return 0


class Clip(NamedTuple):
    start: float
    end: float
    segments: list[Segment]


def clips_by_seconds(segments: list[Segment], clip_seconds: float) -> list[Clip]:
    """FEEL: fixed windows [k*L, (k+1)*L); a segment goes to the window holding its midpoint."""
    windows: dict[int, list[Segment]] = {}
    for seg in segments:
        k = int(((seg.start + seg.end) / 2) // clip_seconds)
        windows.setdefault(k, []).append(seg)
    return [Clip(k * clip_seconds, (k + 1) * clip_seconds, segs) for k, segs in sorted(windows.items())]


def clips_by_words(segments: list[Segment], min_words: int) -> list[Clip]:
    """TACo: merge adjacent segments until the text has at least `min_words` words."""
    groups: list[list[Segment]] = []
    current: list[Segment] = []
    for seg in segments:
        current.append(seg)
        if sum(len(s.text.split()) for s in current) >= min_words:
            groups.append(current)
            current = []
    if current:
        if groups:
            groups[-1].extend(current)
        else:
            groups.append(current)
    return [Clip(g[0].start, max(s.end for s in g), g) for g in groups]
