#!/usr/bin/env bash
# Sets everything up and runs the whole test suite (what CI runs). Extra args go to pytest.
#
#   scripts/test.sh            the full suite: setup, ruff, mypy, every test (CI: .ci/run)
#   scripts/test.sh --fast     daily lane: ruff + every test without the slow mark (about
#                              2.5 min here; no setup, no mypy; needs .venv from setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fast" ]; then
  shift
  if [ ! -x .venv/bin/python ]; then
    echo "[test] no .venv yet: run scripts/setup.sh (or scripts/test.sh once) first" >&2
    exit 2
  fi
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
  .venv/bin/ruff check .
  .venv/bin/ruff format --check .
  exec .venv/bin/python -m pytest -m "not slow" -q "$@"
fi

bash scripts/setup.sh

# Queue tests start their own redis-server on a free port; install it where it is missing.
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  else
    echo "[test] redis-server not found: the Redis queue tests will be skipped" >&2
  fi
fi

# Browser tests (the eval report, the service's web page) render in Debian's headless Chromium.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "[test] chromium not found: the browser tests will be skipped" >&2
  fi
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy core agent graphs tools generators retrieval evals tuning service cli tests benchmarks
.venv/bin/python -m pytest "$@"
