#!/usr/bin/env bash
# README command 2: set up (idempotent) and run the whole test suite.
#   bash scripts/test.sh [pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup.sh
# The Slurm tests (tests/e2e/test_slurm.py) start a single-node Slurm themselves, the multi-node ones
# (tests/e2e/test_multinode.py) two nodes in network namespaces (ip from iproute2); install them when missing.
if ! command -v sbatch >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
  echo "test: installing slurm-wlm, munge and iproute2 for the Slurm tests" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge iproute2 >/dev/null
fi
# The suite's checkpoints need a few GB at a time (pyproject: a passed test's tmp_path is removed).
free_gb=$(df -Pk "${TMPDIR:-/tmp}" | awk 'NR==2 {print int($4 / 1048576)}')
if [ "$free_gb" -lt 8 ]; then
  echo "test: warning: only ${free_gb} GB free under ${TMPDIR:-/tmp}; the suite needs about 8 GB" >&2
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DS_ACCELERATOR=cpu
exec "$ROOT/.venv/bin/python" -m pytest tests "$@"
