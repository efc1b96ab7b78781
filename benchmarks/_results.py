"""What every benchmark shares: the run's defaults, the machine description and the RESULTS.md writer.

A benchmark script starts with

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for `python benchmarks/x.py`
    from benchmarks._results import REPO, header, machine, write_section  # noqa: E402

Importing this module sets the defaults of a run on this machine: DeepSpeed's CPU accelerator
(unless DS_ACCELERATOR says otherwise, as benchmarks/device_check.sh does on a GPU) and no
Hugging Face downloads.
"""

from __future__ import annotations

import datetime
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def machine(*packages: str) -> dict[str, str]:
    """The machine (date, uname, CPU model, cores, RAM, GPU) and the versions of Python and `packages`
    (distribution names; torch's thread count follows its version), for a results header."""
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    with open("/proc/meminfo") as f:
        mem_kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal"))
    versions = [f"Python {platform.python_version()}", *(f"{name} {package_version(name)}" for name in packages)]
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "uname": " ".join(os.uname()),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": f"{mem_kb / 2**20:.1f} GiB",
        "gpu": gpu_name() if "torch" in packages else "",
        "versions": ", ".join(versions),
    }


def package_version(name: str) -> str:
    """'2.13.0', or for torch '2.13.0 (2 thread(s))': the CPU benchmarks time torch on that many threads."""
    if name != "torch":
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"
    import torch

    return f"{torch.__version__} ({torch.get_num_threads()} thread(s))"


def gpu_name() -> str:
    """The first CUDA device's name, or '' without one."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""


def load() -> str:
    """The 1/5/15-minute load averages (other processes may share the cores)."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def header(info: dict[str, str], command: str) -> list[str]:
    """The lines under a section's title: when, by which command, on what."""
    gpu = f"GPU: {info['gpu']}" if info.get("gpu") else "no GPU in this session"
    return [
        f"Measured {info['date']} by `{command}`.",
        "",
        f"- machine: `{info['uname']}`",
        f"- CPU: {info['cpu']}, {info['cores']} cores, RAM {info['ram']}; {gpu}",
        f"- {info['versions']}; DS_ACCELERATOR={os.environ['DS_ACCELERATOR']}",
    ]


def write_section(section: str, text: str, path: Path = RESULTS) -> None:
    """Replace `section` (its '## ' title line down to the next '## ' line) of the markdown file at `path` with
    `text`, which starts with that title, or append it; every other section is kept byte for byte."""
    lines = path.read_text().splitlines() if path.exists() else ["# Benchmark results"]
    start = next((i for i, line in enumerate(lines) if line.strip() == section), None)
    if start is None:
        new = "\n".join(lines).rstrip("\n") + "\n\n" + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = "\n".join(lines[:start] + text.rstrip("\n").splitlines() + [""] + lines[end:])
    path.write_text(new.rstrip("\n") + "\n")
    print(f"wrote {section!r} to {path}")
