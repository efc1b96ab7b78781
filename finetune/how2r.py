"""How2R: moment retrieval in 60 s HowTo100M clips with their ASR (HERO; FEEL Table 2).

    deepspeed --num_gpus 8 finetune/how2r.py --config configs/finetune/how2r.yaml init.checkpoint=RUN/export
    torchrun --nproc_per_node 2 finetune/how2r.py --config configs/finetune/how2r.yaml [key=value ...]
    sbatch launch/finetune.sh how2r configs/finetune/how2r.yaml [key=value ...]

Predictions and metrics in TVR's format (TVR's evaluator is How2R's).
Everything else is the shared recipe (finetune/recipe.py).
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: the repository root, not finetune/, on the path
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from finetune.recipe import main  # noqa: E402
from pretrain.session import run_entry  # noqa: E402

if __name__ == "__main__":
    run_entry(lambda: main("how2r"))
