#!/usr/bin/env bash
# Download (here, where the package registry is reachable) the pure-Python wheels that part (c) of
# benchmarks/gpu_check.sh needs on a GPU machine that has torch and triton but no OpenMMLab packages and no registry:
# mmengine and those of its dependencies that image lacks (numpy, pyyaml, rich, opencv and matplotlib are there).
# They land in work_dirs/gpu_wheels/ (git-ignored, < 1 MiB), which the run carries.
#
#   bash benchmarks/gpu_check_wheels.sh [python]   # default: .venv/bin/python, versions as installed there
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
DEST=work_dirs/gpu_wheels
version() { "$PY" -c "from importlib.metadata import version; print(version('$1'))"; }
mkdir -p "$DEST"
rm -f "$DEST"/*.whl
for pkg in mmengine addict termcolor yapf platformdirs; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
    --platform any -d "$DEST" "$pkg==$(version "$pkg")"
done
ls -l "$DEST"
