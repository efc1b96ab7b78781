#!/usr/bin/env bash
# Pretraining on one machine without Slurm: torchrun with NPROC ranks (GPUs, or CPU processes).
#
#   bash launch/local.sh NPROC CONFIG [key=value ...]
#   bash launch/local.sh 2 configs/pretrain/tiny_cpu.yaml data.train=runs/main/shards/howto100m
#   bash launch/local.sh 8 configs/pretrain/howto100m.yaml data.train=s3://bucket/howto100m/clip60
#
# Without a visible GPU it uses DeepSpeed's CPU accelerator (DS_ACCELERATOR=cpu, gloo) and
# splits the cores between the ranks (OMP_NUM_THREADS). torchrun picks a free port
# (--standalone). Stop with Ctrl-C; the same run.output_dir resumes from its latest complete
# checkpoint. No hyperparameters here: they live in the config and its overrides.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=launch/slurm_env.sh
source "$REPO/launch/slurm_env.sh"

[[ $# -ge 2 && $1 =~ ^[1-9][0-9]*$ ]] || { echo "usage: bash launch/local.sh NPROC CONFIG [key=value ...]" >&2; exit 2; }
NPROC=$1
CONFIG=$(vlp_config "$2" "$REPO")
shift 2
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 ))}
vlp_runtime_env "$REPO"
unset RANK LOCAL_RANK WORLD_SIZE MASTER_ADDR MASTER_PORT  # torchrun sets them
echo "launch: $NPROC local ranks, DS_ACCELERATOR=${DS_ACCELERATOR:-auto}, OMP_NUM_THREADS=$OMP_NUM_THREADS," \
     "run dir $(vlp_run_dir "$CONFIG" "$@")"
"$PYTHON" "$REPO/pretrain/train.py" --config "$CONFIG" "$@" --check >/dev/null || exit  # one line, exit 2
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
  "$REPO/pretrain/train.py" --config "$CONFIG" "$@"
