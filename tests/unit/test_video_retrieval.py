"""Video retrieval's inference path (finetune/video_retrieval.py, the code the MSR-VTT and ActivityNet
recipes run) against a naive loop over (query, video) pairs written from TACo section 3.4: the
sentence score (the packaged MiniLM's sentence vector: the mean of its tokens) + the token-level
score + the fusion score of each pair, the fusion module run on that pair alone without padding;
and the `rerank` approximation's ordering."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from finetune.model import TaskModel
from finetune.video_retrieval import VideoRetrievalConfig, VideoRetrievalTask, encode_texts
from pretrain.model import ModelConfig, build_model
from pretrain.objectives.taco import TacoConfig, Texts

V, Q, M, N = 5, 3, 6, 8


@pytest.fixture(scope="module")
def model() -> TaskModel:
    torch.manual_seed(0)
    backbone = build_model(ModelConfig(preset="tiny", text_layers=1, cross_layers=1)).eval()
    return TaskModel(backbone, nn.Module()).eval()


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    frame_mask = torch.arange(M) < torch.tensor([6, 3, 5, 1, 4])[:, None]  # (V, M)
    text_mask = torch.arange(N) < torch.tensor([8, 5, 3])[:, None]  # (Q, N)
    ids = torch.randint(1000, 2000, (Q, N), generator=g).masked_fill(~text_mask, 0)  # (Q, N)
    ids[:, 0] = 101
    toi = torch.rand(Q, N, generator=g) * (torch.rand(Q, N, generator=g) < 0.5) * text_mask  # (Q, N)
    toi[:, 0] = 0.0
    toi[2] = 0.0  # a query without tokens of interest
    frames = torch.randn(V, M, 64, generator=g) * frame_mask[..., None]  # (V, M, 64)
    return {"frames": frames, "frame_mask": frame_mask, "input_ids": ids, "attention_mask": text_mask, "toi": toi}


def _naive(model: TaskModel, inp: dict, cfg: TacoConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(dual (Q, V), total (Q, V)) one pair at a time on unpadded tensors."""
    bb = model.backbone
    sim = (lambda a, b: float(a @ b / (a.norm() * b.norm()))) if cfg.cosine else (lambda a, b: float(a @ b))
    dual, total = torch.zeros(Q, V), torch.zeros(Q, V)
    for i in range(Q):
        n = int(inp["attention_mask"][i].sum())
        y = bb.embed_text(inp["input_ids"][i : i + 1, :n], torch.ones(1, n, dtype=torch.bool))[0]  # (n, d)
        for j in range(V):
            m = int(inp["frame_mask"][j].sum())
            x = bb.embed_video(inp["frames"][j : j + 1, :m], torch.ones(1, m, dtype=torch.bool))[0]  # (m, d)
            score = sim(y.mean(0), x.mean(0)) / cfg.tau1  # the MiniLM's sentence vector: the mean of its tokens
            for p in range(n):
                if inp["toi"][i, p] > 0:
                    score += max(sim(y[p], x[f]) for f in range(m)) / cfg.tau2
            ones = lambda k: torch.ones(1, k, dtype=torch.bool)  # noqa: E731
            dual[i, j] = score
            total[i, j] = score + float(bb.fusion_score(x[None], ones(m), y[None], ones(n))[0])
    return dual, total


def _recipe_scores(model: TaskModel, inp: dict, task: VideoRetrievalTask) -> tuple[torch.Tensor, torch.Tensor]:
    engine = lambda fn, batch: fn(model, batch)  # noqa: E731  # what the DeepSpeed engine's forward does
    x = model.backbone.embed_video(inp["frames"], inp["frame_mask"])  # (V, M, d)
    texts = engine(encode_texts, inp)  # (Q, N, d), (Q, d)
    return task.scores(engine, x, inp["frame_mask"], Texts(*texts, inp["attention_mask"], inp["toi"]))


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@torch.no_grad()
def test_exact_inference_is_the_sum_of_three_scores_over_every_pair(model, similarity) -> None:
    inp = _inputs()
    taco = TacoConfig(similarity=similarity, tau1=1.0 if similarity == "dot" else 0.07)
    want_dual, want_total = _naive(model, inp, taco)
    for chunk in (1, 4, 256):
        task = VideoRetrievalTask(VideoRetrievalConfig(taco=taco, fusion_chunk=chunk))
        got, dual = _recipe_scores(model, inp, task)
        torch.testing.assert_close(dual, want_dual, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(got, want_total, rtol=1e-4, atol=1e-3)


@torch.no_grad()
def test_rerank_approximation_orders_the_k_best_by_the_sum_then_the_rest_by_the_dual_score(model) -> None:
    inp = _inputs(seed=1)
    want_dual, want_total = _naive(model, inp, TacoConfig())
    k = 2
    got, _ = _recipe_scores(model, inp, VideoRetrievalTask(VideoRetrievalConfig(rerank=k)))
    for i in range(Q):
        best = sorted(range(V), key=lambda j: -float(want_dual[i, j]))
        want_order = sorted(best[:k], key=lambda j: -float(want_total[i, j])) + best[k:]
        assert got[i].argsort(descending=True).tolist() == want_order


def test_inference_options_are_checked() -> None:
    for bad in (VideoRetrievalConfig(rerank=-1), VideoRetrievalConfig(fusion_chunk=0)):
        with pytest.raises(ValueError, match="task.rerank"):
            bad.validate()
    with pytest.raises(ValueError, match="similarity"):
        TacoConfig(similarity="l2")
