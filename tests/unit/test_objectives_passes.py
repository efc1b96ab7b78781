"""Shared forward passes (pretrain/objectives/passes.py): the same losses and gradients as separate passes,
fewer forwards.

With dropout off, one step of the Combiner with `share_passes=True` must give every loss and every
parameter's gradient of the step with `share_passes=False` (each objective its own passes, the behaviour
before sharing): on the stand-in model of test_objectives.py and on the real tiny preset (the packaged MiniLM), both in
float64, to 1e-9 (only the float summation order differs). The forward counts per step are pinned.
About 25 s on 2 cores, 17 s of it the tiny preset's two float64 steps (a 1-layer cut of its MiniLM; the
MLM decoder's and word embeddings' 30522-word gradients dominate).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from test_objectives import TinyModel, make_batch

from benchmarks.pretrain_step import make_batch as loader_batch
from pretrain.model import ModelConfig, VideoLanguageModel
from pretrain.objectives import Combiner, ObjectivesConfig, Passes
from pretrain.objectives.mfm_nce import MFMNCEConfig

COUNTED = ("embed_text", "embed_video", "cross", "mcb_v2t", "mcb_t2v")  # the model's passes
# forwards per step of the five objectives (sum mode) and the collapse guard
SEPARATE = {"embed_text": 6, "embed_video": 6, "cross": 7, "mcb_v2t": 3, "mcb_t2v": 3}
SHARED = {"embed_text": 2, "embed_video": 2, "cross": 6, "mcb_v2t": 2, "mcb_t2v": 2}


def count_passes(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Count the calls of the model's pass methods (instance attributes: calls from inside the model count too)."""
    calls: Counter = Counter()
    for name in COUNTED:
        method = getattr(model, name)

        def counted(*args, _name=name, _method=method, **kwargs):
            calls[_name] += 1
            return _method(*args, **kwargs)

        monkeypatch.setattr(model, name, counted)
    return calls


def step(
    model: torch.nn.Module, batch: dict, cfg: ObjectivesConfig
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One Combiner step: (its logs, every parameter's gradient)."""
    model.zero_grad(set_to_none=True)
    total, logs = Combiner(cfg)(model, batch, 0)
    total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: float(v) for k, v in logs.items()}, grads


def assert_same_step(model, batch, cfg: ObjectivesConfig, rtol: float, atol: float) -> None:
    shared_logs, shared_grads = step(model, batch, cfg)
    separate = ObjectivesConfig(**{**cfg.__dict__, "share_passes": False})
    separate_logs, separate_grads = step(model, batch, separate)
    assert shared_logs.keys() == separate_logs.keys()
    for key in shared_logs:
        assert shared_logs[key] == pytest.approx(separate_logs[key], rel=rtol, abs=atol), key
    assert shared_grads.keys() == separate_grads.keys() and len(shared_grads) > 0
    for name, grad in shared_grads.items():
        torch.testing.assert_close(grad, separate_grads[name], rtol=rtol, atol=atol, msg=name)


CONFIGS = {
    "all": ObjectivesConfig(),
    "embedded_mfm": ObjectivesConfig(mfm_nce=MFMNCEConfig(target="embedded", mask_embedding=False)),
    "mlm_mfm": ObjectivesConfig(enabled=["mlm", "mfm_nce"]),
    "sample": ObjectivesConfig(mode="sample"),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_shared_passes_equal_separate_passes_float64(case: str) -> None:
    """The stand-in model (no dropout, float64): losses, guard and gradients equal to 1e-10."""
    assert_same_step(TinyModel(), make_batch(), CONFIGS[case], rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def tiny() -> VideoLanguageModel:
    torch.manual_seed(0)
    return VideoLanguageModel(ModelConfig(dropout=0.0, text_layers=1)).double().train()


@pytest.fixture(scope="module")
def tiny_batch(tiny) -> dict:
    batch = loader_batch(batch=4, frames=8, tokens=12, frame_dim=tiny.config.frame_dim, vocab=tiny.vocab_size)
    return {**batch, "frames": batch["frames"].double(), "toi_weight": batch["toi_weight"].double()}


def test_shared_passes_equal_separate_passes_on_the_tiny_preset(tiny, tiny_batch) -> None:
    """The real model (tiny preset, dropout 0, float64), all five objectives: every loss and every gradient."""
    assert_same_step(tiny, tiny_batch, ObjectivesConfig(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("share", "want"), [(False, SEPARATE), (True, SHARED)])
def test_forwards_per_step(tiny, tiny_batch, monkeypatch, share: bool, want: dict[str, int]) -> None:
    """Five objectives + the guard: 6 text and 6 video encoder passes separately, 2 and 2 shared (the plain and
    MLM-corrupted text; the plain and MFM-masked frames); T_cross 7 -> 6 and the MCBs 6 -> 4 (GMR's and
    self-contrasting's first pass is one)."""
    calls = count_passes(tiny, monkeypatch)
    with torch.no_grad():
        Combiner(ObjectivesConfig(share_passes=share))(tiny, tiny_batch, 0)
    assert dict(calls) == want


def test_masked_and_unmasked_passes_are_never_confused() -> None:
    """Each pass is keyed by its inputs: MLM's corrupted text, MFM's masked frames (with or without the
    learned vector) and the plain inputs are four different encodings."""
    model, batch = TinyModel(), make_batch()
    p = Passes(model, batch)
    assert p.text() is p.text() and p.video() is p.video()
    assert not torch.equal(p.text(), p.text(masked=True))
    assert not torch.equal(p.video(), p.video(masked=True))
    assert not torch.equal(p.video(masked=True, learned=True), p.video(masked=True, learned=False))
    assert p.cross().e_t is p.text() and p.cross(masked_text=True).e_t is p.text(masked=True)
    assert p.cross(masked_video=True).e_v is p.video(masked=True)
    assert Passes(model, batch, share=False).text() is not Passes(model, batch, share=False).text()
