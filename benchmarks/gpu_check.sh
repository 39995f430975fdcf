#!/usr/bin/env bash
# One prepared GPU check, <= 8 minutes on one H200: (a) op battery vs a float64 reference, (v) every Triton launch
# variant timed by the kernels' tuner at PeLK's stage shapes, winners and roofline share, (b) op benchmark at the
# PeLK stage shapes, (c) training-step throughput of PeLK-T and its comparison nets, (d) tools/train.py and
# tools/dist_train.sh (1 process, NCCL) on the classification demo with bf16 AMP, final top-1 against the CPU's
# 98.61. See benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh [extra gpu_check.py flags]
#
# Results: $OUT/gpu_check.json, $OUT/gpu_check.log and the launches' console output $OUT/launch_*.log ($OUT defaults
# to work_dirs/gpu_check); the summary table is printed last. The machine needs python with torch, torchvision and
# triton; parts (c) and (d) also need mmengine, mmcv (without compiled ops) and mmpretrain, installed here from the
# wheels in work_dirs/gpu_wheels/ (made by benchmarks/gpu_check_wheels.sh) when they are there.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-work_dirs/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
LOG="$OUT/gpu_check.log"
VERSIONS='import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.is_available())
import numpy, torchvision; print("numpy", numpy.__version__, "torchvision", torchvision.__version__)'
echo "[gpu_check] $(date -u +%FT%TZ) $($PY -c "$VERSIONS" 2>&1)" | tee "$LOG"
nvidia-smi --query-gpu=name,memory.used,memory.total,temperature.gpu,clocks.sm --format=csv,noheader 2>&1 \
  | tee -a "$LOG"

if ls work_dirs/gpu_wheels/*.whl >/dev/null 2>&1; then
  SITE=/tmp/pelk_gpu_check_site
  # NOTE: --no-deps --no-index: the machine has no registry; the carried wheels are the missing pure-Python set
  if timeout 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      work_dirs/gpu_wheels/*.whl >>"$LOG" 2>&1; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "[gpu_check] wheel install failed (see $LOG); parts (c) and (d) record why they cannot run" \
      | tee -a "$LOG"
  fi
fi

export PYTHONUNBUFFERED=1
export PELK_MM_CACHE="${PELK_MM_CACHE:-/tmp/pelk_gpu_check_cache}"  # fresh autotune choices, timed on this GPU
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/pelk_gpu_check_triton}"
# NOTE: the parts time-box themselves (80 + 170 + 120 + 90 s); the outer limit only catches a hang
timeout -k 10 470 "$PY" benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
  echo "[gpu_check] gpu_check.py exited with $rc; the JSON holds the parts finished before" | tee -a "$LOG"
  "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['table'])" "$OUT/gpu_check.json" 2>/dev/null
fi
exit "$rc"
