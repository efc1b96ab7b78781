#!/usr/bin/env bash
# Set up the project on a fresh machine, idempotently: a virtual environment in .venv with a
# CPU build of torch, DeepSpeed without compiled ops, and the project with its extras.
# Sourced by scripts/main.sh and scripts/test.sh; safe to run again (skips when up to date).
#
#   TORCH_SPEC       torch requirement to install first (default: torch==2.13.0)
#   TORCH_INDEX_URL  optional index for it, e.g. https://download.pytorch.org/whl/cpu
#   VENV             where the environment lives (default: .venv in the repository)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PY="${PYTHON:-python3}"

"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed"' \
  || { echo "setup: Python >= 3.11 is required (found $("$PY" --version))" >&2; exit 1; }

stamp="$VENV/.setup-stamp"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -d' ' -f1) $TORCH_SPEC"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  return 0 2>/dev/null || exit 0
fi

echo "setup: installing into $VENV (a few minutes the first time)" >&2
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
pip_() { "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@"; }
pip_ -U pip wheel "setuptools>=68"
# 1. torch first, the CPU build, so nothing later pulls a multi-GB CUDA build.
if [[ -n "${TORCH_INDEX_URL:-}" ]]; then pip_ "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"; else pip_ "$TORCH_SPEC"; fi
# 2. DeepSpeed without compiled ops, built against the torch above (no build isolation).
if ! "$VENV/bin/python" -c 'import deepspeed' 2>/dev/null; then
  pip_ numpy packaging psutil py-cpuinfo ninja hjson pydantic
  DS_BUILD_OPS=0 pip_ --no-build-isolation "deepspeed==0.19.8"
fi
# 3. The project and its extras (POS tagger, S3 test server, test tools).
pip_ -e "$ROOT[pos,s3test,test]"
echo "$want" > "$stamp"
echo "setup: done" >&2
