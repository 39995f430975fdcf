#!/usr/bin/env bash
# Multi-process testing with torchrun (one process per GPU; on a CPU-only machine the processes use gloo).
#   tools/dist_test.sh CONFIG CHECKPOINT NPROC [tools/test.py args...]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, PORT (default 29500) as for tools/dist_train.sh.
set -e
source "$(dirname "$0")/launch_common.sh"
usage_unless 3 "CONFIG CHECKPOINT NPROC [tools/test.py args...]" "$@"
torchrun_tool "$3" test.py "$1" "$2" --launcher pytorch "${@:4}"
