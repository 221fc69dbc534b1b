#!/usr/bin/env bash
# Set up (idempotent) and start the service on the shipped checkpoints: http://127.0.0.1:8000/docs
# Extra arguments go to `python -m service` (e.g. --port 9000 --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m service "$@"
