"""How2QA: four-way multiple-choice QA on 60 s HowTo100M clips with their ASR (HERO; the multi-level
alignment paper's Table 1-2), with multi-level alignment (task.align; default: segment level only).

    deepspeed --num_gpus 8 finetune/how2qa.py --config configs/finetune/how2qa.yaml init.checkpoint=RUN/export
    torchrun --nproc_per_node 2 finetune/how2qa.py --config configs/finetune/how2qa.yaml [key=value ...]
    sbatch launch/finetune.sh how2qa configs/finetune/how2qa.yaml [key=value ...]

Metric: accuracy (eval/<split>/step_N/metrics.json); predictions.json holds every question's
candidate scores. Everything else is the shared recipe (finetune/recipe.py, task: finetune/qa.py).
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: the repository root, not finetune/, on the path
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from finetune.recipe import main  # noqa: E402
from pretrain.session import run_entry  # noqa: E402

if __name__ == "__main__":
    run_entry(lambda: main("how2qa"))
