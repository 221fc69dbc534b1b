#!/usr/bin/env bash
# Turn a training run into a shipped checkpoint folder: weights, config, training log and curve, the last
# sample grid, ONNX graphs and the model card; no optimizer state or per-epoch grids (the repo stays small).
#   bash scripts/ship_checkpoint.sh runs/finc-mnist checkpoints/finc-mnist [--speed benchmarks/results/X.json]
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:?training run folder}; dest=${2:?checkpoint folder to write}; shift 2
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$dest"
rm -rf "$dest/onnx"
for f in config.json model.safetensors training_log.json learning_curve.png; do
  cp "$run/$f" "$dest/$f"
done
last=$(ls "$run"/samples_epoch*.png | sort | tail -n 1)
cp "$last" "$dest/samples.png"
log=$(mktemp)
"$PY" -m model.export "$dest" >"$log" 2>&1 || { cat "$log"; exit 1; }
rm -f "$log"
"$PY" -m model.card "$dest" "$@"
du -sh "$dest"
