"""Zero-shot text-to-video retrieval on a held-out shard: does pretraining align the modalities?

Each held-out clip's text is the query for its own video, against all held-out videos, scored
two ways (R@1/5/10, median and mean rank, pretrain/metrics.py), with the similarity that
pretraining's TACo section uses (`objectives.taco.similarity`: TACo's dot product by default):
- `zeroshot_t2v_*`: sentence level, the text's sentence vector (e_t pooled as the model's
  `text_pooling` says) against the video's mean frame (of e_v), TACo's eq. 3 pair;
- `zeroshot_taco_*`: TACo's cascade score (section 3.3), that sentence-level score plus the sum over
  the text's tokens of interest of their best frame's score (eq. 4's s(x, y^p)), the two cheap
  terms of TACo's inference (finetune/video_retrieval.py adds the fusion score).
Every rank runs the same forward passes (ZeRO-3 needs all ranks in each forward); rank 0 logs.

As a command (the main job and the ablation runner call its `run`):

    python -m pretrain.zeroshot --export runs/main/runs/pretrain/export --held-out SHARDS [--predictions F]
    python -m pretrain.zeroshot --random-init --config configs/pretrain/tiny_cpu.yaml --held-out SHARDS [--seed S]

prints the metrics JSON (and `clips`); --predictions writes one line per query: its clip key, the
rank of its own video and the keys of the 10 best videos, for both scores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from pretrain import metrics
from pretrain.objectives.taco import PAPER, TacoConfig, Texts, pooled, taco_pair_scores

TEXT_CHUNK = 64  # texts scored against every video at once (the token scores are tokens x videos x frames)


def embed_pair(model: torch.nn.Module, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
    """(text tokens y (B, N, d), sentence vectors (B, d), video frames x (B, M, d)) of a batch, as TACo scores them."""
    y = model.embed_text(batch["input_ids"], batch["attention_mask"])  # (B, N, d)
    x = model.embed_video(batch["frames"], batch["frame_mask"])  # (B, M, d)
    return y.float(), model.sentence(y, batch["attention_mask"]).float(), x.float()


def _stack(rows: list[Tensor]) -> Tensor:
    """Pad a list of (n_i, ...) tensors along their first dim to the longest and stack them."""
    n = max(len(r) for r in rows)
    return torch.stack([F.pad(r, (0, 0) * (r.dim() - 1) + (0, n - len(r))) for r in rows])


SCORES = ("t2v", "taco")  # the sentence-level score and TACo's cascade score
TOP = 10  # videos listed per query in a predictions file


@dataclass
class Ranked:
    """Zero-shot retrieval of Q held-out clips: metrics, and per score each query's rank and best videos."""

    metrics: dict[str, float]
    keys: list[str]  # the clips' keys: query i is clip i's text, its video is clip i
    ranks: dict[str, Tensor]  # score -> (Q,) 1-based rank of the query's own video
    top: dict[str, Tensor]  # score -> (Q, min(TOP, Q)) indices of the best-scoring videos

    def records(self) -> list[dict]:
        """One JSON-able line per query: its key, and per score its video's rank and the best videos' keys."""
        return [{"key": key, **{f"rank_{s}": int(self.ranks[s][i]) for s in SCORES},
                 **{f"top_{s}": [self.keys[j] for j in self.top[s][i].tolist()] for s in SCORES}}
                for i, key in enumerate(self.keys)]  # fmt: skip


@torch.no_grad()
def rank(engine, batches, device: torch.device, max_samples: int, taco: TacoConfig = PAPER) -> Ranked | None:
    """Zero-shot T2V over the held-out batches (at most max_samples clips), scored as `taco` scores; None
    without a clip."""
    was_training = engine.training
    engine.eval()
    ys, y_bars, xs, text_masks, frame_masks, tois, keys = [], [], [], [], [], [], []
    for batch in batches:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        y, y_bar, x = engine(embed_pair, batch)
        ys.extend(y.unbind(0))
        y_bars.extend(y_bar.unbind(0))
        xs.extend(x.unbind(0))
        text_masks.extend(batch["attention_mask"].bool().unbind(0))
        frame_masks.extend(batch["frame_mask"].bool().unbind(0))
        tois.extend(batch["toi_weight"].float().unbind(0))
        keys.extend(batch.get("keys", [str(len(keys) + i) for i in range(len(y))]))
        if len(ys) >= max_samples:
            break
    engine.train(was_training)
    if not ys:
        return None
    n = min(len(ys), max_samples)
    y, tm, toi = _stack(ys[:n]), _stack(text_masks[:n]), _stack(tois[:n])  # (Q, N, d), (Q, N), (Q, N)
    x, fm = _stack(xs[:n]), _stack(frame_masks[:n])  # (V, M, d), (V, M)
    texts = Texts(y, torch.stack(y_bars[:n]), tm, toi)
    x_bar, y_bar = pooled(x, fm, texts.y_bar, taco.cosine)  # (V, d), (Q, d): TACo L1's pair
    chunks = [slice(i, i + TEXT_CHUNK) for i in range(0, n, TEXT_CHUNK)]
    sims = {"t2v": y_bar @ x_bar.T,  # (Q, V)
            "taco": torch.cat([taco_pair_scores(x, fm, texts[c], taco) for c in chunks])}  # (Q, V)  # fmt: skip
    gt = torch.arange(n, device=x.device)  # (Q,)
    ranks = {s: metrics.gt_ranks(sim, gt).cpu() for s, sim in sims.items()}
    out = {f"zeroshot_{s}_{k}": v for s in SCORES for k, v in metrics.recall_at(ranks[s]).items()}
    top = {s: sim.topk(min(TOP, n), dim=1).indices.cpu() for s, sim in sims.items()}
    return Ranked(out, [str(k) for k in keys[:n]], ranks, top)


def evaluate(engine, batches, device: torch.device, max_samples: int, taco: TacoConfig = PAPER) -> dict[str, float]:
    """Zero-shot T2V metrics over the held-out batches (at most max_samples clips), scored as `taco` scores."""
    ranked = rank(engine, batches, device, max_samples, taco)
    return ranked.metrics if ranked is not None else {}


# ---------------------------------------------------------------- the command


def run(export: str | None, config_path: str, held_out: Sequence[str], seed: int = 0, max_samples: int = 1000,
        batch_size: int = 16, predictions: str | None = None) -> dict[str, float]:  # fmt: skip
    """Zero-shot retrieval of a pretrained export (or, export None, the same architecture at random init
    from `seed`: random video and cross-modal layers, the text encoder's own weights) on held-out shards.

    The random init standardises its frames with the statistics beside the held-out shards, as a fresh
    pretraining would; an export brings pretraining's. predictions: a JSON-lines file, one query a line.
    """
    from pretrain import config, session
    from pretrain.loader import build_eval_loader, resolve_shards
    from pretrain.model import build_model, load_tokenizer, resolve

    cfg = config.load(config_path, [])
    corpus, frame_dim = resolve_shards(list(held_out), cfg.data.s3_endpoint), resolve(cfg.model).frame_dim
    if corpus.feature_dim is not None and corpus.feature_dim != frame_dim:
        raise ValueError(f"held-out shards have {corpus.feature_dim}-d features, the model takes "
                         f"model.frame_dim {frame_dim} ({', '.join(held_out)})")  # fmt: skip
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    if export is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(os.path.join(export, "model.safetensors")), strict=True)
    else:
        session.standardize_frames(model, replace(cfg.data, train=list(held_out), feature_stats=None))
    batches = build_eval_loader(list(held_out), cfg.data, load_tokenizer(cfg.model), batch_size)
    ranked = rank(model, batches, torch.device("cpu"), max_samples, cfg.objectives.taco)
    if ranked is None:
        raise ValueError(f"no clip in the held-out shards {', '.join(held_out)}")
    if predictions:
        with open(predictions, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in ranked.records())
    return {"clips": len(ranked.keys), **ranked.metrics}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pretrain.zeroshot", description=__doc__.splitlines()[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--export", help="a pretraining export folder (model.safetensors, config.yaml)")
    which.add_argument("--random-init", action="store_true", help="the architecture of --config at random init")
    p.add_argument("--config", help="the model's config (default with --export: its config.yaml)")
    p.add_argument("--held-out", nargs="+", required=True, help="held-out shards: folders, patterns or shard paths")
    p.add_argument("--predictions", help="write each query's rank and best videos here (JSON lines)")
    p.add_argument("--seed", type=int, default=0, help="random init: the seed of the new layers")
    p.add_argument("--max-samples", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)
    config_path = args.config or (os.path.join(args.export, "config.yaml") if args.export else None)
    if config_path is None:
        p.error("--random-init needs --config")
    if args.export and not os.path.isfile(os.path.join(args.export, "model.safetensors")):
        p.error(f"--export {args.export}: no model.safetensors there (a pretraining run's export/ folder)")
    try:
        result = run(args.export, config_path, args.held_out, args.seed, args.max_samples, args.batch_size,
                     args.predictions)  # fmt: skip
    except (FileNotFoundError, ValueError) as e:
        print(f"zeroshot: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
