#!/usr/bin/env bash
# Download or build (here, where the package registry is reachable) the pure-Python wheels that benchmarks/gpu_check.sh
# needs on a GPU machine that has torch, torchvision and triton but no OpenMMLab packages and no registry:
#  - part (c) (training-step throughput): mmengine and those of its dependencies the image lacks;
#  - part (d) (tools/train.py and tools/dist_train.sh on the classification demo): mmcv without compiled ops and
#    mmpretrain, with the dependencies of both that the image lacks.
# numpy, pyyaml, rich, opencv, matplotlib, pillow, einops, click, markdown and zipp are on that image (its package list
# is in the device notes) and are not carried. mmcv's compiled ops are built against one torch and cannot follow it
# to the GPU machine's: its sdist is built here as the pure wheel mmcv-lite (MMCV_WITH_OPS=0, same version, still
# imported as `mmcv`), cached in work_dirs/gpu_wheels/cache/ because the build takes a while. Everything lands in
# work_dirs/gpu_wheels/ (git-ignored, about 3 MiB), which the run carries.
#
#   bash benchmarks/gpu_check_wheels.sh [python]   # default: .venv/bin/python, versions as installed there
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
DEST=work_dirs/gpu_wheels
CACHE=$DEST/cache
version() { "$PY" -c "from importlib.metadata import version; print(version('$1'))"; }
mkdir -p "$DEST" "$CACHE"
rm -f "$DEST"/*.whl
# The carried set: mmengine, mmcv and mmpretrain with their runtime requirements as installed in $PY, followed
# recursively (markers read for python 3.12 on Linux), less mmcv (built below) and what the GPU image already holds
ON_IMAGE="numpy pyyaml rich opencv-python opencv-python-headless matplotlib pillow einops click markdown zipp packaging
torch torchvision triton markdown-it-py mdurl pygments contourpy cycler fonttools kiwisolver pyparsing python-dateutil
six typing-extensions regex tomli requests"
PKGS=$("$PY" - "$ON_IMAGE" <<'PYEOF'
import re, sys
from importlib.metadata import distribution
from packaging.requirements import Requirement
skip = set(sys.argv[1].split()) | {'mmcv'}
env = dict(python_version='3.12', python_full_version='3.12.3', sys_platform='linux', platform_system='Linux',
           extra='')
norm = lambda name: re.sub(r'[-_.]+', '-', name).lower()
todo, seen = ['mmengine', 'mmcv', 'mmpretrain'], {}
while todo:
    dist = distribution(todo.pop())
    for line in dist.requires or []:
        req = Requirement(line)
        if (req.marker is None or req.marker.evaluate(env)) and norm(req.name) not in skip | set(seen):
            seen[norm(req.name)] = None
            todo.append(req.name)
    seen[norm(dist.metadata['Name'])] = dist.version
print(' '.join(f'{name}=={ver}' for name, ver in sorted(seen.items()) if name not in skip))
PYEOF
)
echo "carried: $PKGS mmcv-lite==$(version mmcv)"
# NOTE: --platform any refuses a compiled wheel instead of carrying one built for this machine's python
for spec in $PKGS; do
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
      --platform any -d "$DEST" "$spec" 2>/dev/null; then
    # NOTE: a package published as an sdist only is built into a wheel here
    "$PY" -m pip wheel -q --no-deps --no-binary=:all: -w "$DEST" "$spec"
  fi
done

MMCV=$(version mmcv)
LITE=$CACHE/mmcv_lite-$MMCV-py2.py3-none-any.whl
if [ ! -f "$LITE" ]; then
  rm -rf "$CACHE/sdist" && mkdir -p "$CACHE/sdist"
  "$PY" -m pip download -q --no-deps --no-binary=:all: -d "$CACHE/sdist" "mmcv==$MMCV"
  # NOTE: mmcv's setup.py imports pkg_resources, which setuptools 81 dropped: --no-build-isolation builds it with this
  # python's setuptools (the project's venv has one that still ships it)
  MMCV_WITH_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$CACHE" "$CACHE/sdist/mmcv-$MMCV.tar.gz"
  rm -rf "$CACHE/sdist"
fi
cp "$LITE" "$DEST"/
ls -l "$DEST"/*.whl
du -ch "$DEST"/*.whl | tail -1
