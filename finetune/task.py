"""What a finetune task is to the recipe (finetune/recipe.py), and what it gives back.

- `Task`: the protocol of MomentTask (finetune/moment.py), VideoRetrievalTask (finetune/video_retrieval.py)
  and QATask (finetune/qa.py): its head, its training loss, its predictions on a split, and how its rows are
  read.
- `Predictions`: what a task's predict returns. It carries the official metrics (with the ground truth) and
  writes its own files into an evaluation folder (metrics.json, per_query.json, eval_info.json, the task's
  prediction files, its plots), so the recipe writes every task's evaluation the same way.
- `total`: a task loss's named terms, each `(weight, loss)`, summed into the loss to backpropagate, with the
  logs the training loop averages and writes (metrics.jsonl, MLflow).
"""

from __future__ import annotations

import gc
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from finetune import data

Terms = dict[str, tuple[float, Tensor]]  # "<name>_loss" -> (weight, loss): the loss is logged, weight * loss summed


def total(terms: Terms) -> tuple[Tensor, dict[str, float]]:
    """(sum of weight * loss over the terms, logs: each term's loss under its name and "loss", the sum)."""
    loss = sum(weight * term for weight, term in terms.values())
    logs = {name: float(term.detach()) for name, (_, term) in terms.items()}
    logs["loss"] = float(loss.detach())
    return loss, logs


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off meanwhile (an evaluation: its predictions, submission and metrics).

    Building millions of small lists (TVR val: 3 x 1.1 M predictions, JSON-ready) triggers collections that each
    walk every live object of the process, which made building them 3-4x slower than the building itself; these
    lists hold no reference cycles (reference counting frees them), so nothing is kept that a collection would
    free, and the collector runs again as before afterwards. The files and numbers are the same either way."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def dump(path: str, obj: Any) -> None:
    """JSON (indent 1), written through a temporary file so that a reader never sees half of it."""
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


@dataclass(kw_only=True)
class Predictions(ABC):
    """A task's predictions on a split: the queries, where each query's video is in the encoded corpus, counts
    for eval_info.json and, with the ground truth, the metrics. Subclasses add the predictions themselves, the
    files they are written to (`write_predictions`) and the plots of an evaluation (`plots`)."""

    queries: list[dict]  # the split's queries, in order
    gt_rows: Tensor  # (Q,) each query's video in the encoded corpus; -1: not in it (rejected in data_prep)
    info: dict[str, Any]  # eval_info.json's counts: videos, videos cut, ...
    metrics: dict[str, Any] | None = None  # the official metrics (with the ground truth only)
    per_query: dict[str, list] | None = None  # what the metrics average, per query, under the same keys

    def write(self, folder: str, recipe: str, split: str, heatmap_queries: int) -> dict[str, str]:
        """metrics.json and per_query.json (with the ground truth), eval_info.json, the task's prediction files
        and, with the ground truth, its plots; {name: path} of the files written."""
        files = {"metrics": os.path.join(folder, "metrics.json")} if self.metrics is not None else {}
        files["info"] = os.path.join(folder, "eval_info.json")
        if self.metrics is not None:
            dump(files["metrics"], self.metrics)
            files["per_query"] = os.path.join(folder, "per_query.json")
            dump(files["per_query"], self.per_query)
        dump(files["info"], {"recipe": recipe, "split": split, "queries": len(self.queries),
                             "queries_without_video": int((self.gt_rows < 0).sum()), **self.info})  # fmt: skip
        files.update(self.write_predictions(folder, recipe, split))
        if self.metrics is not None:
            files.update(self.plots(folder, f"{recipe} {split}", heatmap_queries))
        return files

    def leaderboard_zip(self, path: str, recipe: str, val_files: dict[str, str], test_files: dict[str, str]) -> bool:
        """The leaderboard's upload at `path` from the files `write` gave for the val and test splits; False
        when the task has none."""
        return False

    @abstractmethod
    def write_predictions(self, folder: str, recipe: str, split: str) -> dict[str, str]:
        """The task's prediction files (a submission, predictions.json); {name: path}."""

    @abstractmethod
    def plots(self, folder: str, title: str, heatmap_queries: int) -> dict[str, str]:
        """The task's plots of an evaluation (`heatmap_queries`: queries in a query-video heatmap); {name: path}."""


class Task(Protocol):
    """A finetune task: what the recipe builds, trains and evaluates through."""

    @property
    def uniform_frames(self) -> bool:
        """Training rows sample frames evenly over the video (True) or keep the time grid (False)."""
        ...

    @property
    def row_options(self) -> data.RowOptions:
        """What else a training row reads (answers, context sentences, masked words)."""
        ...

    def build_head(self, backbone: nn.Module) -> nn.Module:
        """The task's head on the backbone (TaskModel(backbone, head))."""
        ...

    def loss(self, model: nn.Module, batch: dict, step: int) -> tuple[Tensor, dict[str, float]]:
        """(the loss to backpropagate, logs: every `*_loss` term and "loss"), via `total`."""
        ...

    def predict(self, engine: Any, dcfg: data.FinetuneDataConfig, split: str, tokenizer: Any,
                device: torch.device, with_gt: bool) -> Predictions:  # fmt: skip
        """The predictions on a split, every rank calling it and getting all of them (the work spread over the
        ranks: finetune/ranks.py); with_gt: with the metrics."""
        ...
