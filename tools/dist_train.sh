#!/usr/bin/env bash
# Multi-process training with torchrun (one process per GPU; on a CPU-only machine the processes use gloo).
#   tools/dist_train.sh CONFIG NPROC [tools/train.py args...]
# Multi-node: NNODES=2 NODE_RANK=0|1 MASTER_ADDR=<node 0 address> PORT=29500 tools/dist_train.sh CONFIG 8 ...
set -e
source "$(dirname "$0")/launch_common.sh"
usage_unless 2 "CONFIG NPROC [tools/train.py args...]" "$@"
torchrun_tool "$2" train.py "$1" --launcher pytorch "${@:3}"
