"""Gradient norm of each pretraining objective at initialisation: what the main job's weights balance.

    python benchmarks/objective_gradients.py [--shards runs/main/shards/howto100m] [--batches 4] [--write]
                                             [key=value ...]   # overrides of the pretraining config

On the main job's corpus and pretraining config (configs/pretrain/tiny_cpu.yaml with the main
job's overrides from configs/main_job.yaml, objective weights excluded), the freshly initialised
model (seed 0), for each objective alone: its loss and the L2 norm of its gradient over all
parameters, mean over `--batches` batches of one rank's 8 clips (TACo then gathers no other rank:
its negatives are 7, not 15). The main job sets each weight to min(1, g_TACo / g) rounded to one
significant figure, so that no objective's gradient outweighs TACo's, whose L1 is the sentence-level
alignment zero-shot retrieval reads; `--write` puts the table under "## pretrain: objective
gradients at initialisation" in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for `python benchmarks/x.py`
import torch  # noqa: E402

from benchmarks._results import REPO, header, machine, write_section  # noqa: E402
from benchmarks.pretrain_step import STACK  # noqa: E402

SECTION = "## pretrain: objective gradients at initialisation"


def main_job_overrides() -> list[str]:
    """The main job's pretraining overrides, without the objective weights they are meant to set."""
    from omegaconf import OmegaConf

    job = OmegaConf.load(REPO / "configs" / "main_job.yaml")
    return [o for o in job.pretrain.overrides if not o.startswith("objectives.weights.")]


def one_significant(x: float) -> float:
    return float(f"{x:.1g}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", default=str(REPO / "runs" / "main" / "shards" / "howto100m"))
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--write", action="store_true")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    from pretrain import config
    from pretrain.loader import build_train_loader
    from pretrain.model import build_model, load_tokenizer
    from pretrain.objectives import OBJECTIVES, build_objective

    overrides = [*main_job_overrides(), f"data.train={args.shards}", "data.num_workers=0", *args.overrides]
    cfg = config.load(str(REPO / "configs" / "pretrain" / "tiny_cpu.yaml"), overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    batches = [b for _, b in zip(range(args.batches), build_train_loader(cfg.data, load_tokenizer(cfg.model), 0, 1))]
    rows = {}
    for name in OBJECTIVES:
        objective = build_objective(name, cfg.objectives)
        losses, norms = [], []
        for batch in batches:
            torch.manual_seed(0)  # the same dropout masks for every objective
            model.zero_grad(set_to_none=True)
            loss = sum(objective(model, batch).values())
            loss.backward()
            norms.append(math.sqrt(sum(float(q.grad.pow(2).sum()) for q in model.parameters() if q.grad is not None)))
            losses.append(float(loss))
        rows[name] = (sum(losses) / len(losses), sum(norms) / len(norms))
    g_taco = rows["taco"][1]
    lines = [SECTION, "", *header(machine(*STACK), "python benchmarks/objective_gradients.py --write"), "",
             f"Main-job corpus `{args.shards}`, pretraining config tiny_cpu.yaml + the main job's overrides "
             f"(weights excluded), model at init (seed 0), mean over {len(batches)} batches of 8 clips, each "
             "objective alone (TACo's losses summed, λ included):", "",
             "| objective | loss | gradient norm | weight min(1, g_TACo / g), 1 significant figure |",
             "|---|---|---|---|"]  # fmt: skip
    for name, (loss, norm) in rows.items():
        weight = one_significant(min(1.0, g_taco / norm)) if norm > 0 else 1.0
        lines.append(f"| {name} | {loss:.3f} | {norm:.3f} | {weight:g} |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
