"""The code base passes ruff's lint and ruff's formatter (pyproject.toml's settings), as CI runs them: a file that
`ruff format` would change, or a lint error, fails here with ruff's own report."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["check", "format"])
def test_ruff(command: list[str]) -> None:
    assert RUFF, "ruff is not installed: it is in the `test` extra (scripts/setup.sh installs it)"
    proc = subprocess.run([RUFF, *command], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, f"ruff {' '.join(command)}:\n{proc.stdout[-6000:]}{proc.stderr[-2000:]}"
