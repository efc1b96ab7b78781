#!/usr/bin/env bash
# The device check (issue 19): benchmarks/device_check.py's five steps, each timed and bounded, in one command.
#
#   bash benchmarks/device_check.sh [--dry-run] [--out DIR] [--budget SECONDS] [--only STEP ...] [--write]
#
# On one GPU (an H200: under 8 minutes) it writes DIR/device_check.json and DIR/device_check.md, DIR being
# --out, else $OUT (set by the device tool), else the current folder; --dry-run runs the same steps at tiny
# sizes on the CPU (CI: tests/e2e/test_device_check.py). The exit code is 0 when every step passed.
# Python: $PYTHON, else the repository's .venv, else python3 (the device machine's, with the wheels that
# docs/device_check.md lists installed on its path).
set -u
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$repo" && exec "$python" benchmarks/device_check.py "$@"
