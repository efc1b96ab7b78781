"""TVR: video corpus moment retrieval with subtitles (VCMR, SVMR, VR; FEEL Table 1, HERO).

    deepspeed --num_gpus 8 finetune/tvr.py --config configs/finetune/tvr.yaml init.checkpoint=RUN/export
    torchrun --nproc_per_node 2 finetune/tvr.py --config configs/finetune/tvr.yaml [key=value ...]
    sbatch launch/finetune.sh tvr configs/finetune/tvr.yaml [key=value ...]

Predictions in TVR's submission format for val (scored) and test_public, and the Codalab zip.
Everything else is the shared recipe (finetune/recipe.py).
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: the repository root, not finetune/, on the path
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from finetune.recipe import main  # noqa: E402
from pretrain.session import run_entry  # noqa: E402

if __name__ == "__main__":
    run_entry(lambda: main("tvr"))
