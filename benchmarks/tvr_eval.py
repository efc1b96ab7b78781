"""The TVR val evaluation through the real entry script (finetune/tvr.py), at TVR val size: where the time goes.

    python benchmarks/tvr_eval.py [--scale 1.0] [--ranks 2] [--workdir /tmp/tvr_eval] [--label after]
        [--include BEFORE.log] [--write] [key=value ...]

1. Data (not part of the evaluation): a TVR release in the official file formats at TVR val's size by default
   (`--scale` multiplies it): 2,179 val videos of 30-100 frames at 1.5 s (45-150 s, uniform), 10,895 val
   queries of 8-20 words (5 per video), TV subtitles of 5-12 words every ~4 s with their "(Speaker:)" tags,
   64-d random HERO features, and 400 train videos (4 shards of 100: up to 4 ranks train); converted by
   `python -m data_prep.tvr` (heuristic tagger) as the data stage does. Kept in `--workdir` for the next run
   (same seed, same files).
2. The run: `torchrun --nproc_per_node R finetune/tvr.py --config configs/finetune/tvr.yaml` with the tiny
   preset and everything else the config's (bf16, subtitles of up to 128 tokens, eval batches of 64, the
   search: K = 100 videos, moments up to 16 frames, NMS, 100 predictions), 1 training step, no test split,
   OMP_NUM_THREADS = cores / R; then the val evaluation. Measured: the whole command's wall time, and from
   the evaluation's own timing line (rank 0, `finetune.moment`: "eval timing {...}") the time before the
   evaluation starts (imports, engine, MLflow, the training step), each of its stages (reading the
   annotations; the videos: loader and encoders; the queries: tokenising and encoding; the VCMR + VR search;
   SVMR; the metrics), wall and CPU seconds of rank 0's process (on a shared machine the CPU seconds say
   what the work costs, the wall seconds include waiting for the cores), and rank 0's peak RSS; "after it"
   is the rest of the command (rank 0 writing and validating the files, the plots, MLflow, the export,
   shutting down).
`--include` adds the result lines of earlier runs (the log of this script run from a checkout of the code
before a change) as rows; `--write` puts the table under "## finetune: TVR val evaluation through
finetune/tvr.py" in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for `python benchmarks/x.py`
import numpy as np  # noqa: E402

from benchmarks._results import REPO, header, load, machine, write_section  # noqa: E402

SECTION = "## finetune: TVR val evaluation through finetune/tvr.py"
VAL_VIDEOS, VAL_QUERIES, TRAIN_VIDEOS, DIM, INTERVAL = 2179, 10895, 400, 64, 1.5
WORDS = ("cup table door phone bag laptop coffee pizza book couch chair window kitchen box ring letter car key "
         "picks puts opens closes holds walks sits stands looks talks asks tells gives takes throws drinks eats "
         "the a his her their to at on in with about from while after before and then again quickly slowly "
         "Sheldon Leonard Penny Howard Raj Rachel Ross Monica Joey Chandler Phoebe House Wilson Castle Beckett "
         "really never always just okay right well maybe tonight tomorrow yesterday believe know think want "
         "need going gonna late early party dinner date work hospital office apartment").split()  # fmt: skip
SPEAKERS = WORDS[WORDS.index("Sheldon") : WORDS.index("Beckett") + 1]


def sentence(rng: np.random.Generator, lo: int, hi: int) -> str:
    words = rng.choice(WORDS, size=int(rng.integers(lo, hi + 1)))
    return " ".join(words).capitalize() + "."


def write_release(root: Path, scale: float, seed: int = 0) -> dict[str, int]:
    """The release files (tvr_{train,val}_release.jsonl, tvr_video2dur_idx.json), the subtitles and features."""
    rng = np.random.default_rng(seed)
    n_val = max(2, round(VAL_VIDEOS * scale))
    n_q = max(n_val, round(VAL_QUERIES * scale))
    (root / "features").mkdir(parents=True, exist_ok=True)
    video2dur: dict[str, dict[str, list]] = {"train": {}, "val": {}}
    rows: dict[str, list[dict]] = {"train": [], "val": []}
    subs = []
    per_video = np.full(n_val, n_q // n_val)
    per_video[: n_q - per_video.sum()] += 1  # n_q queries over the val videos
    desc_id = 0
    for split, n, counts in (("train", TRAIN_VIDEOS, [5] * TRAIN_VIDEOS), ("val", n_val, per_video)):
        for i in range(n):
            vid = f"{split}_s{i // 100:02d}e{i % 100:02d}_clip"
            frames = int(rng.integers(30, 101))
            duration = frames * INTERVAL
            video2dur[split][vid] = [duration, len(video2dur[split])]
            feats = rng.standard_normal((frames, DIM)).astype(np.float32)
            np.savez(root / "features" / f"{vid}.npz", features=feats)
            lines, t = [], 0.0
            while t < duration - 2:
                end = min(t + float(rng.uniform(1.5, 4.0)), duration)
                lines.append({"text": f"({rng.choice(SPEAKERS)}:) {sentence(rng, 5, 12)}", "start": round(t, 2),
                              "end": round(end, 2)})  # fmt: skip
                t = end + float(rng.uniform(0.0, 1.0))
            subs.append({"vid_name": vid, "sub": lines})
            for _ in range(int(counts[i])):
                st = float(rng.uniform(0, duration - 3))
                ed = min(duration, st + float(rng.uniform(2, 20)))
                rows[split].append({"desc": sentence(rng, 8, 20), "duration": duration, "ts": [round(st, 2),
                                    round(ed, 2)], "desc_id": desc_id, "type": str(rng.choice(["v", "t", "vt"])),
                                    "vid_name": vid})  # fmt: skip
                desc_id += 1
    for split, lines in rows.items():
        (root / f"tvr_{split}_release.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (root / "tvr_video2dur_idx.json").write_text(json.dumps(video2dur))
    (root / "tvqa_preprocessed_subtitles.jsonl").write_text("".join(json.dumps(s) + "\n" for s in subs))
    return {"val_videos": n_val, "val_queries": len(rows["val"]), "train_videos": TRAIN_VIDEOS}


def prepare(work: Path, scale: float) -> tuple[Path, dict[str, Any]]:
    """The converted set under work/shards (made once per scale), and its sizes."""
    release, shards, done = work / "release", work / "shards", work / "prepared.json"
    if done.exists() and json.loads(done.read_text())["scale"] == scale:
        return shards, json.loads(done.read_text())
    subprocess.run(["rm", "-rf", str(release), str(shards)], check=True)
    t0 = time.time()
    sizes = write_release(release, scale)
    t1 = time.time()
    cmd = [sys.executable, "-m", "data_prep.tvr", "--annotations", str(release), "--subtitles",
           str(release / "tvqa_preprocessed_subtitles.jsonl"), "--features", str(release / "features"),
           "--out", str(shards), "--tagger", "heuristic", "--workers", "2", "--shard-size", "100"]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    info = {"scale": scale, **sizes, "generate_s": t1 - t0, "convert_s": time.time() - t1}
    done.write_text(json.dumps(info))
    return shards, info


def run(shards: Path, work: Path, ranks: int, extra: list[str]) -> dict[str, Any]:
    """finetune/tvr.py on `ranks` CPU ranks; its wall time and the evaluation's timing line."""
    out = work / f"run_{ranks}"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    args = ["finetune/tvr.py", "--config", "configs/finetune/tvr.yaml", f"run.output_dir={out}", "model.preset=tiny",
            f"data.root={shards}", "data.test_split=null", "run.max_steps=1",
            "data.batch_size=4", "data.num_workers=0", "optim.warmup_steps=1", "checkpoint.every=0",
            "eval.codalab_zip=false", *extra]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
           str(29500 + os.getpid() % 1000), *args]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DS_ACCELERATOR": "cpu",
           "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // ranks))}  # fmt: skip
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode:
        raise RuntimeError(f"finetune/tvr.py failed ({proc.returncode}): {proc.stderr[-4000:]}")
    timing = [json.loads(m) for m in re.findall(r"eval timing (\{.*\})", proc.stderr)]
    if not timing:
        raise RuntimeError("no 'eval timing' line in the run's log: " + proc.stderr[-2000:])
    t = timing[-1]
    metrics = json.loads(next(out.glob("eval/val/step_*/metrics.json")).read_text())
    return {"wall": wall, "before_eval": t["started"] - t0, "stages": t["seconds"], "cpu": t.get("cpu_seconds", {}),
            "rss_mib": t["rss_mib"],
            "after_eval": t0 + wall - t["ended"], "vcmr_r1": metrics["VCMR"]["0.5-r1"]}  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    """One row per run: wall seconds, and for the evaluation's stages "wall / CPU" (rank 0's process)."""
    keys = list(dict.fromkeys(k for r in rows for k in r["stages"]))
    head = ["| run | ranks | whole command s | before the evaluation s | evaluation s, wall / CPU | "
            + " | ".join(f"{k} s, wall / CPU" for k in keys) + " | after it s | peak RSS rank 0 MiB |",
            "|---|---:|---:|---:|---:|" + "---:|" * len(keys) + "---:|---:|"]  # fmt: skip
    for r in rows:
        cpu = r.get("cpu", {})
        cell = lambda w, c: f"{w:.1f} / {c:.1f}" if c is not None else f"{w:.1f}"  # noqa: E731
        cells = " | ".join(cell(r["stages"].get(k, 0.0), cpu.get(k) if cpu else None) for k in keys)
        total = cell(sum(r["stages"].values()), sum(cpu.values()) if cpu else None)
        head.append(f"| {r['label']} | {r['ranks']} | {r['wall']:.1f} | {r['before_eval']:.1f} | {total} | "
                    f"{cells} | {r['after_eval']:.1f} | {r['rss_mib']:.0f} |")  # fmt: skip
    return "\n".join(head)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0, help="multiplies TVR val's videos and queries")
    p.add_argument("--ranks", type=int, nargs="+", default=[2], help="torchrun processes (one run each)")
    p.add_argument("--workdir", default="/tmp/tvr_eval")
    p.add_argument("--label", default="", help="the row's name in the table")
    p.add_argument(
        "--include",
        nargs="*",
        default=[],
        help="logs of earlier runs of this script (e.g. of the code "
        "before a change, run from its checkout): their result lines become rows of the table first",
    )
    p.add_argument("--write", action="store_true", help=f'put the results under "{SECTION}" in RESULTS.md')
    p.add_argument("overrides", nargs="*", help="more key=value overrides of finetune/tvr.py")
    args = p.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    load_before = load()
    shards, info = prepare(work, args.scale)
    print(f"data: {info}", flush=True)
    rows = [json.loads(line) for log in args.include for line in Path(log).read_text().splitlines()
            if line.startswith('{"label"')]  # fmt: skip
    for ranks in args.ranks:
        r = {"label": args.label or "this code", "ranks": ranks, **run(shards, work, ranks, args.overrides)}
        print(json.dumps(r), flush=True)
        rows.append(r)
    body = table(rows)
    print("\n" + body)
    if args.write:
        command = "python benchmarks/tvr_eval.py " + " ".join(argv if argv is not None else sys.argv[1:])
        lines = [
            SECTION, "",
            *header(machine("torch"), command.strip()),
            f"- load average (1, 5, 15 min) before: {load_before}; after: {load()}",
            f"- data: {info['val_videos']} val videos (30-100 frames of 1.5 s, 64-d), {info['val_queries']} val "
            f"queries, {info['train_videos']} train videos; generated in {info['generate_s']:.0f} s, converted by "
            f"data_prep.tvr in {info['convert_s']:.0f} s (not part of the evaluation)",
            "- tiny preset, the config's bf16 and subtitles up to 128 tokens, 1 training step; OMP_NUM_THREADS = "
            "cores / ranks",
            "", body, "",
        ]  # fmt: skip
        write_section(SECTION, "\n".join(lines))


if __name__ == "__main__":
    main()
