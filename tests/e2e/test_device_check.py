"""benchmarks/device_check.sh: its dry run on the CPU (every step ok, numbers in every result), and how a step
that fails or hangs is recorded without stopping the others."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import device_check

REPO = Path(__file__).resolve().parents[2]
TRAIN_KEYS = ("samples_per_s", "step_s", "peak_memory_mib", "mfu", "loss")


def numbers(x: object) -> list[float]:
    """Every number in a JSON value."""
    if isinstance(x, dict):
        return [v for value in x.values() for v in numbers(value)]
    if isinstance(x, list):
        return [v for value in x for v in numbers(value)]
    return [float(x)] if isinstance(x, (int, float)) and not isinstance(x, bool) else []


@pytest.mark.slow
def test_the_dry_run_passes_every_step_with_numbers(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    t = time.monotonic()
    proc = subprocess.run(
        ["bash", "benchmarks/device_check.sh", "--dry-run", "--out", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.monotonic() - t
    report = json.loads((tmp_path / "device_check.json").read_text())
    steps = report["steps"]
    assert list(steps) == [s.name for s in device_check.STEPS], proc.stdout[-3000:]
    bad = {name: s.get("error", "")[-1500:] for name, s in steps.items() if s["status"] != "ok"}
    assert not bad and proc.returncode == 0, bad or proc.stderr[-3000:]
    for name, step in steps.items():
        values = numbers(step["results"])
        assert values and all(math.isfinite(v) for v in values), (name, step["results"])
    assert steps["tests"]["results"]["tests"] >= 10 and steps["tests"]["results"]["failed"] == 0
    for stage in range(4):
        res = steps[f"train_zero{stage}"]["results"]
        assert res["stage"] == stage and res["peak_flops"] > 0
        for key in ("checkpointing off", "checkpointing on"):
            assert all(res[key][k] > 0 for k in TRAIN_KEYS), (stage, key, res[key])
            phases = res[key]["phases_s"]
            assert set(phases) == {"data wait", "forward", "finite check", "backward", "step"}
            assert sum(phases.values()) == pytest.approx(res[key]["step_s"]) and min(phases.values()) > -1e-3
    assert report["loader_vs_step"]["loader_over_step"] > 0
    assert steps["vcmr"]["results"]["search_s"] > 0 and steps["end_to_end"]["results"]["pretrain_steps"] == 20
    assert any(k.startswith("tvr_pretrained/VCMR/") for k in steps["end_to_end"]["results"])
    assert any(k.startswith("tvr_scratch/VR/") for k in steps["end_to_end"]["results"])
    ex = steps["extract"]["results"]
    assert ex["resnet152_per_s"] > 0 and ex["r2plus1d_18_per_s"] > 0 and ex["howto100m_gpu_hours_32_nodes"] > 0
    text = (tmp_path / "device_check.md").read_text()
    assert text.startswith("## device check\n") and "| train_zero3 | ok |" in text and "| 3 | on |" in text
    print(f"dry run: {seconds:.0f} s; " + ", ".join(f"{n} {s['seconds']:.0f} s" for n, s in steps.items()))


def test_a_failing_and_a_hanging_step_are_recorded_and_the_next_runs(tmp_path: Path) -> None:
    """A step that exits non-zero is 'failed' with its output's end, one past its limit 'timeout' (its process
    group killed), one that left no results 'failed'; one past the budget is 'skipped'; the others run."""
    args = argparse.Namespace(work=tmp_path, dry_run=True, device="cpu", slack=1.0)

    def py(code: str) -> object:
        return lambda a: [sys.executable, "-c", code]

    ok = f"import json, pathlib; pathlib.Path({str(tmp_path)!r}, 'ok.json').write_text(json.dumps({{'x': 1.5}}))"
    steps = [
        device_check.Step("broken", 30, py("print('some output'); raise SystemExit(3)")),
        device_check.Step(
            "hangs",
            2,
            py(
                "import subprocess, sys; subprocess.run([sys.executable, '-c', "
                "'import time; time.sleep(60)']); print('never')"
            ),
        ),
        device_check.Step("silent", 30, py("pass")),
        device_check.Step("ok", 30, py(ok)),
    ]
    deadline = time.monotonic() + 60
    t = time.monotonic()
    got = {s.name: device_check.run_step(s, args, deadline) for s in steps}
    assert time.monotonic() - t < 30  # the hanging step's grandchild did not hold it up
    assert got["broken"]["status"] == "failed" and "exit code 3" in got["broken"]["error"]
    assert "some output" in got["broken"]["error"]
    assert got["hangs"]["status"] == "timeout" and got["hangs"]["seconds"] < 10
    assert got["silent"]["status"] == "failed" and got["ok"] == {
        "seconds": got["ok"]["seconds"],
        "results": {"x": 1.5},
        "status": "ok",
    }
    late = device_check.run_step(steps[3], args, time.monotonic() + 1)
    assert late["status"] == "skipped"
    report = {
        "machine": {"date": "d", "uname": "u", "cpu": "c", "cores": "2", "ram": "1 GiB", "gpu": "", "versions": "v"},
        "device": "cpu",
        "sizes": {},
        "steps": got,
    }
    text = device_check.section(report, "bash benchmarks/device_check.sh --dry-run")
    assert "| broken | failed |" in text and "hangs TIMEOUT:" in text and "some output" in text
