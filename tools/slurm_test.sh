#!/usr/bin/env bash
# SLURM testing (mmpretrain/mmdet layout):
#   [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] \
#   tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [tools/test.py args...]
source "$(dirname "$0")/launch_common.sh"
usage_unless 4 "PARTITION JOB_NAME CONFIG CHECKPOINT [tools/test.py args...]" "$@"
srun_tool "$1" "$2" test.py "$3" "$4" --launcher=slurm "${@:5}"
