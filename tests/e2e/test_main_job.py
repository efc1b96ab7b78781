"""The README's first command on a small corpus: every stage's outputs, then reuse on a re-run."""

from __future__ import annotations

import base64
import json
import zipfile
from pathlib import Path

import pytest

from data_prep import synthetic
from launch import main_job, stages

DATASETS = {
    "howto100m": [""],
    "tvr": ["train", "val", "test_public"],
    "didemo": ["train", "val", "test"],
    "how2r": ["train", "val", "test"],
    "how2qa": ["train", "val", "test"],
    "msrvtt": ["train_9k", "train_7k", "test_1ka"],
    "activitynet": ["train", "val_1", "val_2"],
}


def _run(workdir: Path, capsys, *extra: str) -> str:
    code = main_job.main([f"workdir={workdir}", "videos=12", "tagger=heuristic", "workers=1", "until=data", *extra])
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def test_main_job_shards_every_dataset_and_reuses_them(tmp_path: Path, capsys) -> None:
    out = _run(tmp_path, capsys)
    shards = tmp_path / "shards"
    for dataset, splits in DATASETS.items():
        for split in splits:
            manifest = json.loads((shards / dataset / split / "manifest.json").read_text())
            assert manifest["counts"]["samples"] > 0, (dataset, split)
            assert f"{dataset}/{split}".rstrip("/") in out
    for dataset in DATASETS:
        if dataset != "howto100m":
            assert (shards / dataset / "gt" / "video2idx.json").exists(), dataset

    # The How2R source videos are left out of pretraining, with their reason.
    how2r_ids = set(stages.how2r_youtube_ids(tmp_path / "raw" / "how2r"))
    rejects = [json.loads(line) for line in (shards / "howto100m" / "rejects.jsonl").read_text().splitlines()]
    excluded = {r["video_id"] for r in rejects if r["reason"] == "excluded"}
    captioned = set(json.loads((tmp_path / "raw" / "howto100m" / "raw_caption.json").read_text()))
    assert excluded == how2r_ids & captioned and excluded

    first_shard = sorted((shards / "howto100m").glob("*.tar"))[0]
    mtime = first_shard.stat().st_mtime_ns
    again = _run(tmp_path, capsys)
    assert again.count("done already") == 1 + len(DATASETS)
    assert first_shard.stat().st_mtime_ns == mtime


def test_a_stage_made_with_other_settings_is_an_error_naming_them(tmp_path: Path, capsys) -> None:
    _run(tmp_path, capsys)
    code = main_job.main([f"workdir={tmp_path}", "videos=13", "tagger=heuristic", "workers=1", "until=data"])
    err = capsys.readouterr().err
    assert code == 2 and "synthetic corpus" in err and "videos: 12 -> 13" in err and "start_over=true" in err
    assert "done already" in _run(tmp_path, capsys, "workers=2")  # a speed-only key reuses the outputs
    out = _run(tmp_path, capsys, "videos=13", "start_over=true")
    assert "done already" not in out


def test_stage_settings_follow_what_each_stage_reads(tmp_path: Path) -> None:
    base = stages.load_config(stages.DEFAULT_CONFIG, [])
    before = stages.stage_settings(base)
    changed = {key: {stage for stage, s in stages.stage_settings(stages.load_config(
        stages.DEFAULT_CONFIG, [key])).items() if s != before[stage]}
        for key in ("finetune.steps=41", "pretrain.steps=61", "finetune_shard_size=9", "finetune.seeds=[0]",
                    "finetune.parallel=1", "pretrain.threads=2")}  # fmt: skip
    assert changed == {
        "finetune.steps=41": {"finetune", "report"},
        "pretrain.steps=61": {"pretrain", "zeroshot", "finetune", "report"},
        "finetune_shard_size=9": {"sets", "finetune", "report"},
        "finetune.seeds=[0]": {"zeroshot", "finetune", "report"},  # the random-init seeds of zero-shot too
        "finetune.parallel=1": set(), "pretrain.threads=2": set(),
    }  # fmt: skip
    calls = []
    stages.run_stage(1, 1, "stage", tmp_path / "s", lambda: calls.append(1), before["finetune"])
    stages.run_stage(1, 1, "stage", tmp_path / "s", lambda: calls.append(1), before["finetune"])
    assert calls == [1]
    after = stages.stage_settings(stages.load_config(stages.DEFAULT_CONFIG, ["finetune.steps=41"]))
    with pytest.raises(stages.StageChanged, match=r"finetune\.steps: 40 -> 41"):
        stages.run_stage(1, 1, "stage", tmp_path / "s", lambda: calls.append(1), after["finetune"])


def test_main_job_finishes_an_interrupted_stage(tmp_path: Path, capsys) -> None:
    _run(tmp_path, capsys)
    stage = tmp_path / "shards" / "tvr"
    (stage / stages.DONE).unlink()
    (stage / "train" / "manifest.json").unlink()  # as if killed before the end
    out = _run(tmp_path, capsys)
    assert "tvr -> shards ->" in out
    assert (stage / "train" / "manifest.json").exists()


def test_a_drawn_world_and_the_frame_dim_its_runs_take_from_the_shards(tmp_path: Path, capsys) -> None:
    """world=3: the corpus is that world's (its vocabulary and feature dims), and the training runs the job
    would launch take model.frame_dim from the shards' manifests instead of the presets' 64."""
    args = [f"workdir={tmp_path}", "videos=12", "world=3", "tagger=heuristic", "workers=1", "until=data",
            "pretrain.held_out_shards=1"]  # fmt: skip
    assert main_job.main(args) == 0, capsys.readouterr()
    world = synthetic.draw_world(3)
    planted = json.loads((tmp_path / "raw" / "planted.json").read_text())
    assert planted["world"]["seed"] == 3 and planted["vocabulary"]["nouns"] == list(world.nouns)
    assert set(world.nouns) != set(synthetic.NOUNS)
    dim = sum(world.hero_dims)
    assert dim != 64 and planted["features"]["hero"]["dim"] == dim
    shards = tmp_path / "shards"
    manifest = json.loads((shards / "howto100m" / "manifest.json").read_text())
    assert manifest["feature_spec"]["dim"] == dim

    cfg = stages.load_config(stages.DEFAULT_CONFIG, args)
    pretrain = stages.pretrain_run(cfg, tmp_path, None)
    assert f"model.frame_dim={dim}" in pretrain.overrides
    runs = stages.finetune_runs(cfg, tmp_path, None)
    assert {r.name.split("-")[0] for r in runs} == set(cfg.finetune.recipes) == {"tvr", "msrvtt"}
    for run in runs:
        recipe = run.name.split("-")[0]
        split = {"tvr": "train", "msrvtt": "train_9k"}[recipe]
        manifest = json.loads((shards / recipe / split / "manifest.json").read_text())
        frame_dims = [o for o in run.overrides if o.startswith("model.frame_dim=")]
        assert frame_dims == [f"model.frame_dim={manifest['feature_spec']['dim']}"] == [f"model.frame_dim={dim}"]
    assert stages.train_split("msrvtt", []) == "train_9k"
    assert stages.train_split("msrvtt", ["data.max_frames=16", "data.train_split=train_7k"]) == "train_7k"

    # the world is a corpus setting: another one is a change, world 0 keeps the markers made before worlds existed
    assert main_job.main([*args[:2], "world=4", *args[3:]]) == 2
    assert "world: 3 -> 4" in capsys.readouterr().err
    assert "world" not in stages.stage_settings(stages.load_config(stages.DEFAULT_CONFIG, []))["corpus"]


@pytest.mark.slow
def test_short_main_job_runs_every_stage(tmp_path: Path, capsys) -> None:
    """README command 1 with its default corpus and pretraining, finetuning shortened to 3 steps and one
    seed: pretraining helps zero-shot retrieval; every stage leaves its outputs; a re-run reuses them."""
    out = _run(tmp_path, capsys, "until=report", "videos=96", "tagger=auto", "pretrain.steps=60", "finetune.steps=3",
               "finetune.seeds=[0]")  # fmt: skip
    runs = tmp_path / "runs"
    steps = [json.loads(line)["step"] for line in (runs / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 61)) and (runs / "pretrain" / "export" / "model.safetensors").exists()

    zs = json.loads((runs / "zeroshot" / "zeroshot.json").read_text())
    assert zs["clips"] >= 10
    for score in ("t2v", "taco"):  # the sentence cosine and TACo's L1+L2 score (pretrain/zeroshot.py)
        assert zs["pretrained"][f"zeroshot_{score}_R@10"] > zs["random"][f"zeroshot_{score}_R@10"], zs

    for recipe, keys in (("tvr", {"VCMR", "SVMR", "VR"}), ("msrvtt", {"R@1", "R@5", "R@10", "MedR", "MeanR"})):
        for init in ("pretrained", "scratch"):
            results = json.loads((runs / "finetune" / f"{recipe}-{init}-seed0" / "results.json").read_text())
            assert keys <= set(results["metrics"]) and results["steps"] == 3, (recipe, init)
            assert json.loads(Path(results["files"]["metrics"]).read_text()) == results["metrics"]
    with zipfile.ZipFile(runs / "finetune" / "tvr-pretrained-seed0" / "tvr_submission.zip") as z:
        for name in z.namelist():  # the val and test_public files: 100 moments for every query
            sub = json.loads(z.read(name))
            assert {len(e["predictions"]) for task in ("VCMR", "SVMR") for e in sub.get(task, [])} == {100}, name

    report = (tmp_path / "report" / "report.md").read_text()
    for heading in ("Zero-shot", "tvr: finetuned", "msrvtt: finetuned", "pretrained - scratch", "chance"):
        assert heading in report, heading
    page = (tmp_path / "report" / "report.html").read_text()  # what MLflow's artifact view renders
    for png in ("pretrain_losses.png", "tvr_variants.png", "msrvtt_variants.png", "similarity.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000, png
        assert base64.b64encode((tmp_path / "report" / png).read_bytes()).decode() in page, png
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert set(summary["finetune"]) == {"tvr", "msrvtt"}

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    found = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parent = [r for r in found if r.info.run_name == "main job"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    metrics = parent[0].data.metrics  # the headline results, sortable in MLflow
    assert metrics["zero-shot/pretrained/taco_R_10"] == pytest.approx(zs["pretrained"]["zeroshot_taco_R@10"])
    assert "msrvtt/difference/R_1" in metrics and "tvr/pretrained/VCMR 0.5-r1" in metrics
    note = parent[0].data.tags["mlflow.note.content"]  # the Overview page's description: the tables, no images
    assert "| pretrained - scratch |" in note and "![" not in note and "report/report.html" in note
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted(
        ["pretrain"] + [f"{r}-{i}-seed0" for r in ("tvr", "msrvtt") for i in ("pretrained", "scratch")]
    )
    assert "mlflow ui --backend-store-uri sqlite:///" in out and "report.md" in out

    again = _run(tmp_path, capsys, "until=report", "videos=96", "tagger=auto", "pretrain.steps=60", "finetune.steps=3",
                 "finetune.seeds=[0]")  # fmt: skip
    assert "report: done already" in again and "pretraining (2 ranks, 60 steps): done already" in again


def _hand_made_folder(root: Path) -> Path:
    """A data folder the generator did not lay out: HowTo100M with caption.json only (no raw_caption.json, no
    CSV) and the extractor's 2d/ + 3d/ features only (no HERO .npz), MSR-VTT with its .npz files, nothing else;
    the contents come from a drawn world (96-d features)."""
    src = root / "generated"
    synthetic.generate(src, videos=16, seed=3, world=2)
    data = root / "downloaded"
    (data / "howto100m" / "features").mkdir(parents=True)
    (src / "howto100m" / "caption.json").rename(data / "howto100m" / "caption.json")
    for layout in ("2d", "3d"):
        (src / "howto100m" / "features" / layout).rename(data / "howto100m" / "features" / layout)
    (src / "msrvtt").rename(data / "msrvtt")
    return data


@pytest.mark.slow
def test_main_job_on_a_folder_of_public_files(tmp_path: Path, capsys) -> None:
    """`main.sh data=DIR`: the datasets the folder holds are converted in the layout they come in, the feature
    dim comes from the data, recipes whose dataset is absent are skipped with a message, every stage runs."""
    data = _hand_made_folder(tmp_path)
    work = tmp_path / "work"
    out = _run(work, capsys, f"data={data}", "until=report", "pretrain.steps=2", "pretrain.held_out_shards=1",
               "finetune.steps=2", "finetune.seeds=[0]", "finetune.recipes=[tvr,msrvtt]")  # fmt: skip
    assert "no tvr folder, not finetuned" in out and not (work / "raw").exists()
    assert sorted(p.name for p in (work / "shards").iterdir() if p.is_dir()) == ["howto100m", "msrvtt"]
    manifest = json.loads((work / "shards" / "howto100m" / "manifest.json").read_text())
    assert manifest["feature_spec"]["layout"] == "howto100m" and manifest["feature_spec"]["dim"] != 64
    from omegaconf import OmegaConf

    export = OmegaConf.load(work / "runs" / "pretrain" / "export" / "config.yaml")
    assert export.model.frame_dim == manifest["feature_spec"]["dim"]
    results = json.loads((work / "runs" / "finetune" / "msrvtt-pretrained-seed0" / "results.json").read_text())
    assert {"R@1", "R@10"} <= set(results["metrics"])
    assert (work / "report" / "report.md").exists() and not (work / "runs" / "finetune" / "tvr-scratch-seed0").exists()
    missing = main_job.main([f"workdir={tmp_path / 'w2'}", f"data={tmp_path / 'nothing'}", "until=data"])
    assert missing == 2 and "not a folder" in capsys.readouterr().err
