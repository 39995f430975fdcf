#!/usr/bin/env bash
# One-command set-up for pelk_mm: creates .venv/ in the repository and installs the whole
# OpenMMLab stack (torch, mmengine, mmcv with compiled ops, mmpretrain, mmseg, mmdet), onnx + onnxruntime
# (deployment checks) + onnxscript (torch.onnx.export's default dynamo exporter) plus pelk_mm.
#
#   bash tools/setup.sh            # create/update .venv
#   PELK_MM_CACHE=/path bash tools/setup.sh   # where the built mmcv wheel is cached (default ~/.cache/pelk_mm)
#   PELK_MM_PYTHON=python3.11 bash tools/setup.sh   # interpreter to build the venv from
#
# mmcv 2.1.0 (the newest mmcv that mmdet 3.3 and mmseg 1.2.2 accept) has no wheel for torch 2.14, so it is built
# from its source release with ops (C++20 patched in, see README "Installation notes"). The wheel is cached under a
# key made of the python, torch and CUDA versions, so later runs install it in seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
CACHE="${PELK_MM_CACHE:-$HOME/.cache/pelk_mm}"
PY_BASE="${PELK_MM_PYTHON:-python3}"
LOG_DIR="$ROOT/work_dirs/setup_logs"
mkdir -p "$LOG_DIR" "$CACHE"

# One set-up at a time per cache: a second one waits for the first instead of building mmcv again beside it.
exec 9>"$CACHE/setup.lock"
if ! flock -n 9; then
    echo "[setup] another tools/setup.sh is running (lock $CACHE/setup.lock): waiting for it to finish"
    flock 9
fi

TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0

step_no=0
t0=$(date +%s)
step() { step_no=$((step_no + 1)); printf '[setup %2d | %4ss] %s\n' "$step_no" "$(( $(date +%s) - t0 ))" "$*"; }
die() { printf '\n[setup] FAILED: %s\n' "$*" >&2; exit 1; }

# run LOGNAME CMD...: runs quietly into a log file; on failure shows the log's tail and names the log.
run() {
    local name="$1"; shift
    local log="$LOG_DIR/$name.log"
    if ! "$@" >"$log" 2>&1; then
        echo "---- last 25 lines of $log ----" >&2
        tail -n 25 "$log" >&2
        die "step '$name' failed (command: $*). Full log: $log"
    fi
}

# mmcv_progress BUILD_DIR: while mmcv compiles, one line a minute (or when 10 % more is done): objects compiled out of
# the total that its build.ninja lists, elapsed time and an estimate of the rest (a straight-line extrapolation).
mmcv_progress() {
    local build="$1" start shown=-1 last=0 ninja total done now left
    start=$(date +%s)
    while sleep 15; do
        ninja=$(find "$build" -name build.ninja -print -quit 2>/dev/null)
        [ -n "$ninja" ] || continue
        total=$(grep -c '^build [^:]*\.o: ' "$ninja" || true)
        done=$(find "$build" -name '*.o' 2>/dev/null | wc -l)
        now=$(date +%s)
        [ "${total:-0}" -gt 0 ] || continue
        if [ "$done" -ne "$shown" ] && { [ $((now - last)) -ge 60 ] || [ $(((done - shown) * 10)) -ge "$total" ]; }; then
            if [ "$done" -gt 0 ]; then
                left="about $(( ((now - start) * (total - done) / done + 59) / 60 )) min left"
            else
                left="estimating"
            fi
            printf '            mmcv: %d/%d objects compiled, %d min %02d s elapsed, %s\n' \
                "$done" "$total" $(((now - start) / 60)) $(((now - start) % 60)) "$left"
            shown=$done; last=$now
        fi
    done
}

command -v "$PY_BASE" >/dev/null || die "python interpreter '$PY_BASE' not found; set PELK_MM_PYTHON to a python 3.10-3.12"

# 1. virtual environment. If the base interpreter already has a CUDA build of torch (e.g. a GPU cluster image),
#    the venv sees it (--system-site-packages) and keeps it instead of installing another one.
base_torch_cuda=$("$PY_BASE" -c 'import torch; print(torch.version.cuda or "")' 2>/dev/null || true)
if [ ! -x "$VENV/bin/python" ]; then
    if [ -n "$base_torch_cuda" ]; then
        step "creating .venv (keeping the interpreter's CUDA torch, CUDA $base_torch_cuda)"
        run venv "$PY_BASE" -m venv --system-site-packages "$VENV"
    else
        step "creating .venv with $("$PY_BASE" --version 2>&1)"
        run venv "$PY_BASE" -m venv "$VENV"
    fi
else
    step "reusing existing .venv"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# 2. torch + torchvision
if "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
    step "torch $("$PY" -c 'import torch; print(torch.__version__)') already present: keeping it"
else
    step "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION (large download/copy, a few minutes)"
    run torch "${PIP[@]}" install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi

# 3. build tools; setuptools<81 keeps pkg_resources, which mmcv's setup.py and mmengine's `pkg::` config bases need.
step "installing build tools (setuptools<81, wheel, ninja, psutil, numpy)"
run build-tools "${PIP[@]}" install -q "setuptools>=77,<81" wheel ninja psutil numpy

# 4. mmcv with compiled ops: from cache, else built from the source release.
read -r PYV TORCHV CUDAV <<<"$("$PY" -c 'import sys, torch; print("%d.%d" % sys.version_info[:2], torch.__version__.split("+")[0], (torch.version.cuda or "none"))')"
WANT_CUDA=0
if [ "${FORCE_CUDA:-0}" = "1" ]; then
    WANT_CUDA=1
elif command -v nvcc >/dev/null 2>&1 && "$PY" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    WANT_CUDA=1
fi
if [ "$WANT_CUDA" = 1 ]; then OPS="cuda$CUDAV"; else OPS="cpu"; fi
KEY="mmcv-$MMCV_VERSION-py$PYV-torch$TORCHV-$OPS"
WHEEL_DIR="$CACHE/wheels/$KEY"
if "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" >/dev/null 2>&1; then
    step "mmcv $MMCV_VERSION with ops already installed"
else
    if ! ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
        step "building mmcv $MMCV_VERSION with ops ($OPS) from source: ~18 min on 2 cores, once per key $KEY"
        BUILD="$(mktemp -d)"
        run mmcv-download "${PIP[@]}" download --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV_VERSION" -d "$BUILD"
        tar xzf "$BUILD/mmcv-$MMCV_VERSION.tar.gz" -C "$BUILD"
        # torch >= 2.10 headers require C++20; mmcv 2.1.0 hard-codes -std=c++17.
        sed -i 's/-std=c++17/-std=c++20/g' "$BUILD/mmcv-$MMCV_VERSION/setup.py"
        jobs="${MAX_JOBS:-$(nproc)}"
        if [ "$WANT_CUDA" = 1 ]; then export FORCE_CUDA=1; fi
        mmcv_progress "$BUILD" & progress_pid=$!
        trap 'kill $progress_pid 2>/dev/null' EXIT
        MMCV_WITH_OPS=1 MAX_JOBS="$jobs" run mmcv-build "${PIP[@]}" wheel --no-build-isolation --no-deps \
            "$BUILD/mmcv-$MMCV_VERSION" -w "$BUILD/dist"
        kill "$progress_pid" 2>/dev/null || true
        trap - EXIT
        mkdir -p "$WHEEL_DIR.tmp.$$"
        cp "$BUILD"/dist/mmcv-*.whl "$WHEEL_DIR.tmp.$$/"
        rm -rf "$WHEEL_DIR" && mv "$WHEEL_DIR.tmp.$$" "$WHEEL_DIR"   # atomic publish into the cache
        rm -rf "$BUILD"
    else
        step "using cached mmcv wheel $WHEEL_DIR"
    fi
    run mmcv-install "${PIP[@]}" install --no-deps --force-reinstall "$WHEEL_DIR"/mmcv-*.whl
    run mmcv-deps "${PIP[@]}" install -q addict "mmengine==0.10.7" opencv-python-headless packaging Pillow pyyaml yapf
fi

# 5. the OpenMMLab codebases and pelk_mm (requirements.txt pins the same versions)
step "installing mmengine, mmpretrain, mmsegmentation, mmdet, onnx, onnxruntime, onnxscript and test tools (requirements.txt)"
run requirements "${PIP[@]}" install -r requirements.txt
step "installing pelk_mm (editable)"
run pelk-mm "${PIP[@]}" install --no-build-isolation --no-deps -e .

# 6. the fused C++ peripheral-conv kernel (JIT-built once into ~/.cache/pelk_mm/torch_extensions; pelk_mm falls
#    back to a PyTorch implementation, with a warning, where it cannot be built)
step "building pelk_mm's C++ peripheral conv kernel (about a minute, once per CPU type and torch version)"
run cpp-ext "$PY" -c "
from pelk_mm.ops import _impl_cpp
ok = _impl_cpp.extension() is not None
print('C++ kernel:', 'ready in ' + _impl_cpp.build_dir() if ok else 'unavailable: ' + str(_impl_cpp.unavailable_reason()))
"
cat "$LOG_DIR/cpp-ext.log" | grep 'C++ kernel' || true

# 7. smoke check: every codebase imports and sees the PeLK backbone
step "checking the installation"
run check "$PY" - <<'PY'
import mmcv, mmcv.ops, mmengine, mmpretrain, mmseg, mmdet, torch, torchvision  # noqa: F401
import onnx, onnxruntime, onnxscript  # noqa: F401  (ONNX export, both exporters, and its checks)
from mmcv.ops import nms, RoIAlign  # noqa: F401  (compiled ops)
import pelk_mm
from mmengine.registry import DefaultScope
from mmpretrain.registry import MODELS
with DefaultScope.overwrite_default_scope('mmpretrain'):
    assert MODELS.get('pelk_mm.PeLK') is not None, 'pelk_mm.PeLK is not reachable from the mmpretrain scope'
print('torch', torch.__version__, 'mmcv', mmcv.__version__, 'mmpretrain', mmpretrain.__version__,
      'mmseg', mmseg.__version__, 'mmdet', mmdet.__version__, 'pelk_mm', pelk_mm.__version__)
PY
cat "$LOG_DIR/check.log"
step "done: activate with 'source .venv/bin/activate'"
