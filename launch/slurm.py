"""Slurm from Python: submitting the launch/*.sh batch scripts with sbatch, chained by dependencies.
What runs inside a job (srun, the rendezvous, requeue on preemption) is the scripts' own (launch/slurm_env.sh)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from launch.pipeline import REPO


def after_ok(jobs: list[str]) -> list[str]:
    """sbatch options that start a job after `jobs` succeeded; one whose dependency failed leaves the queue."""
    return [f"--dependency=afterok:{':'.join(jobs)}", "--kill-on-invalid-dep=yes"] if jobs else []


def sbatch(options: list[str], script: str, args: list[str]) -> str:
    """Submit launch/<script> with sbatch; its job id. A refusal is a RuntimeError with sbatch's message."""
    Path("logs").mkdir(exist_ok=True)  # the scripts' --output=logs/%x-%j.out; Slurm does not create it
    cmd = ["sbatch", "--parsable", *options, str(REPO / "launch" / script), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch failed ({proc.returncode}): {proc.stderr.strip()}\n{' '.join(cmd)}")
    return proc.stdout.strip().split(";")[0]  # "id" or "id;cluster"
