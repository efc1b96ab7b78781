"""The progress bar a user sees on a terminal, and the main job's config checks."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest

from launch.stages import load_config
from pretrain.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _tiny_corpus(root: Path, videos: int) -> tuple[Path, Path]:
    feats = root / "feats"
    feats.mkdir(parents=True)
    captions = {}
    rng = np.random.default_rng(0)
    for i in range(videos):
        vid = f"video{i:03d}"
        captions[vid] = {"start": [0.0, 4.0], "end": [4.0, 8.0], "text": ["we cut the onion", "then mix it"]}
        np.save(feats / f"{vid}.npy", np.zeros(1))  # not the hero layout: ignored
        with open(feats / f"{vid}.npz", "wb") as f:
            np.savez(f, features=rng.normal(size=(8, 4)).astype(np.float32))
    path = root / "raw_caption.json"
    path.write_text(json.dumps(captions))
    return path, feats


def _run_on_terminal(argv: list[str]) -> tuple[int, str]:
    """Run a command with stderr on a pseudo-terminal; return its exit code and that output."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120-column terminal
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=follower, cwd=ROOT)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the follower side closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(), b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal_shows_counts_and_rate(tmp_path: Path) -> None:
    captions, feats = _tiny_corpus(tmp_path, videos=6)
    code, out = _run_on_terminal([
        sys.executable, "-m", "data_prep.howto100m", "--captions", str(captions), "--features", str(feats),
        "--out", str(tmp_path / "out"), "--shard-size", "2", "--tagger", "heuristic",
    ])  # fmt: skip
    assert code == 0, out
    assert re.search(r"6/6 \[", out), out  # videos done / total
    assert re.search(r"video/s", out), out  # the rate
    assert "samples=6" in out, out


def test_no_progress_bar_in_a_log(tmp_path: Path) -> None:
    captions, feats = _tiny_corpus(tmp_path, videos=3)
    proc = subprocess.run([
        sys.executable, "-m", "data_prep.howto100m", "--captions", str(captions), "--features", str(feats),
        "--out", str(tmp_path / "out"), "--shard-size", "1", "--tagger", "heuristic",
    ], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    assert "3/3 videos, 3 samples, 0 rejected" in proc.stderr


def test_main_job_config_overrides_and_errors(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs" / "main_job.yaml", ["videos=7", "workdir=" + str(tmp_path)])
    assert cfg.videos == 7 and cfg.workdir == str(tmp_path) and cfg.seed == 0
    with pytest.raises(ConfigError, match="vidoes"):
        load_config(ROOT / "configs" / "main_job.yaml", ["vidoes=7"])
    with pytest.raises(ConfigError, match="videos"):
        load_config(ROOT / "configs" / "main_job.yaml", ["videos=many"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("shard_sise: 3\n")
    with pytest.raises(ConfigError, match="shard_sise"):
        load_config(bad, [])


def test_every_config_starts_with_the_command_that_uses_it() -> None:
    configs = sorted((ROOT / "configs").glob("**/*.yaml"))
    assert configs
    for path in configs:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and (
            "python" in first or "bash" in first or "deepspeed" in first or "sbatch" in first
        ), path
