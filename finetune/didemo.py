"""DiDeMo: video corpus moment retrieval (VCMR, SVMR, VR; 5 s chunks, 4 annotators).

    deepspeed --num_gpus 8 finetune/didemo.py --config configs/finetune/didemo.yaml init.checkpoint=RUN/export
    torchrun --nproc_per_node 2 finetune/didemo.py --config configs/finetune/didemo.yaml [key=value ...]
    sbatch launch/finetune.sh didemo configs/finetune/didemo.yaml [key=value ...]

A prediction counts when it matches at least 2 of the >= 4 annotated spans (TVR's evaluator).
Everything else is the shared recipe (finetune/recipe.py).
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: the repository root, not finetune/, on the path
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from finetune.recipe import main  # noqa: E402
from pretrain.session import run_entry  # noqa: E402

if __name__ == "__main__":
    run_entry(lambda: main("didemo"))
