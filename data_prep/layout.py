"""The public folder layout: what a folder of public-format files holds, as the converters' input arguments.

The synthetic corpus (data_prep.synthetic) writes this layout; the main job (`main.sh data=DIR`), the
ablations and the tests read it through the functions here, one per converter.

A data folder has one sub-folder per dataset, any subset of them, each in its public layout:

    howto100m/    raw_caption.json (or caption.json), HowTo100M_v1.csv (optional), features
    tvr/          tvr_{train,val,test_public}_release.jsonl, tvqa_preprocessed_subtitles.jsonl, features
    didemo/       {train,val,test}_data.json, features
    how2r/        how2r_{train,val,test}.csv (or VALUE's how2r_*_release.jsonl), raw_caption.json, features,
                  how2r_video2dur_idx.json (VALUE's video idx; optional, here or in value/)
    how2qa/       how2qa_{train,val,test}.csv, raw_caption.json, features
    msrvtt/       MSRVTT_data.json, MSRVTT_train.9k.csv, MSRVTT_train.7k.csv, MSRVTT_JSFUSION_test.csv, features
    activitynet/  train.json, val_1.json, val_2.json, features

Features, in either layout the converters read (data_prep/features.py): `features/<video>.npz` or
`features/hero/<video>.npz` (HERO's), or `features/2d/<video>.npy` + `features/3d/<video>.npy`
(the HowTo100M extractor's). The converters find each dataset's own annotation files in its folder;
what they need beyond that (subtitles, caption files, the split files) is looked up here. A dataset
folder that lacks something its converter needs is an error naming the folder and the file.
"""

from __future__ import annotations

from pathlib import Path

from data_prep.errors import DataPrepError

VALUE_VIDEO2DUR = "how2r_video2dur_idx.json"  # VALUE's official How2R video idx, used when the folder has it


def feature_args(src: Path, prefer: str | None = None) -> list[str]:
    """--features/--feature-layout of a dataset folder: HERO's features/hero/*.npz, else HowTo100M's
    features/2d + features/3d, else features/*.npz; `prefer="howto100m"` takes 2d + 3d first."""
    features = src / "features"
    hero = [f for f in (features / "hero", features) if f.is_dir() and any(f.glob("*.npz"))]
    if prefer == "howto100m" and (features / "2d").is_dir() and (features / "3d").is_dir():
        return ["--features", str(features), "--feature-layout", "howto100m"]
    if hero and hero[0].name == "hero":
        return ["--features", str(hero[0]), "--feature-layout", "hero"]
    if (features / "2d").is_dir() and (features / "3d").is_dir():
        return ["--features", str(features), "--feature-layout", "howto100m"]
    if hero:
        return ["--features", str(hero[0]), "--feature-layout", "hero"]
    raise DataPrepError(f"{src}: no features: features/[hero/]*.npz or features/2d + features/3d (*.npy)")


def _one(src: Path, *names: str) -> Path:
    """The first of `names` present in src; an error listing them when none is."""
    for name in names:
        if (src / name).is_file():
            return src / name
    raise DataPrepError(f"{src}: none of {', '.join(names)}")


def _splits(src: Path, prefix: str, extensions: tuple[str, ...]) -> list[str]:
    """--train/--val/--test of How2R / How2QA: <prefix>_<split>.<ext> (VALUE's How2R: _release.jsonl)."""
    args = []
    for split in ("train", "val", "test"):
        names = [f"{prefix}_{split}{suffix}" for suffix in extensions]
        args += [f"--{split}", str(_one(src, *names))]
    return args


def howto100m_inputs(src: Path, features: str | None = None) -> list[str]:
    """data_prep.howto100m's inputs: the captions, HowTo100M_v1.csv when present, the features (`features`:
    the layout to prefer when the folder holds both, as in feature_args)."""
    csv = [f for f in ["HowTo100M_v1.csv"] if (src / f).is_file()]
    return ["--captions", str(_one(src, "raw_caption.json", "caption.json")),
            *(["--csv", str(src / csv[0])] if csv else []), *feature_args(src, features)]  # fmt: skip


def annotations_inputs(src: Path) -> list[str]:
    """The inputs of a converter that finds its annotation files in the folder (DiDeMo, MSR-VTT, ActivityNet)."""
    return ["--annotations", str(src), *feature_args(src)]


def tvr_inputs(src: Path) -> list[str]:
    """data_prep.tvr's inputs: the annotation folder, TVQA's subtitles, the features."""
    return ["--annotations", str(src), "--subtitles", str(_one(src, "tvqa_preprocessed_subtitles.jsonl")),
            *feature_args(src)]  # fmt: skip


def how2r_inputs(src: Path) -> list[str]:
    """data_prep.how2r's inputs: the split files (CSV or VALUE's jsonl), the captions, VALUE's video idx when
    present, the features."""
    places = (src / VALUE_VIDEO2DUR, src / "value" / VALUE_VIDEO2DUR)
    official = [p for p in places if p.is_file()]
    return [*_splits(src, "how2r", (".csv", "_release.jsonl")), "--captions", str(_one(src, "raw_caption.json")),
            *(["--video2dur", str(official[0])] if official else []), *feature_args(src)]  # fmt: skip


def how2qa_inputs(src: Path) -> list[str]:
    """data_prep.how2qa's inputs: the split CSVs, the captions, the features."""
    return [*_splits(src, "how2qa", (".csv",)), "--captions", str(_one(src, "raw_caption.json")), *feature_args(src)]
