"""The package's layers (docs/architecture.md): every module imports only its own layer or the ones below, there
is no import cycle, the exception classes live in ``pelk_mm.errors``, ``pelk_mm.ops`` runs on torch alone and the
backbone on torch + mmengine. Imports are read from the source (ast), nothing is executed, except for the two
fresh-interpreter checks at the end."""
import ast
import os
import os.path as osp
import subprocess
import sys
import textwrap
from typing import Dict, List, Set, Tuple

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PACKAGE = osp.join(ROOT, 'pelk_mm')

#: layer of each part of the package (the longest matching prefix wins), lowest first
LAYERS = {
    'pelk_mm.errors': 0, 'pelk_mm.version': 0,
    'pelk_mm.ops': 1,
    'pelk_mm.registry': 2, 'pelk_mm.checkpoint': 2, 'pelk_mm.compat': 2, 'pelk_mm.config': 2,
    'pelk_mm.models': 3,
    'pelk_mm.engine': 4, 'pelk_mm.datasets': 4,
    'pelk_mm.analysis': 5, 'pelk_mm.deploy': 5, 'pelk_mm.deploy_tasks': 5,
    'pelk_mm.apis': 6,
    'pelk_mm': 7,  # the package entry point (custom_imports=['pelk_mm']): registers everything
}
LAYER_NAMES = ['errors', 'ops', 'runtime', 'models', 'engine', 'analysis', 'launcher', 'entry point']


def module_files() -> Dict[str, str]:
    """``{dotted module name: file}`` of every module of the package."""
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith('.py'):
                continue
            rel = osp.relpath(osp.join(folder, name), ROOT)[:-3].replace(os.sep, '.')
            out[rel[:-len('.__init__')] if rel.endswith('.__init__') else rel] = osp.join(folder, name)
    return out


def layer_of(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + '.')), key=len)
    return LAYERS[best]


def imports_of(module: str, path: str, modules: Set[str]) -> List[Tuple[str, int]]:
    """``(imported pelk_mm module, line)`` of every import in the file, at any depth (lazy imports count too)."""
    is_package = path.endswith('__init__.py')
    package = module if is_package else module.rpartition('.')[0]
    found = []
    for node in ast.walk(ast.parse(open(path).read(), path)):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) - (node.level - 1)]
                base = '.'.join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ''
            # ``from pkg import name``: the submodule pkg.name if it is one, else a name of pkg itself
            subs = [f'{base}.{alias.name}' for alias in node.names]
            targets = [t for t in subs if t in modules]
            if len(targets) < len(subs):
                targets.append(base)
        for target in targets:
            if target.split('.')[0] != 'pelk_mm':
                continue
            while target not in modules and '.' in target:
                target = target.rpartition('.')[0]
            if target in modules and target != module and (target, node.lineno) not in found:
                found.append((target, node.lineno))
    return found


def import_graph() -> Dict[str, List[Tuple[str, int]]]:
    files = module_files()
    return {m: imports_of(m, f, set(files)) for m, f in files.items()}


def test_every_module_has_a_layer():
    for module in module_files():
        assert layer_of(module) is not None, module


def test_imports_go_down_only():
    upward = []
    for module, targets in import_graph().items():
        for target, line in targets:
            if layer_of(target) > layer_of(module) and not module.startswith(target + '.'):
                upward.append(f'{module}:{line} imports {target} ({LAYER_NAMES[layer_of(module)]} -> '
                              f'{LAYER_NAMES[layer_of(target)]})')
    assert not upward, 'imports that go up a layer:\n' + '\n'.join(upward)


def test_no_import_cycles():
    graph = {m: sorted({t for t, _ in targets}) for m, targets in import_graph().items()}
    # NOTE: a package's __init__ importing its own submodules is how packages export; a submodule importing its
    # parent package back would close a cycle and is checked like any other edge
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, f'import cycles: {cycles}'


def test_the_layer_check_catches_an_upward_and_a_cyclic_import(tmp_path):
    """The checks above are not vacuous: an ops module that imports the models, and two modules that import each
    other, are found."""
    modules = {'pelk_mm.ops.bad', 'pelk_mm.models', 'pelk_mm.config', 'pelk_mm.checkpoint'}
    bad = tmp_path / 'bad.py'
    bad.write_text('def f():\n    from pelk_mm.models import PeLK\n')
    (target, line), = imports_of('pelk_mm.ops.bad', str(bad), modules)
    assert (target, line) == ('pelk_mm.models', 2) and layer_of(target) > layer_of('pelk_mm.ops.bad')
    a = tmp_path / 'config.py'
    a.write_text('from .checkpoint import x\n')
    assert imports_of('pelk_mm.config', str(a), modules) == [('pelk_mm.checkpoint', 1)]


def test_every_exception_class_is_in_the_errors_module():
    stray = []
    for module, path in module_files().items():
        if module == 'pelk_mm.errors':
            continue
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b) for b in node.bases]
                if node.name.endswith(('Error', 'Exception')) or any(
                        b.endswith(('Error', 'Exception')) for b in bases):
                    stray.append(f'{module}:{node.lineno} class {node.name}({", ".join(bases)})')
    assert not stray, 'exception classes outside pelk_mm.errors:\n' + '\n'.join(stray)


def test_errors_is_a_leaf():
    path = module_files()['pelk_mm.errors']
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or '']
            assert all(n.split('.')[0] in ('__future__', 'typing') for n in names), ast.unparse(node)


BLOCK_OPENMMLAB = textwrap.dedent('''
    import importlib.abc, sys

    class Absent(importlib.abc.MetaPathFinder):
        """The packages a bare GPU machine lacks."""
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in {BLOCKED}:
                raise ImportError(f'{name} is not installed here')
            return None

    sys.meta_path.insert(0, Absent())
''')


def run_fresh(code: str, blocked: Tuple[str, ...]) -> subprocess.CompletedProcess:
    script = BLOCK_OPENMMLAB.replace('{BLOCKED}', repr(set(blocked))) + textwrap.dedent(code)
    return subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ops_run_with_torch_alone():
    r = run_fresh('''
        import torch
        from pelk_mm.ops import peripheral_conv2d, peripheral_grid
        grid = peripheral_grid(13, 5)
        y = peripheral_conv2d(torch.randn(1, 2, 9, 9), torch.randn(2, 1, len(grid), len(grid)), grid, 'box')
        assert y.shape == (1, 2, 9, 9)
        assert not any(m.split('.')[0] in ('mmengine', 'mmcv') for m in sys.modules), sorted(sys.modules)
        print('ok')
    ''', ('mmengine', 'mmcv', 'mmpretrain', 'mmseg', 'mmdet'))
    assert r.returncode == 0 and r.stdout.strip().endswith('ok'), r.stderr[-3000:]


def test_backbone_builds_and_trains_with_torch_and_mmengine_alone():
    r = run_fresh('''
        import torch
        from pelk_mm.models import PeLK
        m = PeLK(arch=dict(depths=[1, 1], channels=[8, 16], kernel_sizes=[13, 7]), drop_path_rate=0.1,
                 conv_norm_cfg=dict(type='SyncBN'))
        m(torch.randn(2, 3, 32, 32))[0].sum().backward()
        assert not any(n.split('.')[0] in ('mmcv', 'mmpretrain', 'mmseg', 'mmdet') for n in sys.modules)
        print('ok')
    ''', ('mmcv', 'mmpretrain', 'mmseg', 'mmdet'))
    assert r.returncode == 0 and r.stdout.strip().endswith('ok'), r.stderr[-3000:]


@pytest.mark.parametrize('norm_cfg', [dict(type='BN'), dict(type='SyncBN', momentum=0.01), dict(type='GN', num_groups=2),
                                      dict(type='BN', requires_grad=False)])
def test_build_norm_matches_mmcv(norm_cfg):
    """The backbone's own norm builder gives the layers mmcv's ``build_norm_layer`` gives (class, settings, state),
    so checkpoints and numbers are those of mmcv-built models."""
    import torch
    from mmcv.cnn import build_norm_layer

    from pelk_mm.models.layers import build_norm
    ours, theirs = build_norm(norm_cfg, 8), build_norm_layer(norm_cfg, 8)[1]
    assert type(ours) is type(theirs)
    assert ours.extra_repr() == theirs.extra_repr()
    assert [p.requires_grad for p in ours.parameters()] == [p.requires_grad for p in theirs.parameters()]
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        assert torch.equal(a, b)


def test_drop_path_matches_mmcv():
    import torch
    from mmcv.cnn.bricks import DropPath as MmcvDropPath

    from pelk_mm.models.layers import DropPath
    x = torch.randn(64, 4, 3, 3)
    ours, theirs = DropPath(0.3).train(), MmcvDropPath(0.3).train()
    torch.manual_seed(0)
    a = ours(x)
    torch.manual_seed(0)
    assert torch.equal(a, theirs(x)) and not torch.equal(a, x)
    assert torch.equal(ours.eval()(x), x)
