#!/usr/bin/env python
"""Train with an mmpretrain, mmsegmentation or mmdetection config (dispatched on the config's default_scope).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--auto-scale-lr] [--no-validate]
                          [--no-pin-memory] [--no-persistent-workers] [--cfg-options K=V ...]
                          [--launcher {none,pytorch,slurm,mpi}]

Multi-process: tools/dist_train.sh CONFIG NPROC [args]; SLURM: tools/slurm_train.sh PARTITION JOB CONFIG WORK_DIR.
The logic lives in pelk_mm.apis.launch.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # this checkout, if pelk_mm is not installed

import pelk_mm  # noqa: E402,F401  (first: applies the modern-torch compatibility patches)
from pelk_mm.apis import train_main  # noqa: E402

if __name__ == '__main__':
    sys.exit(train_main())
