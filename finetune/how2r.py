"""How2R: moment retrieval in 60 s HowTo100M clips with their ASR (HERO; FEEL Table 2).

    deepspeed --num_gpus 8 finetune/how2r.py --config configs/finetune/how2r.yaml init.checkpoint=RUN/export
    torchrun --nproc_per_node 2 finetune/how2r.py --config configs/finetune/how2r.yaml [key=value ...]
    sbatch launch/finetune.sh how2r configs/finetune/how2r.yaml [key=value ...]

Metrics by TVR's recall code (as VALUE's How2R scorer), from a TVR-format submission; the file for
VALUE's leaderboard is how2r_<split>_predictions.json in VALUE's own format, and eval.codalab_zip
zips it as VALUE wants (finetune/value_submission.py). Convert with data_prep.how2r --video2dur, or
the video idx are not VALUE's. Everything else is the shared recipe (finetune/recipe.py).
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: the repository root, not finetune/, on the path
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from finetune.recipe import main  # noqa: E402
from pretrain.session import run_entry  # noqa: E402

if __name__ == "__main__":
    run_entry(lambda: main("how2r"))
