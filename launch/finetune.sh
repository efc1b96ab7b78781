#!/usr/bin/env bash
# Finetuning on a Slurm cluster: runs finetune/<TASK>.py on every task with srun, with the
# same rank set-up, logs and preemption/requeue as launch/pretrain_howto100m.sh.
#
#   # from the repository root (its logs/ holds logs/<job-name>-<job id>.out; elsewhere mkdir -p logs)
#   sbatch launch/finetune.sh TASK CONFIG [key=value ...]
#   sbatch --job-name=vlp-tvr launch/finetune.sh tvr configs/finetune/tvr.yaml \
#       init.checkpoint=/shared/runs/hero-4x8/export
#
# TASK names a script in finetune/ (finetune/tvr.py, finetune/msrvtt.py, ...). No
# hyperparameters here: they live in the config and its overrides (docs/cluster.md).
#SBATCH --job-name=vlp-finetune
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

[[ $# -ge 2 ]] || { echo "usage: sbatch launch/finetune.sh TASK CONFIG [key=value ...]" >&2; exit 2; }
REPO=${VLP_REPO:-}
if [[ -z $REPO ]]; then
  script=$(scontrol show job "${SLURM_JOB_ID:?submit with sbatch}" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p;T;q')
  REPO=$(cd "$(dirname "$script")/.." && pwd)
fi
# shellcheck source=launch/slurm_env.sh
source "$REPO/launch/slurm_env.sh"

TASK=$1
ENTRY=$REPO/finetune/$TASK.py
if [[ ! -f $ENTRY ]]; then
  found=$(cd "$REPO/finetune" && find . -maxdepth 1 -name '[!_]*.py' -printf '%f ' | sed 's/\.py//g')
  vlp_die "no finetune task '$TASK': $ENTRY does not exist (tasks: ${found:-none yet})"
fi
CONFIG=$(vlp_config "$2" "$REPO")
shift 2
vlp_master_env
vlp_runtime_env "$REPO"
vlp_header
echo "launch: run dir $(vlp_run_dir "$CONFIG" "$@")"
vlp_run "$ENTRY" --config "$CONFIG" "$@"
