#!/usr/bin/env bash
# Download the service's packages that the GPU machine lacks (fastapi, pydantic, pydantic-settings, uvicorn,
# python-multipart and what they need beyond its image) as Python 3.12 x86-64 wheels into .whl/, at the
# versions this checkout's .venv runs, for scripts/gpu_check.sh to install there. Run it where pip can reach
# a package index; carry .whl with the working tree (a few MiB of the 64 MiB a call may send).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
# The machine's image has starlette's and uvicorn's other needs (anyio, h11, httpx, click, uvloop, pyyaml, ...).
PACKAGES=(fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv uvicorn httptools
  python-multipart annotated-types annotated-doc typing-inspection opentelemetry-api)
mkdir -p .whl
rm -f .whl/*.whl
pins=()
for name in "${PACKAGES[@]}"; do
  version=$("$PYTHON" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
  [ -n "$version" ] || { echo "$name is not installed in $PYTHON's environment: run scripts/setup.sh" >&2; exit 1; }
  pins+=("$name==$version")
done
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
  manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl "${pins[@]}"
ls .whl/*.whl | wc -l | xargs echo "wheels:"
du -sh .whl | cut -f1 | xargs echo "size:"
