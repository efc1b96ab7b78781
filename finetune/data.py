"""Finetune data: the converted sets (docs/finetune_sets.md) through the pretraining loader.

A finetune shard holds one sample per video with all its queries. Training reuses the
pretraining loader's VideoTextLoader (pretrain/loader/: deterministic shard plan, per-rank
split, exact resume, corrupt-shard accounting) with its own processor: each video gives one
training row per epoch, a query drawn by (seed, epoch, video) and, for DiDeMo's several
annotators, one of its spans. So an epoch is one pass over the videos (TVR: ~5 queries each, so
~5 epochs see every query once on average), and a batch never holds the same video twice:
in-batch negatives are never false negatives.

Evaluation reads the split's videos once (no shuffle) and its queries from queries.jsonl,
every valid query of the split, also those whose video was rejected for its features: the
official evaluation counts them.

Frames: moment retrieval keeps the time grid (training crops longer videos to a window of
`max_frames` that contains the span; evaluation keeps the first `max_frames` and counts the
videos cut); video retrieval samples `max_frames` frames uniformly.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from data_prep.storage import s3_options
from pretrain import text
from pretrain.loader import (
    LoaderConfig,
    RawSample,
    VideoTextLoader,
    copy_serial,
    frames_tensor,
    readonly_tensor,
    resolve_shards,
    retry_policy,
    sample_rng,
)

log = logging.getLogger(__name__)

RNG_QUERY, RNG_SPAN, RNG_WINDOW, RNG_CONTEXT, RNG_WORDS = 10, 11, 12, 13, 14  # per-sample generator purposes


@dataclass(frozen=True)
class RowOptions:
    """What a task needs in a training row beyond (query, frames, span)."""

    context_sentences: int = 0  # SS-MESM: up to this many other queries of the video (context_ids)
    word_mask_ratio: float = 0.0  # FW-MESM: this fraction of the query's words masked (word_mask)
    answers: bool = False  # How2QA: the candidate answers (answer_ids) and the correct one's index


@dataclass
class FinetuneDataConfig:
    root: str = ""  # a converted dataset: <root>/<split>/ shards + queries.jsonl, <root>/gt/ (local or s3://)
    train_split: str = "train"
    eval_split: str = "val"  # evaluated with metrics during and after training
    test_split: str | None = None  # predicted at the end without metrics (TVR: test_public)
    batch_size: int = 16  # per rank
    eval_batch_size: int = 32
    max_query_len: int = 32  # tokens, [CLS] and [SEP] included
    max_sub_len: int = 0  # subtitle tokens encoded with the video (0: no subtitles)
    max_frames: int = 100
    toi_df: str | None = None  # TACo IDF table, e.g. the pretraining corpus's toi_df.json (None: weights 1)
    idf: str = "taco"  # IDF formula and sub-word sharing, as in pretraining (pretrain/text.py)
    subword_weights: str = "share"
    shuffle_buffer: int = 256
    num_workers: int = 0
    streams: int = 2
    seed: int = 0
    s3_endpoint: str | None = None
    pin_memory: bool | None = None  # page-locked batches for an asynchronous copy to the GPU (None: with CUDA)
    frames_dtype: str = "float16"  # frames as they cross from the loader's workers (LoaderConfig.frames_dtype)

    def split_dir(self, split: str) -> str:
        return f"{self.root.rstrip('/')}/{split}"

    def loader_config(self, split: str, batch_size: int) -> LoaderConfig:
        return LoaderConfig(
            train=self.split_dir(split), batch_size=batch_size, max_text_len=self.max_query_len,
            max_frames=self.max_frames, shuffle_buffer=self.shuffle_buffer, num_workers=self.num_workers,
            streams=self.streams, seed=self.seed, toi_df=self.toi_df, idf=self.idf,
            subword_weights=self.subword_weights, s3_endpoint=self.s3_endpoint, pin_memory=self.pin_memory,
            frames_dtype=self.frames_dtype,
        )  # fmt: skip


def span_frames(span: Sequence[float], interval: float, num_frames: int) -> tuple[int, int]:
    """Inclusive frame indices [i, j] covering a span in seconds, clamped to the frames."""
    i = min(max(int(np.floor(span[0] / interval)), 0), num_frames - 1)
    j = min(max(int(np.ceil(span[1] / interval)) - 1, i), num_frames - 1)
    return i, j


def uniform_frames(t: int, m: int) -> np.ndarray:
    """m frame indices spread evenly over t frames (all of them when t <= m)."""
    if t <= m:
        return np.arange(t)
    return np.linspace(0, t - 1, m).round().astype(np.int64)


def features(raw: RawSample) -> np.ndarray:
    """(T, D) read-only view of the sample's features in their stored dtype."""
    t, d = raw.shape
    feats = np.frombuffer(raw.npy, dtype=np.dtype(raw.dtype), count=t * d, offset=raw.header)
    return feats.reshape((t, d), order="F" if raw.fortran else "C")


@dataclass
class QueryVideoProcessor:
    """RawSample -> one batch row: (query, video, span) in training, the video alone in evaluation."""

    tokenizer: Any
    idf: text.IdfTable
    max_query_len: int
    max_sub_len: int
    max_frames: int
    uniform: bool  # video retrieval: sample frames uniformly; moment retrieval: keep the time grid
    seed: int
    training: bool
    options: RowOptions = RowOptions()
    frames_dtype: str = "float16"  # of the batch's frames (LoaderConfig.frames_dtype)

    def __call__(self, raw: RawSample, epoch: int) -> dict[str, Any]:
        meta, feats = raw.meta, features(raw)  # (T, D)
        row: dict[str, Any] = {"key": raw.key, "meta": video_meta(meta, len(feats))}
        if self.max_sub_len:
            sub = text.encode(meta.get("sub_text", ""), meta.get("sub_toi", []), self.tokenizer, self.max_sub_len)
            row["sub_ids"] = torch.from_numpy(sub.input_ids)  # (Ns,)
        if not self.training:
            first = np.arange(min(len(feats), self.max_frames))
            row["frames"] = feats[uniform_frames(len(feats), self.max_frames) if self.uniform else first]  # (M, D)
            return row
        queries = [q for q in meta["queries"] if q["spans"]]
        if not queries:
            raise ValueError(f"{raw.key}: no query with ground truth in a training split")
        query = queries[int(sample_rng(self.seed, epoch, raw.key, RNG_QUERY).integers(len(queries)))]
        enc = text.encode(query["text"], query.get("toi", []), self.tokenizer, self.max_query_len, self.idf)
        row.update(input_ids=torch.from_numpy(enc.input_ids), toi_weight=torch.from_numpy(enc.toi_weight))
        if self.uniform:
            row["frames"] = feats[uniform_frames(len(feats), self.max_frames)]  # (M, D)
            return row
        spans = query["spans"]
        span = spans[int(sample_rng(self.seed, epoch, raw.key, RNG_SPAN).integers(len(spans)))]
        i, j = span_frames(span, float(meta["frame_interval"]), len(feats))
        lo = self.window(len(feats), i, j, sample_rng(self.seed, epoch, raw.key, RNG_WINDOW))
        row["frames"] = feats[lo : lo + self.max_frames]  # (M, D)
        row["span"] = torch.tensor([i - lo, min(j, lo + self.max_frames - 1) - lo])  # (2,) inclusive frames
        self.add_options(row, raw.key, epoch, query, [q for q in meta["queries"] if q is not query])
        return row

    def add_options(self, row: dict[str, Any], key: str, epoch: int, query: dict, others: list[dict]) -> None:
        """The RowOptions fields, each drawn by (seed, epoch, video) like the query."""
        opts = self.options
        if opts.word_mask_ratio:
            real = int(row["input_ids"].shape[0]) - 2  # words between [CLS] and [SEP]
            n = max(1, round(opts.word_mask_ratio * real)) if real > 0 else 0
            chosen = sample_rng(self.seed, epoch, key, RNG_WORDS).permutation(real)[:n] + 1
            mask = torch.zeros(row["input_ids"].shape, dtype=torch.bool)  # (N,)
            mask[torch.from_numpy(chosen)] = True
            row["word_mask"] = mask
        if opts.context_sentences:
            rng = sample_rng(self.seed, epoch, key, RNG_CONTEXT)
            picked = sorted(rng.permutation(len(others))[: opts.context_sentences].tolist())
            row["context_ids"] = [torch.from_numpy(text.encode(others[i]["text"], others[i].get("toi", []),
                                  self.tokenizer, self.max_query_len).input_ids) for i in picked]  # fmt: skip
        if opts.answers:
            row["answer_ids"] = [torch.from_numpy(text.encode(a, [], self.tokenizer, self.max_query_len).input_ids)
                                 for a in query["answers"]]  # fmt: skip
            row["answer_idx"] = int(query["answer_idx"])

    def window(self, t: int, i: int, j: int, rng: np.random.Generator) -> int:
        """First frame of a random max_frames window holding frames i..j (as much of them as fits)."""
        if t <= self.max_frames:
            return 0
        lo_min = max(0, j - self.max_frames + 1)
        lo_max = min(i, t - self.max_frames)
        return int(rng.integers(lo_min, lo_max + 1)) if lo_max >= lo_min else min(i, t - self.max_frames)

    def collate(self, samples: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
        return collate_rows(samples, pad_id, self.frames_dtype)


def video_meta(meta: dict, num_frames: int) -> dict[str, Any]:
    return {"video_id": meta["video_id"], "duration": float(meta["duration"]),
            "interval": float(meta["frame_interval"]), "frames": num_frames}  # fmt: skip


def pad_ids(seqs: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) long ids padded with pad_id, and the (B, N) bool mask of real tokens."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)  # (B, N)
    mask = torch.zeros(len(seqs), n, dtype=torch.bool)  # (B, N)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = s, True
    return ids, mask


def collate_rows(samples: Sequence[dict[str, Any]], pad_id: int, frames_dtype: str = "float16") -> dict[str, Any]:
    """Pad the fields present: query input_ids/attention_mask/toi_weight (B, N), sub_input_ids/
    sub_attention_mask (B, Ns), frames (B, M, D) in `frames_dtype` / frame_mask (B, M), span (B, 2); keys, meta."""
    first = samples[0]
    out: dict[str, Any] = {"keys": [s["key"] for s in samples], "meta": [s.get("meta") for s in samples]}
    if "input_ids" in first:
        out["input_ids"], out["attention_mask"] = pad_ids([s["input_ids"] for s in samples], pad_id)
        toi = torch.zeros(out["input_ids"].shape, dtype=torch.float32)  # (B, N)
        for i, s in enumerate(samples):
            toi[i, : len(s["toi_weight"])] = s["toi_weight"]
        out["toi_weight"] = toi
    if "sub_ids" in first:
        out["sub_input_ids"], out["sub_attention_mask"] = pad_ids([s["sub_ids"] for s in samples], pad_id)
    if "frames" in first:
        m, d = max(len(s["frames"]) for s in samples), first["frames"].shape[1]
        frames = frames_tensor(len(samples), m, d, frames_dtype)  # (B, M, D)
        mask = torch.zeros(len(samples), m, dtype=torch.bool)  # (B, M)
        for i, s in enumerate(samples):
            n = len(s["frames"])
            copy_serial(frames[i, :n], readonly_tensor(s["frames"]))  # (n, D) -> frames_dtype
            copy_serial(frames[i, n:], None)
            mask[i, :n] = True
        out["frames"], out["frame_mask"] = frames, mask
    if "span" in first:
        out["span"] = torch.stack([s["span"] for s in samples])  # (B, 2)
    if "word_mask" in first:
        out["word_mask"] = pad_ids([s["word_mask"].long() for s in samples], 0)[0].bool()  # (B, N)
    if "context_ids" in first:  # (B, K, Nc) ids, (B, K, Nc) mask; a row with fewer sentences has empty ones
        k = max(1, max(len(s["context_ids"]) for s in samples))
        empty = torch.full((1,), pad_id, dtype=torch.long)
        seqs = [c for s in samples for c in s["context_ids"] + [empty] * (k - len(s["context_ids"]))]
        ids, mask = pad_ids(seqs, pad_id)  # (B*K, Nc)
        for r, s in enumerate(samples):
            mask[r * k + len(s["context_ids"]) : (r + 1) * k] = False
        out["context_ids"], out["context_mask"] = ids.view(len(samples), k, -1), mask.view(len(samples), k, -1)
    if "answer_ids" in first:  # (B, A, Na) candidates; answer_idx (B,)
        a = len(first["answer_ids"])
        if any(len(s["answer_ids"]) != a for s in samples):
            raise ValueError("every question of a batch must have the same number of candidate answers")
        ids, mask = pad_ids([x for s in samples for x in s["answer_ids"]], pad_id)  # (B*A, Na)
        out["answer_ids"], out["answer_mask"] = ids.view(len(samples), a, -1), mask.view(len(samples), a, -1)
        out["answer_idx"] = torch.tensor([s["answer_idx"] for s in samples])
    return out


def build_loader(cfg: FinetuneDataConfig, split: str, tokenizer: Any, rank: int, world: int, training: bool,
                 uniform: bool, options: RowOptions = RowOptions()) -> VideoTextLoader:  # fmt: skip
    """The training loader of a split (this rank's share), or its videos once (evaluation, one rank)."""
    batch = cfg.batch_size if training else cfg.eval_batch_size
    lcfg = cfg.loader_config(split, batch)
    corpus = resolve_shards(lcfg.train, cfg.s3_endpoint, retry_policy(lcfg))
    proc = QueryVideoProcessor(tokenizer, load_idf_table(cfg), cfg.max_query_len, cfg.max_sub_len, cfg.max_frames,
                               uniform, cfg.seed, training, options, lcfg.frames_dtype)  # fmt: skip
    if training:
        return VideoTextLoader(lcfg, corpus, rank, world, True, tokenizer, proc)
    return VideoTextLoader(lcfg, corpus, 0, 1, False, tokenizer, proc)


def load_idf_table(cfg: FinetuneDataConfig) -> text.IdfTable:
    """TACo's IDF weights from data.toi_df (the finetune sets count none of their own; none: weights 1)."""
    if not cfg.toi_df:
        return text.IdfTable(formula=cfg.idf, subwords=cfg.subword_weights)
    opts = s3_options(cfg.s3_endpoint) if cfg.toi_df.startswith("s3://") else {}
    return text.load_idf(cfg.toi_df, opts, cfg.idf, cfg.subword_weights)


def read_json(url: str, endpoint: str | None = None, lines: bool = False) -> Any:
    """A JSON (or JSON-lines) file, local or s3://."""
    import fsspec

    opts = s3_options(endpoint) if url.startswith("s3://") else {}
    with fsspec.open(url, "r", **opts) as f:
        return [json.loads(line) for line in f if line.strip()] if lines else json.load(f)


def load_queries(cfg: FinetuneDataConfig, split: str) -> list[dict]:
    """The split's queries.jsonl: {query_id, video_id, text, spans, toi, ...extras}; an empty one is an error."""
    queries = read_json(f"{cfg.split_dir(split)}/queries.jsonl", cfg.s3_endpoint, lines=True)
    if not queries:
        raise ValueError(f"{cfg.split_dir(split)}/queries.jsonl holds no query")
    return queries


def load_video2idx(cfg: FinetuneDataConfig, split: str) -> dict[str, int]:
    """{video_id: official index} of the split (gt/video2idx.json, TVR's format)."""
    table = read_json(f"{cfg.root.rstrip('/')}/gt/video2idx.json", cfg.s3_endpoint)
    if split not in table:
        raise ValueError(f"{cfg.root}/gt/video2idx.json has no split {split!r} (has {sorted(table)})")
    return {vid: int(idx) for vid, (_, idx) in table[split].items()}


def query_batches(queries: Sequence[dict], tokenizer: Any, max_len: int, batch_size: int, pad_id: int,
                  idf: text.IdfTable | None = None) -> Iterator[dict[str, Any]]:  # fmt: skip
    """Tokenised query batches in order: input_ids, attention_mask, toi_weight (B, N)."""
    for b in range(0, len(queries), batch_size):
        rows = []
        for q in queries[b : b + batch_size]:
            enc = text.encode(q["text"], q.get("toi", []), tokenizer, max_len, idf)
            rows.append({"key": str(q["query_id"]), "input_ids": torch.from_numpy(enc.input_ids),
                         "toi_weight": torch.from_numpy(enc.toi_weight)})  # fmt: skip
        yield collate_rows(rows, pad_id)


def exists(url: str, endpoint: str | None = None) -> bool:
    if url.startswith("s3://"):
        import fsspec

        fs, path = fsspec.core.url_to_fs(url, **s3_options(endpoint))
        return fs.exists(path)
    return os.path.exists(url)
