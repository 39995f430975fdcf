# Shared by tools/dist_{train,test}.sh and tools/slurm_{train,test}.sh (sourced, not run).
# Interpreter: $PYTHON if set, else <repo>/.venv/bin/python if present, else python. The repo goes on PYTHONPATH.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "$PYTHON" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
export PYTHONPATH="$ROOT":$PYTHONPATH
# torchrun sets OMP_NUM_THREADS=1 when it is unset; the launcher tells that apart from a user's own choice by this
export PELK_MM_USER_OMP_NUM_THREADS="${OMP_NUM_THREADS:-}"

# usage_unless MIN_ARGS USAGE "$@": print the usage line and exit 1 when fewer than MIN_ARGS arguments are given
usage_unless() {
    local min=$1 usage=$2
    shift 2
    if [ $# -lt "$min" ]; then
        echo "usage: $(basename "$0") $usage" >&2
        exit 1
    fi
}

# torchrun_tool NPROC TOOL ARGS...: tools/TOOL under torchrun, one process per GPU (gloo on CPU-only machines).
# pelk_mm.apis.torchrun is torch.distributed.run with a failed job reported in one line (no agent traceback).
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR (default 127.0.0.1), PORT (default 29500).
torchrun_tool() {
    local nproc=$1 tool=$2
    shift 2
    # torchrun and mmengine set both to 1 for a multi-process job when they are unset, each with a warning banner
    # per process; set the same values first (CPU runs still get their thread count from the launcher)
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
    exec "$PYTHON" -m pelk_mm.apis.torchrun \
        --nnodes="${NNODES:-1}" \
        --node_rank="${NODE_RANK:-0}" \
        --master_addr="${MASTER_ADDR:-127.0.0.1}" \
        --master_port="${PORT:-29500}" \
        --nproc_per_node="$nproc" \
        "$ROOT/tools/$tool" "$@"
}

# srun_tool PARTITION JOB_NAME TOOL ARGS...: tools/TOOL as a SLURM job step (mmpretrain/mmdet layout):
# GPUS (default 8) tasks, GPUS_PER_NODE (8) per node, CPUS_PER_TASK (5) each, extra srun flags in SRUN_ARGS.
srun_tool() {
    local partition=$1 job_name=$2 tool=$3
    shift 3
    set -x
    srun -p "$partition" \
        --job-name="$job_name" \
        --gres=gpu:"${GPUS_PER_NODE:-8}" \
        --ntasks="${GPUS:-8}" \
        --ntasks-per-node="${GPUS_PER_NODE:-8}" \
        --cpus-per-task="${CPUS_PER_TASK:-5}" \
        --kill-on-bad-exit=1 \
        ${SRUN_ARGS} \
        "$PYTHON" -u "$ROOT/tools/$tool" "$@"
}
