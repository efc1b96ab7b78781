#!/usr/bin/env bash
# Pretraining on a Slurm cluster: one task per GPU with srun, requeued on preemption.
#
#   # from the repository root: Slurm writes logs/<job-name>-<job id>.out under the submit
#   # directory and the checkout has logs/ (elsewhere: mkdir -p logs first, or pass --output)
#   sbatch launch/pretrain_howto100m.sh configs/pretrain/howto100m.yaml [key=value ...]
#   sbatch --nodes=4 launch/pretrain_howto100m.sh configs/pretrain/howto100m.yaml \
#       data.train=s3://bucket/howto100m/clip60 run.output_dir=/shared/runs/hero-4x8
#   # a CPU-only partition (the tests): 2 ranks, no GPU; without --gpus-per-node=0 the
#   # defaults below are refused with "Invalid generic resource (gres) specification"
#   sbatch --ntasks-per-node=2 --gpus-per-node=0 --cpus-per-task=1 \
#       launch/pretrain_howto100m.sh configs/pretrain/tiny_cpu.yaml data.train=SHARDS
#
# Everything that shapes the run lives in the config and its key=value overrides; the
# #SBATCH lines below are resource defaults, overridden by sbatch flags. Relative paths are
# relative to the submit directory (the config also relative to the repository). The same
# run.output_dir resumes from its latest complete checkpoint and continues its MLflow run.
# Preemption and requeue: launch/slurm_env.sh; the whole story: docs/cluster.md.
#SBATCH --job-name=vlp-pretrain
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

[[ $# -ge 1 ]] || { echo "usage: sbatch launch/pretrain_howto100m.sh CONFIG [key=value ...]" >&2; exit 2; }
# sbatch runs a copy of this script: find the repository from the submitted path.
REPO=${VLP_REPO:-}
if [[ -z $REPO ]]; then
  script=$(scontrol show job "${SLURM_JOB_ID:?submit with sbatch, or use launch/local.sh}" \
    | sed -n 's/^ *Command=\([^ ]*\).*/\1/p;T;q')
  REPO=$(cd "$(dirname "$script")/.." && pwd)
fi
# shellcheck source=launch/slurm_env.sh
source "$REPO/launch/slurm_env.sh"

CONFIG=$(vlp_config "$1" "$REPO")
shift
vlp_master_env
vlp_runtime_env "$REPO"
vlp_header
echo "launch: run dir $(vlp_run_dir "$CONFIG" "$@") (checkpoints/, metrics.jsonl, export/, mlflow.db)"
vlp_run "$REPO/pretrain/train.py" --config "$CONFIG" "$@"
