#!/usr/bin/env bash
# Install Triton's perf_analyzer into .venv/perf_analyzer/ (PyPI's `perf-analyzer` is a placeholder; the
# binary ships inside the tritonclient 2.40.0 wheel, and needs libb64 (apt) and libcudart.so.12 (PyPI's
# nvidia-cuda-runtime-cu12; no GPU is used over HTTP)). Prints the command to run it with.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.venv/perf_analyzer
mkdir -p "$dest"
if [ ! -x "$dest/perf_analyzer" ]; then
    tmp=$(mktemp -d)
    .venv/bin/pip download -q --no-deps -d "$tmp" tritonclient==2.40.0 nvidia-cuda-runtime-cu12==12.9.79
    unzip -q -o -j "$tmp"/tritonclient-2.40.0-*.whl 'tritonclient-2.40.0.data/data/bin/perf_analyzer' -d "$dest"
    unzip -q -o -j "$tmp"/nvidia_cuda_runtime_cu12-*.whl 'nvidia/cuda_runtime/lib/libcudart.so.12' -d "$dest"
    chmod +x "$dest/perf_analyzer"
    rm -rf "$tmp"
fi
if ! ldconfig -p | grep -q libb64.so.0d; then
    if [ "$(id -u)" = 0 ]; then apt-get install -y -q libb64-0d > /dev/null; else sudo apt-get install -y -q libb64-0d > /dev/null; fi
fi
echo "LD_LIBRARY_PATH=$PWD/$dest $PWD/$dest/perf_analyzer"
