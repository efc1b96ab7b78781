"""The moment head's initialisation. The VR query projection (task.vr_query_init): identity-initialised,
the VR score of a finetune run starts as the backbone's own sentence-frame cosine, so the alignment
pretraining built is there from step 0; `random` is the previous behaviour (a fresh random map). The
span query (task.span_query=words) starts as the mean token-frame cosine of the query's words, and
the start/end convolutions as edge detectors: a backbone whose words already find their frames
localises the moment at step 0."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from finetune.model import TaskModel
from finetune.moment import MomentConfig, MomentHead, build_head, encode_queries, frame_similarity, video_scores
from pretrain.model import ModelConfig
from pretrain.pooling import pool_text


class _Aligned(torch.nn.Module):
    """A backbone whose text space is already aligned with its videos: every token of query i, so its
    sentence vector (the mean), is the basis vector e_i, and video i shows e_i in one frame among
    frames of unrelated directions."""

    def __init__(self, d: int):
        super().__init__()
        self.config = ModelConfig(hidden=d)

    def embed_text(self, ids, mask):
        return F.one_hot(ids, self.config.hidden).float()  # (B, N, d): token k -> e_k

    def sentence(self, y, mask):
        return pool_text(y, mask, "mean")  # (B, d)


def _aligned_corpus(n: int, d: int, m: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """ctx (n, m, d): video i's frame i % m is e_i, its other frames directions orthogonal to every query."""
    g = torch.Generator().manual_seed(0)
    ctx = torch.zeros(n, m, d)
    ctx[:, :, n:] = torch.randn(n, m, d - n, generator=g)  # unrelated content outside the query dims
    for i in range(n):
        ctx[i, i % m] = F.one_hot(torch.tensor(i), d).float()
    return ctx, torch.ones(n, m, dtype=torch.bool)


def _vr_r1(head: MomentHead, n: int, d: int) -> float:
    model = TaskModel(_Aligned(d), head)
    batch = {"input_ids": torch.arange(n)[:, None].repeat(1, 3), "attention_mask": torch.ones(n, 3, dtype=torch.bool)}
    with torch.no_grad():
        q_vr, _ = encode_queries(model, batch)  # (n, d)
        ctx, mask = _aligned_corpus(n, d)
        scores = video_scores(q_vr, F.normalize(ctx, dim=-1), mask)  # (n, n)
    return (scores.argmax(1) == torch.arange(n)).float().mean().item()


def test_identity_init_keeps_the_backbone_alignment() -> None:
    torch.manual_seed(0)
    n, d = 12, 32
    head = build_head(_Aligned(d), MomentConfig())  # the default: identity
    assert torch.equal(head.query_vr.weight, torch.eye(d)) and torch.equal(head.query_vr.bias, torch.zeros(d))
    assert torch.equal(head.query_span.weight, torch.eye(d))  # task.span_query=words: the token-frame space too,
    assert not head.word_attn.weight.any() and not head.word_attn.bias.any()  # every word weighted alike
    cls_head = build_head(_Aligned(d), MomentConfig(span_query="cls"))
    assert not torch.allclose(cls_head.query_span.weight, torch.eye(d), atol=0.1)  # a fresh map of the [CLS]
    model = TaskModel(_Aligned(d), head)
    ids = torch.arange(4)[:, None]
    q_vr, _ = encode_queries(model, {"input_ids": ids, "attention_mask": torch.ones(4, 1, dtype=torch.bool)})
    assert torch.allclose(q_vr, F.one_hot(ids[:, 0], d).float())  # q_vr = normalize(sentence) = sentence here
    assert _vr_r1(head, n, d) == 1.0  # every query finds its video at step 0


def test_random_init_is_the_previous_head_and_loses_the_alignment() -> None:
    torch.manual_seed(0)
    n, d = 12, 32
    head = build_head(_Aligned(d), MomentConfig(vr_query_init="random"))
    assert not torch.allclose(head.query_vr.weight, torch.eye(d), atol=0.1)
    assert _vr_r1(head, n, d) < 0.5  # a random projection scrambles the shared space


def test_vr_query_init_is_checked() -> None:
    with pytest.raises(ValueError, match="task.vr_query_init"):
        MomentConfig(vr_query_init="eye").validate()
    MomentConfig(vr_query_init="random").validate()


def test_words_and_edge_init_localise_at_step_0() -> None:
    """Query words e_3, e_5 shown in frames 4-7 of 12 (their mean there, unrelated directions elsewhere):
    the step-0 head's best start is frame 4 and best end frame 7; the [CLS] (e_0) is shown nowhere."""
    torch.manual_seed(0)
    d, m = 16, 12
    head = build_head(_Aligned(d), MomentConfig())  # words, edge-initialised convolutions
    model = TaskModel(_Aligned(d), head)
    ids = torch.tensor([[0, 3, 5, 1]])  # [CLS]=e_0, words e_3 and e_5, [SEP]=e_1
    _, q_span = encode_queries(model, {"input_ids": ids, "attention_mask": torch.ones(1, 4, dtype=torch.bool)})
    ctx = torch.zeros(1, m, d)
    ctx[0, :, 8:] = torch.randn(m, d - 8)  # unrelated content
    ctx[0, 4:8, 3] = ctx[0, 4:8, 5] = 2.0
    x = frame_similarity(q_span, ctx, "words")  # (1, M)
    assert x[0, 4:8].min() > x[0, :4].max() and x[0, 4:8].min() > x[0, 8:].max()
    st, ed = head.span_logits(x)
    assert st.argmax().item() == 4 and ed.argmax().item() == 7
    cls_head = build_head(_Aligned(d), MomentConfig(span_query="cls"))
    _, q_cls = encode_queries(
        TaskModel(_Aligned(d), cls_head), {"input_ids": ids, "attention_mask": torch.ones(1, 4, dtype=torch.bool)}
    )
    assert torch.allclose(q_cls, cls_head.query_span(F.one_hot(torch.tensor([0]), d).float()))  # the [CLS] only


def test_span_query_options_are_checked() -> None:
    with pytest.raises(ValueError, match="task.span_query"):
        MomentConfig(span_query="mean").validate()
    with pytest.raises(ValueError, match="task.span_temperature"):
        MomentConfig(span_temperature=0.0).validate()
    MomentConfig(span_query="cls").validate()
