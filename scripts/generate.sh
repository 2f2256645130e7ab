#!/usr/bin/env bash
# Sets up .venv (first run only) and generates audio: scripts/generate.sh "a prompt" -o out.wav [etta generate options]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
"$PY" "$ROOT/scripts/bootstrap.py"
exec "$ROOT/.venv/bin/etta" generate "$@"
