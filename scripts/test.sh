#!/usr/bin/env bash
# README command 2: set up (idempotent) and run the whole test suite.
#   bash scripts/test.sh [pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DS_ACCELERATOR=cpu
exec "$ROOT/.venv/bin/python" -m pytest tests "$@"
