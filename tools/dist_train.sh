#!/usr/bin/env bash
# Multi-process training with torchrun (one process per GPU; on a CPU-only machine the processes use gloo).
#   tools/dist_train.sh CONFIG NPROC [tools/train.py args...]
# Multi-node: NNODES=2 NODE_RANK=0|1 MASTER_ADDR=<node 0 address> PORT=29500 tools/dist_train.sh CONFIG 8 ...
# Interpreter: $PYTHON if set, else <repo>/.venv/bin/python if present, else python.
set -e
if [ $# -lt 2 ]; then
    echo "usage: $0 CONFIG NPROC [tools/train.py args...]" >&2
    exit 1
fi
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "$PYTHON" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi

PYTHONPATH="$ROOT":$PYTHONPATH \
exec "$PYTHON" -m torch.distributed.run \
    --nnodes=$NNODES \
    --node_rank=$NODE_RANK \
    --master_addr=$MASTER_ADDR \
    --master_port=$PORT \
    --nproc_per_node=$GPUS \
    "$ROOT/tools/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
