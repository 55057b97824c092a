#!/usr/bin/env bash
# Evaluate a checkpoint on NUM_GPUS GPUs with torchrun.
#   scripts/dist_test.sh CONFIG CHECKPOINT NUM_GPUS [--split minival|test-dev] [evaluate.py args ...]
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 CONFIG CHECKPOINT NUM_GPUS [--split minival|test-dev] [evaluate.py args ...]" >&2
  exit 2
fi
CONFIG=$1; CKPT=$2; GPUS=$3; shift 3
[ -f "$CONFIG" ] || { echo "$0: config not found: $CONFIG" >&2; exit 2; }
[ -f "$CKPT" ] || { echo "$0: checkpoint not found: $CKPT" >&2; exit 2; }
case " $* " in *" --split "*) SPLIT=() ;; *) SPLIT=(--split minival) ;; esac
cd "$(dirname "$0")/.."
exec torchrun --nproc_per_node="$GPUS" --master_port="${MASTER_PORT:-29501}" evaluate.py \
  --config "$CONFIG" --checkpoint "$CKPT" "${SPLIT[@]}" "$@"
