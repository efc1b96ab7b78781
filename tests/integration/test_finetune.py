"""The finetune recipes: data rows, the moment loss against a naive loop, initialisation from
pretraining (export and DeepSpeed checkpoint), config errors, and every entry script for a few
steps on 2 CPU ranks writing predictions, official-format submissions and metrics."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_pretrain import launch_env

from finetune import data, moment_eval, value_submission
from finetune.model import TaskModel, load_backbone, read_state_dict, resolve_checkpoint
from finetune.moment import MomentConfig, MomentHead, moment_loss
from launch.pipeline import free_port
from pretrain.model import ModelConfig, build_model

REPO = Path(__file__).resolve().parents[2]
VCMR_KEYS = {f"{t}-r{k}" for t in (0.5, 0.7) for k in (1, 5, 10, 100)}
VR_KEYS = {"r1", "r5", "r10", "r100"}
RETRIEVAL_KEYS = {"R@1", "R@5", "R@10", "MedR", "MeanR"}
TINY = ["model.preset=tiny", "model.text_layers=1", "model.cross_layers=1", "runtime.precision=fp32",
        "data.batch_size=3", "data.eval_batch_size=8", "data.num_workers=0", "data.streams=2",
        "run.log_every=1", "optim.warmup_steps=1", "checkpoint.every=0"]  # fmt: skip


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> Path:
    """The main job's synthetic corpus and its shards: HowTo100M and the five finetune sets."""
    work = tmp_path_factory.mktemp("finetune_sets")
    proc = subprocess.run([sys.executable, "-m", "launch.main_job", f"workdir={work}", "videos=32", "until=data",
                           "tagger=heuristic", "eval_queries=0"], cwd=REPO, env=launch_env(), capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work / "shards"


@pytest.fixture(scope="module")
def pretrained(sets, tmp_path_factory) -> Path:
    """A 2-step pretraining run (1 rank, ZeRO-2): its export and its DeepSpeed checkpoint."""
    run_dir = tmp_path_factory.mktemp("pretrained")
    cmd = [sys.executable, "pretrain/train.py", "--config", "configs/pretrain/tiny_cpu.yaml",
           f"data.train={sets / 'howto100m'}", f"run.output_dir={run_dir}", "run.max_steps=2", "checkpoint.every=0",
           "model.text_layers=1", "model.cross_layers=1", "data.batch_size=4", "data.max_frames=16",
           "tracking.enabled=false", "eval.every=0"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def _finetune(recipe: str, ranks: int, run_dir: Path, *overrides: str, expect: int = 0) -> subprocess.CompletedProcess:
    args = [f"finetune/{recipe}.py", "--config", f"configs/finetune/{recipe}.yaml", f"run.output_dir={run_dir}",
            *TINY, *overrides]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
           "--master_port", str(free_port()), *args] if ranks > 1 else [sys.executable, *args]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


# ---------------------------------------------------------------- data rows


def test_span_frames_and_uniform_frames() -> None:
    assert data.span_frames([3.0, 6.0], 1.5, 10) == (2, 3)  # frames [3, 4.5) and [4.5, 6)
    assert data.span_frames([3.1, 6.1], 1.5, 10) == (2, 4)
    assert data.span_frames([0.0, 100.0], 1.5, 10) == (0, 9)  # clamped to the frames
    assert data.span_frames([14.0, 14.2], 1.5, 10) == (9, 9)  # past the last frame: the last one
    assert data.uniform_frames(5, 8).tolist() == [0, 1, 2, 3, 4]
    picked = data.uniform_frames(100, 5).tolist()
    assert picked[0] == 0 and picked[-1] == 99 and len(set(picked)) == 5


def _raw(meta: dict, t: int = 30, d: int = 4):
    import io

    from pretrain.loader import RawSample

    buf = io.BytesIO()
    np.save(buf, np.arange(t * d, dtype=np.float16).reshape(t, d))
    npy = buf.getvalue()
    header = len(npy) - t * d * 2
    return RawSample("vid", meta, npy, header, (t, d), "<f2", False)


def test_processor_draws_a_query_and_keeps_its_span_in_the_window() -> None:
    from pretrain.text import load_tokenizer

    tok = load_tokenizer()
    queries = [{"query_id": i, "text": f"query number {i}", "spans": [[3.0 * i, 3.0 * i + 4.5]], "toi": []}
               for i in range(6)]  # fmt: skip
    meta = {"video_id": "v", "duration": 45.0, "frame_interval": 1.5, "queries": queries}
    proc = data.QueryVideoProcessor(tok, None, 16, 0, 8, False, seed=0, training=True)
    drawn = set()
    for epoch in range(12):
        row = proc(_raw(meta), epoch)
        drawn.add(tok.decode(row["input_ids"][1:-1]))
        assert row["frames"].shape == (8, 4)
        i, j = row["span"].tolist()
        first = int(row["frames"][0, 0]) // 4  # the window's first frame index (features are arange)
        q = next(q for q in queries if tok.decode(row["input_ids"][1:-1]) == q["text"])
        assert (first + i, first + j) == data.span_frames(q["spans"][0], 1.5, 30)  # the span, moved into the window
        assert proc(_raw(meta), epoch)["input_ids"].tolist() == row["input_ids"].tolist()  # same epoch, same draw
    assert len(drawn) >= 4  # different epochs draw different queries
    evaluation = data.QueryVideoProcessor(tok, None, 16, 0, 8, False, seed=0, training=False)(_raw(meta), 0)
    assert "input_ids" not in evaluation and evaluation["frames"].shape == (8, 4) and evaluation["meta"]["frames"] == 30


def test_collate_pads_every_field() -> None:
    rows = [{"key": "a", "meta": None, "input_ids": torch.tensor([1, 5, 2]), "toi_weight": torch.tensor([0, 2.0, 0]),
             "sub_ids": torch.tensor([1, 2]), "frames": np.ones((3, 4), np.float16), "span": torch.tensor([0, 2])},
            {"key": "b", "meta": None, "input_ids": torch.tensor([1, 2]), "toi_weight": torch.tensor([0.0, 0]),
             "sub_ids": torch.tensor([1, 7, 7, 2]), "frames": np.ones((5, 4), np.float16),
             "span": torch.tensor([1, 1])}]  # fmt: skip
    b = data.collate_rows(rows, pad_id=0)
    assert b["input_ids"].tolist() == [[1, 5, 2], [1, 2, 0]] and b["attention_mask"].sum().item() == 5
    assert b["sub_input_ids"].shape == (2, 4) and b["sub_attention_mask"].sum().item() == 6
    assert b["frames"].shape == (2, 5, 4) and b["frames"][0, 3:].abs().sum() == 0 and b["frame_mask"].sum() == 8
    assert b["span"].tolist() == [[0, 2], [1, 1]] and b["toi_weight"][0, 1] == 2.0


# ---------------------------------------------------------------- the moment loss, naively


class _Backbone(torch.nn.Module):
    """Fixed random representations standing in for VideoLanguageModel (the loss is what is tested)."""

    def __init__(self, d: int = 6):
        super().__init__()
        self.config = ModelConfig(hidden=d)
        self.lin = torch.nn.Linear(d, d)

    def embed_video(self, frames, mask):
        return self.lin(frames)

    def cross(self, e_v, fm, e_t, tm):
        return e_v, e_t

    def embed_text(self, ids, mask):
        return self.lin(torch.nn.functional.one_hot(ids % 6, 6).float())

    def sentence(self, y, mask):
        from pretrain.pooling import pool_text

        return pool_text(y, mask, "mean")


def _naive_span_input(head: MomentHead, tokens: torch.Tensor, n_tok: int, ctx: torch.Tensor,
                      span_query: str) -> torch.Tensor:  # fmt: skip
    """x_t for one query (tokens (N, d), its first n_tok real) and one video ctx (M, d), from the definitions."""
    if span_query == "cls":
        return torch.stack([ctx[t] @ head.query_span(tokens[0]) / math.sqrt(ctx.shape[1]) for t in range(len(ctx))])
    words = range(1, n_tok - 1)  # between [CLS] and [SEP]
    a = torch.softmax(torch.stack([head.word_attn(tokens[p])[0] for p in words]), 0)
    cos = [[F.cosine_similarity(head.query_span(tokens[p]), ctx[t], dim=0) for t in range(len(ctx))] for p in words]
    return sum(a[i] * torch.stack(cos[i]) for i in range(len(words))) / head.span_temperature


@pytest.mark.parametrize("span_query", ["words", "cls"])
def test_moment_loss_matches_a_naive_loop(span_query: str) -> None:
    torch.manual_seed(0)
    b, m, d, tau = 3, 5, 6, 0.1
    head = MomentHead(d, 3, span_query=span_query, span_temperature=0.2)
    for param in head.parameters():  # away from the identity / uniform / edge initialisation
        param.data.add_(0.3 * torch.randn_like(param))
    model = TaskModel(_Backbone(d), head)
    frame_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    attention_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    batch = {
        "frames": torch.randn(b, m, d),
        "frame_mask": frame_mask,
        "input_ids": torch.randint(0, 50, (b, 5)),
        "attention_mask": attention_mask,
        "span": torch.tensor([[1, 3], [0, 2], [1, 1]]),
    }
    cfg = MomentConfig(temperature=tau, span_weight=0.5, conv_kernel=3, span_query=span_query, span_temperature=0.2)
    loss, logs = moment_loss(model, batch, cfg)

    ctx = model.backbone.embed_video(batch["frames"], frame_mask) * frame_mask[..., None]
    tokens = model.backbone.embed_text(batch["input_ids"], None)  # (b, N, d)
    sentences = torch.stack([tokens[i][attention_mask[i]].mean(0) for i in range(b)])  # the mean of the valid tokens
    qv = model.head.query_vr(sentences)
    score = torch.zeros(b, b)  # score[i, j]: query i vs video j = max over valid frames of the cosine
    for i in range(b):
        for j in range(b):
            score[i, j] = max(F.cosine_similarity(qv[i], ctx[j, t], dim=0) for t in range(m) if frame_mask[j, t])
    q2v = -sum(torch.log_softmax(score[i] / tau, 0)[i] for i in range(b)) / b
    v2q = -sum(torch.log_softmax(score[:, j] / tau, 0)[j] for j in range(b)) / b
    span = 0.0
    for i in range(b):
        n = int(frame_mask[i].sum())
        x = _naive_span_input(model.head, tokens[i], int(attention_mask[i].sum()), ctx[i], span_query)
        st = model.head.st_conv(x[None, None])[0, 0][:n]
        ed = model.head.ed_conv(x[None, None])[0, 0][:n]
        span += (-torch.log_softmax(st, 0)[batch["span"][i, 0]] - torch.log_softmax(ed, 0)[batch["span"][i, 1]]) / b
    want = 0.5 * (q2v + v2q) + 0.5 * span
    assert torch.allclose(loss, want, atol=1e-5), (loss, want)
    assert logs["vr_loss"] == pytest.approx(float(0.5 * (q2v + v2q).detach()), abs=1e-5)


# ---------------------------------------------------------------- initialisation from pretraining


def test_init_from_export_and_deepspeed_checkpoint_loads_every_weight(pretrained) -> None:
    from safetensors.torch import load_file

    export = load_file(str(pretrained / "export" / "model.safetensors"))
    cfg = ModelConfig(preset="tiny", text_layers=1, cross_layers=1)
    for path in (pretrained / "export", pretrained, pretrained / "checkpoints"):
        torch.manual_seed(123)
        backbone = build_model(cfg)
        assert load_backbone(backbone, str(path)) == len(export)
        for name, tensor in backbone.state_dict().items():
            assert torch.equal(tensor, export[name]), (path, name)
    assert resolve_checkpoint(str(pretrained))[0] == "safetensors"  # a run dir: its export first
    assert resolve_checkpoint(str(pretrained / "checkpoints"))[0] == "deepspeed"


def test_init_of_another_feature_dim_reinitialises_the_frame_input_on_request(pretrained, caplog) -> None:
    """An export of 64-d features into a 32-d model: an error that names the option; with it, every tensor but
    the ones that read raw features comes from the export, and those keep the fresh model's values."""
    from safetensors.torch import load_file

    from finetune.model import FRAME_INPUT

    export = load_file(str(pretrained / "export" / "model.safetensors"))
    cfg = ModelConfig(preset="tiny", text_layers=1, cross_layers=1, frame_dim=32)
    torch.manual_seed(7)
    backbone = build_model(cfg)
    fresh = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(ValueError, match="init.reinit_frame_input=true"):
        load_backbone(backbone, str(pretrained / "export"))
    taken = load_backbone(backbone, str(pretrained / "export"), reinit_frame_input=True)
    assert taken == len(export) - len(FRAME_INPUT)
    for name, tensor in backbone.state_dict().items():
        want = fresh[name] if name in FRAME_INPUT else export[name]
        assert torch.equal(tensor, want), name
    assert "64-d frame features, the model takes 32-d" in caplog.text


def test_init_mismatch_names_the_tensors(pretrained, tmp_path) -> None:
    backbone = build_model(ModelConfig(preset="tiny", text_layers=1, cross_layers=2, hidden=192, heads=6))
    names = r"missing \(\d+\): cross_encoder\.layers\.1\..*shape \(\d+\): cross_encoder\.layers\.0\."
    with pytest.raises(ValueError, match=names) as e:
        load_backbone(backbone, str(pretrained / "export"))
    assert "(192" in str(e.value) or "192)" in str(e.value)
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        resolve_checkpoint(str(tmp_path))
    zero3 = tmp_path / "z3"
    zero3.mkdir()
    torch.save(
        {"module": {"w": torch.empty(0)}, "param_shapes": [{"w": torch.Size([2])}]},
        zero3 / "mp_rank_00_model_states.pt",
    )
    with pytest.raises(ValueError, match="ZeRO-3 checkpoint holds only partitions"):
        read_state_dict(str(zero3))


# ---------------------------------------------------------------- the entry scripts


MOMENT = {"tvr": ("val", "test_public"), "didemo": ("val", None), "how2r": ("val", "test")}
ZIPS = {"tvr": ["tvr_test_public_submission.json", "tvr_val_submission.json"],  # each leaderboard's upload
        "how2r": ["how2r/how2r_test_public_predictions.json", "how2r/how2r_val_predictions.json"]}  # fmt: skip
RETRIEVAL = {"msrvtt": "test_1ka", "activitynet": "val_1"}
# issue 7's options, each trained through a real entry script: MESM (every loss) on DiDeMo, multi-level
# alignment (both levels) on How2R and (global only) on MSR-VTT; TVR and ActivityNet run without options
OPTIONS = {"didemo": ("task.mesm.fw=1", "task.mesm.ss=1", "task.mesm.enc=1", "task.mesm.fw_layers=1",
                      "task.mesm.ss_layers=1", "task.mesm.ma_layers=1"),
           "how2r": ("task.align.glob=1", "task.align.seg=1"), "msrvtt": ("task.align.glob=1",)}  # fmt: skip
OPTION_LOSSES = {"didemo": ("mesm_fw_loss", "mesm_ss_loss", "mesm_enc_loss"),
                 "how2r": ("align_glob_loss", "align_seg_loss"), "msrvtt": ("align_glob_loss",)}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(MOMENT))
def test_moment_recipe_two_ranks(recipe, sets, pretrained, tmp_path) -> None:
    split, test = MOMENT[recipe]
    run_dir = tmp_path / recipe
    init = [f"init.checkpoint={pretrained / 'export'}"] if recipe == "tvr" else []
    tests = [f"data.test_split={test}", "eval.codalab_zip=true"] if test else []
    proc = _finetune(recipe, 2, run_dir, f"data.root={sets / recipe}", "run.max_steps=2",
                     "task.search.top_videos=4", *init, *tests, *OPTIONS.get(recipe, ()))  # fmt: skip
    if init:
        assert "initialised" in proc.stderr
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["vr_loss"] + r["span_loss"]) for r in rows)
    assert all(math.isfinite(r[k]) for r in rows for k in OPTION_LOSSES.get(recipe, ()))
    results = json.loads((run_dir / "results.json").read_text())
    folder = run_dir / "eval" / split / "step_00000002"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["VCMR"]) == VCMR_KEYS and set(metrics["SVMR"]) == VCMR_KEYS and set(metrics["VR"]) == VR_KEYS
    submission = json.loads((folder / f"{recipe}_{split}_submission.json").read_text())
    moment_eval.validate_submission(submission, ("VCMR", "SVMR", "VR"))
    if recipe == "tvr":  # 60-90 s videos of 1.5 s frames: NMS leaves 100 moments of each query, also in one video
        assert {len(e["predictions"]) for task in ("VCMR", "SVMR") for e in submission[task]} == {100}
    queries = [json.loads(line) for line in (sets / recipe / split / "queries.jsonl").read_text().splitlines()]
    assert [e["desc_id"] for e in submission["VCMR"]] == [q["query_id"] for q in queries]
    gt = json.loads((sets / recipe / "gt" / "video2idx.json").read_text())[split]
    assert submission["video2idx"] == {v: idx for v, (_, idx) in gt.items()}
    assert moment_eval.evaluate(submission, _ground_truth(queries)) == metrics  # recomputed from the files
    assert (folder / "recall_at_k.png").stat().st_size > 1000 and (folder / "similarity.png").stat().st_size > 1000
    assert results["metrics"] == metrics
    if recipe == "how2r":  # the file for VALUE's leaderboard: VCMR as scored, VR as video idx lists
        value = json.loads((folder / "how2r_val_predictions.json").read_text())
        value_submission.validate(value, set(submission["video2idx"].values()))
        assert value == value_submission.from_tvr(submission)
    if test:
        test_sub = json.loads((run_dir / "eval" / test / "step_00000002" / f"{recipe}_{test}_submission.json")
                              .read_text())  # fmt: skip
        moment_eval.validate_submission(test_sub, ("VCMR", "VR"))
        import zipfile

        with zipfile.ZipFile(results["codalab_zip"]) as z:
            assert sorted(z.namelist()) == ZIPS[recipe]
            assert "SVMR" not in json.loads(z.read(ZIPS[recipe][0]))  # test_public hides the gt video
    runs = _mlflow_runs(run_dir)
    assert len(runs) == 1 and f"{split}/VCMR/0.5-r1" in runs[0].data.metrics


def _ground_truth(queries: list[dict]) -> list[dict]:
    from finetune.moment import ground_truth

    return ground_truth(queries)


def _mlflow_runs(run_dir: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RETRIEVAL))
def test_retrieval_recipe_two_ranks(recipe, sets, tmp_path) -> None:
    split = RETRIEVAL[recipe]
    run_dir = tmp_path / recipe
    _finetune(recipe, 2, run_dir, f"data.root={sets / recipe}", "run.max_steps=2",
              "data.max_frames=8", *OPTIONS.get(recipe, ()))  # fmt: skip
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["taco_l3_loss"]) for r in rows)
    assert all(math.isfinite(r[k]) for r in rows for k in OPTION_LOSSES.get(recipe, ()))
    folder = run_dir / "eval" / split / "step_00000002"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics) == RETRIEVAL_KEYS and 0 <= metrics["R@1"] <= metrics["R@5"] <= metrics["R@10"] <= 100
    predictions = json.loads((folder / "predictions.json").read_text())
    queries = [json.loads(line) for line in (sets / recipe / split / "queries.jsonl").read_text().splitlines()]
    assert [p["query_id"] for p in predictions] == [q["query_id"] for q in queries]
    ranks = [next(i + 1 for i, (v, _) in enumerate(p["predictions"]) if v == p["video_id"]) for p in predictions]
    assert metrics["R@1"] == pytest.approx(100 * np.mean([r <= 1 for r in ranks]))  # the file agrees with the metrics
    assert metrics["MeanR"] == pytest.approx(np.mean(ranks))
    assert (folder / "similarity.png").exists() and (folder / "recall_at_k.png").exists()


@pytest.mark.slow
def test_float16_frames_and_compiled_encoders_finetune_to_the_same_losses_and_metrics(sets, tmp_path) -> None:
    """DiDeMo, one rank, 2 steps, dropout off: float32 frames and an eager model (the old path) against the
    defaults (float16 frames, float32 on the device) with runtime.compile=true (aot_eager, as in test_pretrain):
    the same losses, and the same evaluation (float16 frames straight into embed_video). ~30 s on 2 cores."""
    common = [f"data.root={sets / 'didemo'}", "run.max_steps=2", "model.dropout=0.0", "tracking.enabled=false",
              "task.search.top_videos=4"]  # fmt: skip
    _finetune("didemo", 1, tmp_path / "old", *common, "data.frames_dtype=float32")
    new = _finetune("didemo", 1, tmp_path / "new", *common, "runtime.compile=true", "runtime.compile_backend=aot_eager")
    assert "runtime.compile: 5 encoder modules compiled with backend aot_eager" in new.stderr
    rows = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("old", "new")]  # fmt: skip
    assert [r["step"] for r in rows[1]] == [1, 2]
    for a, b in zip(*rows):
        for key in ("vr_loss", "span_loss", "loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
    old, new = (json.loads((tmp_path / run / "eval" / "val" / "step_00000002" / "metrics.json").read_text())
                for run in ("old", "new"))  # fmt: skip
    for task in ("VCMR", "SVMR", "VR"):
        assert new[task] == pytest.approx(old[task], abs=1e-6), task


@pytest.mark.slow
def test_how2qa_recipe_two_ranks_reports_accuracy(sets, pretrained, tmp_path) -> None:
    run_dir = tmp_path / "how2qa"
    _finetune("how2qa", 2, run_dir, f"data.root={sets / 'how2qa'}", "run.max_steps=3", "data.test_split=test",
              f"init.checkpoint={pretrained / 'export'}", "task.align.glob=1")  # fmt: skip
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["qa_loss"] + r["align_seg_loss"] + r["align_glob_loss"]) for r in rows)
    folder = run_dir / "eval" / "val" / "step_00000003"
    metrics = json.loads((folder / "metrics.json").read_text())
    predictions = json.loads((folder / "predictions.json").read_text())
    queries = [json.loads(line) for line in (sets / "how2qa" / "val" / "queries.jsonl").read_text().splitlines()]
    assert [p["query_id"] for p in predictions] == [q["query_id"] for q in queries]
    assert all(len(p["scores"]) == 4 and p["prediction"] == int(np.argmax(p["scores"])) for p in predictions)
    correct = [p["prediction"] == q["answer_idx"] for p, q in zip(predictions, queries)]
    assert metrics == {"accuracy": round(100 * float(np.mean(correct)), 2), "questions": len(queries),
                       "answered": len(queries)}  # fmt: skip
    assert (folder / "similarity.png").stat().st_size > 1000
    assert (run_dir / "eval" / "test" / "step_00000003" / "predictions.json").exists()
    runs = _mlflow_runs(run_dir)
    assert len(runs) == 1 and runs[0].data.metrics["val/accuracy"] == metrics["accuracy"]


def test_one_training_shard_on_two_ranks_is_a_config_error(sets, tmp_path) -> None:
    """A train split of one shard on two ranks: a `config error:` before the model and the MLflow run."""
    root = tmp_path / "tvr"
    shutil.copytree(sets / "tvr", root)
    sizes = json.loads((root / "train" / "sizes.json").read_text())
    first = sorted(sizes)[0]
    (root / "train" / "sizes.json").write_text(json.dumps({first: sizes[first]}))
    run_dir = tmp_path / "run"
    proc = _finetune("tvr", 2, run_dir, f"data.root={root}", expect=1)
    assert "config error: data.train_split" in proc.stderr and "1 shards cannot feed 2 ranks" in proc.stderr
    assert "ValueError" not in proc.stderr and not run_dir.exists(), proc.stderr[-3000:]


def test_config_errors_exit_2_naming_the_key(sets, tmp_path) -> None:
    cases = [
        (["data.root=/nonexistent"], "data.train_split"),
        ([f"data.root={sets / 'tvr'}", "data.eval_split=nope"], "data.eval_split"),
        ([f"data.root={sets / 'tvr'}", "model.frame_dim=32"], "model.frame_dim 32"),
        ([f"data.root={sets / 'tvr'}", f"init.checkpoint={tmp_path}"], "init.checkpoint"),
        ([f"data.root={sets / 'tvr'}", "task.nms=0.5"], "nms"),
        ([f"data.root={sets / 'tvr'}", "task.search.candidates=10"], "candidates"),
    ]
    for overrides, message in cases:
        proc = _finetune("tvr", 1, tmp_path / "bad", *overrides, expect=2)
        assert "config error" in proc.stderr and message in proc.stderr, (overrides, proc.stderr[-800:])
    proc = _finetune("msrvtt", 1, tmp_path / "bad", f"data.root={sets / 'msrvtt'}", "task.align.seg=1", expect=2)
    assert "config error" in proc.stderr and "task.align.seg must be 0 for video retrieval" in proc.stderr
    assert not (tmp_path / "bad").exists()
