#!/usr/bin/env bash
# Build the CPU image, start it with `docker compose ... up --wait`, send real /sample and /logprob
# requests to the container, and bring it down. Uses ../shared/tools/offline-docker.sh when there is no
# Docker engine or no python:3.11-slim (machines without a registry).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if ! docker info >/dev/null 2>&1 || ! docker image inspect python:3.11-slim >/dev/null 2>&1; then
  if [ -f ../shared/tools/offline-docker.sh ]; then
    # Exit 3 (no engine) is reported as a skip by tests/test_docker.py; anything later is a real failure.
    bash ../shared/tools/offline-docker.sh || { echo "docker_test: could not start a Docker engine" >&2; exit 3; }
  else
    echo "docker_test: no Docker engine with python:3.11-slim, and no offline-docker.sh" >&2
    exit 3
  fi
fi
mkdir -p docker/wheels
if ! ls docker/wheels/torch-*.whl >/dev/null 2>&1; then
  # The CPU wheel that pip finds on this machine's disk keeps the image free of the CUDA build.
  "$PY" -m pip download -q --no-deps "torch==2.13.0" -d docker/wheels
fi
export COMPOSE_PROJECT_NAME=flowserve-test FLOWS_PORT=${FLOWS_TEST_PORT:-18765}
cleanup() {
  status=$?
  [ "$status" = 0 ] || docker compose --profile cpu logs --tail 40 flows-cpu || true
  docker compose --profile cpu down --remove-orphans >/dev/null 2>&1 || true
  exit "$status"
}
trap cleanup EXIT
started=$(date +%s)
docker compose --profile cpu build flows-cpu
docker compose --profile cpu up -d --wait --wait-timeout 300 flows-cpu
echo "docker_test: image built and healthy in $(( $(date +%s) - started ))s"
docker image inspect flowserve:cpu --format 'docker_test: image size {{.Size}} bytes'
"$PY" scripts/docker_smoke.py "http://127.0.0.1:${FLOWS_PORT}"
