#!/usr/bin/env python
"""Test (and evaluate) a checkpoint with an mmpretrain, mmsegmentation or mmdetection config.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE_OR_DIR] [--out-item {metrics,pred}]
                         [--show] [--show-dir DIR] [--interval N] [--wait-time S] [--tta]
                         [--cfg-options K=V ...] [--launcher {none,pytorch,slurm,mpi}]

--out: mmpretrain pickle of predictions (or metrics with --out-item metrics), mmseg directory of predicted masks,
mmdet .pkl of predictions. Multi-process: tools/dist_test.sh CONFIG CHECKPOINT NPROC [args].
The logic lives in pelk_mm.apis.launch.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # this checkout, if pelk_mm is not installed

import pelk_mm  # noqa: E402,F401  (first: applies the modern-torch compatibility patches)
from pelk_mm.apis import test_main  # noqa: E402

if __name__ == '__main__':
    sys.exit(test_main())
