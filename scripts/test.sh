#!/usr/bin/env bash
# README command 2: set up (idempotent) and run the whole test suite.
#   bash scripts/test.sh [pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup.sh
# The Slurm tests (tests/test_slurm.py) start a single-node Slurm themselves; install it when missing.
if ! command -v sbatch >/dev/null 2>&1; then
  echo "test: installing slurm-wlm and munge for the Slurm tests" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DS_ACCELERATOR=cpu
exec "$ROOT/.venv/bin/python" -m pytest tests "$@"
