"""Pretraining and finetuning runs driven from one process: the main job and the ablation runner.

Each run is the real entry point (`pretrain/train.py`, `finetune/<recipe>.py`) in a child
process (torchrun for several ranks), with its output in `<run dir>/driver.log`; the driver
prints the children's step and evaluation lines as they come, prefixed with the run's name.
A run that already finished (its export, its results.json) is reused; an interrupted one
resumes from its latest checkpoint. The zero-shot comparison runs in process.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHOWN = re.compile(r"pretrain\.loop: step|finetune: step|Error|error:|Traceback|exported|resumed from")
_print_lock = threading.Lock()


def say(text: str) -> None:
    with _print_lock:
        print(text, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Run:
    """One child run: an entry script, its config and overrides, how many ranks and threads."""

    name: str
    script: str  # pretrain/train.py or finetune/<recipe>.py
    config: str
    run_dir: Path
    overrides: Sequence[str] = ()
    ranks: int = 1
    threads: int = 1  # per rank

    def command(self) -> list[str]:
        args = [self.script, "--config", self.config, f"run.output_dir={self.run_dir}", *self.overrides]
        if self.ranks == 1:
            return [sys.executable, *args]
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(self.ranks),
                "--master_port", str(free_port()), *args]  # fmt: skip

    def env(self) -> dict[str, str]:
        drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(self.threads),
                   DS_ACCELERATOR=env.get("DS_ACCELERATOR", "cpu"))  # fmt: skip
        return env

    @property
    def done(self) -> bool:
        marker = "results.json" if self.script.startswith("finetune/") else "export/model.safetensors"
        return (self.run_dir / marker).exists()

    def execute(self) -> None:
        """Run it (unless done), echoing its progress lines; RuntimeError with the log's tail on failure."""
        if self.done:
            say(f"  [{self.name}] done already ({self.run_dir})")
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.run_dir / "driver.log"
        t0 = time.time()
        say(f"  [{self.name}] started: {' '.join(self.command()[1:4])} ... (log: {log_path})")
        with open(log_path, "a", buffering=1) as log:  # line-buffered: `tail -f` shows it live
            proc = subprocess.Popen(self.command(), cwd=REPO, env=self.env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)  # fmt: skip
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                if SHOWN.search(line):
                    say(f"  [{self.name}] {line.rstrip()[:240]}")
            code = proc.wait()
        if code != 0:
            tail = log_path.read_text()[-3000:]
            raise RuntimeError(f"{self.name} failed with exit code {code} (log {log_path}):\n{tail}")
        say(f"  [{self.name}] finished in {time.time() - t0:.0f}s")


def run_all(runs: Sequence[Run], parallel: int) -> None:
    """Run them, `parallel` at a time (each with its own threads); the first failure is raised."""
    if parallel <= 1:
        for run in runs:
            run.execute()
        return
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for future in [pool.submit(run.execute) for run in runs]:
            future.result()


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def read_jsonl(path: Path) -> list[Any]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def pretrain_losses(run_dir: Path) -> list[dict[str, float]]:
    """metrics.jsonl of a pretraining run: one dict per optimizer step."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
