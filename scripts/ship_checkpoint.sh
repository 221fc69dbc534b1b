#!/usr/bin/env bash
# Turn a training run into a shipped checkpoint folder: weights, config, training log and curve, the last
# sample grid, ONNX graphs, out-of-distribution statistics and the model card; no optimizer state or
# per-epoch grids (the repo stays small).
#   bash scripts/ship_checkpoint.sh runs/finc-mnist checkpoints/finc-mnist [--no-onnx] [model.card options]
# --no-onnx: a snapshot to continue from, not served: no ONNX graphs, no ood_stats.json.
# A folder stays within MAX_FOLDER_MIB (default 10): graphs that would take it over are left out, and the
# service exports them at start-up into its ONNX cache (--onnx-cache) instead.
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:?training run folder}; dest=${2:?checkpoint folder to write}; shift 2
onnx=1
if [ "${1:-}" = "--no-onnx" ]; then onnx=0; shift; fi
PY=${PYTHON:-.venv/bin/python}
# The served weights must be the evaluated ones: the config's step is the last logged epoch's.
"$PY" - "$run" <<'PYCODE'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
steps = json.loads((run / "config.json").read_text())["training"]["steps"]
log = run / "training_log.json"
if not log.is_file() or not json.loads(log.read_text())["epochs"]:
    sys.exit(f"{run}: no epoch has been evaluated yet")
logged = json.loads(log.read_text())["epochs"][-1]["step"]
if steps != logged:
    sys.exit(f"{run}: its weights are from step {steps}, its last evaluation from step {logged}: "
             "ship after the next epoch ends")
PYCODE
mkdir -p "$dest"
rm -rf "$dest/onnx" "$dest/ood_stats.json"
for f in config.json model.safetensors training_log.json learning_curve.png; do
  cp "$run/$f" "$dest/$f"
done
last=$(ls "$run"/samples_epoch*.png | sort | tail -n 1)
cp "$last" "$dest/samples.png"
if [ "$onnx" = 1 ]; then
  log=$(mktemp)
  "$PY" -m model.export "$dest" >"$log" 2>&1 || { cat "$log"; exit 1; }
  rm -f "$log"
  limit=$(( ${MAX_FOLDER_MIB:-10} * 1048576 ))
  size=$(du -sb "$dest" | cut -f1)
  if [ "$size" -gt "$limit" ]; then
    rm -rf "$dest/onnx"
    echo "note: with its ONNX graphs $dest is $(( size / 1048576 )) MiB, over ${MAX_FOLDER_MIB:-10} MiB:" \
      "graphs left out (exported at start-up into the service's ONNX cache)" >&2
  fi
  # the reference statistics of these weights; a run on a dataset given by path needs --dataset PATH
  "$PY" -m model.ood "$dest" --threads "${OOD_THREADS:-1}" \
    || echo "warning: $dest has no ood_stats.json (ood: true answers 422): run python -m model.ood $dest --dataset DATA" >&2
fi
"$PY" -m model.card "$dest" "$@"
du -sh "$dest"
