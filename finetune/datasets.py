"""The dataset registry: one record per finetune dataset, read by everything that names datasets.

A dataset's name is its recipe's name everywhere: the converter `data_prep/<name>.py`, the entry
script `finetune/<name>.py`, the config `configs/finetune/<name>.yaml`, the folder `<data>/<name>/`
of a public-format data folder and `shards/<name>/` of the converted one. Its record says the rest:
the config schema and task of its recipe, its title in tables, its metrics (the report's columns)
and which of them the papers' tables show, and the converter's input arguments for a folder in
the public layout (data_prep/layout.py).

Readers: finetune/recipe.py (schema and task), launch/stages.py (the converters, the recipe list),
launch/report.py (metric columns) and launch/ablate.py (titles, paper columns). Adding a dataset:
docs/design.md, "Adding a dataset".
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

from data_prep import layout
from finetune.config import FinetuneConfig, MomentFinetuneConfig, QAFinetuneConfig, RetrievalFinetuneConfig
from finetune.moment import MomentTask
from finetune.qa import QATask
from finetune.task import Task
from finetune.video_retrieval import VideoRetrievalTask


class Metric(NamedTuple):
    label: str  # the column's header
    path: tuple[str, ...]  # where it is in an evaluation's metrics.json
    higher: bool = True  # higher is better


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str  # as the papers write it
    schema: type[FinetuneConfig]  # the recipe's config schema
    task: type[Task]  # the recipe's task
    inputs: Callable[[Path], list[str]]  # the converter's input arguments for a folder in the public layout
    metrics: tuple[Metric, ...]  # the report's columns, in order
    paper: tuple[Metric, ...] = ()  # those the papers' tables show (the ablation tables' columns); (): all
    howto100m_clips: bool = False  # its videos are HowTo100M's (How2R, How2QA): left out of pretraining

    @property
    def paper_metrics(self) -> tuple[Metric, ...]:
        return self.paper or self.metrics

    @property
    def converter(self) -> ModuleType:
        """data_prep.<name>: its `main(argv)` converts the public files to shards."""
        return importlib.import_module(f"data_prep.{self.name}")

    @property
    def script(self) -> str:
        return f"finetune/{self.name}.py"

    @property
    def config(self) -> str:
        return f"configs/finetune/{self.name}.yaml"


VCMR5, VCMR7 = Metric("VCMR 0.5-r1", ("VCMR", "0.5-r1")), Metric("VCMR 0.7-r1", ("VCMR", "0.7-r1"))
VR1, SVMR5 = Metric("VR r1", ("VR", "r1")), Metric("SVMR 0.5-r1", ("SVMR", "0.5-r1"))
R1, R5, R10 = Metric("R@1", ("R@1",)), Metric("R@5", ("R@5",)), Metric("R@10", ("R@10",))
MEDR = Metric("MedR", ("MedR",), higher=False)
ACCURACY = Metric("accuracy", ("accuracy",))

DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("tvr", "TVR", MomentFinetuneConfig, MomentTask, layout.tvr_inputs, (VCMR5, VCMR7, VR1, SVMR5),
            paper=(VCMR5, VCMR7, VR1)),
    Dataset("didemo", "DiDeMo", MomentFinetuneConfig, MomentTask, layout.annotations_inputs, (VCMR5, VR1)),
    Dataset("how2r", "How2R", MomentFinetuneConfig, MomentTask, layout.how2r_inputs, (VCMR5, VCMR7, VR1),
            howto100m_clips=True),
    Dataset("how2qa", "How2QA", QAFinetuneConfig, QATask, layout.how2qa_inputs, (ACCURACY,), howto100m_clips=True),
    Dataset("msrvtt", "MSR-VTT", RetrievalFinetuneConfig, VideoRetrievalTask, layout.annotations_inputs,
            (R1, R5, R10, MEDR), paper=(R1, R5, R10)),
    Dataset("activitynet", "ActivityNet", RetrievalFinetuneConfig, VideoRetrievalTask, layout.annotations_inputs,
            (R1, R5, MEDR)),
)}  # fmt: skip


def get(name: str) -> Dataset:
    """The record of dataset `name`; an unknown name is a ValueError listing the known ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r} (datasets: {', '.join(DATASETS)})")
    return DATASETS[name]
