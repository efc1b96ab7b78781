"""GPU habits checked on the CPU (issue 19): the process group's backend, pinned batches, float16 frames
until the device, and the wiring of `runtime.compile`. The attention's path through SDPA is in test_model.py;
the loader's float16 batches in tests/integration/test_loader.py; compile's losses in test_pretrain.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_loop_and_metrics import Batches, FakeEngine, _NoTracker

from finetune import data
from pretrain import loader as L
from pretrain import runtime
from pretrain.loop import Trainer, TrainState
from pretrain.model import ModelConfig, VideoLanguageModel


@pytest.mark.parametrize(
    "requested, device_name, accelerator_backend, chosen",
    [
        (None, "cpu", "ccl", "gloo"),  # DeepSpeed's CPU accelerator names ccl: gloo needs no C++ op
        (None, "cuda", "nccl", "nccl"),
        ("gloo", "cuda", "nccl", "gloo"),  # an explicit runtime.backend wins
        ("gloo", "cpu", "ccl", "gloo"),
    ],
)
def test_backend_is_gloo_on_the_cpu_and_nccl_on_gpus(requested, device_name, accelerator_backend, chosen) -> None:
    assert runtime.choose_backend(requested, device_name, accelerator_backend) == chosen


def test_nccl_on_the_cpu_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="runtime.backend nccl needs GPUs"):
        runtime.choose_backend("nccl", "cpu", "ccl")


def test_batches_are_pinned_by_default_with_cuda_only() -> None:
    assert L.LoaderConfig().pin_memory is None and data.FinetuneDataConfig().loader_config("x", 4).pin_memory is None
    assert L.pin_memory(None, cuda=True) and L.pin_memory(True, cuda=True)
    assert not L.pin_memory(False, cuda=True)
    assert not L.pin_memory(None, cuda=False) and not L.pin_memory(True, cuda=False)  # torch pins for CUDA only
    assert L.pin_memory(None) == torch.cuda.is_available()


def _rows(dim: int = 5) -> list[dict]:
    """Two processed samples as Processor makes them: float16 frames of 3 and 2 frames."""
    g = np.random.default_rng(0)
    rows = []
    for i, (n, m) in enumerate([(4, 3), (3, 2)]):
        frames = g.normal(size=(m, dim)).astype(np.float16)  # (M, D)
        rows.append({"key": f"k{i}", "input_ids": torch.arange(n), "mlm_input_ids": torch.arange(n),
                     "mlm_labels": torch.full((n,), -100), "toi_weight": torch.ones(n), "frames": frames,
                     "mfm_mask": torch.zeros(m, dtype=torch.bool)})  # fmt: skip
    return rows


def test_frames_cross_as_float16_and_equal_float32_batches_on_the_device(device) -> None:
    """The default batch holds float16 frames (half the bytes); on the device they equal a float32 batch's."""
    half, full = L.collate(_rows()), L.collate(_rows(), frames_dtype="float32")
    assert half["frames"].dtype == torch.float16 and full["frames"].dtype == torch.float32
    assert half["frames"].nbytes * 2 == full["frames"].nbytes
    on_device = L.to_device(half, device)
    assert on_device["frames"].device.type == device.type and on_device["frames"].dtype == torch.float32
    assert torch.equal(on_device["frames"].cpu(), full["frames"])  # float16 -> float32 is exact
    for k, v in half.items():  # everything else keeps its dtype; lists pass through; the input is untouched
        if k != "frames":
            assert (on_device[k].dtype == v.dtype) if torch.is_tensor(v) else on_device[k] is v
    assert half["frames"].dtype == torch.float16 and half["frames"].device.type == "cpu"
    rows = [{"key": r["key"], "input_ids": r["input_ids"], "toi_weight": r["toi_weight"], "frames": r["frames"]}
            for r in _rows()]  # fmt: skip
    half, full = data.collate_rows(rows, 0)["frames"], data.collate_rows(rows, 0, "float32")["frames"]
    assert half.dtype == torch.float16 and torch.equal(half.float(), full)  # finetuning's batches alike


def test_pinned_batches_reach_the_gpu_equal() -> None:
    """With CUDA (the device check): the loader's pinning gives page-locked tensors, and the non_blocking copy
    of them, once the stream is synchronised, equals the batch. Without CUDA nothing is pinned."""
    from pretrain.loader.loader import _pinned

    if not torch.cuda.is_available():
        assert L.pin_memory(None) is False
        return
    batch = _pinned(L.collate(_rows()))
    assert all(v.is_pinned() for v in batch.values() if torch.is_tensor(v))
    on_gpu = L.to_device(batch, torch.device("cuda"))
    torch.cuda.synchronize()
    assert torch.equal(on_gpu["frames"].cpu(), batch["frames"].float())
    assert torch.equal(on_gpu["input_ids"].cpu(), batch["input_ids"])


def test_an_unknown_frames_dtype_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="loader.frames_dtype"):
        L.LoaderConfig(frames_dtype="bfloat16").validate()
    with pytest.raises(ValueError, match="frames dtype 'int8'"):
        L.frames_tensor(1, 1, 1, "int8")


def test_the_training_loop_hands_the_compute_float32_frames_on_the_device(tmp_path, device) -> None:
    seen = []

    def compute(model, batch, step):
        seen.append((batch["frames"].dtype, batch["frames"].device.type))
        return torch.tensor(1.0, device=device), {"loss": 1.0}

    batches = Batches([{"keys": ["a"], "frames": torch.ones(1, 2, 3, dtype=torch.float16)}] * 2)
    trainer = Trainer(FakeEngine(), batches, compute, _NoTracker(), TrainState(), str(tmp_path), 2, device=device)
    trainer._micro_step(batches[0])
    assert seen == [(torch.float32, device.type)]


class _TaskModel(torch.nn.Module):
    """A backbone and a head, as finetune's TaskModel holds them."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = VideoLanguageModel(ModelConfig(text_layers=1, cross_layers=1))
        self.head = torch.nn.Linear(4, 1)


def test_compile_compiles_the_encoders_in_place_of_any_backbone() -> None:
    """runtime.compile reaches the backbone inside a task model; in place, so state-dict keys stay the same
    (checkpoints, exports). Whether the compiled model trains to the same losses: test_pretrain.py."""
    model = _TaskModel()
    keys = list(model.state_dict())
    assert runtime.RuntimeConfig().compile is False
    assert runtime.compile_encoders(model, "aot_eager") == 5  # text, video, cross, two MCBs
    bb = model.backbone
    for module in (bb.text, bb.video_encoder, bb.cross_encoder, bb.v2t, bb.t2v):
        assert module._compiled_call_impl is not None
    assert model.head._compiled_call_impl is None and bb._compiled_call_impl is None  # the losses stay eager
    assert list(model.state_dict()) == keys
    with pytest.raises(ValueError, match="runtime.compile: Linear holds no module with compile_encoders"):
        runtime.compile_encoders(torch.nn.Linear(2, 2), "aot_eager")


def test_compile_with_zero3_is_a_config_error() -> None:
    """ZeRO-3's partitioned weights are empty where torch.compile traces them ("b must be 2D" at the first step
    of a 2-rank run): refused with the config's other checks, before any work."""
    for stage in (0, 1, 2):
        runtime.ds_config(runtime.RuntimeConfig(zero_stage=stage, compile=True), runtime.OptimConfig(), 1, 1)
    with pytest.raises(ValueError, match="runtime.compile works with runtime.zero_stage 0-2, not 3"):
        runtime.ds_config(runtime.RuntimeConfig(zero_stage=3, compile=True), runtime.OptimConfig(), 1, 1)
