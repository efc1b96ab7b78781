"""The pretraining loader (pretrain/loader/) and its tokenisation (pretrain/text.py).

Shards come from the real converter on the synthetic corpus (conftest's `corpus`), cut small
(--shard-size 8) so that an epoch spans many shards, streams and blocks. The loader runs with
0 and 2 DataLoader workers; batches are compared exactly (keys and every tensor).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import shutil
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import moto_s3

from data_prep import howto100m, schema
from data_prep.layout import howto100m_inputs
from pretrain import loader as L
from pretrain import masking, text

BATCH = 8


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="session")
def shards(corpus: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("loader-shards")
    howto100m.main([*howto100m_inputs(corpus.root), "--out", str(out), "--shard-size", "8", "--tagger", "heuristic"])
    return out


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    return text.load_tokenizer()


def config(folder: Path | str | list[str], **kw: Any) -> L.LoaderConfig:
    base = dict(batch_size=BATCH, max_text_len=32, max_frames=32, shuffle_buffer=16, num_workers=0, streams=4)
    return L.LoaderConfig(train=folder if isinstance(folder, list) else str(folder), **{**base, **kw})


def epoch(loader: L.VideoTextLoader) -> list[dict[str, Any]]:
    return list(loader)


def take(it: Iterator[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return [next(it) for _ in range(n)]


def keys_of(batches: list[dict[str, Any]]) -> list[str]:
    return [k for b in batches for k in b["keys"]]


def shard_keys(folder: Path) -> dict[str, list[str]]:
    """Shard file name -> its sample keys, read with tarfile."""
    out = {}
    for path in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(path) as tar:
            out[path.name] = sorted({m.name.split(".", 1)[0] for m in tar.getmembers()})
    return out


def all_keys(folder: Path) -> set[str]:
    return {k for keys in shard_keys(folder).values() for k in keys}


def assert_same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["keys"] == y["keys"]
        assert x.keys() == y.keys()
        for name in x:
            if name != "keys":
                assert x[name].dtype == y[name].dtype and torch.equal(x[name], y[name]), name


def copy_shards(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def reference(shards: Path, tokenizer: Any) -> dict[str, Any]:
    """Two epochs of the default setup with 0 workers: the run other tests compare against."""
    loader = L.build_train_loader(config(shards), tokenizer, rank=0, world_size=1)
    return {"epochs": [epoch(loader), epoch(loader)], "steps": [loader.steps_per_epoch(e) for e in (0, 1)]}


# ---------------------------------------------------------------- tokenisation and TACo weights


@pytest.mark.parametrize("subwords", ["share", "copy"])
def test_subwords_share_their_word_weight(tokenizer: Any, subwords: str) -> None:
    """share: a word's IDF is divided among its sub-words (the word weighs the same however it is split);
    copy: every sub-word carries the whole IDF (TACo's "the same weights" read literally)."""
    idf = text.IdfTable(num_docs=99, df={"unbelievably": 9, "peel": 49}, subwords=subwords)
    s = "peel unbelievably thin"
    enc = text.encode(s, [[0, 4, "VERB"], [5, 17, "NOUN"]], tokenizer, 32, idf)
    tokens = tokenizer.convert_ids_to_tokens(enc.input_ids.tolist())
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    pieces = [i for i, (a, b) in enumerate(enc.offsets) if 5 <= a and b <= 17 and b > a]
    assert len(pieces) > 1, tokens  # the word is split into sub-words
    per_piece = math.log(99 / 10) / (len(pieces) if subwords == "share" else 1)  # TACo: log(N / (1 + df))
    assert np.allclose(enc.toi_weight[pieces], per_piece)
    assert enc.toi_weight[1] == pytest.approx(math.log(99 / 50))  # "peel", one piece
    thin = tokens.index("thin")
    assert enc.toi_weight[thin] == 0 and enc.toi_weight[0] == 0 and enc.toi_weight[-1] == 0


def test_offsets_with_punctuation(tokenizer: Any) -> None:
    s = "Peel the Onions, then stir-fry!"
    toi = [[0, 4, "VERB"], [9, 15, "NOUN"], [22, 30, "VERB"]]  # "Peel", "Onions", "stir-fry"
    idf = text.IdfTable(num_docs=10, df={"onions": 4}, subwords="copy")
    enc = text.encode(s, toi, tokenizer, 32, idf)
    for (a, b), w, special in zip(enc.offsets.tolist(), enc.toi_weight, enc.special_mask):
        inside = [sp for sp in toi if sp[0] <= a and b <= sp[1] and b > a]
        if special or not inside:
            assert w == 0, s[a:b]  # [CLS]/[SEP], "the", ",", "then", "!"
        else:
            assert w == pytest.approx(idf.weight(s[inside[0][0] : inside[0][1]])), s[a:b]
    pieces = {s[a:b]: w for (a, b), w in zip(enc.offsets.tolist(), enc.toi_weight) if b > a}
    assert pieces[","] == 0 and pieces["!"] == 0 and pieces["the"] == 0
    assert pieces["Onions"] == pytest.approx(math.log(10 / 5))  # the lookup is lower-cased
    assert pieces["stir"] == pieces["-"] == pieces["fry"] == pytest.approx(idf.max_weight)  # unknown word: max idf
    shared = text.encode(s, toi, tokenizer, 32, text.IdfTable(num_docs=10, df={"onions": 4}))
    stir_fry = [w for (a, b), w in zip(shared.offsets.tolist(), shared.toi_weight) if 22 <= a and b <= 30 and b > a]
    assert len(stir_fry) == 3 and sum(stir_fry) == pytest.approx(idf.max_weight)  # shared by its three pieces


def test_idf_formulas_and_truncation(tokenizer: Any) -> None:
    taco = text.IdfTable(num_docs=9, df={"every": 9, "most": 8, "rare": 1})
    assert taco.weight("rare") == pytest.approx(math.log(9 / 2))  # TACo appendix eq. 7
    assert taco.weight("most") == text.IDF_FLOOR == taco.weight("every")  # log(9/9) = 0 and log(9/10) < 0: floored
    assert taco.weight("never-seen") == pytest.approx(math.log(9)) == pytest.approx(taco.max_weight)
    smooth = text.IdfTable(num_docs=9, df={"every": 9, "rare": 1}, formula="smooth")
    assert smooth.weight("every") == pytest.approx(1.0)
    assert smooth.weight("rare") == pytest.approx(math.log(10 / 2) + 1)
    assert smooth.weight("never-seen") == pytest.approx(smooth.max_weight) and smooth.max_weight > smooth.weight("rare")
    with pytest.raises(ValueError, match="data.idf"):
        text.IdfTable(formula="bm25")
    with pytest.raises(ValueError, match="data.subword_weights"):
        text.IdfTable(subwords="first")
    s = " ".join(["onion"] * 50)
    enc = text.encode(s, [[i * 6, i * 6 + 5, "NOUN"] for i in range(50)], tokenizer, 16, None)
    assert len(enc.input_ids) == 16 and enc.input_ids[-1] == tokenizer.sep_token_id
    assert enc.toi_weight.tolist() == [0.0] + [1.0] * 14 + [0.0]  # no table: tokens of interest weigh 1


def test_feature_stats_are_found_beside_the_training_shards(shards: Path, tmp_path: Path, caplog) -> None:
    """data.feature_stats, else feature_stats.json in the folder of the first training source: a folder,
    a list of its shard paths (the main job's held-out split) or a brace pattern; none: a warning."""
    want = json.loads((shards / "feature_stats.json").read_text())
    tars = sorted(str(p) for p in shards.glob("shard-*.tar"))
    first, last = Path(tars[0]).stem.split("-")[1], Path(tars[-1]).stem.split("-")[1]
    for train in (str(shards), tars[1:], str(shards / f"shard-{{{first}..{last}}}.tar")):
        mean, std = L.load_feature_stats(config(train))
        assert mean.tolist() == pytest.approx(want["mean"]) and std.tolist() == pytest.approx(want["std"])
    other = tmp_path / "stats.json"
    other.write_text(json.dumps({"frames": 1, "mean": [1.0] * len(want["mean"]), "std": [2.0] * len(want["mean"])}))
    assert L.load_feature_stats(config(str(shards), feature_stats=str(other)))[1].tolist() == [2.0] * len(want["std"])
    bare = copy_shards(shards, tmp_path / "bare")
    (bare / "feature_stats.json").unlink()
    assert L.load_feature_stats(config(str(bare))) is None and "not standardised" in caplog.text


# ---------------------------------------------------------------- batches


def test_batch_shapes_dtypes_and_padding(shards: Path, reference: dict[str, Any], tokenizer: Any) -> None:
    dim = json.loads((shards / "manifest.json").read_text())["feature_spec"]["dim"]
    for batch in reference["epochs"][0]:
        b, n = batch["input_ids"].shape
        m = batch["frames"].shape[1]
        assert b == BATCH and len(batch["keys"]) == b and batch["frames"].shape == (b, m, dim)
        expected = {"input_ids": torch.long, "attention_mask": torch.bool, "mlm_input_ids": torch.long,
                    "mlm_labels": torch.long, "toi_weight": torch.float32, "frames": torch.float16,
                    "frame_mask": torch.bool, "mfm_mask": torch.bool}  # fmt: skip
        for name, dtype in expected.items():
            assert batch[name].dtype == dtype and batch[name].shape[:2] == (b, n if name in TEXT else m), name
        att, fm = batch["attention_mask"], batch["frame_mask"]
        assert att.sum(1).max() == n and fm.sum(1).max() == m <= 32  # padded to the batch's longest
        assert (att[:, :-1].int() >= att[:, 1:].int()).all() and (fm[:, :-1].int() >= fm[:, 1:].int()).all()
        lengths = att.sum(1)
        assert (batch["input_ids"][:, 0] == tokenizer.cls_token_id).all()
        assert (batch["input_ids"][torch.arange(b), lengths - 1] == tokenizer.sep_token_id).all()
        assert (batch["input_ids"][~att] == tokenizer.pad_token_id).all()
        assert (batch["mlm_input_ids"][~att] == tokenizer.pad_token_id).all()
        assert (batch["mlm_labels"][~att] == masking.IGNORE_INDEX).all() and (batch["toi_weight"][~att] == 0).all()
        assert (batch["frames"][~fm] == 0).all() and not batch["mfm_mask"][~fm].any()
        target = batch["mlm_labels"] != masking.IGNORE_INDEX
        assert (target.sum(1) >= 1).all() and (batch["mfm_mask"].sum(1) >= 1).all()
        assert torch.equal(batch["mlm_labels"][target], batch["input_ids"][target])
        assert torch.equal(batch["mlm_input_ids"][~target], batch["input_ids"][~target])
        assert (batch["toi_weight"] >= 0).all() and (batch["toi_weight"] > 0).any()


TEXT = {"input_ids", "attention_mask", "mlm_input_ids", "mlm_labels", "toi_weight"}


def test_float16_frames_are_a_float32_loaders_exactly(shards: Path, reference: dict[str, Any], tokenizer: Any) -> None:
    """frames_dtype float32 (the old batches), through a worker's shared memory: the same batches, frames
    equal to the default float16 ones made float32 (the shards hold float16), in twice the bytes."""
    loader = L.build_train_loader(config(shards, num_workers=1, frames_dtype="float32"), tokenizer, 0, 1)
    full = epoch(loader)
    assert len(full) == len(reference["epochs"][0])
    for half, f32 in zip(reference["epochs"][0], full):
        assert half["frames"].dtype == torch.float16 and f32["frames"].dtype == torch.float32
        assert torch.equal(half["frames"].float(), f32["frames"]) and f32["frames"].nbytes == 2 * half["frames"].nbytes
        assert_same(
            [{k: v for k, v in half.items() if k != "frames"}], [{k: v for k, v in f32.items() if k != "frames"}]
        )


def test_sample_content_matches_the_shard(shards: Path, reference: dict[str, Any], tokenizer: Any) -> None:
    """A row's frames are a window of the stored features; its weights come from the corpus's toi_df."""
    idf = text.load_idf(str(shards / "toi_df.json"))
    batch = reference["epochs"][0][0]
    samples = {s["__key__"]: s for s in _raw_samples(shards)}
    for i, key in enumerate(batch["keys"]):
        meta = json.loads(samples[key]["json"])
        feats = schema.decode_npy(samples[key]["feat.npy"]).astype(np.float32)  # (T, D)
        frames = batch["frames"][i, batch["frame_mask"][i]].numpy()  # (M, D)
        starts = [s for s in range(len(feats) - len(frames) + 1) if np.array_equal(feats[s : s + len(frames)], frames)]
        assert len(frames) == min(len(feats), 32) and starts
        enc = text.encode(meta["text"], meta["toi"], tokenizer, 32, idf)
        n = len(enc.input_ids)
        assert torch.equal(batch["input_ids"][i, :n], torch.from_numpy(enc.input_ids))
        assert torch.allclose(batch["toi_weight"][i, :n], torch.from_numpy(enc.toi_weight))


def _raw_samples(folder: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(path) as tar:
            members: dict[str, dict[str, Any]] = {}
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {"__key__": key})[ext] = tar.extractfile(m).read()
            out += members.values()
    return out


# ---------------------------------------------------------------- epochs, ranks, determinism


def test_one_rank_sees_every_sample_once(shards: Path, reference: dict[str, Any]) -> None:
    total = len(all_keys(shards))
    for batches, steps in zip(reference["epochs"], reference["steps"]):
        keys = keys_of(batches)
        assert len(batches) == steps == math.ceil(total / BATCH)
        assert set(keys) == all_keys(shards)
        assert len(keys) - len(set(keys)) == steps * BATCH - total  # only the last batch's fill repeats
    assert keys_of(reference["epochs"][0]) != keys_of(reference["epochs"][1])  # reshuffled per epoch


def test_two_ranks_disjoint_and_equal_steps(shards: Path, tokenizer: Any) -> None:
    cfg = config(shards, streams=2)
    ranks = [L.build_train_loader(cfg, tokenizer, rank=r, world_size=2) for r in (0, 1)]
    for e in (0, 1):
        runs = [epoch(loader) for loader in ranks]
        assert len(runs[0]) == len(runs[1]) == ranks[0].steps_per_epoch(e) == ranks[1].steps_per_epoch(e)
        seen = [set(keys_of(run)) for run in runs]
        assert not seen[0] & seen[1]
        assert seen[0] | seen[1] == all_keys(shards)


def test_same_batches_with_0_and_2_workers_and_across_runs(shards: Path, reference: dict, tokenizer: Any) -> None:
    loader = L.build_train_loader(config(shards, num_workers=2), tokenizer, rank=0, world_size=1)
    assert_same(epoch(loader), reference["epochs"][0])
    assert_same(epoch(loader), reference["epochs"][1])
    again = L.build_train_loader(config(shards, num_workers=1), tokenizer, rank=0, world_size=1)
    assert_same(take(iter(again), 3), reference["epochs"][0][:3])


def test_masks_depend_on_sample_not_position(shards: Path, reference: dict, tokenizer: Any) -> None:
    """Per-sample generators: another batch size and stream count move samples, not their masks."""
    other = epoch(L.build_train_loader(config(shards, batch_size=5, streams=3), tokenizer, rank=0, world_size=1))
    rows = {k: (b, i) for b in other for i, k in enumerate(b["keys"])}
    checked = 0
    for batch in reference["epochs"][0][:4]:
        for i, key in enumerate(batch["keys"]):
            b, j = rows[key]
            for name in ("mlm_input_ids", "mlm_labels", "mfm_mask", "frames"):
                x, y = batch[name][i], b[name][j]
                n = min(len(x), len(y))
                assert torch.equal(x[:n], y[:n]) and not x[n:].any() and not y[n:].any(), (key, name)
            checked += 1
    assert checked == 4 * BATCH
    batch = reference["epochs"][1][0]  # epoch 1: masks are a function of (seed, epoch, key) alone
    for i, key in enumerate(batch["keys"]):
        m = int(batch["frame_mask"][i].sum())
        expected = masking.mask_frames(m, L.sample_rng(0, 1, key, L.RNG_MFM), 0.15)
        assert np.array_equal(batch["mfm_mask"][i, :m].numpy(), expected)


# ---------------------------------------------------------------- resume


@pytest.mark.parametrize("where", ["first", "middle", "tail", "last"])  # the tail's partial chunks merge
def test_exact_resume(shards: Path, reference: dict[str, Any], tokenizer: Any, where: str) -> None:
    steps = reference["steps"][0]
    k = {"first": 1, "middle": steps // 2, "tail": steps - 2, "last": steps - 1}[where]
    first = L.build_train_loader(config(shards), tokenizer, rank=0, world_size=1)
    it = iter(first)
    assert_same(take(it, k), reference["epochs"][0][:k])
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    assert state["epoch"] == 0 and state["batches"] == k
    fresh = L.build_train_loader(config(shards, num_workers=2), tokenizer, rank=0, world_size=1)
    fresh.load_state_dict(state)
    assert_same(epoch(fresh), reference["epochs"][0][k:])
    assert fresh.epoch == 1
    assert_same(take(iter(fresh), 2), reference["epochs"][1][:2])


def test_resume_at_every_batch_with_partial_chunks(shards: Path, tokenizer: Any) -> None:
    """Batch 5 over 3 streams: the epoch's tail merges partial chunks of several streams, so some
    saved positions lie inside a stream's chunk; resuming anywhere gives the same rest."""
    cfg = config(shards, batch_size=5, streams=3)
    whole = epoch(L.build_train_loader(cfg, tokenizer, 0, 1))
    inside_a_chunk = 0
    for k in range(1, len(whole)):
        part = L.build_train_loader(cfg, tokenizer, 0, 1)
        take(iter(part), k)
        state = part.state_dict()
        inside_a_chunk += any(n % 5 for n, *_ in state["cursors"])
        fresh = L.build_train_loader(cfg, tokenizer, 0, 1)
        fresh.load_state_dict(state)
        assert_same(epoch(fresh), whole[k:])
    assert inside_a_chunk > 0


def test_breaking_out_of_a_loop_continues_at_the_next_batch(shards: Path, reference: dict, tokenizer: Any) -> None:
    loader = L.build_train_loader(config(shards), tokenizer, rank=0, world_size=1)
    got = []
    for n in (3, 5, 100):
        for i, batch in enumerate(loader):
            got.append(batch)
            if i + 1 == n:
                break
    assert_same(got, reference["epochs"][0])
    assert loader.epoch == 1 and loader.batches == 0


def test_resume_from_another_setup(shards: Path, tokenizer: Any) -> None:
    loader = L.build_train_loader(config(shards), tokenizer, rank=0, world_size=1)
    take(iter(loader), 10)
    state = loader.state_dict()
    other = L.build_train_loader(config(shards, batch_size=4), tokenizer, rank=0, world_size=1)
    with pytest.raises(ValueError, match="batch_size"):
        other.load_state_dict(state)
    other.load_state_dict(state, strict=False)  # same fraction of the same epoch
    assert other.epoch == 0 and other.batches == 10 * other.steps_per_epoch() // state["steps"]
    left = other.steps_per_epoch() - other.batches
    assert len(epoch(other)) == left and other.epoch == 1


# ---------------------------------------------------------------- epoch length


def test_epoch_samples_gives_open_clip_steps(shards: Path, tokenizer: Any) -> None:
    total = len(all_keys(shards))
    cfg = config(shards, epoch_samples=total)
    loaders = [L.build_train_loader(cfg, tokenizer, rank=r, world_size=2) for r in (0, 1)]
    assert [lo.steps_per_epoch() for lo in loaders] == [math.ceil(total / (BATCH * 2))] * 2
    assert [len(epoch(lo)) for lo in loaders] == [math.ceil(total / (BATCH * 2))] * 2
    fixed = L.build_train_loader(config(shards, epoch_steps=3), tokenizer, 0, 1)
    assert len(epoch(fixed)) == 3 == fixed.steps_per_epoch()


def test_plan_targets_fill_every_rank() -> None:
    sizes = [10, 9, 8, 11, 7, 3, 12]
    plans = [L.plan_epoch(sizes, epoch=0, rank=r, world=2, batch_size=4, streams=2, block_shards=1, seed=0,
                          training=True) for r in (0, 1)]  # fmt: skip
    per_rank = [sum(sizes[i] for shards in p.streams for i in shards) for p in plans]
    assert plans[0].steps == plans[1].steps == max(math.ceil(n / 4) for n in per_rank)
    assert sorted(i for p in plans for shards in p.streams for i in shards) == list(range(len(sizes)))
    for plan, own in zip(plans, per_rank):
        assert sum(plan.targets) == plan.steps * 4 >= own
        declared = [sum(sizes[i] for i in shards) for shards in plan.streams]
        assert all(t >= d for t, d in zip(plan.targets, declared))  # no stream drops a sample
    assert L.apportion(10, [3, 3, 4]) == [3, 3, 4] and L.apportion(7, [1, 1, 0]) == [4, 3, 0]


@pytest.mark.parametrize(("sizes", "world", "ok"), [
    ([5], 2, False), ([5, 5], 2, True), ([5, 0, 5], 2, False), ([5, 0, 5, 5], 2, True), ([1, 1, 1], 4, False),
    ([4] * 7 + [0, 0], 4, False), ([4] * 8 + [0], 4, True), ([3], 1, True),
])  # fmt: skip
def test_check_world_says_when_a_rank_can_get_no_samples(sizes: list[int], world: int, ok: bool) -> None:
    """check_world passes exactly when every epoch's plan feeds every rank: when it passes, 50 epochs plan; when
    not, the permutation that gives a rank only empty shards exists (shown by the count argument)."""
    if not ok:
        with pytest.raises(ValueError, match=f"cannot feed {world} ranks"):
            L.check_world(sizes, world)
        assert len(sizes) // world <= sizes.count(0)  # a rank's n // world places can all hold empty shards
        return
    L.check_world(sizes, world)
    for ep in range(50):
        for r in range(world):
            L.plan_epoch(sizes, epoch=ep, rank=r, world=world, batch_size=2, streams=1, block_shards=1, seed=0,
                         training=True)  # fmt: skip


# ---------------------------------------------------------------- held-out mode


def test_held_out_every_sample_once_unmasked(shards: Path, tokenizer: Any) -> None:
    urls = [str(p) for p in sorted(shards.glob("shard-*.tar"))]
    total = len(all_keys(shards))
    runs = []
    for workers in (0, 2):
        held = L.build_eval_loader(urls, config(shards, num_workers=workers), tokenizer, batch_size=BATCH)
        runs.append(epoch(held))
        assert len(runs[-1]) == held.steps_per_epoch() == math.ceil(total / BATCH)
    assert_same(runs[0], runs[1])
    keys = keys_of(runs[0])
    assert len(keys) == len(set(keys)) == total and set(keys) == all_keys(shards)
    assert len(runs[0][-1]["keys"]) == total - BATCH * (len(runs[0]) - 1)  # the last batch is partial
    for batch in runs[0]:
        assert (batch["mlm_labels"] == masking.IGNORE_INDEX).all() and not batch["mfm_mask"].any()
        assert torch.equal(batch["mlm_input_ids"], batch["input_ids"])
    again = L.build_eval_loader(urls, config(shards), tokenizer, batch_size=BATCH)
    take(iter(again), 2)  # an evaluation that stops early does not move the next one
    assert_same(epoch(again), runs[0])
    samples = {s["__key__"]: s for s in _raw_samples(shards)}
    first = runs[0][0]
    feats = schema.decode_npy(samples[first["keys"][0]]["feat.npy"]).astype(np.float32)
    assert np.array_equal(first["frames"][0, : min(32, len(feats))].numpy(), feats[:32])  # the first frames


# ---------------------------------------------------------------- sources and bad input


def test_sources_folder_brace_list_equivalent(shards: Path) -> None:
    folder = L.resolve_shards(str(shards))
    names = sorted(p.name for p in shards.glob("shard-*.tar"))
    brace = L.resolve_shards(f"{shards}/shard-{{000000..{len(names) - 1:06d}}}.tar")
    listed = L.resolve_shards([str(shards / n) for n in names])
    assert folder.urls == brace.urls == listed.urls and folder.sizes == brace.sizes == listed.sizes
    assert folder.feature_dim == 64 and folder.toi_df == str(shards / "toi_df.json")
    assert sum(folder.sizes) == len(all_keys(shards))


def test_missing_sources_fail_before_any_work(shards: Path, tmp_path: Path, tokenizer: Any) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        L.build_train_loader(config(missing), tokenizer, 0, 1)
    assert not missing.exists()
    with pytest.raises(FileNotFoundError, match="shard-999999.tar"):
        L.build_train_loader(config([str(shards / "shard-000000.tar"), str(shards / "shard-999999.tar")]), tokenizer)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="sizes.json"):
        L.build_train_loader(config(empty), tokenizer, 0, 1)
    gone = copy_shards(shards, tmp_path / "gone")
    (gone / "shard-000003.tar").unlink()
    with pytest.raises(FileNotFoundError, match="shard-000003.tar"):
        L.build_train_loader(config(gone), tokenizer, 0, 1)


def test_corrupt_shard_skipped_counted_logged(
    shards: Path, tmp_path: Path, tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bad = copy_shards(shards, tmp_path / "bad")
    lost = set(shard_keys(shards)["shard-000002.tar"])
    (bad / "shard-000002.tar").write_bytes(b"this is not a tar file " * 100)
    truncated = bad / "shard-000005.tar"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # a shard cut in the middle
    runs = []
    for workers in (0, 2):
        loader = L.build_train_loader(config(bad, num_workers=workers), tokenizer, rank=0, world_size=1)
        with caplog.at_level(logging.WARNING, logger="pretrain.loader"):
            runs.append(epoch(loader))
        assert len(runs[-1]) == loader.steps_per_epoch()  # the plan (and the step count) stands
        assert loader.skipped["corrupt_shard"] == 2, loader.skipped
        seen = set(keys_of(runs[-1]))
        assert not seen & lost and len(seen) > len(all_keys(shards)) - len(lost) - 8
    assert_same(runs[0], runs[1])
    assert "skipped corrupt_shard" in caplog.text
    held = L.build_eval_loader(str(bad), config(bad, num_workers=2), tokenizer)
    keys = keys_of(epoch(held))
    assert len(keys) == len(set(keys)) and not set(keys) & lost and held.skipped["corrupt_shard"] == 2


def test_incomplete_sample_skipped_and_counted(shards: Path, tmp_path: Path, tokenizer: Any) -> None:
    bad = copy_shards(shards, tmp_path / "incomplete")
    path = bad / "shard-000001.tar"
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    dropped = members[0][0].name.split(".", 1)[0]  # the first sample loses its features
    with tarfile.open(path, "w") as tar:
        for m, data in members[1:]:
            tar.addfile(m, io.BytesIO(data))
    for workers in (0, 2):
        held = L.build_eval_loader(str(bad), config(bad, num_workers=workers), tokenizer)
        keys = keys_of(epoch(held))
        assert dropped not in keys and len(keys) == len(set(keys)) == len(all_keys(shards)) - 1
        assert held.skipped == Counter({"incomplete_sample": 1})


def test_skip_counts_survive_resume(shards: Path, tmp_path: Path, tokenizer: Any) -> None:
    bad = copy_shards(shards, tmp_path / "bad-resume")
    (bad / "shard-000004.tar").write_bytes(b"\0garbage" * 64)
    full = L.build_train_loader(config(bad), tokenizer, 0, 1)
    whole = epoch(full)
    for k in (2, 9):
        part = L.build_train_loader(config(bad), tokenizer, 0, 1)
        take(iter(part), k)
        fresh = L.build_train_loader(config(bad), tokenizer, 0, 1)
        fresh.load_state_dict(part.state_dict())
        assert_same(epoch(fresh), whole[k:])
        assert fresh.skipped == full.skipped  # counted per read: a stream that wraps reads the shard again
    assert set(full.skipped) == {"corrupt_shard"} and full.skipped["corrupt_shard"] >= 1


def test_rank_and_world_from_the_environment(shards: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    loader = L.build_train_loader(config(shards), tokenizer)
    assert (loader.rank, loader.world) == (1, 2)
    assert L.dist_info(0, 2) == (0, 2)
    with pytest.raises(ValueError, match="rank 2"):
        L.dist_info(2, 2)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="num_workers"):
        L.LoaderConfig(train="x", num_workers=3, streams=4).validate()
    with pytest.raises(ValueError, match="batch_size"):
        L.LoaderConfig(train="x", batch_size=0).validate()
    with pytest.raises(ValueError, match="epoch_steps"):
        L.LoaderConfig(train="x", epoch_steps=3, epoch_samples=10).validate()
    assert dataclasses.asdict(L.LoaderConfig())["streams"] == 4


# ---------------------------------------------------------------- S3 (moto's S3 server on loopback)


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    with moto_s3(tmp_path_factory.mktemp("moto-loader"), credentials) as endpoint:
        yield endpoint


@pytest.mark.slow
def test_s3_prefix_gives_the_local_batches(shards: Path, reference: dict, tokenizer: Any, s3_endpoint: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("loader-test")
    fs.put(str(shards) + "/", "loader-test/clip60/", recursive=True)
    cfg = config("s3://loader-test/clip60", num_workers=2, s3_endpoint=s3_endpoint)
    loader = L.build_train_loader(cfg, tokenizer, rank=0, world_size=1)
    assert loader.corpus.urls[0].startswith("s3://loader-test/clip60/shard-")
    local = L.build_train_loader(config(shards), tokenizer, rank=0, world_size=1)
    take(iter(local), 3)
    loader.load_state_dict(local.state_dict())  # the plan depends on shard names and sizes, not on where
    assert_same(epoch(loader), reference["epochs"][0][3:])
    with pytest.raises(FileNotFoundError, match="s3://loader-test/missing"):
        L.build_train_loader(config("s3://loader-test/missing", s3_endpoint=s3_endpoint), tokenizer, 0, 1)
