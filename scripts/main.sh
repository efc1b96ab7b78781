#!/usr/bin/env bash
# README command 1: set up (idempotent) and run the main job on its embedded default config.
#   bash scripts/main.sh [key=value ...]        e.g. videos=200 start_over=true
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DS_ACCELERATOR=cpu
exec "$ROOT/.venv/bin/python" -m launch.main_job "$@"
