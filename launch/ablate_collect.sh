#!/usr/bin/env bash
# The last job of an ablation on Slurm: `python -m launch.ablate --suite SUITE --slurm` submits it
# after every pretraining and finetuning job of the suite (--dependency=afterok:...). It computes
# each variant's zero-shot retrieval (a finetune-only suite's shared pretraining's, once), writes
# the table and closes the MLflow runs.
#
#   sbatch --dependency=afterok:JOBS launch/ablate_collect.sh --suite feel --config configs/ablate.yaml \
#       --collect [key=value ...]
#
# Arguments are those of launch/ablate.py; resources come from sbatch flags (`slurm.collect`).
#SBATCH --job-name=vlp-ablate-collect
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --time=4:00:00
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

REPO=${VLP_REPO:-}
if [[ -z $REPO ]]; then
  script=$(scontrol show job "${SLURM_JOB_ID:?submit with sbatch}" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p;T;q')
  REPO=$(cd "$(dirname "$script")/.." && pwd)
fi
# shellcheck source=launch/slurm_env.sh
source "$REPO/launch/slurm_env.sh"
vlp_runtime_env "$REPO"
echo "launch: $(date -Is) job ${SLURM_JOB_ID:-} (${SLURM_JOB_NAME:-}): $PYTHON -m launch.ablate $*"
exec "$PYTHON" -m launch.ablate "$@"
