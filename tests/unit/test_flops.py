"""The analytic FLOP count (pretrain/flops.py) against `torch.utils.flop_counter` on the tiny preset.

One forward + backward of the objectives on a loader-like batch (benchmarks/pretrain_step.py's
`make_batch`: the keys of `pretrain.loader.collate`, lengths varying per clip, the loader's masking
rates) is counted by `FlopCounterMode`; the count of `PretrainFlops` for that batch must agree
within 1%. Both count matmuls only (elementwise ops, softmax, LayerNorm are left out of both), so
the agreement is exact today; the tolerance leaves room for a torch version that counts a kernel
differently. Attention runs through SDPA's math backend here: on the CPU the fused kernel
(`_scaled_dot_product_flash_attention_for_cpu`) has no FLOP formula in flop_counter, which would
leave QK^T and AV (about 2% of the tiny preset's FLOPs at these lengths) out of its count.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.pretrain_step import make_batch
from pretrain.flops import OBJECTIVE_FLOPS, PEAK_BF16, PretrainFlops, TextEncoder, peak_flops, train_flops_per_sample
from pretrain.model import ModelConfig, VideoLanguageModel
from pretrain.objectives import OBJECTIVES, Combiner, ObjectivesConfig
from pretrain.objectives.mfm_nce import MFMNCEConfig
from pretrain.objectives.taco import TacoConfig

TOLERANCE = 0.01


@pytest.fixture(scope="module")
def model() -> VideoLanguageModel:
    torch.manual_seed(0)
    return VideoLanguageModel(ModelConfig()).train()


@pytest.fixture(scope="module")
def batch(model) -> dict:
    return make_batch(batch=4, frames=16, tokens=24, frame_dim=model.config.frame_dim, vocab=model.vocab_size)


def counted(model: VideoLanguageModel, cfg: ObjectivesConfig, batch: dict) -> int:
    """FLOPs of one training step's forward + backward of the Combiner, as flop_counter counts them."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loss, _ = Combiner(cfg)(model, batch, 0)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def analytic(model: VideoLanguageModel, cfg: ObjectivesConfig, batch: dict) -> float:
    return PretrainFlops(model.config, cfg, TextEncoder.of(model.text.config), world=1)(batch)


CASES = {
    "all": ObjectivesConfig(),
    "all_separate_passes": ObjectivesConfig(share_passes=False),  # each objective its own passes
    **{name: ObjectivesConfig(enabled=[name]) for name in OBJECTIVES},
    # the options that change which passes run or which of them get a gradient
    "embedded_detached": ObjectivesConfig(
        enabled=["mfm_nce", "taco"], mfm_nce=MFMNCEConfig(target="embedded", detach_targets=True, mask_embedding=False),
        taco=TacoConfig(cascade=False)),
    "embedded_no_l3": ObjectivesConfig(
        enabled=["mfm_nce", "taco"], mfm_nce=MFMNCEConfig(target="embedded"), taco=TacoConfig(lambda3=0.0)),
    "embedded_detached_alone": ObjectivesConfig(  # the plain video pass: only a detached target (1x) and the guard
        enabled=["mfm_nce"], mfm_nce=MFMNCEConfig(target="embedded", detach_targets=True)),
    "mlm_sample": ObjectivesConfig(enabled=["mlm", "gmr"], weights={"gmr": 0.0}, mode="sample"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_analytic_count_matches_the_flop_counter(model, batch, case: str) -> None:
    cfg = CASES[case]
    want, got = counted(model, cfg, batch), analytic(model, cfg, batch)
    assert got == pytest.approx(want, rel=TOLERANCE), f"{case}: analytic {got:.4g} vs counted {want:.4g}"


def test_every_objective_has_a_count() -> None:
    assert set(OBJECTIVE_FLOPS) == set(OBJECTIVES)


def test_sample_mode_counts_the_expected_objective() -> None:
    """One objective per step, drawn by weight: the weighted mean of the single objectives' counts (each with
    the collapse guard, which runs every step)."""
    text = TextEncoder(layers=6, hidden=384, ffn=1536, vocab=30522)
    weights = {"mlm": 1.0, "gmr": 3.0}

    def per_sample(cfg: ObjectivesConfig) -> float:
        return train_flops_per_sample(ModelConfig(), cfg, 32, 16, text, batch=8)

    sampled = per_sample(ObjectivesConfig(enabled=list(weights), weights=weights, mode="sample"))
    expected = sum(w / 4.0 * per_sample(ObjectivesConfig(enabled=[name])) for name, w in weights.items())
    assert sampled == pytest.approx(expected)
    assert per_sample(ObjectivesConfig(enabled=list(weights), weights=weights)) > per_sample(
        ObjectivesConfig(enabled=["gmr"])
    )  # sum mode runs both


def test_base_preset_count_needs_no_weights() -> None:
    """The base preset (RoBERTa-base's config, no download), 64 tokens and 64 frames, 32 clips on each of 8
    ranks: about 0.89 TFLOPs a sample for the five objectives with shared passes (1.08 with each objective's own
    passes), more than half of it TACo's (its L3 fusion runs T_cross over 2(K' + 1) = 18 pairs a sample)."""
    cfg = ModelConfig(preset="base", text_pretrained=False)
    assert TextEncoder.load(cfg) == TextEncoder(layers=12, hidden=768, ffn=3072, vocab=50265)
    total = train_flops_per_sample(cfg, ObjectivesConfig(), 64, 64, batch=32, world=8)
    separate = train_flops_per_sample(cfg, ObjectivesConfig(share_passes=False), 64, 64, batch=32, world=8)
    taco = train_flops_per_sample(cfg, ObjectivesConfig(enabled=["taco"]), 64, 64, batch=32, world=8)
    assert 0.85e12 < total < 0.93e12 and 1.0e12 < separate < 1.2e12 and taco > total / 2


def test_peak_is_known_for_the_listed_gpus_only() -> None:
    assert peak_flops("cpu") is None
    assert dict(PEAK_BF16)["H200"] == dict(PEAK_BF16)["H100"] == 989e12 and dict(PEAK_BF16)["A100"] == 312e12
