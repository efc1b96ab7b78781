"""The finetune options of issue 7 wired into the tasks: the training rows they need, the moment and
QA losses as the task loss plus the weighted alignment / MESM terms (each term is checked against
its equation in test_alignment_mesm.py), the How2QA decoder against a naive loop, MESM's
inference path against its training path, and their config checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_alignment_mesm import naive_attention_pool, naive_words
from test_finetune import _raw

from finetune import data, qa
from finetune.alignment import AlignConfig, frames_in_span, global_alignment_loss, segment_alignment_loss
from finetune.mesm import MesmConfig, enc_loss, fw_loss, segment_features, sentence_features, ss_loss
from finetune.model import TaskModel
from finetune.moment import MomentConfig, MomentTask, encode_videos, inner_words, mesm_pairs, moment_loss
from finetune.video_retrieval import VideoRetrievalConfig
from pretrain.model import ModelConfig, build_model

B, M, N = 3, 6, 7


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_model(ModelConfig(preset="tiny", text_layers=1, cross_layers=1)).eval()


def _batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    frame_mask = torch.ones(B, M, dtype=torch.bool)
    frame_mask[2, 4:] = False
    attention = torch.ones(B, N, dtype=torch.bool)
    attention[1, 5:] = False
    word_mask = torch.zeros(B, N, dtype=torch.bool)
    word_mask[:, 2] = True
    context_mask = torch.ones(B, 2, 5, dtype=torch.bool)
    context_mask[0, 1] = False  # row 0 has one context sentence
    return {"frames": torch.randn(B, M, 64, generator=g), "frame_mask": frame_mask,
            "input_ids": torch.randint(1000, 2000, (B, N), generator=g), "attention_mask": attention,
            "span": torch.tensor([[1, 3], [0, 2], [1, 1]]), "word_mask": word_mask,
            "context_ids": torch.randint(1000, 2000, (B, 2, 5), generator=g), "context_mask": context_mask,
            "keys": ["a", "b", "c"]}  # fmt: skip


def _move_pools_off_uniform(model: TaskModel) -> None:
    """Random attention-pool weights (they start at 0, the masked mean), so that the references check them."""
    pooling = model.head.align_pooling
    if pooling.words is not None:
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for w in (pooling.words.w, pooling.frames.w):
                w.copy_(0.1 * torch.randn(w.shape, generator=g))


def _naive_e_l(model: TaskModel, pooling: str, tok: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """E_L (..., d) of tok (..., N, d): section 3.1's weighted sum of the words, or the [CLS]."""
    if pooling == "cls_mean":
        return tok[..., 0, :]
    w = model.head.align_pooling.words.w.tolist()
    rows = [naive_attention_pool(w, t.tolist(), naive_words(m.tolist()))
            for t, m in zip(tok.reshape(-1, *tok.shape[-2:]), attention.reshape(-1, attention.shape[-1]))]  # fmt: skip
    return torch.tensor(rows).view(*tok.shape[:-2], -1)


def _naive_e_v(model: TaskModel, pooling: str, ctx: torch.Tensor, fm: torch.Tensor) -> torch.Tensor:
    """E_V (B, d) of the frames ctx (B, M, d): section 3.1's weighted sum, or the mean frame."""
    if pooling == "cls_mean":
        return (ctx * fm[..., None]).sum(1) / fm.sum(1, keepdim=True)
    w = model.head.align_pooling.frames.w.tolist()
    return torch.tensor([naive_attention_pool(w, c.tolist(), m.tolist()) for c, m in zip(ctx, fm)])


def _check_pool_gradients(model: TaskModel, pooling: str) -> None:
    params = list(model.head.align_pooling.parameters())
    assert len(params) == (2 if pooling == "attention" else 0)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in params)


# ---------------------------------------------------------------- training rows


def test_row_options_mask_words_pick_context_sentences_and_carry_answers() -> None:
    from pretrain.text import load_tokenizer

    tok = load_tokenizer()
    queries = [{"query_id": i, "text": f"the person cuts onion number {i}", "spans": [[3.0 * i, 3.0 * i + 4.5]],
                "toi": [], "answers": ["onion", "knife", "pan", "salt"], "answer_idx": 2}
               for i in range(5)]  # fmt: skip
    meta = {"video_id": "v", "duration": 45.0, "frame_interval": 1.5, "queries": queries}
    options = data.RowOptions(context_sentences=3, word_mask_ratio=1 / 3, answers=True)
    proc = data.QueryVideoProcessor(tok, None, 16, 0, 8, False, seed=0, training=True, options=options)
    rows = [proc(_raw(meta), epoch) for epoch in range(4)]
    for row in rows:
        words = len(row["input_ids"]) - 2
        assert int(row["word_mask"].sum()) == round(words / 3)
        assert not row["word_mask"][0] and not row["word_mask"][-1]  # [CLS] and [SEP] are never masked
        own = tok.decode(row["input_ids"][1:-1])
        others = [tok.decode(c[1:-1]) for c in row["context_ids"]]
        assert len(others) == 3 and own not in others and len(set(others)) == 3
        assert all(o in {q["text"] for q in queries} for o in others)
        assert [tok.decode(a[1:-1]) for a in row["answer_ids"]] == queries[0]["answers"] and row["answer_idx"] == 2
    again = proc(_raw(meta), 0)
    assert again["word_mask"].tolist() == rows[0]["word_mask"].tolist()  # drawn by (seed, epoch, video)
    assert [c.tolist() for c in again["context_ids"]] == [c.tolist() for c in rows[0]["context_ids"]]
    batch = data.collate_rows(rows[:2], 0)
    assert batch["context_ids"].shape[:2] == (2, 3) and batch["answer_ids"].shape[:2] == (2, 4)
    assert batch["answer_idx"].tolist() == [2, 2] and batch["word_mask"].shape == batch["input_ids"].shape
    single = data.collate_rows([{**rows[0], "context_ids": rows[0]["context_ids"][:1]}, rows[1]], 0)
    assert single["context_mask"][0, 1:].any(-1).tolist() == [False, False]  # missing sentences are padding


# ---------------------------------------------------------------- the moment loss with the options on


@pytest.mark.parametrize("pooling", ["attention", "cls_mean"])
def test_moment_loss_is_the_task_loss_plus_the_weighted_terms(backbone, pooling) -> None:
    torch.manual_seed(1)
    mesm = MesmConfig(fw=0.5, ss=0.3, enc=0.2)
    align = AlignConfig(glob=0.7, seg=0.4, margin=0.3, pooling=pooling)
    cfg = MomentConfig(temperature=0.1, span_weight=0.5, conv_kernel=3, mesm=mesm, align=align)
    model = TaskModel(backbone, MomentTask(cfg).build_head(backbone)).eval()
    _move_pools_off_uniform(model)
    batch = _batch()
    loss, logs = moment_loss(model, batch, cfg)

    fm, am, span = batch["frame_mask"], batch["attention_mask"], batch["span"]
    ctx = encode_videos(model, batch)
    q_tok = backbone.embed_text(batch["input_ids"], am)
    h = model.head.mesm
    recon = h.reconstruct_words(q_tok, batch["word_mask"], ctx, fm)
    l_fw = fw_loss(backbone.mlm_logits(recon), batch["input_ids"], inner_words(am))
    c_tok = backbone.embed_text(batch["context_ids"].view(B * 2, 5), batch["context_mask"].view(B * 2, 5))
    context = sentence_features(c_tok.view(B, 2, 5, -1), batch["context_mask"])
    gen = h.generate_token(context, batch["context_mask"].any(-1), ctx, fm)
    q_enh = torch.cat([gen[:, None], q_tok], 1)
    q_enh_mask = torch.cat([torch.ones(B, 1, dtype=torch.bool), am], 1)
    l_ss = ss_loss(q_enh, q_enh_mask, segment_features(ctx, span), span, torch.arange(B), 0.9, 1.0)
    aligned = h.align(h.enhance_video(ctx, q_tok, am), q_enh, q_enh_mask) * fm[..., None]
    l_enc = enc_loss(h.saliency_logits(aligned), span, fm)
    q_span = model.head.span_query_vector(q_tok, am)  # the pooled words (tests/integration/test_finetune.py checks it)
    x = torch.einsum("bd,bmd->bm", q_span, F.normalize(aligned, dim=-1))  # the span head reads F
    st, ed = model.head.span_logits(x)
    l_span = sum(F.cross_entropy(st[i, : int(fm[i].sum())][None], span[i, :1]) +
                 F.cross_entropy(ed[i, : int(fm[i].sum())][None], span[i, 1:]) for i in range(B)) / B  # fmt: skip
    e_l, e_v = _naive_e_l(model, pooling, q_tok, am), _naive_e_v(model, pooling, ctx, fm)  # (B, d) each
    l_glob = global_alignment_loss(e_l, e_v, 0.3)
    l_seg = segment_alignment_loss(e_l[:, None], ctx, fm, frames_in_span(span, M), torch.zeros(B, dtype=torch.long),
                                   0.3)  # fmt: skip
    want = logs["vr_loss"] + 0.5 * l_span + 0.5 * l_fw + 0.3 * l_ss + 0.2 * l_enc + 0.7 * l_glob + 0.4 * l_seg
    assert float(loss.detach()) == pytest.approx(float(want.detach()), abs=1e-4)
    for key, value in {"mesm_fw_loss": l_fw, "mesm_ss_loss": l_ss, "mesm_enc_loss": l_enc,
                       "align_glob_loss": l_glob, "align_seg_loss": l_seg}.items():  # fmt: skip
        assert logs[key] == pytest.approx(float(value), abs=1e-5), key
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.mesm.parameters())
    _check_pool_gradients(model, pooling)


def test_moment_loss_without_options_has_no_extra_terms(backbone) -> None:
    cfg = MomentConfig()
    model = TaskModel(backbone, MomentTask(cfg).build_head(backbone)).eval()
    loss, logs = moment_loss(model, _batch(), cfg)
    assert model.head.mesm is None and model.head.align_pooling is None
    assert set(logs) == {"vr_loss", "span_loss", "loss"}
    assert float(loss) == pytest.approx(logs["vr_loss"] + logs["span_loss"], abs=1e-5)


def test_mesm_inference_equals_training_without_context_sentences(backbone) -> None:
    """At inference the generated token sees no context sentence; training with none gives the same F."""
    cfg = MomentConfig(mesm=MesmConfig(fw=1.0, ss=1.0, enc=1.0))
    model = TaskModel(backbone, MomentTask(cfg).build_head(backbone)).eval()
    batch = _batch()
    batch["context_mask"][:] = False
    fm, am = batch["frame_mask"], batch["attention_mask"]
    ctx = encode_videos(model, batch)
    q_tok = backbone.embed_text(batch["input_ids"], am)
    h = model.head.mesm
    gen = h.generate_token(torch.randn(B, 2, ctx.shape[-1]), torch.zeros(B, 2, dtype=torch.bool), ctx, fm)
    q_enh = torch.cat([gen[:, None], q_tok], 1)
    trained = h.align(h.enhance_video(ctx, q_tok, am), q_enh, torch.cat([am[:, :1], am], 1)) * fm[..., None]
    inferred = mesm_pairs(model, {"ctx": ctx, "frame_mask": fm, "q_tok": q_tok, "q_mask": am})
    assert torch.allclose(trained, inferred, atol=1e-5)
    other = mesm_pairs(model, {"ctx": ctx.flip(0), "frame_mask": fm.flip(0), "q_tok": q_tok, "q_mask": am})
    assert not torch.allclose(other, inferred)  # F depends on the (query, video) pair


# ---------------------------------------------------------------- How2QA


@pytest.mark.parametrize("pooling", ["attention", "cls_mean"])
def test_qa_loss_matches_a_naive_decoder_and_adds_segment_alignment(backbone, pooling) -> None:
    torch.manual_seed(2)
    cfg = qa.QAConfig(align=AlignConfig(glob=0.5, seg=1.0, margin=0.2, pooling=pooling))
    task = qa.QATask(cfg)
    model = TaskModel(backbone, task.build_head(backbone)).eval()
    _move_pools_off_uniform(model)
    batch = _batch()
    a = 4
    batch["answer_ids"] = torch.randint(1000, 2000, (B, a, 5))
    batch["answer_mask"] = torch.ones(B, a, 5, dtype=torch.bool)
    batch["answer_mask"][0, 1, 3:] = False  # a shorter candidate: its padding is not pooled
    batch["answer_idx"] = torch.tensor([0, 3, 1])
    loss, logs = task.loss(model, batch, 0)

    fm, span, target = batch["frame_mask"], batch["span"], batch["answer_idx"]
    ctx = encode_videos(model, batch)
    # the decoder's l_k: the mean of each text's valid tokens (the packaged MiniLM's sentence vector)
    q_tokens = backbone.embed_text(batch["input_ids"], batch["attention_mask"])
    e_q = [q_tokens[i][batch["attention_mask"][i]].mean(0) for i in range(B)]
    lang = torch.zeros(B, a, ctx.shape[-1])
    ce = 0.0
    for i in range(B):
        scores = []
        for k in range(a):
            ans_mask = batch["answer_mask"][i, k]
            e_ans = backbone.embed_text(batch["answer_ids"][i, k][None], ans_mask[None])[0][ans_mask].mean(0)
            lang[i, k] = (e_q[i] + e_ans) / 2
            valid = [t for t in range(M) if fm[i, t]]
            w = torch.softmax(torch.stack([lang[i, k] @ ctx[i, t] / math.sqrt(ctx.shape[-1]) for t in valid]), 0)
            pooled = sum(w[j] * ctx[i, t] for j, t in enumerate(valid))
            scores.append(model.head.score(torch.cat([lang[i, k], pooled, lang[i, k] * pooled]))[0])
        ce += -torch.log_softmax(torch.stack(scores), 0)[target[i]] / B
    # the alignment's language samples: (E_question + E_answer_k) / 2, each pooled per task.align.pooling
    q_tok = backbone.embed_text(batch["input_ids"], batch["attention_mask"])
    a_tok = backbone.embed_text(batch["answer_ids"].view(B * a, 5), batch["answer_mask"].view(B * a, 5))
    e_q = _naive_e_l(model, pooling, q_tok, batch["attention_mask"])  # (B, d)
    e_ans = _naive_e_l(model, pooling, a_tok, batch["answer_mask"].view(B * a, 5)).view(B, a, -1)  # (B, A, d)
    align_lang = (e_q[:, None] + e_ans) / 2
    e_v = _naive_e_v(model, pooling, ctx, fm)
    glob = global_alignment_loss(align_lang[torch.arange(B), target], e_v, 0.2)
    seg = segment_alignment_loss(align_lang, ctx, fm, frames_in_span(span, M), target, 0.2)
    assert logs["qa_loss"] == pytest.approx(float(ce), abs=1e-5)
    assert float(loss) == pytest.approx(float(ce + 0.5 * glob + seg), abs=1e-5)
    assert logs["align_glob_loss"] == pytest.approx(float(glob), abs=1e-5)
    assert logs["align_seg_loss"] == pytest.approx(float(seg), abs=1e-5)
    loss.backward()
    _check_pool_gradients(model, pooling)


def test_qa_accuracy_counts_unanswered_questions_as_wrong() -> None:
    queries = [{"answer_idx": 1}, {"answer_idx": 0}, {"answer_idx": 3}, {"answer_idx": 2}]
    preds = [{"prediction": 1}, {"prediction": 2}, {"prediction": 3}, {"prediction": None}]
    assert qa.accuracy(preds, queries) == {"accuracy": 50.0, "questions": 4, "answered": 3}


# ---------------------------------------------------------------- config checks


def test_option_configs_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="video retrieval"):
        VideoRetrievalConfig(align=AlignConfig(seg=1.0)).validate()
    VideoRetrievalConfig(align=AlignConfig(glob=1.0)).validate()
    for bad in (AlignConfig(glob=-1.0), AlignConfig(margin=-0.1)):
        with pytest.raises(ValueError, match="task.align"):
            MomentConfig(align=bad).validate()
    for bad in (MesmConfig(fw=-1.0), MesmConfig(mask_ratio=1.0), MesmConfig(gamma=1.0), MesmConfig(ss_layers=0)):
        with pytest.raises(ValueError, match="task.mesm"):
            MomentConfig(mesm=bad).validate()
    assert not MesmConfig().enabled and MesmConfig(enc=0.1).enabled
