#!/usr/bin/env bash
# Feature extraction on Slurm, one array task per slice of the video list:
#
#   sbatch --array=0-31 launch/extract_features.sh --videos /data/howto100m/videos --out /data/howto100m/features \
#       --backbone resnet152,r2plus1d_18 --weights resnet152=weights/resnet-152,r2plus1d_18=weights/r2plus1d_18-91a641e6.pth
#
# Each task runs `python -m data_prep.extract ARGS --num-shards N --shard-index SLURM_ARRAY_TASK_ID`
# (N = the array's task count): every N-th video from its index, disjoint and deterministic.
# Resubmitting the same array resumes: complete feature files are skipped. Rejects go to
# <out>/_extract/rejects.<index>-of-<N>.jsonl. Resources come from sbatch flags.
#SBATCH --job-name=vlp-extract
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16
#SBATCH --gpus-per-task=1
#SBATCH --time=24:00:00
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail

REPO=${VLP_REPO:-}
if [[ -z $REPO ]]; then
  # The first Command= only: for an array's task, `scontrol show job` can list every task of the array.
  script=$(scontrol show job "${SLURM_JOB_ID:?submit with sbatch}" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p;T;q')
  REPO=$(cd "$(dirname "$script")/.." && pwd)
fi
# shellcheck source=launch/slurm_env.sh
source "$REPO/launch/slurm_env.sh"
vlp_runtime_env "$REPO"
tasks=${SLURM_ARRAY_TASK_COUNT:-1}
index=${SLURM_ARRAY_TASK_ID:-0}
echo "launch: $(date -Is) job ${SLURM_JOB_ID:-} task $index of $tasks: $PYTHON -m data_prep.extract $*"
exec "$PYTHON" -m data_prep.extract "$@" --num-shards "$tasks" --shard-index "$index"
