"""What a folder of public-format files holds, as the converters' input arguments (`main.sh data=DIR`).

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
DATASETS = ("howto100m", "tvr", "didemo", "how2r", "how2qa", "msrvtt", "activitynet")


def feature_args(src: Path) -> list[str]:
    """--features/--feature-layout of a dataset folder: HERO's features/hero/*.npz, else HowTo100M's
    features/2d + features/3d, else features/*.npz."""
    features = src / "features"
    hero = [f for f in (features / "hero", features) if f.is_dir() and any(f.glob("*.npz"))]
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


def converter_inputs(name: str, src: Path) -> list[str]:
    """The input arguments of dataset `name`'s converter (data_prep.<name>) for the folder src."""
    if name == "howto100m":
        csv = [f for f in ["HowTo100M_v1.csv"] if (src / f).is_file()]
        return ["--captions", str(_one(src, "raw_caption.json", "caption.json")),
                *(["--csv", str(src / csv[0])] if csv else []), *feature_args(src)]  # fmt: skip
    if name == "tvr":
        return ["--annotations", str(src), "--subtitles", str(_one(src, "tvqa_preprocessed_subtitles.jsonl")),
                *feature_args(src)]  # fmt: skip
    if name in ("how2r", "how2qa"):
        extensions = (".csv", "_release.jsonl") if name == "how2r" else (".csv",)
        places = (src / VALUE_VIDEO2DUR, src / "value" / VALUE_VIDEO2DUR) if name == "how2r" else ()
        official = [p for p in places if p.is_file()]
        return [*_splits(src, name, extensions), "--captions", str(_one(src, "raw_caption.json")),
                *(["--video2dur", str(official[0])] if official else []), *feature_args(src)]  # fmt: skip
    if name in ("didemo", "msrvtt", "activitynet"):
        return ["--annotations", str(src), *feature_args(src)]
    raise DataPrepError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")


def discover(root: Path) -> dict[str, list[str]]:
    """{dataset: its converter's input arguments} for every dataset folder under root."""
    if not root.is_dir():
        raise DataPrepError(f"data={root}: not a folder")
    found = {name: converter_inputs(name, root / name) for name in DATASETS if (root / name).is_dir()}
    if not found:
        raise DataPrepError(f"data={root}: no dataset folder ({', '.join(DATASETS)})")
    return found
