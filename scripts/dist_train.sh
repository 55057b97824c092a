#!/usr/bin/env bash
# Train on NUM_GPUS GPUs of this node with torchrun.
#   scripts/dist_train.sh CONFIG NUM_GPUS [train.py args / key=value overrides ...]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR (and MASTER_PORT) on every node, e.g.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 scripts/dist_train.sh CONFIG 8   # on the first node
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 scripts/dist_train.sh CONFIG 8   # on the second node
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG NUM_GPUS [train.py args / key=value overrides ...]" >&2
  exit 2
fi
CONFIG=$1; GPUS=$2; shift 2
[ -f "$CONFIG" ] || { echo "$0: config not found: $CONFIG" >&2; exit 2; }
NNODES=${NNODES:-1}; NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}; MASTER_PORT=${MASTER_PORT:-29500}
echo "torchrun: $NNODES node(s) x $GPUS GPU(s); the total batch is $((NNODES * GPUS)) x data.batch_size"
cd "$(dirname "$0")/.."
exec torchrun --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$GPUS" \
  --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" train.py --config "$CONFIG" "$@"
