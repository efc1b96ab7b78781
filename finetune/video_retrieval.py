"""Text-to-video retrieval: MSR-VTT (train_9k / train_7k, 1k-A test) and ActivityNet Captions
paragraph-to-video (val_1), finetuned with TACo's losses (eq. 3-6, pretrain/objectives/taco.py).

Inference is TACo's (section 3.4): the sum of its three scores for every query x video pair,
the sentence-level and token-level alignment (`taco_pair_scores`) plus the fusion score, which
needs T_cross for each pair and runs in chunks of `fusion_chunk` pairs (`fusion_all_pairs`).
`rerank: K` is a named approximation: the fusion score re-scores only each query's K best
candidates by the first two scores, which then rank above the rest. Metrics: R@1/5/10,
median and mean rank of the ground-truth video (pretrain/metrics.py; a query whose video is
not in the corpus, rejected in data_prep for its features, gets the worst rank V + 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from finetune import data, plots, ranks
from finetune.alignment import AlignConfig, build_pooling, global_alignment_loss
from finetune.moment import encode_corpus
from finetune.task import Predictions, Terms, dump, total
from pretrain import metrics
from pretrain.objectives.taco import Taco, TacoConfig, Texts, fusion_all_pairs, taco_pair_scores

TOP_PREDICTIONS = 100  # ranked videos written per query


@dataclass
class VideoRetrievalConfig:
    taco: TacoConfig = field(default_factory=TacoConfig)
    rerank: int = 0  # 0: TACo's sum of the three scores over every pair | K: fusion on each query's K best only
    fusion_chunk: int = 256  # query-video pairs per fusion forward at inference
    align: AlignConfig = field(default_factory=AlignConfig)  # multi-level alignment: the global level only

    def validate(self) -> None:
        if self.rerank < 0 or self.fusion_chunk < 1:
            raise ValueError(f"task.rerank must be >= 0 and task.fusion_chunk >= 1, got {self.rerank}, "
                             f"{self.fusion_chunk}")  # fmt: skip
        self.align.validate(segment_applicable=False)


def encode_videos(model: nn.Module, batch: dict) -> Tensor:
    return model.backbone.embed_video(batch["frames"], batch["frame_mask"])  # (B, M, d)


def encode_texts(model: nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
    """(token features y (B, N, d), sentence vectors (B, d)) of a query batch."""
    y = model.backbone.embed_text(batch["input_ids"], batch["attention_mask"])  # (B, N, d)
    return y, model.backbone.sentence(y, batch["attention_mask"])


def fusion_scores(model: nn.Module, pairs: dict) -> Tensor:
    return model.backbone.fusion_score(pairs["x"], pairs["frame_mask"], pairs["y"], pairs["text_mask"])  # (P,)


@dataclass
class VideoRetrievalTask:
    cfg: VideoRetrievalConfig
    uniform_frames: bool = True  # frames sampled evenly over the video
    row_options: data.RowOptions = data.RowOptions()

    def __post_init__(self) -> None:
        self.taco = Taco(self.cfg.taco)

    def build_head(self, backbone: nn.Module) -> nn.Module:
        # TACo's heads (the fusion score) are the backbone's; the head holds multi-level alignment's E_L / E_V pools
        return build_pooling(backbone.config.hidden, self.cfg.align) or nn.Module()

    def loss(self, model: nn.Module, batch: dict, step: int) -> tuple[Tensor, dict[str, float]]:
        bb, frame_mask = model.backbone, batch["frame_mask"]  # (B, M)
        x = bb.embed_video(batch["frames"], frame_mask)  # (B, M, d)
        y = bb.embed_text(batch["input_ids"], batch["attention_mask"])  # (B, N, d)
        # every term is logged weighted: TACo's come multiplied by their lambdas, the alignment's by task.align.glob
        terms: Terms = {k: (1.0, v) for k, v in self.taco.from_embeddings(bb, batch, x, y).items()}
        if self.cfg.align.glob:  # E_L, E_V per task.align.pooling: the words / frames pooled, or [CLS] / mean frame
            e_l, e_v = model.head.language(y, batch["attention_mask"]), model.head.video(x, frame_mask)  # (B, d) each
            glob = self.cfg.align.glob * global_alignment_loss(e_l, e_v, self.cfg.align.margin)
            terms["align_glob_loss"] = (1.0, glob)
        return total(terms)

    def fusion_fn(self, engine: Any):
        """The fusion score (P,) of P (video, text) pairs, through the engine (ZeRO-3 gathers its parameters)."""
        return lambda x, fm, y, tm: engine(fusion_scores, {"x": x, "frame_mask": fm, "y": y, "text_mask": tm}).float()

    def rerank(self, engine: Any, scores: Tensor, x: Tensor, fm: Tensor, y: Tensor, tm: Tensor) -> Tensor:
        """The `rerank` approximation: scores (B, V) with each row's K best candidates re-scored
        (dual + fusion) and ranked above the rest."""
        r = min(self.cfg.rerank, scores.shape[1])
        top = scores.topk(r, dim=1).indices  # (B, r)
        q = torch.arange(len(scores), device=scores.device).repeat_interleave(r)  # (B*r,)
        v = top.flatten()  # (B*r,)
        fuse, chunk = self.fusion_fn(engine), self.cfg.fusion_chunk
        fused = torch.cat([fuse(x[vi], fm[vi], y[qi], tm[qi]) for qi, vi in zip(q.split(chunk), v.split(chunk))])
        fused = fused.view(-1, r)  # (B, r)
        lift = scores.max() - scores.min() + fused.abs().max() + 1.0  # re-scored candidates rank above the rest
        return scores.scatter(1, top, scores.gather(1, top) + fused + lift)  # (B, V)

    def scores(self, engine: Any, x: Tensor, fm: Tensor, texts: Texts) -> tuple[Tensor, Tensor]:
        """(retrieval scores (B, V) of a query batch against every video, its first two scores alone (B, V))."""
        dual = taco_pair_scores(x, fm, texts, self.cfg.taco)  # (B, V)
        y, tm = texts.y, texts.mask
        if self.cfg.rerank:
            return self.rerank(engine, dual, x, fm, y, tm), dual
        return dual + fusion_all_pairs(self.fusion_fn(engine), x, fm, y, tm, self.cfg.fusion_chunk), dual

    @torch.no_grad()
    def predict(self, engine: Any, dcfg: data.FinetuneDataConfig, split: str, tokenizer: Any,
                device: torch.device, with_gt: bool) -> RetrievalPredictions:  # fmt: skip
        """Per query its best videos; with_gt also R@K/MedR/MeanR."""
        queries = data.load_queries(dcfg, split)
        loader = data.build_loader(dcfg, split, tokenizer, 0, 1, False, uniform=True)
        encoded = encode_corpus(engine, loader, device, encode_videos)  # spread over the ranks, gathered
        x, fm, meta = encoded.ctx, encoded.frame_mask, encoded.meta  # (V, M, d), (V, M)
        idf, bs, pad_id = data.load_idf_table(dcfg), dcfg.eval_batch_size, int(tokenizer.pad_token_id or 0)
        starts = range(0, len(queries), bs)

        def score_batch(unit: int) -> tuple[Tensor, Tensor]:
            """(scores, first two scores) (B, V) of query batch `unit`, padded to `bs` queries with copies of its
            last one (dropped after): every batch makes the same forwards, so every rank as many (ZeRO-3)."""
            rows = queries[starts[unit] : starts[unit] + bs]
            batch = next(data.query_batches(rows + rows[-1:] * (bs - len(rows)), tokenizer, dcfg.max_query_len, bs,
                                            pad_id, idf))  # fmt: skip
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            y, y_bar = engine(encode_texts, batch)  # (B, N, d), (B, d)
            texts = Texts(y.float(), y_bar.float(), batch["attention_mask"], batch["toi_weight"])
            scores, dual_scores = self.scores(engine, x, fm, texts)  # (B, V), (B, V)
            return scores[: len(rows)].cpu(), dual_scores[: len(rows)].cpu()

        mine, _ = ranks.spread(len(starts), score_batch, lambda: score_batch(0))
        sizes = [len(queries[s : s + bs]) for s in starts]
        local = [torch.cat([m[i] for m in mine]) if mine else torch.zeros(0, len(meta)) for i in (0, 1)]
        sim, dual = (ranks.rows_in_unit_order(t, sizes) for t in local)  # (Q, V) each
        index = {mt["video_id"]: i for i, mt in enumerate(meta)}
        gt_rows = torch.tensor([index.get(q["video_id"], -1) for q in queries])  # (Q,)
        top_s, top_v = sim.topk(min(TOP_PREDICTIONS, sim.shape[1]), dim=1)  # (Q, P)
        preds = [{"query_id": q["query_id"], "video_id": q["video_id"],
                  "predictions": [[meta[v]["video_id"], s] for v, s in zip(vs, ss)]}
                 for q, vs, ss in zip(queries, top_v.tolist(), top_s.tolist())]  # fmt: skip
        info = {"videos": len(meta), "videos_subsampled": sum(mt["frames"] > dcfg.max_frames for mt in meta)}
        out = RetrievalPredictions(queries=queries, gt_rows=gt_rows, info=info, predictions=preds,
                                   vr_scores=dual[:64])  # fmt: skip
        if with_gt:
            out.metrics, out.per_query = retrieval_metrics(sim, gt_rows), per_query_ranks(sim, gt_rows)
        return out


@dataclass(kw_only=True)
class RetrievalPredictions(Predictions):
    """Text-to-video retrieval's predictions on a split: per query its TOP_PREDICTIONS best videos."""

    predictions: list[dict[str, Any]]  # per query: query_id, video_id, predictions [[video_id, score], ...]
    vr_scores: Tensor  # (R, V) the first queries' sentence + token scores against every video (the heatmap's)

    def write_predictions(self, folder: str, recipe: str, split: str) -> dict[str, str]:
        files = {"predictions": os.path.join(folder, "predictions.json")}
        dump(files["predictions"], self.predictions)
        return files

    def plots(self, folder: str, title: str, heatmap_queries: int) -> dict[str, str]:
        return plots.retrieval_plots(self.vr_ranks(), self.vr_scores, self.gt_rows, self.queries, folder, title,
                                     heatmap_queries)  # fmt: skip

    def vr_ranks(self) -> Tensor:
        """(Q,) 1-based rank of each query's video in its predictions; 10**9 if absent."""
        ranks = torch.full(self.gt_rows.shape, 10**9, dtype=torch.long)  # (Q,)
        for i, (q, entry) in enumerate(zip(self.queries, self.predictions)):
            videos = [p[0] for p in entry["predictions"]]
            if q["video_id"] in videos:
                ranks[i] = videos.index(q["video_id"]) + 1
        return ranks


def gt_video_ranks(sim: Tensor, gt_rows: Tensor) -> Tensor:
    """(Q,) 1-based rank of each query's ground-truth video; a query without its video ranks V + 1."""
    have = gt_rows >= 0  # (Q,)
    ranks = torch.full(gt_rows.shape, sim.shape[1] + 1, dtype=torch.long)  # (Q,)
    ranks[have] = metrics.gt_ranks(sim[have], gt_rows[have])
    return ranks


def retrieval_metrics(sim: Tensor, gt_rows: Tensor) -> dict[str, float]:
    """R@1/5/10 (percent), MedR, MeanR of the ground-truth video; queries without their video rank V + 1."""
    return metrics.recall_at(gt_video_ranks(sim, gt_rows))


def per_query_ranks(sim: Tensor, gt_rows: Tensor) -> dict[str, list[float]]:
    """What the metrics average per query: R@K as 100.0 / 0.0 (their mean), MedR and MeanR as the rank (their
    median and mean). For confidence intervals."""
    ranks = gt_video_ranks(sim, gt_rows)
    out = {f"R@{k}": (100.0 * (ranks <= k).float()).tolist() for k in (1, 5, 10)}
    return {**out, "MedR": ranks.float().tolist(), "MeanR": ranks.float().tolist()}
