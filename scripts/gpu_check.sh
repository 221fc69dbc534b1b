#!/usr/bin/env bash
# The whole GPU verification of the CUDA kernels in one call (issue 10, item 4):
#   1. build the kernels (nvcc) and the host driver (g++)
#   2. GPU tests: pytest -m gpu (parity, half inputs, groups, gradcheck, GPU vs host driver) + CPU kernel tests
#   3. compute-sanitizer memcheck, racecheck and synccheck over scripts/sanitizer_shapes.py
#   4. benchmarks/solve_gpu.py (ours vs per-diagonal-per-channel baseline vs cuDNN) -> results/solve_gpu_*.json
#   5. benchmarks/e2e_gpu.py (sample / score 100 images per shipped model)      -> results/e2e_gpu_*.json
#   6. benchmarks/subnet_precision.py (training steps, float32 vs bf16 subnets) -> results/subnet_precision_gpu.json
#   7. benchmarks/load.py against `python -m service` on the GPU               -> results/load_sample_gpu_*.json
# Every step runs even when an earlier one fails; the summary lists each step's status and the script exits
# non-zero when any failed. Logs go to $LOG_DIR (default benchmarks/results/gpu_check_logs).
#
#   PYTHON=/path/to/python-with-cuda-torch bash scripts/gpu_check.sh [--quick]
#   bash scripts/gpu_check.sh --dry-run       # no GPU: check the scripts themselves on the CPU
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
QUICK=""
DRY=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK="--quick" ;;
    --dry-run) DRY=1 ;;
    *) echo "usage: $0 [--quick] [--dry-run]" >&2; exit 2 ;;
  esac
done
LOG_DIR=${LOG_DIR:-benchmarks/results/gpu_check_logs}
mkdir -p "$LOG_DIR"
declare -a SUMMARY=()
FAILED=0

step() {  # step NAME COMMAND...: run, log, record the status, keep going
  local name=$1
  shift
  echo "=== $name: $*"
  local log="$LOG_DIR/$name.log"
  if "$@" 2>&1 | tee "$log"; then
    SUMMARY+=("ok      $name")
  else
    SUMMARY+=("FAILED  $name (log: $log)")
    FAILED=1
  fi
}

if [ "$DRY" = 1 ]; then
  command -v g++ >/dev/null || { echo "g++ missing" >&2; exit 1; }
  step host-driver "$PYTHON" -m kernels_cuda.build --host
  step sanitizer-shapes "$PYTHON" scripts/sanitizer_shapes.py --dry-run
  step solve-benchmark "$PYTHON" benchmarks/solve_gpu.py --dry-run --out "$LOG_DIR/dry"
  step training-precision "$PYTHON" benchmarks/subnet_precision.py --quality-steps 0 --rounds 1 --out "$LOG_DIR/dry"
  for tool in memcheck racecheck synccheck; do
    echo "would run: compute-sanitizer --tool $tool --error-exitcode 1 $PYTHON scripts/sanitizer_shapes.py"
  done
else
  "$PYTHON" - <<'EOF' 2>&1 | tee "$LOG_DIR/device.log"
import subprocess, torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE")
print(subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout)
EOF
  step build-cuda "$PYTHON" -m kernels_cuda.build
  step build-host "$PYTHON" -m kernels_cuda.build --host
  step gpu-tests "$PYTHON" -m pytest -q -m gpu tests/test_kernels_cuda.py
  step kernel-tests-cpu "$PYTHON" -m pytest -q tests/test_kernels_host.py tests/test_kernels_cuda.py -m "not gpu"
  SANITIZER=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  for tool in memcheck racecheck synccheck; do
    step "sanitizer-$tool" "$SANITIZER" --tool "$tool" --error-exitcode 1 "$PYTHON" scripts/sanitizer_shapes.py
  done
  step solve-benchmark "$PYTHON" benchmarks/solve_gpu.py $QUICK
  step e2e-benchmark "$PYTHON" benchmarks/e2e_gpu.py
  step training-precision "$PYTHON" benchmarks/subnet_precision.py --quality-steps 0
  # The service on the GPU (load.py starts `python -m service`, device auto = cuda) vs the raw model. load.py
  # writes results/load_sample.json, the committed CPU result: keep that, file the GPU one under its device.
  SLUG=$("$PYTHON" -c "from benchmarks.common import device_slug; import torch; print(device_slug(torch.cuda.get_device_name()))")
  cp benchmarks/results/load_sample.json "$LOG_DIR/load_sample.cpu.json" 2>/dev/null || true
  step service-load "$PYTHON" benchmarks/load.py --op sample --clients 4 16 --duration 5
  [ -f benchmarks/results/load_sample.json ] && mv benchmarks/results/load_sample.json "benchmarks/results/load_sample_gpu_$SLUG.json"
  cp "$LOG_DIR/load_sample.cpu.json" benchmarks/results/load_sample.json 2>/dev/null || true
fi

echo "=== summary"
printf '%s\n' "${SUMMARY[@]}"
exit $FAILED
