"""VCMR corpus search (finetune/moment_search.py) at TVR validation size: time and peak memory.

    python benchmarks/vcmr_search.py [--queries 10895 --videos 2179 --frames 100 --min-frames 30]
        [--dims 384 768] [--scales 0.1 1] [--subset 512] [--threads 1] [--write]

Synthetic corpus (seed 0): V videos of 30-100 frames (uniform), unit-norm random frame vectors
(V, M, d) zero past each video's end; Q queries, each three random vectors. The model side is
what an XML-style model does at inference:
- vr_scores: max over a video's valid frames of the cosine between the first query vector and
  the frames, (Qv, d) @ (d, V*M) then a masked max;
- span_logits: start and end logits = dot products of the second and third query vectors with
  every frame of the corpus, (2Qc, d) @ (d, V*M), then the rows of the query's K videos.

Each (scale, d) runs in a fresh process (scale multiplies Q and V), which measures, in order:
1. the whole search, `search_corpus` with the default `SearchConfig` (K = 100 videos,
   1-16 frame moments, 200 candidates, NMS at IoU 0.7, 100 predictions, 256 / 64 query chunks):
   wall and CPU seconds, split into the model's callbacks and the search's own steps (the
   module's functions wrapped with timers), and the peak RSS during it (VmHWM, reset through
   /proc/self/clear_refs) above the RSS before;
2. baseline, same process: the VR stage alone (vr_scores, log_softmax over videos, top 100
   videos, the VR lists) over all queries, the part of the work any video retrieval eval does;
3. baseline, same process, on the first `--subset` queries with their st/ed logits computed
   beforehand: the moment scoring + top-200 of the band (Qc, K, M, L) against the dense
   upper-triangle (Qc, K, M, M) of TVR's `find_max_triples_from_upper_triangle_product` (same
   chunks), time and peak RSS, with their top-200 scores compared.
The process's peak (getrusage ru_maxrss) is reported too. `--write` puts the result under
"## finetune: VCMR corpus search" in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for `python benchmarks/x.py`
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from benchmarks._results import header, load, machine, write_section  # noqa: E402
from finetune import moment_search as ms  # noqa: E402

SECTION = "## finetune: VCMR corpus search"
MiB = 2**20
# the prediction lists (Packed.lists) fall in "rest"
TIMED = ("frame_log_probs", "band_scores", "ranked_topk", "temporal_nms", "pack_moments", "pack_videos")


# ---------------------------------------------------------------- synthetic corpus and model


class SyntheticModel:
    """Frames (V, M, d) and query vectors (Q, 3, d); the two callbacks of `search_corpus`, timed."""

    def __init__(self, queries: int, videos: int, frames: int, min_frames: int, dim: int, seed: int = 0,
                 device: str = "cpu"):  # fmt: skip
        g = torch.Generator().manual_seed(seed)
        self.counts = torch.randint(min_frames, frames + 1, (videos,), generator=g)  # (V,)
        self.valid = torch.arange(frames) < self.counts[:, None]  # (V, M)
        x = torch.nn.functional.normalize(torch.randn(videos, frames, dim, generator=g), dim=-1)  # (V, M, d)
        self.frames = (x * self.valid[..., None]).view(videos * frames, dim)  # (V*M, d)
        q = torch.randn(queries, 3, dim, generator=g)  # (Q, 3, d)
        self.q_vr = torch.nn.functional.normalize(q[:, 0], dim=-1)  # (Q, d)
        self.q_span = q[:, 1:].contiguous()  # (Q, 2, d): start, end
        self.shape = (videos, frames)
        self.seconds: dict[str, float] = defaultdict(float)
        for name in ("valid", "frames", "q_vr", "q_span"):  # the model's side on the device; the corpus on the CPU
            setattr(self, name, getattr(self, name).to(device))

    def vr_scores(self, q0: int, q1: int) -> Tensor:
        t = clock()
        cos = (self.q_vr[q0:q1] @ self.frames.T).view(q1 - q0, *self.shape)  # (Qv, V, M)
        out = cos.masked_fill_(~self.valid, float("-inf")).amax(dim=-1)  # (Qv, V)
        self.seconds["model: vr_scores"] += clock() - t
        return out

    def span_logits(self, q_rows: Tensor, v_rows: Tensor) -> tuple[Tensor, Tensor]:
        t = clock()
        qc, k = v_rows.shape
        x = (self.q_span[q_rows].view(2 * qc, -1) @ self.frames.T).view(qc, 2, *self.shape)  # (Qc, 2, V, M)
        idx = v_rows[:, None, :, None].expand(qc, 2, k, self.shape[1])  # (Qc, 2, K, M)
        st, ed = x.gather(2, idx).unbind(1)  # (Qc, K, M) each
        self.seconds["model: span_logits"] += clock() - t
        return st, ed


def corpus_of(model: SyntheticModel) -> ms.Corpus:
    """TVR's 1.5 s frames; durations a random part of the last frame past the frame count."""
    v = model.counts.shape[0]
    dur = (model.counts - torch.rand(v, generator=torch.Generator().manual_seed(1))) * 1.5  # (V,)
    return ms.Corpus(model.counts, 1.5, dur.double(), torch.arange(v))


def instrument(seconds: dict[str, float], num_videos: int) -> None:
    """Wrap the search module's steps with wall-clock timers (ranked_topk split by what it ranks)."""
    for name in TIMED:
        fn = getattr(ms, name)

        def timed(*a: Any, _fn: Callable = fn, _name: str = name, **kw: Any) -> Any:
            t = clock()
            out = _fn(*a, **kw)
            key = _name
            if _name == "ranked_topk":
                key += " (videos)" if a[0].shape[1] == num_videos else " (moments)"
            seconds[key] += clock() - t
            return out

        setattr(ms, name, timed)


# ---------------------------------------------------------------- the measured phases


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def clock() -> float:
    """Wall seconds, once the GPU (when one is in use) has finished its queued work."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def measured(fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """(result, {wall, cpu, rss_before MiB, rss_peak_delta MiB, gpu_peak MiB}) of fn(), VmHWM (and the GPU's
    peak, on a GPU) reset just before; gpu_peak is 0 without a GPU."""
    gpu = torch.cuda.is_available() and torch.cuda.is_initialized()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := current VmRSS
    before = _status_kb("VmRSS")
    t, c = clock(), time.process_time()
    out = fn()
    wall, cpu = clock() - t, time.process_time() - c
    peak = (_status_kb("VmHWM") - before) / 1024
    gpu_peak = torch.cuda.max_memory_allocated() / MiB if gpu else 0.0
    return out, {"wall": wall, "cpu": cpu, "rss_before": before / 1024, "rss_peak": peak, "gpu_peak": gpu_peak}


def vr_stage(model: SyntheticModel, corpus: ms.Corpus, num_queries: int, cfg: ms.SearchConfig) -> int:
    """The VR part alone: scores, log p(v|q), the top videos and their lists."""
    n = 0
    for q0 in range(0, num_queries, cfg.query_chunk):
        q1 = min(q0 + cfg.query_chunk, num_queries)
        log_pv = (model.vr_scores(q0, q1) / cfg.vr_temperature).log_softmax(dim=1)  # (Qv, V)
        lp, v = ms.ranked_topk(log_pv, cfg.predictions)  # (Qv, P)
        n += len(ms.video_lists(lp, v, corpus))
    return n


def dense_top(log_st: Tensor, log_ed: Tensor, prior: Tensor, cfg: ms.SearchConfig) -> tuple[Tensor, Tensor]:
    """Baseline: every (start, end) pair of the K videos, (Qc, K, M, M), band-masked, then topk."""
    m = log_st.shape[-1]
    pos = torch.arange(m, device=log_st.device)  # (M,)
    length = pos[None, :] - pos[:, None] + 1  # (M, M): j - i + 1
    bad = (length < cfg.min_moment_frames) | (length > cfg.max_moment_frames)  # (M, M)
    full = (log_st + prior[..., None])[..., :, None] + log_ed[..., None, :]  # (Qc, K, M, M)
    return full.masked_fill_(bad, float("-inf")).flatten(1).topk(cfg.candidates, dim=1)  # (Qc, C) each


def band_top(log_st: Tensor, log_ed: Tensor, prior: Tensor, cfg: ms.SearchConfig) -> tuple[Tensor, Tensor]:
    band = ms.band_scores(log_st, log_ed, prior, cfg.min_moment_frames, cfg.max_moment_frames)  # (Qc, K, M, L)
    return ms.ranked_topk(band.flatten(1), cfg.candidates)  # (Qc, C) each


def moment_stage(inputs: list[tuple[Tensor, ...]], top: Callable, cfg: ms.SearchConfig) -> Tensor:
    """Masked log-softmax of st/ed and the top candidates of each chunk; returns their scores (S, C)."""
    out = []
    for st, ed, counts, prior in inputs:
        out.append(top(ms.frame_log_probs(st, counts), ms.frame_log_probs(ed, counts), prior, cfg)[0])
    return torch.cat(out)


def subset_inputs(model: SyntheticModel, corpus: ms.Corpus, n: int, cfg: ms.SearchConfig) -> list[tuple[Tensor, ...]]:
    """Per moment chunk of the first n queries: st, ed (Qc, K, M), frame counts and log p(v|q) (Qc, K)."""
    log_pv = (model.vr_scores(0, n) / cfg.vr_temperature).log_softmax(dim=1)  # (n, V)
    prior, v_rows = ms.ranked_topk(log_pv, cfg.top_videos)  # (n, K)
    chunks = []
    for c0 in range(0, n, cfg.moment_chunk):
        rows = slice(c0, min(c0 + cfg.moment_chunk, n))
        st, ed = model.span_logits(torch.arange(rows.start, rows.stop), v_rows[rows])  # (Qc, K, M)
        chunks.append((st, ed, corpus.frame_counts.to(v_rows.device)[v_rows[rows]], prior[rows]))
    return chunks


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One (scale, d) configuration in this process; returns the measurements."""
    q, v = round(args.queries * args.scale), round(args.videos * args.scale)
    model = SyntheticModel(q, v, args.frames, args.min_frames, args.dim, device=args.device)
    corpus, cfg = corpus_of(model), ms.SearchConfig()
    res: dict[str, Any] = {"queries": q, "videos": v, "dim": args.dim, "rss_data": _status_kb("VmRSS") / 1024}
    res["frames_mib"] = model.frames.numel() * model.frames.element_size() / MiB
    res["frames_mean"] = float(model.counts.float().mean())
    seconds: dict[str, float] = model.seconds
    instrument(seconds, v)
    (vcmr, vr), res["search"] = measured(lambda: ms.search_corpus(model.vr_scores, model.span_logits, q, corpus, cfg))
    res["parts"] = dict(seconds)
    res["per_query"] = [sum(map(len, vcmr)) / q, sum(map(len, vr)) / q]
    seconds.clear()
    _, res["vr_only"] = measured(lambda: vr_stage(model, corpus, q, cfg))
    n = min(args.subset, q)
    inputs = subset_inputs(model, corpus, n, cfg)
    band, res["band"] = measured(lambda: moment_stage(inputs, band_top, cfg))
    dense, res["dense"] = measured(lambda: moment_stage(inputs, dense_top, cfg))
    res["subset"] = n
    res["band_vs_dense_max_diff"] = float((band - dense).abs().max())
    res["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def run_child(scale: float, dim: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--scale", str(scale), "--dims", str(dim), "--queries",
           str(args.queries), "--videos", str(args.videos), "--frames", str(args.frames), "--min-frames",
           str(args.min_frames), "--subset", str(args.subset), "--threads", str(args.threads),
           "--device", args.device]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"scale {scale}, d {dim} failed ({out.returncode}): {out.stderr[-2000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    s = res["search"]
    print(f"Q={res['queries']} V={res['videos']} d={dim}: search {s['wall']:.1f} s, +{s['rss_peak']:.0f} MiB; "
          f"VR only {res['vr_only']['wall']:.1f} s; band {res['band']['wall']:.2f} s vs dense "
          f"{res['dense']['wall']:.2f} s", flush=True)  # fmt: skip
    return res


# ---------------------------------------------------------------- report


def tables(runs: list[dict[str, Any]]) -> str:
    head = [
        "| Q | V | d | frames tensor MiB | RSS before MiB | search wall s | CPU s | ms/query | peak RSS - before, MiB "
        "| VR stage alone, wall s | search / VR stage | process peak RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        s, b = r["search"], r["vr_only"]
        head.append(
            f"| {r['queries']} | {r['videos']} | {r['dim']} | {r['frames_mib']:.0f} | {s['rss_before']:.0f} | "
            f"{s['wall']:.1f} | {s['cpu']:.1f} | {1e3 * s['wall'] / r['queries']:.2f} | {s['rss_peak']:.0f} | "
            f"{b['wall']:.1f} | {s['wall'] / b['wall']:.2f} | {r['maxrss']:.0f} |"
        )
    keys = sorted({k for r in runs for k in r["parts"]}, key=lambda k: (not k.startswith("model"), k))
    parts = ["", "Where the search's wall time goes (s; model callbacks, then the search's own steps):", "",
             "| Q | V | d | " + " | ".join(f"`{k}`" for k in keys) + " | rest |",
             "|---:|---:|---:|" + "---:|" * (len(keys) + 1)]  # fmt: skip
    for r in runs:
        rest = r["search"]["wall"] - sum(r["parts"].values())
        cells = " | ".join(f"{r['parts'].get(k, 0.0):.2f}" for k in keys)
        parts.append(f"| {r['queries']} | {r['videos']} | {r['dim']} | {cells} | {rest:.2f} |")
    dense = ["", "Moment scoring + top 200 on the first queries (st/ed given), band against dense:", "",
             "| Q | V | d | queries | band wall s | dense wall s | dense / band time | band peak RSS MiB "
             "| dense peak RSS MiB | dense / band memory | max abs diff of the top-200 scores |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in runs:
        b, d = r["band"], r["dense"]
        mem = f"{d['rss_peak'] / b['rss_peak']:.2f}" if b["rss_peak"] >= 1 else "n/a"  # band under 1 MiB: no ratio
        dense.append(
            f"| {r['queries']} | {r['videos']} | {r['dim']} | {r['subset']} | {b['wall']:.2f} | {d['wall']:.2f} | "
            f"{d['wall'] / b['wall']:.2f} | {b['rss_peak']:.0f} | {d['rss_peak']:.0f} | {mem} | "
            f"{r['band_vs_dense_max_diff']:.1e} |"
        )
    return "\n".join(head + parts + dense)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=10895, help="Q at scale 1 (TVR val)")
    p.add_argument("--videos", type=int, default=2179, help="V at scale 1 (TVR val)")
    p.add_argument("--frames", type=int, default=100, help="M: most frames per video")
    p.add_argument("--min-frames", type=int, default=30, help="fewest frames per video")
    p.add_argument("--dims", type=int, nargs="+", default=[384], help="d of the frame and query vectors")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="multiply Q and V (one run each)")
    p.add_argument("--subset", type=int, default=512, help="queries of the band vs dense comparison")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--device", default="cpu", help="where the model's tensors and the search run: cpu | cuda")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--scale", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--write", action="store_true", help=f'put the results under "{SECTION}" in RESULTS.md')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        args.dim = args.dims[0]
        print(json.dumps(child(args)))
        return
    load_before, t0 = load(), time.time()
    runs = [run_child(scale, dim, args) for scale in args.scales for dim in args.dims]
    body = tables(runs)
    print("\n" + body + f"\n\nwall {time.time() - t0:.0f} s")
    if args.write:
        command = "python benchmarks/vcmr_search.py " + " ".join(argv if argv is not None else sys.argv[1:])
        r = runs[-1]
        lines = [
            SECTION, "",
            *header(machine("torch"), command.strip()),
            f"- load average (1, 5, 15 min) before: {load_before}; after: {load()}",
            f"- synthetic corpus: frames {args.min_frames}-{args.frames} per video (mean {r['frames_mean']:.1f}), "
            "unit-norm random frame vectors, fp32; `SearchConfig()` defaults (K = 100, moments of 1-16 frames, "
            "200 candidates, NMS IoU 0.7, 100 predictions, query chunk 256, moment chunk 64); "
            f"{r['per_query'][0]:.1f} moments and {r['per_query'][1]:.0f} videos returned per query",
            "- each row: a fresh process; RSS figures are VmHWM (reset at the phase's start) minus the RSS "
            "before the phase, and the process peak (getrusage ru_maxrss); wall times of single runs",
            "", body, "",
        ]  # fmt: skip
        write_section(SECTION, "\n".join(lines))


if __name__ == "__main__":
    main()
