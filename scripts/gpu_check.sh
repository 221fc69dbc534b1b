#!/usr/bin/env bash
# Everything the CUDA kernels need verified on a GPU machine, in one go:
# build, parity + gradcheck tests, compute-sanitizer memcheck, and the GPU benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python -m kernels_cuda.build
python -m pytest -q -m gpu tests/test_kernels_cuda.py
compute-sanitizer --tool memcheck --error-exitcode 1 python scripts/sanitizer_shapes.py
python benchmarks/solve_gpu.py "${@:---quick}"
