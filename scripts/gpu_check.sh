#!/usr/bin/env bash
# The whole GPU verification of the CUDA kernels in one call of at most 8 minutes (a 15-minute GPU budget
# leaves room for the machine's start and a rerun). Each step runs under its own time budget (`timeout`):
#   1. build the kernels (nvcc) and the host driver (g++)
#   2. GPU tests: pytest -m gpu (parity, half inputs, groups, gradcheck, GPU vs host driver) + CPU kernel tests
#   3. compute-sanitizer memcheck, racecheck and synccheck over scripts/sanitizer_shapes.py (small shapes)
#   4. benchmarks/solve_gpu.py --quick (ours vs per-diagonal-per-channel baseline vs cuDNN) -> solve_gpu_*.json
#   5. benchmarks/e2e_gpu.py (sample / score 100 images per shipped model)      -> results/e2e_gpu_*.json
#   6. benchmarks/subnet_precision.py (training steps, float32 vs bf16 subnets) -> results/subnet_precision_gpu.json
#   7. benchmarks/load.py against `python -m service` on the GPU               -> results/load_sample_gpu_*.json
# Every step runs even when an earlier one fails or runs out of time; the summary lists each step's status
# and time, and the script exits non-zero when any failed. Logs go to $LOG_DIR (benchmarks/results/gpu_check_logs).
# The service needs fastapi, pydantic, pydantic-settings, uvicorn and python-multipart, which the GPU machine
# lacks: `bash scripts/gpu_wheels.sh` downloads them for Python 3.12 into .whl/ beforehand (carry .whl);
# this script installs them into /tmp/site when they are missing.
#
#   PYTHON=/path/to/python-with-cuda-torch bash scripts/gpu_check.sh
#   bash scripts/gpu_check.sh --plan          # each step's budget (expected duration at most), the total
#   bash scripts/gpu_check.sh --dry-run       # no GPU: the plan, then the scripts themselves checked on the CPU
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
DRY=0
for arg in "$@"; do
  case "$arg" in
    --quick) ;;  # always quick now: the budget has room only for the quick benchmarks
    --dry-run) DRY=1 ;;
    --plan) DRY=2 ;;
    *) echo "usage: $0 [--dry-run | --plan]" >&2; exit 2 ;;
  esac
done
LOG_DIR=${LOG_DIR:-benchmarks/results/gpu_check_logs}
mkdir -p "$LOG_DIR"
declare -a SUMMARY=()
FAILED=0
TOTAL_BUDGET_S=480
BUDGET_SCALE=1  # a dry run on a small CPU checks the scripts, not the GPU's timings: 30x the budgets
# Each step's budget in seconds on the H200 machine (16 cores): what it is expected to take, with a margin.
declare -A BUDGET=(
  [device]=15 [wheels]=15 [build-cuda]=60 [build-host]=20 [gpu-tests]=60 [kernel-tests-cpu]=30
  [sanitizer-memcheck]=30 [sanitizer-racecheck]=40 [sanitizer-synccheck]=30
  [solve-benchmark]=50 [e2e-benchmark]=45 [training-precision]=30 [service-load]=50
)
ORDER=(device wheels build-cuda build-host gpu-tests kernel-tests-cpu sanitizer-memcheck sanitizer-racecheck
  sanitizer-synccheck solve-benchmark e2e-benchmark training-precision service-load)

plan() {  # the steps, their budgets and the total, which must fit TOTAL_BUDGET_S
  local total=0 name
  echo "=== plan: step, expected seconds at most"
  for name in "${ORDER[@]}"; do
    printf '  %-22s %4ds\n' "$name" "${BUDGET[$name]}"
    total=$((total + BUDGET[$name]))
  done
  printf '  %-22s %4ds (limit %ds)\n' total "$total" "$TOTAL_BUDGET_S"
  [ "$total" -le "$TOTAL_BUDGET_S" ] || { echo "the steps' budgets exceed ${TOTAL_BUDGET_S}s" >&2; exit 1; }
}

step() {  # step NAME COMMAND...: run within the step's budget, log, record the status and time, keep going
  local name=$1
  shift
  local budget=${BUDGET[$name]:?no budget for step $name}
  budget=$((budget * BUDGET_SCALE))
  echo "=== $name (budget ${budget}s): $*"
  local log="$LOG_DIR/$name.log" start=$SECONDS status took
  timeout --kill-after=5 "$budget" "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  took=$((SECONDS - start))
  if [ "$status" = 0 ]; then
    SUMMARY+=("ok       $name ${took}s of ${budget}s")
  elif [ "$status" = 124 ] || [ "$status" = 137 ]; then
    SUMMARY+=("TIMEOUT  $name ${took}s of ${budget}s (log: $log)")
    FAILED=1
  else
    SUMMARY+=("FAILED   $name ${took}s of ${budget}s (log: $log)")
    FAILED=1
  fi
}

plan
if [ "$DRY" = 2 ]; then
  exit 0
elif [ "$DRY" = 1 ]; then
  BUDGET_SCALE=30
  command -v g++ >/dev/null || { echo "g++ missing" >&2; exit 1; }
  step build-host "$PYTHON" -m kernels_cuda.build --host
  step sanitizer-memcheck "$PYTHON" scripts/sanitizer_shapes.py --dry-run
  step solve-benchmark "$PYTHON" benchmarks/solve_gpu.py --dry-run --out "$LOG_DIR/dry"
  step training-precision "$PYTHON" benchmarks/subnet_precision.py --quality-steps 0 --rounds 1 --out "$LOG_DIR/dry"
  for tool in memcheck racecheck synccheck; do
    echo "would run: compute-sanitizer --tool $tool --error-exitcode 1 $PYTHON scripts/sanitizer_shapes.py"
  done
else
  # The service's packages from .whl/ (scripts/gpu_wheels.sh) where this Python lacks them.
  if ! "$PYTHON" -c "import fastapi, pydantic_settings, uvicorn, multipart" 2>/dev/null; then
    step wheels "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  step device "$PYTHON" -c "
import subprocess, torch
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version())
print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'NONE')
print(subprocess.run(['nvidia-smi'], capture_output=True, text=True).stdout)"
  step build-cuda "$PYTHON" -m kernels_cuda.build
  step build-host "$PYTHON" -m kernels_cuda.build --host
  step gpu-tests "$PYTHON" -m pytest -q -m gpu tests/test_kernels_cuda.py
  step kernel-tests-cpu "$PYTHON" -m pytest -q tests/test_kernels_host.py tests/test_kernels_cuda.py -m "not gpu"
  SANITIZER=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  for tool in memcheck racecheck synccheck; do
    step "sanitizer-$tool" "$SANITIZER" --tool "$tool" --error-exitcode 1 "$PYTHON" scripts/sanitizer_shapes.py
  done
  step solve-benchmark "$PYTHON" benchmarks/solve_gpu.py --quick
  step e2e-benchmark "$PYTHON" benchmarks/e2e_gpu.py
  step training-precision "$PYTHON" benchmarks/subnet_precision.py --quality-steps 0
  # The service on the GPU (load.py starts `python -m service`, device auto = cuda) vs the raw model. load.py
  # writes results/load_sample.json, the committed CPU result: keep that, file the GPU one under its device.
  SLUG=$("$PYTHON" -c "from benchmarks.common import device_slug; import torch; print(device_slug(torch.cuda.get_device_name()))")
  cp benchmarks/results/load_sample.json "$LOG_DIR/load_sample.cpu.json" 2>/dev/null || true
  # No start-up ONNX export (finc-mnist-l ships no graph) inside this step's budget.
  FLOWS_ONNX_EXPORT=false step service-load "$PYTHON" benchmarks/load.py --op sample --clients 4 16 --duration 4
  [ -f benchmarks/results/load_sample.json ] && mv benchmarks/results/load_sample.json "benchmarks/results/load_sample_gpu_$SLUG.json"
  cp "$LOG_DIR/load_sample.cpu.json" benchmarks/results/load_sample.json 2>/dev/null || true
fi

echo "=== summary"
printf '%s\n' "${SUMMARY[@]}"
exit $FAILED
