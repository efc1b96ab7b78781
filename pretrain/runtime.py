"""The DeepSpeed runtime: the only module that imports deepspeed.

Builds the engine from config (ZeRO stage 0-3, bf16 or fp32, gradient accumulation,
clipping, warmup + decay), sets up the process group from whatever launched us (the
DeepSpeed launcher, torchrun, Slurm or nothing), and wraps DeepSpeed's checkpoint calls:
save/load, the universal checkpoint for a change of world size, and the fp32 state dict
for the consolidated export. On a machine without a GPU it uses DeepSpeed's CPU
accelerator with gloo and an AdamW from torch, so no C++ op is compiled; on GPUs, NCCL
(`choose_backend`). `runtime.compile` runs the model's encoders through torch.compile.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import os
import re
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from pretrain.distributed import rank_info

log = logging.getLogger(__name__)
# DeepSpeed 0.19 calls torch's reduce_scatter_tensor and all_gather_into_tensor, deprecated in torch 2.13:
# one warning per call.
warnings.filterwarnings("ignore", message=".*reduce_scatter_tensor.*", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*", category=FutureWarning)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_steps: int = 10
    schedule: str = "linear"  # linear | cosine | constant: decay from lr to min_lr_ratio*lr at max_steps
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0  # 0 disables clipping


@dataclass
class RuntimeConfig:
    zero_stage: int = 2
    precision: str = "fp32"  # fp32 | bf16
    global_batch_size: int | None = None  # None: micro batch x world size (no accumulation)
    backend: str | None = None  # None: nccl on GPUs, gloo on the CPU (choose_backend)
    # torch.compile the model's encoders (text encoder, video/cross/MCB stacks) in place before DeepSpeed wraps
    # them (ZeRO 0-2; with 3 a config error); the loss code and the heads stay eager. compile_backend: "inductor"
    # (generates kernels: a C++ compiler on the CPU, Triton on a GPU) | "aot_eager" (traces only: no compiler
    # needed, for checks) | any torch backend.
    compile: bool = False
    compile_backend: str = "inductor"
    # How long a rank waits for the others: the rendezvous (every rank joining) and each collective.
    # A node that dies or drops off the network ends the survivors' run after this long, with an
    # error naming the ranks and hosts they lost (docs/cluster.md, multi-node failures).
    timeout_s: int = 1800
    # ZeRO communication buckets, in elements. DeepSpeed's defaults (5e8) hold ~1.9 GiB of fp32
    # buffers per rank whatever the model size (benchmarks/RESULTS.md, ZeRO memory); 5e7 keeps the
    # collectives large enough for the base preset (~200M parameters: 4 buckets) at a tenth of that.
    bucket_size: int = 50_000_000  # reduce and allgather buckets (ZeRO 1-3), stage-3 prefetch bucket
    param_persistence_threshold: int = 100_000  # ZeRO-3: parameters this small stay whole on every rank


def launch_world_size() -> int:
    """The world size the launcher announces (torchrun/DeepSpeed, else srun), before any set-up."""
    return int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))


def setup_environment() -> tuple[int, int, int]:
    """Rank, local rank and world size from the launcher; Slurm variables mapped when alone.

    The DeepSpeed launcher and torchrun set RANK/LOCAL_RANK/WORLD_SIZE; under `srun` only
    SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS exist. A plain `python pretrain/train.py` is one
    rank on a free local port.
    """
    env = os.environ
    rank, local_rank, world = rank_info()
    env.update(RANK=str(rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world))
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in env:
        if env["WORLD_SIZE"] != "1":
            raise RuntimeError("MASTER_PORT is not set for a multi-rank run")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            env["MASTER_PORT"] = str(s.getsockname()[1])
    return int(env["RANK"]), int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"])


def choose_backend(requested: str | None, device_name: str, accelerator_backend: str) -> str:
    """The process group's backend: `requested` (runtime.backend) when set, else gloo on the CPU and the
    accelerator's own on a GPU (DeepSpeed's `communication_backend_name()`: nccl on CUDA). NCCL moves
    device tensors only, so asking for it on the CPU is an error here rather than a hang at the first collective."""
    if requested is None:
        return "gloo" if device_name == "cpu" else accelerator_backend
    if requested == "nccl" and device_name == "cpu":
        raise ValueError("runtime.backend nccl needs GPUs; this process runs on the CPU (use gloo, or leave it unset)")
    return requested


def init_distributed(cfg: RuntimeConfig) -> tuple[int, int, int]:
    """Create the process group (`choose_backend`: gloo on the CPU, nccl on GPUs); returns (rank, local_rank,
    world_size)."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    rank, local_rank, world = setup_environment()
    accel = get_accelerator()
    backend = choose_backend(cfg.backend, accel.device_name(), accel.communication_backend_name())
    if accel.device_name() == "cpu":
        # The CPU accelerator would JIT-compile a shared-memory all-reduce op here; gloo does
        # the collectives instead, so no C++ op is ever compiled (and no compiler is needed).
        deepspeed.ops.__compatible_ops__[accel.create_op_builder("ShareMemCommBuilder").NAME] = False
    else:
        accel.set_device(local_rank)
    if not torch.distributed.is_initialized():
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        try:
            deepspeed.init_distributed(
                dist_backend=backend, auto_mpi_discovery=False, timeout=datetime.timedelta(seconds=cfg.timeout_s)
            )
        except torch.distributed.DistError as e:
            raise CollectiveError(
                f"rendezvous at {where} did not complete within runtime.timeout_s={cfg.timeout_s} s: rank {rank} of "
                f"{world} on {socket.gethostname()} waited for the others (did every node start its tasks, and "
                f"does {os.environ['MASTER_ADDR']} resolve and answer on every node?). {_first_line(e)}"
            ) from e
        _PEERS.clear()
        _PEERS.extend(_gather_peers(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])))
        _PEERS_TIMEOUT[0] = cfg.timeout_s
    return rank, local_rank, world


class CollectiveError(RuntimeError):
    """A rendezvous or a collective that failed: a rank died, a node dropped off, the timeout passed."""


# (rank, hostname, address) of every rank, gathered right after the rendezvous: names the lost ranks.
_PEERS: list[tuple[int, str, str]] = []
_PEERS_TIMEOUT = [0]


def _gather_peers(master_addr: str, master_port: int) -> list[tuple[int, str, str]]:
    """Each rank's hostname and the address it reaches the master from (what peers see in errors)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((master_addr, master_port))  # UDP: no packet is sent, the route picks the address
            addr = s.getsockname()[0]
        except OSError:
            addr = "?"
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    peers: list[Any] = [None] * world
    torch.distributed.all_gather_object(peers, (rank, socket.gethostname(), addr))
    return peers


def host(rank: int | None = None) -> str:
    """The hostname of `rank` (this process's without one; "?" for a rank unknown to the peer list)."""
    if rank is None:
        return socket.gethostname()
    return next((h for r, h, _ in _PEERS if r == rank), socket.gethostname() if not _PEERS and rank == 0 else "?")


def _first_line(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _is_collective_error(e: BaseException) -> bool:
    """torch's distributed errors, and gloo's and NCCL's (plain RuntimeErrors named by their source file)."""
    return isinstance(e, torch.distributed.DistError) or bool(re.search(r"gloo/|nccl|NCCL", str(e)))


def lost_ranks_message(e: BaseException) -> str:
    """What a failed collective means, naming the ranks and hosts lost: those whose address is in the
    error (gloo names the peer whose connection closed), else every other rank (a timeout names none)."""
    me = torch.distributed.get_rank() if torch.distributed.is_initialized() else -1
    others = [p for p in _PEERS if p[0] != me]
    named = [p for p in others if re.search(rf"\b{re.escape(p[2])}\b", str(e))]
    lost = named or others
    who = ", ".join(f"rank {r} on {host} ({addr})" for r, host, addr in lost) or "the other ranks"
    kind = "lost the connection to" if named else "got no answer in time from (or lost)"
    return (
        f"collective failed on rank {me} on {socket.gethostname()}: {kind} {who}; timeout "
        f"runtime.timeout_s={_PEERS_TIMEOUT[0]} s. The run ends here: resume from the latest complete "
        f"checkpoint. {_first_line(e)}"
    )


def device() -> torch.device:
    from deepspeed.accelerator import get_accelerator

    accel = get_accelerator()
    if accel.device_name() == "cpu":
        return torch.device("cpu")
    return torch.device(accel.device_name(), accel.current_device())


def grad_accum_steps(cfg: RuntimeConfig, micro_batch: int, world: int) -> int:
    """Steps of accumulation so that micro x accum x world = global batch; an error if it does not divide."""
    if cfg.global_batch_size is None:
        return 1
    per_step = micro_batch * world
    if cfg.global_batch_size % per_step:
        raise ValueError(
            f"runtime.global_batch_size {cfg.global_batch_size} is not divisible by "
            f"data.batch_size {micro_batch} x world size {world} = {per_step}"
        )
    return cfg.global_batch_size // per_step


def lr_lambda(cfg: OptimConfig, max_steps: int):
    """Linear warmup, then linear or cosine decay to min_lr_ratio at max_steps."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
        shape = 1 - progress if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape

    if cfg.schedule not in ("linear", "cosine", "constant"):
        raise ValueError(f"optim.schedule {cfg.schedule!r} is not one of linear, cosine, constant")
    return factor


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, LayerNorm weights and embeddings' norms (BERT convention)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def zero_config(runtime: RuntimeConfig) -> dict[str, Any]:
    """DeepSpeed's zero_optimization section: the stage and its bucket sizes."""
    if runtime.bucket_size < 1 or runtime.param_persistence_threshold < 0:
        raise ValueError("runtime.bucket_size must be >= 1 and runtime.param_persistence_threshold >= 0")
    zero: dict[str, Any] = {"stage": runtime.zero_stage}
    if runtime.zero_stage in (1, 2):
        zero.update(reduce_bucket_size=runtime.bucket_size, allgather_bucket_size=runtime.bucket_size)
    if runtime.zero_stage == 3:
        zero.update(reduce_bucket_size=runtime.bucket_size, stage3_prefetch_bucket_size=runtime.bucket_size,
                    stage3_param_persistence_threshold=runtime.param_persistence_threshold)  # fmt: skip
    return zero


def ds_config(
    runtime: RuntimeConfig, optim: OptimConfig, micro_batch: int, accum: int, load_universal: bool = False
) -> dict[str, Any]:
    if runtime.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"runtime.zero_stage {runtime.zero_stage} is not 0, 1, 2 or 3")
    if runtime.precision not in ("fp32", "bf16"):
        raise ValueError(f"runtime.precision {runtime.precision!r} is not fp32 or bf16")
    if runtime.compile and runtime.zero_stage == 3:  # tracing sees ZeRO-3's empty partitions, not the gathered weights
        raise ValueError("runtime.compile works with runtime.zero_stage 0-2, not 3 (ZeRO-3 gathers the weights in "
                         "hooks that torch.compile's trace of the encoders does not run)")  # fmt: skip
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": optim.grad_clip,
        "zero_optimization": zero_config(runtime),
        "bf16": {"enabled": runtime.precision == "bf16"},
        "steps_per_print": 10**9,
        "zero_allow_untested_optimizer": True,
        "checkpoint": {"load_universal": load_universal},
        "wall_clock_breakdown": False,
    }


def build_engine(
    model: nn.Module,
    runtime: RuntimeConfig,
    optim: OptimConfig,
    micro_batch: int,
    max_steps: int,
    world: int,
    load_universal: bool = False,
):
    """The DeepSpeed engine with a torch AdamW and the warmup/decay schedule (the encoders compiled first
    when runtime.compile)."""
    import deepspeed

    if runtime.compile:
        compile_encoders(model, runtime.compile_backend)
    accum = grad_accum_steps(runtime, micro_batch, world)
    optimizer = torch.optim.AdamW(
        param_groups(model, optim.weight_decay), lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(optim, max_steps))
    config = ds_config(runtime, optim, micro_batch, accum, load_universal)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    if runtime.zero_stage == 3 and hasattr(model, "external_parameters"):
        for module, param in model.external_parameters():
            deepspeed.zero.register_external_parameter(module, param)
    return engine


def compile_encoders(model: nn.Module, backend: str) -> int:
    """torch.compile, in place, the encoders of every backbone in `model` (a module with `compile_encoders`:
    pretrain.model.VideoLanguageModel, also inside a finetune TaskModel); returns how many modules were compiled.
    In place (`nn.Module.compile`) keeps the state-dict keys, so checkpoints and exports are unchanged;
    a model without a backbone is an error rather than a silent eager run."""
    backbones = [m for m in model.modules() if hasattr(m, "compile_encoders")]
    if not backbones:
        raise ValueError(f"runtime.compile: {type(model).__name__} holds no module with compile_encoders()")
    compiled = sum(b.compile_encoders(backend) for b in backbones)
    log.info("runtime.compile: %d encoder modules compiled with backend %s", compiled, backend)
    return compiled


def save(engine, ckpt_dir: str, tag: str) -> None:
    """DeepSpeed's checkpoint (every rank must call it)."""
    engine.save_checkpoint(ckpt_dir, tag=tag, save_latest=False)


def load(engine, ckpt_dir: str, tag: str) -> None:
    path, _ = engine.load_checkpoint(
        ckpt_dir, tag=tag, load_module_strict=True, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {ckpt_dir}/{tag}")


def to_universal(ckpt_dir: str, tag: str, out_tag: str) -> None:
    """Convert a checkpoint to DeepSpeed's universal format (for another world size); rank 0 only."""
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(
        input_folder=os.path.join(ckpt_dir, tag),
        output_folder=os.path.join(ckpt_dir, out_tag),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,
    )
    ds_to_universal.main(args)


def fp32_state_dict(ckpt_dir: str, tag: str) -> dict[str, torch.Tensor]:
    """The full fp32 weights from a (possibly ZeRO-partitioned) checkpoint, in process."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=tag)


def full_copies(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Detached copies of the whole of `params`, also when ZeRO-3 partitions them over the ranks (every rank must
    call this then, with the same parameters); plain copies otherwise. For inference that runs a small part of
    the model outside the engine's forward (finetune/moment.py's span head in the corpus search)."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(params):
        return [p.detach().clone() for p in params]


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(x)
    return x


def shutdown(wait: bool = True) -> None:
    """Destroy the process group (a ZeRO-3 run aborted at teardown without it). `wait=False` on the way
    out of an error: the other ranks may never reach a barrier, and waiting for them would hide the
    error (a Python exception propagates only after its `finally` ends)."""
    if torch.distributed.is_initialized():
        if wait:
            barrier()
        torch.distributed.destroy_process_group()


T = TypeVar("T")


def run_then_shutdown(fn: Callable[[], T]) -> T:
    """fn(), then `shutdown()`; on an error, shutdown without the barrier (with it after a preemption, which
    every rank raises) and re-raise at once."""
    try:
        out = fn()
    except RuntimeError as e:
        if not _is_collective_error(e):
            shutdown(wait=False)
            raise
        message = lost_ranks_message(e)
        log.error(message)
        shutdown(wait=False)
        raise CollectiveError(message) from e
    except BaseException as e:
        # A preemption (pretrain/loop.py's Preempted) stops every rank after the same step and checkpoint: they
        # leave together, so that the first rank's exit does not make srun (--kill-on-bad-exit) kill a rank
        # that still ends its MLflow run or uploads its checkpoint.
        shutdown(wait=getattr(e, "on_every_rank", False))
        raise
    shutdown()
    return out
