#!/usr/bin/env bash
# Wheels that scripts/gpu_session.sh installs on a lent GPU machine, whose image (Python 3.12, torch, triton,
# onnxruntime, transformers, ...) lacks them and which cannot reach a registry: run here, then carry .whl/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
cd "$ROOT"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" --platform any -d .whl soundfile cffi pycparser soxr
ls -1 .whl
