#!/usr/bin/env bash
# The GPU checks of the engine in as few calls as a lent machine allows (no network there, ~10 min a call).
#
#   scripts/gpu_wheels.sh                          # here, with network: wheels the GPU image lacks -> .whl/
#   scripts/gpu_session.sh install tests step      # there (carry .whl): one call
#   scripts/gpu_session.sh goals vae ops           # there, a second call on the same warm machine
#
# Phases (default: all, in this order):
#   install  the carried wheels into /tmp/site, then etta_engine itself (editable, builds csrc/ with nvcc)
#   tests    pytest -m gpu: the kernels, the engine, export and TensorRT tests that need a GPU
#   step     benchmarks/engine_step.py: the etta DiT step, eager vs engine with torch/Triton/csrc ops, with and
#            without the fused seams (+ torch.compile), fp32 and bf16
#   goals    benchmarks/sweep.py at the issue's goal cells: etta, 10 s, CFG 3.5, NFE 8 and 100, Euler, bf16
#            (then the engine with per-step graphs, and with prompts padded to their length, not 512)
#   sweep    the full NFE x solver x CFG x backend grid (bf16); the longest phase
#   vae      benchmarks/vae_precision.py on the etta preset (torch, Triton and csrc Snake-beta) and the demo model
#   ops      benchmarks/ops.py (every op against eager, torch.compile and SDPA)
#   onnx     benchmarks/onnx_runtime.py (ONNX Runtime's CUDA provider, fp16 export, cached and plain DiT graphs,
#            next to torch)
#   train    benchmarks/train_dit_throughput.py (bf16, batch 8)
# Every phase has a time limit (PHASE_LIMIT_S, default 480 s) and its log; the logs and the result rows it
# wrote (benchmarks/results/*) are packed into $OUT/gpu_session.tar.gz, so that one fetch brings them back.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
cd "$ROOT"
PHASES=(install tests step goals vae ops onnx train sweep)  # every phase, in the default order
phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=("${PHASES[@]}")
for phase in "${phases[@]}"; do
  if [[ " ${PHASES[*]} " != *" $phase "* ]]; then
    echo "unknown phase '$phase': ${PHASES[*]}" >&2
    exit 2
  fi
done
OUT="${OUT:-$ROOT/outputs/gpu_session}"
LIMIT="${PHASE_LIMIT_S:-480}"
mkdir -p "$OUT/logs"
touch "$OUT/.start"
export PYTHONUNBUFFERED=1

install() {
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  fi
  # the image's torch, triton, onnxruntime, transformers, scikit-build-core and pybind11 are used as they are
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e .
}
tests() { "$PY" -m pytest -q -m gpu -p no:cacheprovider; }
step() {
  for dtype in fp32 bf16; do
    "$PY" benchmarks/engine_step.py --preset etta --device cuda --dtype "$dtype" --nfe 100 --compile \
      --ops torch,triton,cuda --unfused || return
  done
}
goals() {
  local cells=(--model etta --device cuda --dtype bf16 --seconds 10 --nfes 8,100 --solvers euler --cfg-scales 3.5)
  local backends=eager,compile,engine-torch,engine-triton,engine-cuda,engine-compile,onnx,tensorrt
  # Both runs, whatever the first one's status (a failing backend there still leaves the others' rows).
  "$PY" benchmarks/sweep.py "${cells[@]}" --backends "$backends"
  local first=$?
  "$PY" benchmarks/sweep.py "${cells[@]}" --backends engine-triton,engine-cuda --cuda-graph step || return
  "$PY" benchmarks/sweep.py "${cells[@]}" --backends engine-triton,engine-cuda --padding longest || return
  return $first
}
sweep() { "$PY" benchmarks/sweep.py --model etta --device cuda --dtype bf16; }
vae() {
  local kernels=(--model etta --seconds 10 --device cuda --variants fp32,fp32-folded,bf16,fp16)
  "$PY" benchmarks/vae_precision.py --model etta --seconds 10 --device cuda &&
    "$PY" benchmarks/vae_precision.py "${kernels[@]}" --ops triton &&
    "$PY" benchmarks/vae_precision.py "${kernels[@]}" --ops cuda &&
    "$PY" benchmarks/vae_precision.py --model demo --device cuda
}
ops() { "$PY" benchmarks/ops.py --device cuda; }
onnx() { "$PY" benchmarks/onnx_runtime.py --preset etta --dtype fp16 --seconds 10 --nfe 100 --device cuda; }
train() { "$PY" benchmarks/train_dit_throughput.py --preset etta --batch 8 --precision bf16 --device cuda; }

{
  nvidia-smi -L
  "$PY" -c 'import torch, sys; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
  git log -1 --format='commit %H' 2>/dev/null
} >"$OUT/logs/env.txt" 2>&1
export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
status=0
for phase in "${phases[@]}"; do
  echo "== $phase (limit ${LIMIT} s)"
  start=$(date +%s)
  export -f "$phase"
  timeout "$LIMIT" bash -c "PY='$PY'; $phase" >"$OUT/logs/$phase.log" 2>&1
  rc=$?
  echo "== $phase: exit $rc after $(($(date +%s) - start)) s"
  tail -n 15 "$OUT/logs/$phase.log"
  [ $rc -ne 0 ] && status=$rc
done
new=$(find benchmarks/results -newer "$OUT/.start" -type f 2>/dev/null)
members=(-C "$OUT" logs)
# shellcheck disable=SC2206  # $new: one result path per word
[ -n "$new" ] && members+=(-C "$ROOT" $new)
tar -czf "$OUT/gpu_session.tar.gz" "${members[@]}"
echo "packed: $OUT/gpu_session.tar.gz ($(echo "$new" | grep -c . ) result files)"
exit $status
