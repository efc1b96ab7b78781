"""The finetune config tree: pretraining's sections (model, optimizer, runtime, checkpoint, tracking),
the finetune run, init, data and evaluation sections, and one schema per task family
(`finetune.datasets` says which schema each dataset's recipe loads).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from finetune.data import FinetuneDataConfig
from finetune.model import InitConfig
from finetune.moment import MomentConfig
from finetune.qa import QAConfig
from finetune.video_retrieval import VideoRetrievalConfig
from pretrain.checkpoint import CheckpointConfig
from pretrain.model import ModelConfig
from pretrain.runtime import OptimConfig, RuntimeConfig
from pretrain.tracking import TrackingConfig


@dataclass
class FinetuneRunConfig:
    name: str = "finetune"
    output_dir: str = "runs/finetune"
    seed: int = 0
    max_steps: int = 1000  # optimizer steps
    log_every: int = 10
    max_bad_steps: int = 3


@dataclass
class FinetuneEvalConfig:
    every: int = 0  # steps between evaluations of data.eval_split; 0: at the end only
    heatmap_queries: int = 16  # queries in the similarity heatmap (readable at the width of MLflow's viewer)
    codalab_zip: bool = False  # moment tasks with a test split: also write the upload zip (TVR's; How2R: VALUE's)


@dataclass
class FinetuneConfig:
    run: FinetuneRunConfig = field(default_factory=FinetuneRunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: FinetuneEvalConfig = field(default_factory=FinetuneEvalConfig)


@dataclass
class MomentFinetuneConfig(FinetuneConfig):
    task: MomentConfig = field(default_factory=MomentConfig)


@dataclass
class RetrievalFinetuneConfig(FinetuneConfig):
    task: VideoRetrievalConfig = field(default_factory=VideoRetrievalConfig)


@dataclass
class QAFinetuneConfig(FinetuneConfig):
    task: QAConfig = field(default_factory=QAConfig)
