#!/usr/bin/env bash
# The MLflow tracking server for multi-node runs (a single-node run needs none: it writes
# sqlite:///<run dir>/mlflow.db). Start it once on a host every node can reach:
#
#   bash launch/mlflow_server.sh [extra `mlflow server` options]
#   MLFLOW_STORE=/shared/mlflow/mlflow.db MLFLOW_ARTIFACTS=s3://bucket/mlflow bash launch/mlflow_server.sh
#   sbatch --job-name=mlflow --ntasks=1 --cpus-per-task=4 --gpus-per-node=0 --time=14-0 \
#       --output=logs/%x-%j.out launch/mlflow_server.sh
#
# then point the training jobs at it (rank 0 logs; sbatch passes the variable on):
#
#   export MLFLOW_TRACKING_URI=http://<server host>:5000
#   sbatch --nodes=4 launch/pretrain_howto100m.sh configs/pretrain/howto100m.yaml ...
#
#   MLFLOW_STORE      sqlite file of runs and metrics, or any backend URI
#                     (postgresql://...)             default: runs/mlflow/mlflow.db
#   MLFLOW_ARTIFACTS  where the server keeps artifacts: a folder or s3://bucket/prefix
#                     (the server's AWS credentials)  default: runs/mlflow/artifacts
#   MLFLOW_HOST, MLFLOW_PORT                          default: 0.0.0.0, 5000
#   MLFLOW_ALLOWED_HOSTS  Host headers accepted (MLflow 3 refuses others): default this host's
#                     names and private IP ranges, any port
# Relative paths are relative to the current directory (the submit directory under sbatch).
set -euo pipefail

if [[ -n ${SLURM_JOB_ID:-} ]]; then  # sbatch runs a copy of this script: find the submitted one
  script=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p;T;q')
else
  script=${BASH_SOURCE[0]}
fi
REPO=${VLP_REPO:-$(cd "$(dirname "$script")/.." && pwd)}
MLFLOW=$(command -v mlflow || true)
[[ -x $REPO/.venv/bin/mlflow ]] && MLFLOW=$REPO/.venv/bin/mlflow
[[ -n $MLFLOW ]] || { echo "mlflow_server: no mlflow (run scripts/setup.sh)" >&2; exit 2; }

STORE=${MLFLOW_STORE:-runs/mlflow/mlflow.db}
ARTIFACTS=${MLFLOW_ARTIFACTS:-runs/mlflow/artifacts}
HOST=${MLFLOW_HOST:-0.0.0.0}
PORT=${MLFLOW_PORT:-5000}
if [[ $STORE != *://* ]]; then
  mkdir -p "$(dirname "$STORE")"
  STORE=sqlite:///$(realpath -m "$STORE")
fi
if [[ $ARTIFACTS != *://* ]]; then
  mkdir -p "$ARTIFACTS"
  ARTIFACTS=$(realpath "$ARTIFACTS")
fi
short=$(hostname -s) full=$(hostname -f 2>/dev/null || hostname)
ALLOWED=${MLFLOW_ALLOWED_HOSTS:-localhost,localhost:*,127.0.0.1,127.0.0.1:*,$short,$short:*,$full,$full:*,10.*,172.1[6-9].*,172.2[0-9].*,172.3[01].*,192.168.*}

echo "mlflow_server: store $STORE, artifacts $ARTIFACTS"
echo "mlflow_server: on the training jobs: export MLFLOW_TRACKING_URI=http://$full:$PORT"
exec "$MLFLOW" server --backend-store-uri "$STORE" --artifacts-destination "$ARTIFACTS" \
  --host "$HOST" --port "$PORT" --allowed-hosts "$ALLOWED" "$@"
