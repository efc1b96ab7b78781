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

The package: `vocab` (the default world's word tables and the word bank), `world` (`World`, keyed
randomness, prototypes, features, timelines), `speech` (narration, subtitles, captions), `files`
(deterministic byte writers) and `datasets` (the seven dataset writers); `generate` writes them all.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .datasets import DEFAULT_VIDEOS, write_datasets
from .files import write_json
from .vocab import (
    ANET_DESC,
    ANET_WHO,
    BANK_SYNONYMS,
    CHATTER,
    DIDEMO_DESC,
    DOMAINS,
    HOW2QA_QUESTIONS,
    HOW2R_DESC,
    MENTION_TEMPLATES,
    MSRVTT_DESC,
    MSRVTT_WHO,
    NOUNS,
    STOP_WORDS,
    SUB_CHATTER,
    SUB_MENTIONS,
    TVR_DESC,
    UNRELATED_WORDS,
    VERB_FORMS,
    VERBS,
    WORD_BANK,
    verb_forms,
)
from .world import (
    DEFAULT_WORLD,
    INTERVALS,
    LAYOUTS,
    WORLD_DIMS,
    WORLD_LATENT_DIMS,
    World,
    concept_prototypes,
    draw_world,
    hero_features,
    layout_features,
    layout_projection,
)

__all__ = [  # the names used outside the package (tests, launch/, benchmarks/, docs)
    "ANET_DESC",
    "ANET_WHO",
    "BANK_SYNONYMS",
    "CHATTER",
    "DEFAULT_VIDEOS",
    "DEFAULT_WORLD",
    "DIDEMO_DESC",
    "DOMAINS",
    "HOW2QA_QUESTIONS",
    "HOW2R_DESC",
    "INTERVALS",
    "LAYOUTS",
    "MENTION_TEMPLATES",
    "MSRVTT_DESC",
    "MSRVTT_WHO",
    "NOUNS",
    "STOP_WORDS",
    "SUB_CHATTER",
    "SUB_MENTIONS",
    "TVR_DESC",
    "UNRELATED_WORDS",
    "VERBS",
    "VERB_FORMS",
    "WORD_BANK",
    "WORLD_DIMS",
    "WORLD_LATENT_DIMS",
    "World",
    "concept_prototypes",
    "draw_world",
    "generate",
    "hero_features",
    "layout_features",
    "layout_projection",
    "main",
    "verb_forms",
]


def generate(
    out_dir: Path,
    videos: int = DEFAULT_VIDEOS,
    seed: int = 0,
    eval_queries: int = 0,
    world: int | World = 0,
    with_video: bool = False,
) -> dict:
    """Write the whole corpus under out_dir and return a summary of counts per dataset.

    eval_queries: at least this many queries in TVR's val split and MSR-VTT's 1k-A test (the
    splits the main job scores), added as extra videos of those splits (0: the scaling rule only).
    world: the world's seed (0: DEFAULT_WORLD; n >= 1: draw_world(n)), or a World.
    with_video: also write <dataset>/videos/<id>.mp4 for HowTo100M and every finetune set, the HERO
    features drawn as pictures (synthetic/video.py), the input of data_prep.extract.

    Existing files of the same names are overwritten; stale extra files are not removed, so
    use a fresh directory when changing --videos.
    """
    if videos < 1 or seed < 0 or eval_queries < 0:
        raise ValueError(f"need videos >= 1, seed >= 0, eval_queries >= 0, got {videos}, {seed}, {eval_queries}")
    w = world if isinstance(world, World) else draw_world(world)
    out = Path(out_dir)
    results = write_datasets(out, seed, w, videos, eval_queries)
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
    if with_video:
        from .video import write_videos

        for name in results:
            planted["datasets"][name]["video_files"] = len(write_videos(out / name, seed))
    write_json(out / "planted.json", planted, indent=1)
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
    parser.add_argument("--with-video", action="store_true",
                        help="also write <dataset>/videos/<id>.mp4 (the HERO features drawn as pictures)")  # fmt: skip
    args = parser.parse_args(argv)
    summary = generate(args.out, args.videos, args.seed, args.eval_queries, args.world, args.with_video)
    print(json.dumps(summary, indent=1))
