"""Host syncs in one training step of the real loop (pretrain/loop.py), counted on the CPU.

A host sync is a tensor read back to Python: `.item()`, `float()`, `int()`, `bool()`, `.tolist()`,
`.cpu()`, `.numpy()`. On a GPU each one waits for every kernel queued before it. During one
`Trainer._micro_step` (the Combiner's five objectives and collapse guard in the engine's forward, the
finite check and log all-reduce, backward, optimizer step) of a DeepSpeed engine on the tiny preset,
the project's own code may read back only: the loader batch's token count (`Meter.count`, on the CPU
batch before it moves to the device: no device sync) and the one all-reduce of the step's logs
(`_all_finite`). DeepSpeed's own reads (its gradient clipping's norm) are counted and reported apart.

Syncs that no Python method shows (boolean-mask indexing, `nonzero`: shapes that depend on values) are
not counted here. About 15 s on 2 cores.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from benchmarks.pretrain_step import make_batch

REPO = Path(__file__).resolve().parents[2]
READS = ("item", "__float__", "__int__", "__bool__", "tolist", "cpu", "numpy")
# (file, function) of every read the project's code makes in one micro-step
EXPECTED = Counter({("pretrain/loop.py", "count"): 1, ("pretrain/loop.py", "_all_finite"): 1})


def count_reads(monkeypatch: pytest.MonkeyPatch) -> tuple[Counter, Counter]:
    """Patch torch.Tensor's read-back methods; returns (project reads by (file, function), library reads by file)."""
    project, library = Counter(), Counter()
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            caller = sys._getframe(1).f_code
            path = Path(caller.co_filename).resolve()
            if path.is_relative_to(REPO) and ".venv" not in path.parts:
                project[(str(path.relative_to(REPO)), caller.co_name)] += 1
            else:
                library[path.name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return project, library


@pytest.fixture()
def trainer(tmp_path, monkeypatch):
    from pretrain import runtime
    from pretrain.loop import Trainer, TrainState
    from pretrain.model import ModelConfig, build_model
    from pretrain.objectives import Combiner, ObjectivesConfig

    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR"):
        monkeypatch.delenv(key, raising=False)
    environ = dict(os.environ)
    runtime.init_distributed(runtime.RuntimeConfig())
    try:
        torch.manual_seed(0)
        model = build_model(ModelConfig(text_layers=1, cross_layers=1)).train()
        engine = runtime.build_engine(model, runtime.RuntimeConfig(zero_stage=0), runtime.OptimConfig(),
                                      micro_batch=4, max_steps=10, world=1)  # fmt: skip
        yield Trainer(engine, None, Combiner(ObjectivesConfig()), None, TrainState(), str(tmp_path), max_steps=10)
    finally:
        runtime.shutdown()
        os.environ.clear()
        os.environ.update(environ)


def test_one_training_step_reads_back_once(trainer, monkeypatch) -> None:
    model = trainer.engine.module
    batch = make_batch(batch=4, frames=12, tokens=16, frame_dim=model.config.frame_dim, vocab=model.vocab_size)
    assert trainer._micro_step(batch)  # warm-up: DeepSpeed's first step sets itself up
    project, library = count_reads(monkeypatch)
    assert trainer._micro_step(batch)
    monkeypatch.undo()
    print(f"reads back in one micro-step: project {dict(project)}, libraries {dict(library)}")
    assert project == EXPECTED, f"host syncs in the project's step code: {dict(project)}"
    assert set(trainer._window) >= {"loss", "mlm_loss", "taco_l3_loss", "sentence_cos", "ran_mlm"}
    assert all(isinstance(v, float) for values in trainer._window.values() for v in values)
