"""Write the merged dict of every config under configs/ as canonical JSON, one file per config.

    .venv/bin/python tests/data/config_dumps/dump.py            # all configs -> tests/data/config_dumps/
    .venv/bin/python tests/data/config_dumps/dump.py configs/pelk_t_in1k.py ...   # only these

``tests/test_config_recipes.py`` loads every config again and compares it with these files, so a refactor of the
configs (moved ``_base_`` fragments, shared hook lists, arch overrides) is checked to leave every recipe as it was.
A deliberate recipe change regenerates the affected files in the same commit; their diff is the change.

Which configs: every ``configs/**/*.py`` that a user passes to tools/train.py, i.e. all but the fragments under
``configs/_base_/`` (those are split and moved between files by design; each is inherited whole by some dumped
config, so its content is covered there). ``configs/ablations/_base_/*.py`` are complete configs and are dumped.

Canonical form (:func:`canonical`): ``Config.fromfile(path).to_dict()``, tuples as lists, keys sorted, two-space
indent. No key depends on the file's location (the configs use no ``{{fileDirname}}``-style variables), so none
is dropped.
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CONFIG_DIR = ROOT / 'configs'
DUMP_DIR = Path(__file__).resolve().parent


def dumped_configs():
    """The configs that get a dump: every ``configs/**/*.py`` outside ``configs/_base_/``."""
    return sorted(p for p in CONFIG_DIR.rglob('*.py') if p.relative_to(CONFIG_DIR).parts[0] != '_base_')


def dump_path(config: Path) -> Path:
    """``configs/a/b.py`` -> ``tests/data/config_dumps/a/b.json``."""
    return (DUMP_DIR / Path(config).resolve().relative_to(CONFIG_DIR)).with_suffix('.json')


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f'config value {obj!r} of type {type(obj).__name__} has no JSON form')


def merged_dict(config: Path) -> dict:
    """The config's merged dict as plain JSON types (tuples -> lists)."""
    from mmengine.config import Config
    return _plain(Config.fromfile(str(config)).to_dict())


def canonical(d: dict) -> str:
    return json.dumps(d, sort_keys=True, indent=2, allow_nan=False) + '\n'


def main(argv):
    configs = [Path(a).resolve() for a in argv] if argv else dumped_configs()
    for config in configs:
        out = dump_path(config)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(canonical(merged_dict(config)))
        print(out.relative_to(ROOT))


if __name__ == '__main__':
    main(sys.argv[1:])
