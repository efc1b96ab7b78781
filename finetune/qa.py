"""Multiple-choice video question answering: How2QA (HERO's How2 clips, 4 candidates per question),
in the setting of the multi-level alignment paper (../shared/papers/multi_level_alignment.txt).

    clip + subtitles -> T_cross -> E_f = ctx (B, M, d)        the moment task's video encoding
    question, answer_k -> sentence vectors E_L, E_ans_k (d)  encoded separately, the backbone's text pooling
    language sample k:  l_k = (E_L + E_ans_k) / 2              eq. 5's pairing of question and answer
    decoder:  a_k = softmax_t(l_k . E_f,t / sqrt(d)),  p_k = sum_t a_k,t E_f,t,
              score_k = MLP([l_k, p_k, l_k * p_k])              a lightweight attention-pooling decoder
    L_task = cross-entropy of the scores against the correct candidate

With `task.align` (finetune/alignment.py): L_train = L_task + lambda1 L_glob + lambda2 L_seg
(eq. 1). L_seg's language samples are the 4 candidates and its true segment is the question's
time span (eq. 5-6): the paper's best How2QA setting, lambda1 = 0 and lambda2 = 1, is the
default. L_glob pairs the true language sample with E_V over the batch. The alignment losses'
E_question, E_ans_k and E_V follow `task.align.pooling` (finetune/alignment.py): "attention"
(default) pools the words of the question and of each candidate and the frames with the head's
learned attention pools (section 3.1's weighted sums), "cls_mean" takes each [CLS] and the mean
frame. The decoder's l_k stays the pair of sentence vectors (pretrain/pooling.py) whatever the
option, so that the task's own model does not change with the alignment losses.

Evaluation: accuracy over every question of the split, the official How2QA metric; a question
whose clip was rejected in data_prep counts as wrong and is counted in eval_info.json.
Frames keep the time grid: training crops a clip longer than `data.max_frames` to a window
holding the span, evaluation keeps the first `data.max_frames` (How2 clips: 40 frames of 1.5 s).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from finetune import data, plots
from finetune.alignment import (
    AlignConfig,
    AlignPooling,
    build_pooling,
    frames_in_span,
    global_alignment_loss,
    segment_alignment_loss,
)
from finetune.moment import encode_corpus, encode_videos
from finetune.task import Predictions, Terms, dump, total
from pretrain import text


@dataclass
class QAConfig:
    align: AlignConfig = field(default_factory=lambda: AlignConfig(glob=0.0, seg=1.0))

    def validate(self) -> None:
        self.align.validate()


class QAHead(nn.Module):
    def __init__(self, d: int, align_pooling: AlignPooling | None = None):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(3 * d, d), nn.GELU(), nn.Linear(d, 1))
        self.align_pooling = align_pooling  # multi-level alignment's E_L / E_ans / E_V (None: alignment off)


def language_tokens(model: nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
    """The token encodings of the question (B, N, d) and of each candidate (B, A, Na, d), encoded separately."""
    bb = model.backbone
    q_tok = bb.embed_text(batch["input_ids"], batch["attention_mask"])  # (B, N, d)
    ids, mask = batch["answer_ids"], batch["answer_mask"]  # (B, A, Na)
    b, a, n = ids.shape
    a_tok = bb.embed_text(ids.view(b * a, n), mask.view(b * a, n)).view(b, a, n, -1)  # (B, A, Na, d)
    return q_tok, a_tok


def decoder_samples(model: nn.Module, batch: dict, q_tok: Tensor, a_tok: Tensor) -> Tensor:
    """The decoder's language samples l_k = (E_question + E_answer_k) / 2 (B, A, d), each the sentence
    vector of the backbone's text pooling (pretrain/pooling.py)."""
    b, a, n, d = a_tok.shape
    e_q = model.backbone.sentence(q_tok, batch["attention_mask"])  # (B, d)
    e_a = model.backbone.sentence(a_tok.view(b * a, n, d), batch["answer_mask"].view(b * a, n)).view(b, a, d)
    return (e_q[:, None] + e_a) / 2  # (B, A, d)


def alignment_samples(pooling: AlignPooling, batch: dict, q_tok: Tensor, a_tok: Tensor) -> Tensor:
    """The alignment losses' l_k = (E_L + E_ans_k) / 2, (B, A, d), both pooled per task.align.pooling."""
    e_q = pooling.language(q_tok, batch["attention_mask"])  # (B, d)
    e_ans = pooling.language(a_tok, batch["answer_mask"])  # (B, A, d)
    return (e_q[:, None] + e_ans) / 2


def answer_logits(model: nn.Module, ctx: Tensor, frame_mask: Tensor, lang: Tensor) -> Tensor:
    """score_k (B, A): each language sample pools the frames it attends to, then the MLP scores it."""
    att = torch.einsum("bad,bmd->bam", lang, ctx) / math.sqrt(ctx.shape[-1])  # (B, A, M)
    att = att.masked_fill(~frame_mask[:, None], float("-inf")).softmax(-1)
    pooled = torch.einsum("bam,bmd->bad", att, ctx)  # (B, A, d)
    return model.head.score(torch.cat([lang, pooled, lang * pooled], -1)).squeeze(-1)  # (B, A)


def qa_loss(model: nn.Module, batch: dict, cfg: QAConfig) -> tuple[Tensor, dict[str, float]]:
    frame_mask, target = batch["frame_mask"], batch["answer_idx"]  # (B, M), (B,)
    ctx = encode_videos(model, batch)  # (B, M, d)
    q_tok, a_tok = language_tokens(model, batch)  # (B, N, d), (B, A, Na, d)
    lang = decoder_samples(model, batch, q_tok, a_tok)  # (B, A, d) the decoder's l_k
    logits = answer_logits(model, ctx, frame_mask, lang)  # (B, A)
    terms: Terms = {"qa_loss": (1.0, F.cross_entropy(logits.float(), target))}
    if cfg.align.enabled:  # the alignment losses' l_k: E_question and E_ans_k pooled per task.align.pooling
        align_lang = alignment_samples(model.head.align_pooling, batch, q_tok, a_tok)  # (B, A, d)
    if cfg.align.glob:
        e_v = model.head.align_pooling.video(ctx, frame_mask)  # (B, d)
        true_lang = align_lang[torch.arange(len(target)), target]  # (B, d)
        terms["align_glob_loss"] = (cfg.align.glob, global_alignment_loss(true_lang, e_v, cfg.align.margin))
    if cfg.align.seg:
        true_frames = frames_in_span(batch["span"], ctx.shape[1])  # (B, M)
        seg = segment_alignment_loss(align_lang, ctx, frame_mask, true_frames, target, cfg.align.margin)
        terms["align_seg_loss"] = (cfg.align.seg, seg)
    loss, logs = total(terms)
    logs["accuracy"] = float((logits.argmax(1) == target).float().mean())
    return loss, logs


def question_batches(queries: list[dict], tokenizer: Any, max_len: int, batch_size: int, pad_id: int) -> Any:
    """The questions with their candidates, tokenised as a training batch's fields, in order."""

    def enc(s: str) -> Tensor:
        return torch.from_numpy(text.encode(s, [], tokenizer, max_len).input_ids)

    for b in range(0, len(queries), batch_size):
        rows = []
        for q in queries[b : b + batch_size]:
            rows.append({"key": str(q["query_id"]), "input_ids": enc(q["text"]), "toi_weight": torch.zeros(1),
                         "answer_ids": [enc(a) for a in q["answers"]], "answer_idx": int(q["answer_idx"])})  # fmt: skip
        yield data.collate_rows(rows, pad_id)


def scores_of(model: nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
    """(score_k (B, A), cos(l_k, E_f,t) (B, A, M)) for the questions of a batch and their clips; the
    cosines are eq. 5's S_seg, with the alignment's l_k when the head has one (else the decoder's)."""
    q_tok, a_tok = language_tokens(model, batch)  # (B, N, d), (B, A, Na, d)
    lang = decoder_samples(model, batch, q_tok, a_tok)  # (B, A, d) the decoder's l_k
    ctx = batch["ctx"].to(lang.dtype)  # (B, M, d)
    logits = answer_logits(model, ctx, batch["frame_mask"], lang)
    pooling = model.head.align_pooling
    align_lang = lang if pooling is None else alignment_samples(pooling, batch, q_tok, a_tok)  # (B, A, d)
    sim = torch.einsum("bad,bmd->bam", F.normalize(align_lang, dim=-1), F.normalize(ctx, dim=-1))
    return logits, sim


@dataclass
class QATask:
    cfg: QAConfig
    uniform_frames: bool = False  # the time grid is kept (the span is in frames)
    row_options: data.RowOptions = data.RowOptions(answers=True)

    def build_head(self, backbone: nn.Module) -> nn.Module:
        return QAHead(backbone.config.hidden, build_pooling(backbone.config.hidden, self.cfg.align))

    def loss(self, model: nn.Module, batch: dict, step: int) -> tuple[Tensor, dict[str, float]]:
        return qa_loss(model, batch, self.cfg)

    @torch.no_grad()
    def predict(self, engine: Any, dcfg: data.FinetuneDataConfig, split: str, tokenizer: Any,
                device: torch.device, with_gt: bool) -> QAPredictions:  # fmt: skip
        """Per question the candidates' scores and the chosen one; with_gt also the accuracy."""
        queries = data.load_queries(dcfg, split)
        encoded = encode_corpus(engine, data.build_loader(dcfg, split, tokenizer, 0, 1, False, uniform=False), device)
        index = encoded.index
        gt_rows = torch.tensor([index.get(q["video_id"], -1) for q in queries])  # (Q,) -1: clip rejected
        have = [i for i in range(len(queries)) if gt_rows[i] >= 0]
        preds: list[dict[str, Any]] = [{"query_id": q["query_id"], "video_id": q["video_id"], "prediction": None,
                                        "scores": None} for q in queries]  # fmt: skip
        sims: list[Tensor] = []
        pad_id = int(tokenizer.pad_token_id or 0)
        for b0 in range(0, len(have), dcfg.eval_batch_size):
            rows = have[b0 : b0 + dcfg.eval_batch_size]
            batch = next(question_batches([queries[i] for i in rows], tokenizer, dcfg.max_query_len, len(rows), pad_id))
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            batch["ctx"], batch["frame_mask"] = encoded.ctx[gt_rows[rows]], encoded.frame_mask[gt_rows[rows]]
            logits, sim = engine(scores_of, batch)
            for i, scores in zip(rows, logits.float().tolist()):
                preds[i]["prediction"], preds[i]["scores"] = int(torch.tensor(scores).argmax()), scores
            sims.extend(sim.float().unbind(0))
        info = {"videos": len(encoded.meta), "videos_cut": sum(m["frames"] > dcfg.max_frames for m in encoded.meta)}
        out = QAPredictions(queries=queries, gt_rows=gt_rows, info=info, predictions=preds, similarity=sims[:4])
        if with_gt:
            out.metrics = accuracy(preds, queries)
            out.per_query = {"accuracy": [100.0 * (p["prediction"] == q["answer_idx"]) for p, q in zip(preds, queries)]}
        return out


@dataclass(kw_only=True)
class QAPredictions(Predictions):
    """How2QA's predictions on a split: per question the candidates' scores and the chosen one."""

    predictions: list[dict[str, Any]]  # per question: query_id, video_id, prediction, scores (None: clip rejected)
    similarity: list[Tensor]  # the first answered questions' cos(l_k, E_f,t), (A, M) each (the figure's)

    def write_predictions(self, folder: str, recipe: str, split: str) -> dict[str, str]:
        files = {"predictions": os.path.join(folder, "predictions.json")}
        dump(files["predictions"], self.predictions)
        return files

    def plots(self, folder: str, title: str, heatmap_queries: int) -> dict[str, str]:
        """The multi-level alignment paper's Figure 5: cos(question + candidate, frame) of a question."""
        if not self.similarity:
            return {}
        first = next(i for i, p in enumerate(self.predictions) if p["prediction"] is not None)
        q = self.queries[first]
        labels = [f"{'*' if k == q['answer_idx'] else ' '} {a}" for k, a in enumerate(q["answers"])]
        sim = self.similarity[0]  # (A, M)
        path = f"{folder}/similarity.png"
        caption = (
            "Rows: the question with each candidate answer (* the correct one); columns: the clip's frames; "
            "cells: cosine of question + candidate and the frame. A good model: the * row is the brightest "
            "where the answer happens in the clip."
        )
        plots.similarity_heatmap(sim, labels, [str(t) for t in range(sim.shape[1])], path,
                                 f"{title}: {q['text']} (* correct)", colorbar="cosine", caption=caption,
                                 axes=("frame", "candidate"))  # fmt: skip
        return {"heatmap": path}


def accuracy(preds: list[dict[str, Any]], queries: list[dict]) -> dict[str, float]:
    """Percent of questions whose chosen candidate is the correct one (no prediction: wrong)."""
    correct = sum(p["prediction"] == q["answer_idx"] for p, q in zip(preds, queries))
    return {"accuracy": round(100.0 * correct / len(queries), 2), "questions": len(queries),
            "answered": sum(p["prediction"] is not None for p in preds)}  # fmt: skip
