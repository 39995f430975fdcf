"""Every config still describes the recipe recorded in tests/data/config_dumps/ (see dump.py there).

``Config.fromfile(path).to_dict()`` of each config is compared with its dump after one normalisation, applied to
both sides:

* the PeLK backbone's ``arch`` / ``kernel_sizes`` / ``center_sizes`` become the effective arch
  ``PeLK.resolve_arch(arch, kernel_sizes, center_sizes)`` (the only thing the backbone builds from them), so an
  ablation may spell "PeLK-T with 1x1 centres" as ``center_sizes=[1, 1, 1, 1]`` instead of a whole arch dict;
* the top-level names in ``HOOK_PIECES`` are dropped: they are the named hooks of configs/_base_/default_runtime.py
  that configs compose ``custom_hooks`` from; no Runner or tool reads them, and what they contribute is compared
  through ``custom_hooks`` itself.

Anything else that differs fails with the first differing key paths. A deliberate recipe change regenerates the
dump (``python tests/data/config_dumps/dump.py configs/<the config>.py``) in the same commit.
"""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DUMP_DIR = ROOT / 'tests' / 'data' / 'config_dumps'
HOOK_PIECES = ('ema_hook', 'sparsity_hook', 'pelk_hooks')
MAX_SHOWN = 25


def _load_dump_module():
    spec = importlib.util.spec_from_file_location('pelk_config_dumps', DUMP_DIR / 'dump.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dump = _load_dump_module()
DUMPS = sorted(DUMP_DIR.rglob('*.json'))


def _config_of(dump_file: Path) -> Path:
    return (dump.CONFIG_DIR / dump_file.relative_to(DUMP_DIR)).with_suffix('.py')


def _normalise_backbones(node):
    if isinstance(node, dict):
        if node.get('type') == 'pelk_mm.PeLK':
            from pelk_mm.models.backbones.pelk import PeLK
            node['arch'] = PeLK.resolve_arch(node.get('arch', 'tiny'), node.pop('kernel_sizes', None),
                                             node.pop('center_sizes', None))
        for value in node.values():
            _normalise_backbones(value)
    elif isinstance(node, list):
        for value in node:
            _normalise_backbones(value)
    return node


def normalise(cfg: dict) -> dict:
    """The comparison form of a merged config dict (plain JSON types); see the module docstring."""
    cfg = json.loads(json.dumps(cfg))  # a deep copy in the dump's types
    for key in HOOK_PIECES:
        cfg.pop(key, None)
    return _normalise_backbones(cfg)


def differences(expected, actual, path=''):
    """Key paths where ``actual`` differs from ``expected``, as readable lines, in key order."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = []
        for key in sorted(set(expected) | set(actual)):
            sub = f'{path}.{key}' if path else key
            if key not in actual:
                out.append(f'{sub}: missing (recorded {json.dumps(expected[key])[:120]})')
            elif key not in expected:
                out.append(f'{sub}: not in the recorded recipe (now {json.dumps(actual[key])[:120]})')
            else:
                out.extend(differences(expected[key], actual[key], sub))
        return out
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [line for i, (e, a) in enumerate(zip(expected, actual))
                for line in differences(e, a, f'{path}[{i}]')]
    if expected != actual or type(expected) is not type(actual):
        return [f'{path}: recorded {json.dumps(expected)[:200]}, now {json.dumps(actual)[:200]}']
    return []


def test_every_config_has_a_dump():
    """A new config gets its recipe recorded; a moved or removed one is a user-facing change."""
    configs = {p.resolve() for p in dump.dumped_configs()}
    recorded = {_config_of(d).resolve() for d in DUMPS}
    rel = lambda paths: sorted(str(p.relative_to(ROOT)) for p in paths)  # noqa: E731
    assert not configs - recorded, f'configs without a dump (run dump.py on them): {rel(configs - recorded)}'
    assert not recorded - configs, f'dumps whose config is gone (user-facing paths stay): {rel(recorded - configs)}'


@pytest.mark.parametrize('dump_file', DUMPS, ids=[str(d.relative_to(DUMP_DIR).with_suffix('')) for d in DUMPS])
def test_config_matches_recorded_recipe(dump_file):
    config = _config_of(dump_file)
    assert config.is_file(), f'{config.relative_to(ROOT)} is gone but {dump_file.relative_to(ROOT)} records it'
    recorded = json.loads(dump_file.read_text())
    found = differences(normalise(recorded), normalise(dump.merged_dict(config)))
    shown = '\n  '.join(found[:MAX_SHOWN]) + (f'\n  ... and {len(found) - MAX_SHOWN} more' if len(found) > MAX_SHOWN
                                               else '')
    assert not found, (f'{config.relative_to(ROOT)} no longer gives the recipe of {dump_file.relative_to(ROOT)} '
                       f'({len(found)} differences):\n  {shown}')


def test_differences_name_the_key_path():
    """The comparison sees a changed lr, a changed hook momentum, a dropped hook and a new key."""
    recorded = normalise(json.loads((DUMP_DIR / 'pelk_t_in1k.json').read_text()))
    changed = json.loads(json.dumps(recorded))
    changed['optim_wrapper']['optimizer']['lr'] = 1e-3
    changed['custom_hooks'][0]['momentum'] = 2e-4
    changed['custom_hooks'].pop()
    changed['extra'] = 1
    found = differences(recorded, changed)
    assert found[0].startswith('custom_hooks: recorded [')  # list of another length: shown whole
    assert any(line.startswith('optim_wrapper.optimizer.lr: recorded 0.004, now 0.001') for line in found)
    assert any(line.startswith('extra: not in the recorded recipe') for line in found)
    changed['custom_hooks'] = json.loads(json.dumps(recorded['custom_hooks']))
    changed['custom_hooks'][0]['momentum'] = 2e-4
    assert 'custom_hooks[0].momentum: recorded 0.0001, now 0.0002' in differences(recorded, changed)


def test_arch_normalisation_is_the_effective_arch():
    """``center_sizes=[1, 1, 1, 1]`` on arch 'tiny' compares equal to the spelled-out arch dict, and only to it."""
    spelled = {'type': 'pelk_mm.PeLK', 'arch': {'depths': [3, 3, 9, 3], 'channels': [124, 249, 499, 998],
                                                'kernel_sizes': [51, 49, 47, 13], 'center_sizes': [1, 1, 1, 1]}}
    override = {'type': 'pelk_mm.PeLK', 'arch': 'tiny', 'center_sizes': [1, 1, 1, 1]}
    assert not differences(normalise({'model': {'backbone': spelled}}), normalise({'model': {'backbone': override}}))
    other = {'type': 'pelk_mm.PeLK', 'arch': 'tiny', 'center_sizes': [3, 3, 3, 3]}
    assert differences(normalise({'model': {'backbone': spelled}}), normalise({'model': {'backbone': other}}))
