#!/usr/bin/env bash
# Sets up .venv (first run only), then runs the linters and the test suite: scripts/test.sh [pytest options]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
"$PY" "$ROOT/scripts/bootstrap.py" --extras dev,train,export,triton
cd "$ROOT"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
