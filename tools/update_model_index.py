#!/usr/bin/env python
"""Write the model index (``model-index.yml`` and one ``configs/**/metafile.yml`` per config folder) from the configs.

    python tools/update_model_index.py            # write the files
    python tools/update_model_index.py --check    # exit 1 if a file is missing or out of date

Every ``configs/**/*.py`` outside ``configs/_base_/`` gets an entry named after its file (``pelk_t_in1k.py`` ->
``pelk-t_in1k``); its codebase and schedule come from the loaded config. See :mod:`pelk_mm.model_zoo`.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # this checkout

import pelk_mm  # noqa: E402,F401

from pelk_mm.apis.cli import run_main  # noqa: E402
from pelk_mm.model_zoo import REPO_ROOT, build_metafiles  # noqa: E402


def merged_config(config_rel: str) -> dict:
    from pelk_mm.config import load_config
    return load_config(osp.join(REPO_ROOT, config_rel)).to_dict()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description='Write (or --check) the model index from the configs')
    parser.add_argument('--check', action='store_true', help='only check that the files are up to date')
    args = parser.parse_args(argv)
    stale = []
    for rel, text in build_metafiles(merged_config).items():
        path = osp.join(REPO_ROOT, rel)
        current = open(path).read() if osp.isfile(path) else None
        if current == text:
            continue
        stale.append(rel)
        if not args.check:
            with open(path, 'w') as f:
                f.write(text)
    verb = 'out of date' if args.check else 'written'
    print('\n'.join(f'{verb}: {rel}' for rel in stale) or 'the model index is up to date')
    return 1 if stale and args.check else 0


if __name__ == '__main__':
    sys.exit(run_main(main))
