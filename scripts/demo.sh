#!/usr/bin/env bash
# Sets everything up and runs Groundwork on an example prompt (or the one you pass).
#
# Uses your configuration (GROUNDWORK_* variables, .env). Where the diffusion model it names
# (default stabilityai/sd-turbo) is neither a local folder, in the Hugging Face cache, nor
# downloadable (offline), it builds a tiny random-init pipeline instead and says so: the whole
# path runs, but the image is noise. Set GROUNDWORK_GENERATOR__MODEL for real images.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
PROMPT="${1:-the 2026 Zephyr X1 folding drone hovering over Lake Bled at dawn}"

if ! "$PY" - <<'PYEOF'
import sys
from agent.settings import Settings
from generators.base import GeneratorError
from generators.diffusers_backend import check_model_available

s = Settings()
try:
    check_model_available(s.generator.model, local_files_only=s.generator.local_files_only)
except GeneratorError as exc:
    print(f"[demo] {exc}", file=sys.stderr)
    sys.exit(1)
PYEOF
then
  TINY=.groundwork/tiny-sd
  [ -f "$TINY/model_index.json" ] || "$PY" -m tests.support.tiny_pipeline "$TINY"
  export GROUNDWORK_GENERATOR__MODEL="$PWD/$TINY"
  export GROUNDWORK_GENERATOR__WIDTH="${GROUNDWORK_GENERATOR__WIDTH:-256}"
  export GROUNDWORK_GENERATOR__HEIGHT="${GROUNDWORK_GENERATOR__HEIGHT:-256}"
  echo "[demo] using a tiny random-init pipeline ($TINY): the image will be noise."
  echo "[demo] for real images set GROUNDWORK_GENERATOR__MODEL to a diffusers model id or folder."
fi
exec .venv/bin/groundwork run "$PROMPT"
