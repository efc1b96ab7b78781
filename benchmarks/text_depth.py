"""The tiny preset's text depth: sentence-embedding spread against CPU cost, at 2, 3, 4 and 6 layers.

    python benchmarks/text_depth.py [--repeats 5] [--write]

Spread: the packaged all-MiniLM-L6-v2 cut to N layers (the model's `embed_text`: encoder + the
projection and LayerNorm), 38 unrelated sentences (`SENTENCES`: cooking, repairs, sports, news,
...), the off-diagonal cosines of their sentence vectors, pooled by [CLS] and by the mean of the
tokens (pretrain/pooling.py). A collapsed embedding has cosines near 1 for every pair.

Cost: seconds of one pretraining step (forward + backward of all five objectives, the `Combiner`
in sum mode, plain AdamW step) of the tiny preset at the main job's batch (8 clips, 24 frames,
32 tokens) in one process, CPU time, median over repeats; every depth is timed in each repeat
(order rotated), and the ratio to 2 layers is taken within a repeat. `--write` puts the tables
under "## pretrain: tiny preset text depth" in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for `python benchmarks/x.py`
import torch  # noqa: E402

from benchmarks._results import header, load, machine, write_section  # noqa: E402
from benchmarks.pretrain_step import CLOCK, STACK, make_batch  # noqa: E402

SECTION = "## pretrain: tiny preset text depth"
DEPTHS = (2, 3, 4, 6)
SENTENCES = """now you cut the onion with a sharp knife|the car engine needs new oil every year
paint the fence with a wide brush|my grandmother loved to knit warm scarves
tighten the bolt on the bicycle wheel|the stock market fell sharply today
whisk two eggs with sugar until fluffy|he scored a goal in the last minute
water the tomato plants in the morning|open the laptop and install the update
fold the paper into a small crane|the cat sleeps on the warm windowsill
sand the wooden table before varnishing|the band played a loud concert last night
pour the batter into a greased pan|replace the filter of the air conditioner
the senator announced a new tax plan|drill a hole for the wall anchor
rinse the rice until the water runs clear|our flight was delayed by the storm
solder the wire to the circuit board|the puppy chased the ball across the yard
knead the dough for ten minutes|the museum opens a dinosaur exhibit
glue the broken handle back on the mug|she practised the violin every evening
remove the old tiles with a chisel|the team lost the championship game
season the steak with salt and pepper|clean the camera lens with a soft cloth
the train leaves from platform four|prune the rose bushes in early spring
change the flat tyre on the highway|the students wrote an essay about history
melt the chocolate over a water bath|the river flooded the small village
hang the picture frame on the hallway wall|he repaired the leaking kitchen faucet""".replace("\n", "|").split("|")


def spread(layers: int) -> dict[str, tuple[float, float]]:
    """{pooling: (mean, max) off-diagonal cosine of the sentence vectors of SENTENCES}."""
    from pretrain.model import ModelConfig, build_model, load_tokenizer
    from pretrain.pooling import pool_text

    cfg = ModelConfig(preset="tiny", text_layers=layers)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    enc = load_tokenizer(cfg)(SENTENCES, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"].bool()
    out = {}
    with torch.no_grad():
        y = model.embed_text(ids, mask)  # (S, N, d)
        for pooling in ("cls", "mean"):
            v = torch.nn.functional.normalize(pool_text(y, mask, pooling), dim=-1)  # (S, d)
            off = (v @ v.T)[~torch.eye(len(v), dtype=torch.bool)]  # (S*(S-1),)
            out[pooling] = (off.mean().item(), off.max().item())
    return out


def step_seconds(layers: int, batch: dict) -> float:
    """CPU seconds of one forward + backward + AdamW step of all five objectives at `layers` text layers."""
    from pretrain.model import ModelConfig, build_model
    from pretrain.objectives import Combiner, ObjectivesConfig

    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny", text_layers=layers)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    combiner = Combiner(ObjectivesConfig(taco={"k_neg": 4}))  # the main job's k_neg
    times = []
    for step in range(3):  # the first is warm-up
        start = CLOCK()
        loss, _ = combiner(model, batch, step)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(CLOCK() - start)
    return statistics.median(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    info = machine(*STACK)
    spreads = {n: spread(n) for n in DEPTHS}
    batch = make_batch(batch=8, frames=24, tokens=32)
    seconds: dict[int, list[float]] = {n: [] for n in DEPTHS}
    ratios: dict[int, list[float]] = {n: [] for n in DEPTHS}
    for r in range(args.repeats):
        order = DEPTHS[r % len(DEPTHS) :] + DEPTHS[: r % len(DEPTHS)]
        got = {n: step_seconds(n, batch) for n in order}
        for n in DEPTHS:
            seconds[n].append(got[n])
            ratios[n].append(got[n] / got[DEPTHS[0]])
    lines = [SECTION, "", *header(info, "python benchmarks/text_depth.py --write"), f"- load average {load()}", "",
             f"Spread over {len(SENTENCES)} unrelated sentences (off-diagonal cosine of the sentence vectors; "
             "1.0 = every sentence the same) and CPU seconds of one pretraining step of the tiny preset "
             f"(8 clips, 24 frames, 32 tokens, all five objectives), median of {args.repeats}:", "",
             "| text layers | [CLS] mean / max cosine | mean pooling mean / max cosine | step s (CPU) | vs 2 layers |",
             "|---|---|---|---|---|"]  # fmt: skip
    for n in DEPTHS:
        (cm, cx), (mm, mx) = spreads[n]["cls"], spreads[n]["mean"]
        ratio = statistics.median(ratios[n])
        lines.append(f"| {n} | {cm:.4f} / {cx:.4f} | {mm:.3f} / {mx:.3f} | {statistics.median(seconds[n]):.3f} "
                     f"| {ratio:.2f}x ({min(ratios[n]):.2f}-{max(ratios[n]):.2f}) |")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
