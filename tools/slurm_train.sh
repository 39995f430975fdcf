#!/usr/bin/env bash
# SLURM training (mmpretrain/mmdet layout):
#   [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] \
#   tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py args...]
source "$(dirname "$0")/launch_common.sh"
usage_unless 4 "PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py args...]" "$@"
srun_tool "$1" "$2" train.py "$3" --work-dir="$4" --launcher=slurm "${@:5}"
