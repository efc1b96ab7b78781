"""The checkpoint mirror's bookkeeping (pretrain/checkpoint.py), on a local folder as the "bucket": which rank
uploads which file, COMPLETE only after every upload, what each rank pulls back, metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pretrain import checkpoint
from pretrain.checkpoint import Mirror, UploadError, file_owner, upload_plan

ZERO2 = ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
         "zero_pp_rank_1_mp_rank_00_optim_states.pt", "train_state_rank0.pt", "train_state_rank1.pt",
         "zero_to_fp32.py"]  # fmt: skip


def test_file_owner_names_the_rank_of_its_own_files() -> None:
    assert file_owner("zero_pp_rank_3_mp_rank_00_optim_states.pt") == 3
    assert file_owner("bf16_zero_pp_rank_12_mp_rank_00_optim_states.pt") == 12
    assert file_owner("zero_pp_rank_1_mp_rank_00_model_states.pt") == 1  # ZeRO-3: every rank its model states
    assert file_owner("train_state_rank7.pt") == 7
    assert file_owner("sub/train_state_rank2.pt") == 2
    for shared in ("mp_rank_00_model_states.pt", "zero_to_fp32.py", "COMPLETE"):
        assert file_owner(shared) is None, shared


def test_upload_plan_shared_and_node_local() -> None:
    shared = upload_plan([ZERO2, ZERO2])  # one shared folder: each rank its own files, rank 0 the rest
    assert shared == {"mp_rank_00_model_states.pt": 0, "zero_pp_rank_0_mp_rank_00_optim_states.pt": 0,
                      "zero_pp_rank_1_mp_rank_00_optim_states.pt": 1, "train_state_rank0.pt": 0,
                      "train_state_rank1.pt": 1, "zero_to_fp32.py": 0}  # fmt: skip
    node1 = [n for n in ZERO2 if file_owner(n) in (None, 0)]
    node2 = ["zero_pp_rank_1_mp_rank_00_optim_states.pt", "train_state_rank1.pt"]
    assert upload_plan([node1, node2]) == shared  # node-local: the same split, from what each node holds
    # 4 ranks, 2 per node: a file its owner does not see (impossible here) falls to the lowest rank seeing it
    assert upload_plan([["a.pt"], ["a.pt", "train_state_rank3.pt"], [], []]) == {"a.pt": 0, "train_state_rank3.pt": 1}


def _checkpoint(ckpt: Path, tag: str, names: list[str]) -> None:
    (ckpt / tag).mkdir(parents=True)
    for name in names:
        (ckpt / tag / name).write_text(name)
    (ckpt / tag / checkpoint.COMPLETE).write_text(json.dumps({"step": 2, "world_size": 2}))


def test_push_then_pull_each_rank_its_own(tmp_path) -> None:
    mirror = Mirror(str(tmp_path / "bucket"), None, keep_last=1, node_local=True)
    ckpt = tmp_path / "node" / "checkpoints"
    _checkpoint(ckpt, "step_00000002", ZERO2)
    (tmp_path / "node" / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    mirror.push_checkpoint(str(ckpt), "step_00000002", 0, str(tmp_path / "node" / "metrics.jsonl"))
    assert mirror.remote_tags() == ["step_00000002"]
    remote = tmp_path / "bucket" / "checkpoints" / "step_00000002"
    assert sorted(p.name for p in remote.iterdir()) == sorted([*ZERO2, checkpoint.COMPLETE])

    fresh = tmp_path / "fresh" / "checkpoints"  # rank 1 on a new node: its files and the shared ones
    mirror.pull(str(fresh), "step_00000002", lambda name: file_owner(name) in (None, 1))
    assert sorted(p.name for p in (fresh / "step_00000002").iterdir()) == sorted(
        ["mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt", "train_state_rank1.pt",
         "zero_to_fp32.py", checkpoint.COMPLETE])  # fmt: skip

    # metrics.jsonl: taken from the mirror only when the local one does not reach the resumed step
    assert mirror.pull_metrics(str(tmp_path / "fresh"), 2)
    assert (tmp_path / "fresh" / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'
    (tmp_path / "fresh" / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n')
    assert not mirror.pull_metrics(str(tmp_path / "fresh"), 2)

    _checkpoint(ckpt, "step_00000004", ZERO2)  # keep_last=1: the older one goes, its marker first
    mirror.push_checkpoint(str(ckpt), "step_00000004", 0)
    assert mirror.remote_tags() == ["step_00000004"]
    assert not (tmp_path / "bucket" / "checkpoints" / "step_00000002").exists()


def test_a_failed_upload_never_marks_the_checkpoint_complete(tmp_path, monkeypatch) -> None:
    mirror = Mirror(str(tmp_path / "bucket"), None, keep_last=2)
    ckpt = tmp_path / "run" / "checkpoints"
    _checkpoint(ckpt, "step_00000002", ZERO2)
    real = mirror.fs.put_file

    def put_file(src, dst, **kw):
        if "zero_pp_rank_1" in src:
            raise PermissionError("Access Denied")
        return real(src, dst, **kw)

    monkeypatch.setattr(mirror.fs, "put_file", put_file)
    with pytest.raises(UploadError, match=r"checkpoint step_00000002 was not uploaded .*rank 0 on .*Access Denied"):
        mirror.push_checkpoint(str(ckpt), "step_00000002", 0)
    assert mirror.remote_tags() == []
    assert not (tmp_path / "bucket" / "checkpoints" / "step_00000002" / checkpoint.COMPLETE).exists()
