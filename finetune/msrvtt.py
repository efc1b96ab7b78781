"""MSR-VTT: text-to-video retrieval, train_9k or train_7k, the 1k-A test (TACo Table 6).

    deepspeed --num_gpus 8 finetune/msrvtt.py --config configs/finetune/msrvtt.yaml init.checkpoint=RUN/export
    torchrun --nproc_per_node 2 finetune/msrvtt.py --config configs/finetune/msrvtt.yaml [key=value ...]
    sbatch launch/finetune.sh msrvtt configs/finetune/msrvtt.yaml [key=value ...]

R@1/5/10, median and mean rank; TACo's three scores at inference.
Everything else is the shared recipe (finetune/recipe.py).
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: the repository root, not finetune/, on the path
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from finetune.recipe import main  # noqa: E402
from pretrain.session import run_entry  # noqa: E402

if __name__ == "__main__":
    run_entry(lambda: main("msrvtt"))
