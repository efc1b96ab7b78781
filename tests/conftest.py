"""Shared fixtures for the data_prep tests: a synthetic corpus, the converter, a shard reader.

The corpus comes from `data_prep.synthetic` (the public HowTo100M formats with planted ground
truth) and is written once per session. Converter runs that several tests read are cached
per session too (`convert`), so each (layout, clip mode) is converted once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# The tiers (tests/README.md): a test may import another tier's helpers (`from test_pretrain import FAST`) and
# tests/slurm_cluster.py, so every tier's folder is on the path, as pytest puts each test's own there.
for _folder in (REPO / "tests", *(REPO / "tests" / tier for tier in ("unit", "integration", "e2e"))):
    if str(_folder) not in sys.path:
        sys.path.insert(1, str(_folder))

SYNTHETIC_VIDEOS = 32
SHARD_SIZE = 12  # small, so every run writes many shards


@dataclass(frozen=True)
class Corpus:
    """The HowTo100M part of a synthetic corpus and its planted ground truth."""

    root: Path  # <out>/howto100m
    planted: dict[str, Any]  # video id -> {duration, events, asr_lines, ...}
    vocabulary: dict[str, Any]

    @property
    def raw_captions(self) -> Path:
        return self.root / "raw_caption.json"

    @property
    def clean_captions(self) -> Path:
        return self.root / "caption.json"

    @property
    def csv(self) -> Path:
        return self.root / "HowTo100M_v1.csv"

    @property
    def hero(self) -> Path:
        return self.root / "features" / "hero"

    @property
    def extractor(self) -> Path:
        return self.root / "features"  # 2d/ and 3d/

    def args(self, out: Path | str, layout: str = "hero", mode: str = "clip60", *extra: str) -> list[str]:
        """Command line of the HowTo100M converter on this corpus."""
        return converter_args(self.root, out, layout, mode, *extra)


def converter_args(root: Path, out: Path | str, layout: str = "hero", mode: str = "clip60", *extra: str) -> list[str]:
    """`python -m data_prep.howto100m` arguments for a corpus in the public layout (data_prep/layout.py)."""
    from data_prep.layout import howto100m_inputs

    clip = ["--clip-seconds", "60"] if mode == "clip60" else ["--min-words", "10"]
    return [*howto100m_inputs(root, layout), "--out", str(out), "--shard-size", str(SHARD_SIZE), *clip, *extra]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default=os.environ.get("TEST_DEVICE", "cpu"), choices=("cpu", "cuda"),
                     help="where the tests that take the `device` fixture put their model and tensors (default: "
                     "$TEST_DEVICE, else cpu); benchmarks/device_check.sh runs them with cuda on a GPU")  # fmt: skip


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> Any:
    """The torch.device of `--device`; cuda without a GPU fails the test that asks for it."""
    import torch

    name = request.config.getoption("--device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.fail("--device cuda, but torch sees no GPU")
    return torch.device(name)


def small_pretraining_shards(root: Path, shard_size: int) -> Path:
    """What the training tests run on: a 16-video synthetic corpus (seed 0) under root/raw, its HowTo100M part
    converted as the public layout gives it (data_prep/layout.py) into root/shards."""
    from data_prep import howto100m, synthetic
    from data_prep.layout import howto100m_inputs

    synthetic.generate(root / "raw", videos=16, seed=0)
    out = root / "shards"
    howto100m.main([*howto100m_inputs(root / "raw" / "howto100m"), "--out", str(out), "--shard-size", str(shard_size),
                    "--tagger", "heuristic"])  # fmt: skip
    return out


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    from data_prep import synthetic

    out = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(out, videos=SYNTHETIC_VIDEOS, seed=0)
    planted = json.loads((out / "planted.json").read_text())
    return Corpus(out / "howto100m", planted["datasets"]["howto100m"]["videos"], planted["vocabulary"])


def run_main(args: list[str]) -> dict[str, Any]:
    """The converter in this process; returns its manifest (DataPrepError propagates)."""
    from data_prep import howto100m

    return howto100m.main(args)


def run_cli(args: list[str], timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess:
    """`python -m data_prep.howto100m ARGS` as a subprocess from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "data_prep.howto100m", *args], cwd=REPO, env=cli_env(kw.pop("env", None)),
        capture_output=True, text=True, timeout=timeout, **kw,
    )  # fmt: skip


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def shard_paths(out: Path) -> list[Path]:
    return sorted(Path(out).glob("shard-*.tar"))


def read_samples(out: Path | str, urls: list[str] | None = None) -> list[dict[str, Any]]:
    """Every sample of an output folder (or of `urls`), read and decoded with webdataset."""
    import webdataset as wds

    urls = urls if urls is not None else [str(p) for p in shard_paths(Path(out))]
    return list(wds.WebDataset(urls, shardshuffle=False).decode())


def sha256_file(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


@pytest.fixture(scope="session")
def convert(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., tuple[Path, dict]]:
    """`convert(layout, mode, *extra)` -> (output folder, manifest), run once per argument set."""
    cache: dict[tuple, tuple[Path, dict]] = {}

    def run(layout: str = "hero", mode: str = "clip60", *extra: str) -> tuple[Path, dict]:
        key = (layout, mode, *extra)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"shards-{layout}-{mode}")
            cache[key] = (out, run_main(corpus.args(out, layout, mode, *extra)))
        return cache[key]

    return run


@contextlib.contextmanager
def moto_s3(log_dir: Path, env: dict[str, str]) -> Iterator[str]:
    """A real S3 endpoint on loopback (moto_server) with `env` (credentials...) set; yields its URL.

    AWS_ENDPOINT_URL is set only when `env` has it; the user's AWS profile and config are masked.
    Fails (never skips) when moto[server] is missing: it is part of the s3test extra CI installs.
    """
    moto = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    if not Path(moto).exists():
        raise RuntimeError("moto_server not found: install the project's s3test extra (scripts/setup.sh does)")
    from launch.pipeline import free_port

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(log_dir / "moto.log", "wb")
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    base = {"AWS_DEFAULT_REGION": "us-east-1", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            "AWS_CONFIG_FILE": "/nonexistent", "NO_PROXY": "127.0.0.1,localhost"}  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL"):
            mp.delenv(name, raising=False)
        for name, value in {**base, **env}.items():
            mp.setenv(name, value.replace("{endpoint}", endpoint))
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(endpoint + "/", timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"moto_server did not start on {endpoint}") from None
                    time.sleep(0.1)
            yield endpoint
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
