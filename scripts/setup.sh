#!/usr/bin/env bash
# Creates .venv (Python >= 3.11) and installs Groundwork with every extra.
#
# torch is installed first and on its own, so an unpinned dependency can never pull a
# different (multi-GB) build later. Override the spec for your hardware, e.g.
#   GROUNDWORK_TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cu128"
# If .venv already has a working torch, it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${GROUNDWORK_VENV:-.venv}"
TORCH_SPEC="${GROUNDWORK_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
EXTRAS="${GROUNDWORK_EXTRAS:-gen,retrieval,local-llm,eval,serve,postgres,s3,tune,dev}"

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip wheel

if ! "$PY" -c 'import torch, torchvision' >/dev/null 2>&1; then
  echo "[setup] installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  "$PY" -m pip install --quiet $TORCH_SPEC
fi
echo "[setup] installing groundwork[$EXTRAS] (llama-cpp-python compiles on first install: ~6 min)"
"$PY" -m pip install --quiet -e ".[$EXTRAS]"
echo "[setup] ready: $VENV ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
