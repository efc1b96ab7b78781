"""Corpus evaluation spread over the ranks (finetune/ranks.py): the moment task's predictions on TVR's val split
(VCMR, SVMR, VR) and the retrieval task's on MSR-VTT's test split, under torchrun with 1, 2 and 4 gloo ranks
and ZeRO-3, are the same files, byte for byte, on every rank and for every world size.

Small batches and chunks make the work uneven: some ranks own more video and query batches than others, and at
4 ranks one owns no video batch at all, so the spare forwards are what keeps ZeRO-3's forwards in step (a
missing one hangs the run: the timeout fails the test). 50-95 s on 2 cores (three torchrun runs, by load).

This file is also the worker: `python -m torch.distributed.run ... test_eval_ranks.py OUT DATA`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORLDS = (1, 2, 4)


def worker(out: Path, sets: Path) -> None:
    """Rank r of W: a tiny model under ZeRO-3, the predictions of both tasks, written to out/<task>_rank<r>.json."""
    sys.path.insert(0, str(REPO))
    import torch

    from finetune import data
    from finetune.model import TaskModel
    from finetune.moment import MomentConfig, MomentTask
    from finetune.moment_search import SearchConfig
    from finetune.video_retrieval import VideoRetrievalConfig, VideoRetrievalTask
    from pretrain import runtime
    from pretrain.model import ModelConfig, build_model, load_tokenizer

    rank, _, world = runtime.init_distributed(runtime.RuntimeConfig(zero_stage=3))
    search = SearchConfig(top_videos=3, candidates=12, predictions=6, query_chunk=5, moment_chunk=2)
    tasks = {"tvr": (MomentTask(MomentConfig(search=search)), "val"),
             "msrvtt": (VideoRetrievalTask(VideoRetrievalConfig()), "test_1ka")}  # fmt: skip
    for name, (task, split) in tasks.items():
        torch.manual_seed(0)
        mcfg = ModelConfig(preset="tiny", text_layers=1, cross_layers=1, frame_dim=64, dropout=0.0)
        tokenizer, backbone = load_tokenizer(mcfg), build_model(mcfg)
        model = TaskModel(backbone, task.build_head(backbone))
        rcfg = runtime.RuntimeConfig(zero_stage=3, param_persistence_threshold=0)  # every parameter partitioned
        engine = runtime.build_engine(model, rcfg, runtime.OptimConfig(), 2, 10, world)
        engine.eval()
        dcfg = data.FinetuneDataConfig(root=str(sets / name), eval_batch_size=3, max_sub_len=16 * (name == "tvr"),
                                       num_workers=0)  # fmt: skip
        preds = task.predict(engine, dcfg, split, tokenizer, torch.device("cpu"), with_gt=True)
        folder = out / f"{name}_w{world}_r{rank}"
        folder.mkdir(parents=True)
        preds.write_predictions(str(folder), name, split)
        (folder / "metrics.json").write_text(json.dumps(preds.metrics))
    runtime.shutdown()


def small_sets(root: Path, names: tuple[str, ...] = ("tvr", "msrvtt")) -> Path:
    """`root` holding the synthetic sets `names` (seed 0, 16 videos, 20 eval queries), converted, in shards of 4."""
    from data_prep import msrvtt, synthetic, tvr
    from data_prep.layout import annotations_inputs, tvr_inputs

    synthetic.generate(root / "raw", videos=16, seed=0, eval_queries=20)
    if "tvr" in names:
        tvr.main([*tvr_inputs(root / "raw" / "tvr"), "--out", str(root / "tvr"), "--shard-size", "4", "--tagger",
                  "heuristic"])  # fmt: skip
    if "msrvtt" in names:
        msrvtt.main([*annotations_inputs(root / "raw" / "msrvtt"), "--out", str(root / "msrvtt"), "--shard-size", "4",
                     "--tagger", "heuristic"])  # fmt: skip
    return root


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> Path:
    """The synthetic TVR and MSR-VTT sets (seed 0), converted, in small shards."""
    return small_sets(tmp_path_factory.mktemp("eval_ranks"))


def test_predictions_are_the_same_files_for_1_2_and_4_ranks(sets, tmp_path) -> None:
    from test_pretrain import launch_env  # not at the top: this file is also the worker, run outside pytest

    from launch.pipeline import free_port

    for world in WORLDS:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_port",
               str(free_port()), __file__, str(tmp_path), str(sets)]  # fmt: skip
        proc = subprocess.run(cmd, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-4000:]
    for name in ("tvr", "msrvtt"):
        reference = tmp_path / f"{name}_w1_r0"
        files = sorted(p.name for p in reference.iterdir())
        assert len(files) == 2 and (reference / "metrics.json").stat().st_size > 50
        for world in WORLDS:
            for rank in range(world):
                folder = tmp_path / f"{name}_w{world}_r{rank}"
                for f in files:
                    assert (folder / f).read_bytes() == (reference / f).read_bytes(), (name, world, rank, f)
    queries = (sets / "tvr" / "val" / "queries.jsonl").read_text().splitlines()
    submission = json.loads((tmp_path / "tvr_w1_r0" / "tvr_val_submission.json").read_text())
    assert len(queries) >= 20 and [e["desc_id"] for e in submission["VCMR"]] == [
        json.loads(q)["query_id"] for q in queries
    ]


if __name__ == "__main__":
    worker(Path(sys.argv[1]), Path(sys.argv[2]))
