#!/usr/bin/env bash
# The GPU checks of the engine in as few calls as a lent machine allows: no network there, 15 minutes of device
# time a session (the machine's start, of a minute or more, included) and at most 10 minutes a call.
#
#   scripts/gpu_wheels.sh                          # here, with network: wheels the GPU image lacks -> .whl/
#   scripts/gpu_session.sh                         # there (carry .whl): the first call, the default plan below
#   scripts/gpu_session.sh vae:120 ops:90 onnx     # a second call, with what device time is left
#
# A phase is NAME or NAME:SECONDS, its own time limit (default PHASE_LIMIT_S, 480 s). The call itself has a
# deadline, DEADLINE_S seconds from its start (default 510): each phase gets at most what is left of it, less
# RESERVE_S (20 s) for packing the results, and one with under MIN_PHASE_S (30 s) of it left is skipped. So a
# call never outlives DEADLINE_S by more than its packing, and a caller that allows it DEADLINE_S + 60 seconds
# gets back what every phase finished. The benchmarks rewrite their JSON after every row, so a phase stopped at
# its limit still leaves the rows it had (marked "complete": false).
#
# Phases, the default plan's first (in the order of what the engine's goals need):
#   install  the carried wheels into /tmp/site, then etta_engine itself (editable, builds csrc/ with nvcc for
#            this GPU's architecture alone)
#   goals    benchmarks/sweep.py at the issue's goal cells: etta, 10 s, CFG 3.5, NFE 8 and 100, Euler, bf16,
#            eager and the engine with each ops, then the engine with T5 and the VAE in bf16 too (5 timed
#            generations a cell; the reference in fp32)
#   step     benchmarks/engine_step.py: the etta DiT step, eager vs the engine with torch/Triton/csrc ops with and
#            without the fused seams (and the top 15 kernels of eager and of the fastest) in bf16; then fp32
#   tests    pytest -m gpu: the kernels, the engine, export and TensorRT tests that need a GPU
#   compile  torch.compile's builds (minutes of compilation, so last): the step against them, then the goal
#            cells
# and the others:
#   variants the goal cells again with per-step CUDA graphs, and with prompts padded to their length, not 512
#   vae      benchmarks/vae_precision.py on the etta preset (torch, Triton and csrc Snake-beta) and the demo model
#   ops      benchmarks/ops.py (every op against eager, torch.compile and SDPA), with its plot
#   onnx     benchmarks/onnx_runtime.py (fp16 export, cached and plain DiT graphs, next to torch; ONNX Runtime's
#            rows only where it has the CUDA provider)
#   train    benchmarks/train_dit_throughput.py (bf16, batch 8)
#   sweep    the full NFE x solver x CFG x backend grid (bf16); the longest phase
# The logs and the result rows written during the call (benchmarks/results/*) are packed into
# $OUT/gpu_session.tar.gz, so that one fetch brings them back; the goals' table (benchmarks/goals.py) is printed
# last.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
cd "$ROOT"
PHASES=(install goals step tests compile variants vae ops onnx train sweep)  # every phase
DEFAULT_PLAN=(install:90 goals:180 step:60 tests:120 compile:240)
plan=("$@")
[ ${#plan[@]} -eq 0 ] && plan=("${DEFAULT_PLAN[@]}")
for item in "${plan[@]}"; do
  phase="${item%%:*}"
  if [[ " ${PHASES[*]} " != *" $phase "* ]]; then
    echo "unknown phase '$phase': ${PHASES[*]}" >&2
    exit 2
  fi
  if [[ "$item" == *:* ]] && ! [[ "${item#*:}" =~ ^[1-9][0-9]*$ ]]; then
    echo "phase '$item': the time limit after ':' must be a whole number of seconds > 0" >&2
    exit 2
  fi
done
OUT="${OUT:-$ROOT/outputs/gpu_session}"
LIMIT="${PHASE_LIMIT_S:-480}"
DEADLINE="${DEADLINE_S:-510}"
RESERVE="${RESERVE_S:-20}"
MIN_PHASE="${MIN_PHASE_S:-30}"
# The plan's sizes. REHEARSAL=1 shrinks every benchmark phase to the tiny preset on a CPU (1 s, few steps, one
# rep; ops at its smoke shapes, the sweep to two NFEs, the ONNX export in fp32, which ONNX Runtime's CPU provider
# runs): a check, where no GPU is, of every command line the lease will run (CI rehearses the default plan's).
if [ -n "${REHEARSAL:-}" ]; then
  PRESET=tiny DEVICE=cpu SECS=1 NFES=2 REF_NFE=4 REPS=1 STEP_NFE=2 STEP_REPS=1 STEP_FRAMES=9
  OPS_SIZE=--smoke ONNX_DTYPE=fp32 TRAIN_STEPS=2 SWEEP_SIZE="--seconds 1 --nfes 1,2 --reference-nfe 4"
  export TRITON_INTERPRET=1  # the Triton backends too
else
  PRESET=etta DEVICE=cuda SECS=10 NFES=8,100 REF_NFE=200 REPS=5 STEP_NFE=100 STEP_REPS=20 STEP_FRAMES=215
  OPS_SIZE="" ONNX_DTYPE=fp16 TRAIN_STEPS=10 SWEEP_SIZE=""
fi
RESULTS="${RESULTS_DIR:-$ROOT/benchmarks/results}"  # where the benchmarks write their rows
export PRESET DEVICE SECS NFES REF_NFE REPS STEP_NFE STEP_REPS STEP_FRAMES OPS_SIZE ONNX_DTYPE TRAIN_STEPS SWEEP_SIZE
export RESULTS
call_start=$(date +%s)
mkdir -p "$OUT/logs" "$RESULTS"
touch "$OUT/.start"
export PYTHONUNBUFFERED=1

install() {
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  fi
  # csrc/ for this GPU alone (sm_90 on an H100/H200): half the nvcc work of the default 80;90
  local cap arch=()
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')
  [[ "$cap" =~ ^[0-9]+$ ]] && arch=(--config-settings="cmake.define.CMAKE_CUDA_ARCHITECTURES=$cap")
  # the image's torch, triton, onnxruntime, transformers, scikit-build-core and pybind11 are used as they are
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation "${arch[@]}" -e .
}
tests() { "$PY" -m pytest -q -m gpu -p no:cacheprovider; }
GOAL_CELLS=(--model "$PRESET" --device "$DEVICE" --dtype bf16 --seconds "$SECS" --nfes "$NFES" --solvers euler
  --cfg-scales 3.5 --reference-nfe "$REF_NFE" --reps "$REPS" --out "$RESULTS")
goals() {
  # each run whatever the other's status (a failing backend still leaves the others' rows)
  local status=0
  "$PY" benchmarks/sweep.py "${GOAL_CELLS[@]}" --backends eager,engine-cuda,engine-triton,engine-torch || status=$?
  # the fastest precision: T5 and the VAE decoder in bf16 too (the rows' error says what that costs)
  "$PY" benchmarks/sweep.py "${GOAL_CELLS[@]}" --backends engine-cuda,engine-triton --vae-dtype bf16 \
    --text-dtype bf16 || status=$?
  return $status
}
compile() {
  # torch.compile's builds: minutes of compilation at the etta size, so after everything else of the first call
  local status=0
  "$PY" benchmarks/engine_step.py "${STEP_ARGS[@]}" --dtype bf16 --ops cuda --compile || status=$?
  "$PY" benchmarks/sweep.py "${GOAL_CELLS[@]}" --backends compile,engine-compile || status=$?
  return $status
}
variants() {
  local first
  "$PY" benchmarks/sweep.py "${GOAL_CELLS[@]}" --backends engine-triton,engine-cuda --cuda-graph step
  first=$?
  "$PY" benchmarks/sweep.py "${GOAL_CELLS[@]}" --backends engine-triton,engine-cuda --padding longest || return
  return $first
}
STEP_ARGS=(--preset "$PRESET" --device "$DEVICE" --nfe "$STEP_NFE" --reps "$STEP_REPS" --frames "$STEP_FRAMES"
  --out "$RESULTS")
step() {
  # each run writes its own file: bf16 first (the 3x goal; and where the time goes), then fp32
  "$PY" benchmarks/engine_step.py "${STEP_ARGS[@]}" --dtype bf16 --ops torch,triton,cuda --unfused --profile 15 ||
    return
  "$PY" benchmarks/engine_step.py "${STEP_ARGS[@]}" --dtype fp32 --ops torch,triton,cuda
}
sweep() {
  # shellcheck disable=SC2086  # $SWEEP_SIZE: flags, one per word
  "$PY" benchmarks/sweep.py --model "$PRESET" --device "$DEVICE" --dtype bf16 $SWEEP_SIZE --out "$RESULTS"
}
vae() {
  local size=(--model "$PRESET" --seconds "$SECS" --device "$DEVICE" --out "$RESULTS")
  "$PY" benchmarks/vae_precision.py "${size[@]}" &&
    "$PY" benchmarks/vae_precision.py "${size[@]}" --variants fp32,fp32-folded,bf16,fp16 --ops triton &&
    "$PY" benchmarks/vae_precision.py "${size[@]}" --variants fp32,fp32-folded,bf16,fp16 --ops cuda &&
    "$PY" benchmarks/vae_precision.py --model demo --device "$DEVICE" --out "$RESULTS"
}
ops() {
  # shellcheck disable=SC2086  # $OPS_SIZE: a flag or nothing
  "$PY" benchmarks/ops.py --device "$DEVICE" $OPS_SIZE --out "$RESULTS" || return
  local latest
  latest=$(ls -t "$RESULTS"/ops-*.json | head -n 1)
  "$PY" benchmarks/plot_ops.py "$latest"
}
onnx() {
  "$PY" benchmarks/onnx_runtime.py --preset "$PRESET" --dtype "$ONNX_DTYPE" --seconds "$SECS" --nfe "$STEP_NFE" \
    --device "$DEVICE" --backends onnxruntime,tensorrt,torch --out "$RESULTS"
}
train() {
  "$PY" benchmarks/train_dit_throughput.py --preset "$PRESET" --batch 8 --precision bf16 --steps "$TRAIN_STEPS" \
    --device "$DEVICE" --out "$RESULTS"
}

{
  nvidia-smi -L
  "$PY" -c 'import torch, sys; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
  git log -1 --format='commit %H' 2>/dev/null
  echo "plan: ${plan[*]} (deadline ${DEADLINE} s)"
} >"$OUT/logs/env.txt" 2>&1
export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
status=0
for item in "${plan[@]}"; do
  phase="${item%%:*}"
  limit="$LIMIT"
  [[ "$item" == *:* ]] && limit="${item#*:}"
  left=$((DEADLINE - ($(date +%s) - call_start) - RESERVE))
  if [ "$left" -lt "$MIN_PHASE" ]; then
    echo "== $phase: skipped, ${left} s left before the call's deadline (${DEADLINE} s)" |
      tee -a "$OUT/logs/skipped.txt"
    status=124
    continue
  fi
  [ "$left" -lt "$limit" ] && limit="$left"
  echo "== $phase (limit ${limit} s)"
  start=$(date +%s)
  export -f "$phase"
  arrays="GOAL_CELLS=($(printf '%q ' "${GOAL_CELLS[@]}")); STEP_ARGS=($(printf '%q ' "${STEP_ARGS[@]}"))"
  timeout "$limit" bash -c "PY=$(printf '%q' "$PY"); $arrays; $phase" >"$OUT/logs/$phase.log" 2>&1
  rc=$?
  echo "== $phase: exit $rc after $(($(date +%s) - start)) s$([ $rc -eq 124 ] && echo ' (its time limit)')"
  tail -n 15 "$OUT/logs/$phase.log"
  [ $rc -ne 0 ] && status=$rc
done
new=$(find "$RESULTS" -newer "$OUT/.start" -type f -not -name '.*' 2>/dev/null)
rows=$(echo "$new" | grep '\.json$')  # the plots (png) are not rows
if [ -n "$rows" ]; then
  # shellcheck disable=SC2086  # $rows: one result path per word
  "$PY" benchmarks/goals.py $rows 2>&1 | tee "$OUT/logs/goals_table.txt"
fi
# The rows under benchmarks/results/ in the archive (wherever RESULTS_DIR put them): unpacked at the repository
# root, they join the committed ones.
stage=$(mktemp -d)
mkdir -p "$stage/benchmarks/results"
# shellcheck disable=SC2086  # $new: one result path per word
[ -n "$new" ] && cp $new "$stage/benchmarks/results/"
tar -czf "$OUT/gpu_session.tar.gz" -C "$OUT" logs -C "$stage" benchmarks
rm -rf "$stage"
echo "packed: $OUT/gpu_session.tar.gz ($(echo "$new" | grep -c .) result files) after $(($(date +%s) - call_start)) s"
exit $status
