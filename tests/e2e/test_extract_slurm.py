"""launch/extract_features.sh as a Slurm array on the real single-node test Slurm
(tests/slurm_cluster.py): two array tasks split a list of small test-made videos, together write
every video's features exactly once, equal to a one-process run, and a resubmission skips all.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from test_extract import VIDEOS, write_video
from test_slurm import REPO, _sbatch, _submit_dir, slurm_node  # noqa: F401 (slurm_node: a fixture)

from data_prep import extract as X

SCRIPT = REPO / "launch" / "extract_features.sh"
TINY = ["--random-weights", "--tiny", "--device", "cpu"]
# The CPU node: one core per array task, no GPU (the script's defaults are 16 cores + 1 GPU).
CPU_TASK = ["--cpus-per-task=1", "--gpus-per-task=0"]
NAMES = ["h264.mp4", "vp9.webm", "vfr.mkv"]  # two codecs, one variable-rate: 2 videos for one task, 1 for the other


def _features(out: Path) -> dict[str, np.ndarray]:
    """Every feature file under out (2d/<id>.npy, 3d/<id>.npy), by relative path."""
    return {str(p.relative_to(out)): np.load(p) for p in sorted(out.glob("[23]d/*.npy"))}


@pytest.mark.slow
def test_sbatch_array_splits_the_videos_writes_each_once_and_resumes(slurm_node, tmp_path) -> None:  # noqa: F811
    """About 40 s on 2 busy cores: two array tasks, a one-process reference, and the resubmission."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in NAMES:
        write_video(videos / name, *VIDEOS[name])
    ids = sorted(Path(n).stem for n in NAMES)
    listing = sorted(X.list_videos(str(videos)))
    halves = [{vid for vid, _ in X.shard_of(listing, 2, i)} for i in (0, 1)]
    submit, out = _submit_dir(tmp_path), tmp_path / "features"
    args = [*CPU_TASK, "--array=0-1", "--wait", str(SCRIPT), "--videos", str(videos), "--out", str(out), *TINY]

    job_id, proc = _sbatch(submit, *args)
    logs = {i: submit / "logs" / f"vlp-extract-{job_id}_{i}.out" for i in (0, 1)}
    text = {i: log.read_text() if log.exists() else f"(no log at {log})" for i, log in logs.items()}
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\n" + "\n".join(t[-4000:] for t in text.values())
    for i in (0, 1):
        assert f"task {i} of 2" in text[i], text[i][-4000:]
        done = rf"shard {i}/2: {len(halves[i])} done, 0 skipped \(complete\), 0 rejected"
        assert re.search(done, text[i]), text[i][-4000:]

    # Each task took its deterministic half; together every video exactly once, nothing left half-written.
    assert halves[0].isdisjoint(halves[1]) and halves[0] | halves[1] == set(ids)
    got = _features(out)
    assert sorted(got) == sorted(f"{k}/{vid}.npy" for k in ("2d", "3d") for vid in ids)
    assert not list(out.rglob("*.tmp")) and (out / X.MANIFEST_FILE).exists()

    # Equal to one process doing every video (the same seeded tiny weights). Not bit-equal: a task
    # runs on 1 core, the reference on several threads, so float sums differ in order (~1e-9 seen).
    ref = tmp_path / "ref"
    res = X.main(["--videos", str(videos), "--out", str(ref), *TINY])
    assert sorted(res["done"]) == ids
    want = _features(ref)
    assert sorted(want) == sorted(got)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-7, err_msg=name)

    # Resubmitting the same array skips every complete video.
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("[23]d/*.npy")}
    job2, proc2 = _sbatch(submit, *args)
    for i in (0, 1):
        log = (submit / "logs" / f"vlp-extract-{job2}_{i}.out").read_text()
        skip = rf"shard {i}/2: 0 done, {len(halves[i])} skipped"
        assert proc2.returncode == 0 and re.search(skip, log), log[-4000:]
    assert {p: p.stat().st_mtime_ns for p in out.glob("[23]d/*.npy")} == mtimes
