"""The fused Triton kernels: the full battery (as every other implementation), layouts read in place, no
``k'``-times intermediate, bit-identical grad-weight, kernels that compile for Hopper, and the GPU check script.

On a machine without CUDA the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set by conftest), so the
shapes are small; tolerances as in ``test_peripheral_conv_impls`` (float64 1e-10, float32 1e-5, float16 1e-2,
bfloat16 6e-2 against an independent float64 dense reference).
"""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pelk_mm.ops import _impl_triton, peripheral_conv2d, peripheral_grid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_battery():
    """The shared battery module (cases, reference, checker); pytest's importlib mode puts no test folder on
    ``sys.path``."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'test_peripheral_conv_impls.py')
    spec = importlib.util.spec_from_file_location('_peripheral_conv_battery', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_battery = _load_battery()
GRID_CASES, TOL, _case_id = _battery.GRID_CASES, _battery.TOL, _battery._case_id
check_impl, make, ref_conv, rel_err = _battery.check_impl, _battery.make, _battery.ref_conv, _battery.rel_err
triton_interpreter = _battery.triton_interpreter  # the fixture (skips without triton / interpreter)


def _device() -> str:
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def _make(*args, **kwargs):
    x, wt = make(*args, **kwargs)
    return x.to(_device()), wt.to(_device())


# ------------------------------------------------------------------------------------------------ battery
@pytest.mark.parametrize('case', GRID_CASES, ids=_case_id)
def test_triton_matches_reference_fp64(triton_interpreter, case):
    n, c, h, w, grid = case
    x, wt = _make(n, c, h, w, grid, torch.float64, seed=sum(grid))
    check_impl('triton', x, wt, grid, TOL[torch.float64])


@pytest.mark.parametrize('case', GRID_CASES[1::3], ids=_case_id)
def test_triton_fp32_nchw_and_channels_last(triton_interpreter, case):
    n, c, h, w, grid = case
    x, wt = _make(n, c, h, w, grid, torch.float32, seed=1)
    check_impl('triton', x, wt, grid, TOL[torch.float32])
    check_impl('triton', x, wt, grid, TOL[torch.float32], channels_last=True)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_triton_half_types(triton_interpreter, dtype):
    for case in (GRID_CASES[2], GRID_CASES[4]):
        n, c, h, w, grid = case
        x, wt = _make(n, c, h, w, grid, dtype, seed=2)
        check_impl('triton', x, wt, grid, TOL[dtype])
        check_impl('triton', x, wt, grid, TOL[dtype], channels_last=True)


def test_triton_row_blocks_and_image_chunks(triton_interpreter, monkeypatch):
    """A map taller than one row block (70 > 64 rows: halo rows shared by two blocks, the grad-weight window sum
    started mid-map) and several column tiles; grad-weight with all images in one program."""
    grid = peripheral_grid(13)
    x, wt = _make(2, 1, 70, 37, grid, torch.float64, seed=3)
    monkeypatch.setattr(_impl_triton, '_GRAD_W_PROGRAMS', 1)
    check_impl('triton', x, wt, grid, TOL[torch.float64])


@pytest.mark.parametrize('view', ['channels_last', 'channel_slice', 'channels_last_slice', 'strided_w'])
def test_triton_reads_views_in_place(triton_interpreter, view):
    """Views go to the kernels as they are (strides passed in): results and gradients equal the reference, and a
    channels_last input gives a channels_last output."""
    grid = peripheral_grid(13)
    base, wt = _make(2, 6, 9, 22, grid, torch.float64, seed=6)
    x = _battery.strided_view(base, view)
    assert not x.is_contiguous()
    x.requires_grad_(True)
    w = wt[:x.shape[1]].clone().requires_grad_(True)
    y = peripheral_conv2d(x, w, grid, 'triton')
    if view == 'channels_last':
        assert y.is_contiguous(memory_format=torch.channels_last)
    gy = torch.randn(y.shape, dtype=torch.float64, device=y.device)
    gx, gw = torch.autograd.grad(y, (x, w), gy)
    xr, wr = x.detach().contiguous().requires_grad_(True), w.detach().clone().requires_grad_(True)
    gxr, gwr = torch.autograd.grad(ref_conv(xr, wr, grid), (xr, wr), gy)
    for name, a, b in (('forward', y, ref_conv(xr, wr, grid)), ('grad_input', gx, gxr), ('grad_weight', gw, gwr)):
        assert rel_err(a, b) <= TOL[torch.float64], (view, name, rel_err(a, b))


# ------------------------------------------------------------------------------------------------ structure
class _CopyRecorder(TorchDispatchMode):
    """Records the aten ops that copy a tensor of ``numel`` elements (what a ``.contiguous()`` of the input is)."""

    COPIES = ('clone', 'copy_', '_to_copy', 'contiguous')

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.copies = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split('.')[0]
        if name in self.COPIES and any(isinstance(a, torch.Tensor) and a.numel() == self.numel for a in args):
            self.copies.append(str(func))
        return func(*args, **(kwargs or {}))


def test_triton_channels_last_without_layout_copy(triton_interpreter):
    """Forward and both gradients of a channels_last input: no op copies an input-sized tensor, and the output and
    grad-input stay channels_last."""
    grid = peripheral_grid(13)
    x, wt = _make(2, 5, 9, 11, grid, torch.float32, seed=4)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    w = wt.clone().requires_grad_(True)
    gy = torch.randn_like(x)
    rec = _CopyRecorder(x.numel())
    with rec:
        y = peripheral_conv2d(x, w, grid, 'triton')
        gx, gw = torch.autograd.grad(y, (x, w), gy)
    assert rec.copies == [], rec.copies
    assert y.is_contiguous(memory_format=torch.channels_last) and gx.is_contiguous(memory_format=torch.channels_last)


def _peak_cpu_bytes(fn) -> int:
    """Peak of the running sum of allocations minus frees through torch's CPU allocator during ``fn`` (each op's
    own allocations, the ops inside a custom op included)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cur = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        cur += e.cpu_memory_usage if e.name == '[memory]' else e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak


def test_triton_no_kprime_times_intermediate(triton_interpreter):
    """With 13 x 13 cells on a 28 x 28 map, a (N C, H, k', W) intermediate would be 13 times the input; the fused
    forward allocates the output and the cell tables only, the backward the two gradients and the small partials."""
    if torch.cuda.is_available():
        pytest.skip('measures torch CPU allocations (the GPU check measures CUDA peak memory)')
    grid = peripheral_grid(51)
    x, wt = make(2, 3, 28, 28, grid, torch.float32, seed=7)
    x.requires_grad_(True)
    w = wt.clone().requires_grad_(True)
    peripheral_conv2d(x.detach(), w.detach(), grid, 'triton')  # first call: kernel module import, tables

    def fwd():
        with torch.no_grad():
            peripheral_conv2d(x, w, grid, 'triton')

    def fwd_bwd():
        torch.autograd.grad(peripheral_conv2d(x, w, grid, 'triton'), (x, w), torch.ones_like(x))

    nbytes = x.numel() * x.element_size()
    assert _peak_cpu_bytes(fwd) <= 1.5 * nbytes
    assert _peak_cpu_bytes(fwd_bwd) <= 4.5 * nbytes  # y, grad-y, grad-x + partials (k' times would be >= 13)


def test_triton_grad_weight_bit_identical(triton_interpreter):
    """Two runs give the same bits: grad-weight partials are summed in a fixed order (no atomics)."""
    grid = peripheral_grid(13)
    x, wt = _make(3, 2, 12, 40, grid, torch.float32, seed=8)
    gy = torch.randn_like(x)
    runs = []
    for _ in range(2):
        xx, ww = x.clone().requires_grad_(True), wt.clone().requires_grad_(True)
        y = peripheral_conv2d(xx, ww, grid, 'triton')
        runs.append((y, *torch.autograd.grad(y, (xx, ww), gy)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_triton_torch_compile(triton_interpreter):
    """Both custom ops (forward, grad-weight) trace as opaque nodes with their fake kernels."""
    grid = peripheral_grid(13)
    _battery.check_compile('triton', *_make(1, 2, 9, 8, grid, torch.float32, seed=9), grid, tol=1e-6)


COMPILE_SCRIPT = textwrap.dedent('''
    import os, sys
    sys.path.insert(0, sys.argv[1])
    import types
    pkg = types.ModuleType('pelk_mm')  # the ops alone, without the OpenMMLab stack
    pkg.__path__ = [os.path.join(sys.argv[1], 'pelk_mm')]
    sys.modules['pelk_mm'] = pkg
    import triton
    from triton.backends.compiler import GPUTarget
    from pelk_mm.ops import _impl_triton as it, peripheral_grid
    from pelk_mm.ops._cells import axis_cells
    k = it.kernels()
    for kernel_size, centre, size, dtype in [(51, 5, 56, 'fp32'), (101, 7, 56, 'bf16'), (3, 3, 7, 'fp16'),
                                             (13, 5, 7, 'fp32')]:
        cells = axis_cells(peripheral_grid(kernel_size, centre), size)
        g, kw = len(cells.lo), cells.hi[-1] - cells.lo[0] + 1
        for fn, block in ((k.periconv_fwd_kernel, it._BLOCK_ELEMS),
                          (k.periconv_grad_w_kernel, it._GRAD_W_BLOCK_ELEMS)):
            t = it.tiles(size, size, g, g, kw, block)
            const = dict(BH=t.bh, BW=t.bw, BWH=t.bwh, GHP=t.ghp, GWP=t.gwp, F64=False)
            sig = {a: 'constexpr' if a in const else
                   ('*i32' if a in ('cell_ptr', 'lo_w_ptr', 'hi_w_ptr', 'lo_h_ptr', 'hi_h_ptr') else
                    '*fp32' if a == 'part_ptr' else '*' + dtype) if a.endswith('_ptr') else 'i32'
                   for a in fn.arg_names}
            src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=const)
            triton.compile(src, target=GPUTarget('cuda', 90, 32), options=dict(num_warps=t.num_warps))
            print('compiled', fn.fn.__name__, kernel_size, size, dtype, tuple(t), flush=True)
''')


def test_triton_kernels_compile_for_hopper(tmp_path):
    """The kernels compile to sm_90 cubins (bundled ptxas; no GPU needed) at PeLK stage shapes and for a tiny grid:
    the interpreter does not check what the GPU compiler rejects (e.g. gathers from tiles smaller than a program)."""
    try:
        import triton.backends.nvidia  # noqa: F401
    except Exception as err:  # noqa: BLE001 - no CUDA backend in this triton build
        pytest.skip(f'triton has no CUDA backend here: {err}')
    script = tmp_path / 'compile.py'
    script.write_text(COMPILE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env['TRITON_CACHE_DIR'] = str(tmp_path / 'cache')
    proc = subprocess.run([sys.executable, str(script), ROOT], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert proc.stdout.count('compiled') == 8, proc.stdout


def test_gpu_check_quick_smoke(triton_interpreter, tmp_path):
    """``benchmarks/gpu_check.py --quick`` (on CPU: the Triton kernels through the interpreter) writes the JSON with
    every part's status and time, the battery summary, the benchmark rows, the training rows and the table."""
    spec = importlib.util.spec_from_file_location('gpu_check', os.path.join(ROOT, 'benchmarks', 'gpu_check.py'))
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    gpu_check.main(['--device', device, '--quick', '--out', str(tmp_path), '--impls', 'triton', 'box',
                    '--dtypes', 'float32', '--bench-dtypes', 'float32', '--train-precisions', 'float32'])
    data = json.loads((tmp_path / 'gpu_check.json').read_text())
    parts = data['parts']
    assert set(parts) == {'battery', 'bench', 'train'}
    assert all(p['status'] in ('ok', 'skipped') and p['seconds'] >= 0 for p in parts.values()), parts
    summary = {(g['impl'], g['layout']): g for g in parts['battery']['summary']}
    assert set(summary) == {(i, layout) for i in ('triton', 'box') for layout in ('NCHW', 'channels_last')}
    assert all(g['checks'] > 0 and g['failed'] == 0 and g['worst_err_over_tol'] <= 1 for g in summary.values())
    bench = parts['bench']['rows']
    assert {r['impl'] for r in bench} >= {'dw7', 'triton', 'box', 'auto'} and not parts['bench']['errors']
    assert all(r['fwd_ms'] > 0 and r['fwd_bwd_ms'] > 0 and 'speedup_vs_dense_same_layout_fwd_bwd' in r for r in bench)
    if parts['train']['status'] == 'ok':
        assert {r['net'] for r in parts['train']['rows']} == {'PeLK-T', 'ConvNeXt-T-like'}
        assert all(r['img_per_s'] > 0 for r in parts['train']['rows'])
    else:
        assert 'backbone cannot be imported' in parts['train']['reason']
    assert data['table'].startswith('| part | status | s | result |') and '| impl | dtype | layout |' in data['table']


def test_triton_support_check_does_no_package_lookup(monkeypatch):
    """The support check runs inside ``torch.compile`` traces; torch 2.11's dynamo cannot trace
    ``importlib.util.find_spec``, so the check answers from what was found at import."""
    expected = importlib.util.find_spec('triton') is not None

    def no_lookup(*args, **kwargs):
        raise AssertionError('find_spec called at run time')

    monkeypatch.setattr(importlib.util, 'find_spec', no_lookup)
    assert _impl_triton.triton_available() is expected
