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

from pelk_mm.ops import _impl_triton, _tune_store, peripheral_conv2d, peripheral_grid
from pelk_mm.ops._cells import axis_cells

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
    total = 0
    for kernel_size, centre, size, dtype in [(51, 5, 56, 'fp32'), (101, 7, 56, 'bf16'), (3, 3, 7, 'fp16'),
                                             (13, 5, 7, 'fp32')]:
        cells = axis_cells(peripheral_grid(kernel_size, centre), size)
        g, kw = len(cells.lo), cells.hi[-1] - cells.lo[0] + 1
        for fn, pass_ in ((k.periconv_fwd_kernel, 'fwd'), (k.periconv_grad_w_kernel, 'grad_w')):
            # NOTE: every candidate at the stage-1 shapes (13 and 17 cells); the default at the small grids
            for v in it.candidates(pass_, size, size, g, g, kw)[:None if size == 56 else 1]:
                p = it.plan(v, size, size, g, g, kw)
                const = dict(BH=p.bh, BW=p.bw, BWH=p.bwh, GHP=p.ghp, GWP=p.gwp, F64=False, DOT=p.dot)
                if pass_ == 'fwd':
                    const['HTAIL'] = p.htail
                sig = {a: 'constexpr' if a in const else
                       ('*i32' if a in ('cell_ptr', 'lo_w_ptr', 'hi_w_ptr', 'lo_h_ptr', 'hi_h_ptr') else
                        '*fp32' if a == 'part_ptr' else '*' + dtype) if a.endswith('_ptr') else 'i32'
                       for a in fn.arg_names}
                src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=const)
                triton.compile(src, target=GPUTarget('cuda', 90, 32),
                               options=dict(num_warps=p.num_warps, num_stages=p.num_stages))
                total += 1
                print('compiled', pass_, kernel_size, size, dtype, v.name, flush=True)
    print('total', total)
''')


def test_triton_kernels_compile_for_hopper(tmp_path):
    """Every launch variant the tuner can pick compiles to an sm_90 cubin (bundled ptxas; no GPU needed) at PeLK's
    stage-1 shapes, the default ones for a tiny grid and stage 4: the interpreter does not check what the GPU compiler rejects (e.g. gathers from
    tiles smaller than a program, tl.dot shapes)."""
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
    lines = proc.stdout.splitlines()
    compiled = [line for line in lines if line.startswith('compiled ')]
    assert lines[-1] == f'total {len(compiled)}' and len(compiled) >= 20, proc.stdout
    names = ' '.join(compiled)
    assert '-dot' in names and '-htail' in names and ' 101 56 bf16 ' in names, names


def test_gpu_check_quick_smoke(triton_interpreter, tmp_path):
    """``benchmarks/gpu_check.py --quick`` (on CPU: the Triton kernels through the interpreter) writes the JSON with
    every part's status and time, the battery summary, the tuned variants with their roofline share, the benchmark
    rows, the training rows and the table."""
    spec = importlib.util.spec_from_file_location('gpu_check', os.path.join(ROOT, 'benchmarks', 'gpu_check.py'))
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    gpu_check.main(['--device', device, '--quick', '--out', str(tmp_path), '--impls', 'triton', 'box',
                    '--dtypes', 'float32', '--bench-dtypes', 'float32', '--train-precisions', 'float32'])
    data = json.loads((tmp_path / 'gpu_check.json').read_text())
    parts = data['parts']
    assert set(parts) == {'battery', 'variants', 'bench', 'train'}
    assert all(p['status'] in ('ok', 'skipped') and p['seconds'] >= 0 for p in parts.values()), parts
    summary = {(g['impl'], g['layout']): g for g in parts['battery']['summary']}
    assert set(summary) == {(i, layout) for i in ('triton', 'box') for layout in ('NCHW', 'channels_last')}
    assert all(g['checks'] > 0 and g['failed'] == 0 and g['worst_err_over_tol'] <= 1 for g in summary.values())
    variants = parts['variants']
    assert {r['pass_'] for r in variants['rows']} == {'fwd', 'grad_w'} and variants['checks'], variants
    assert all(c['ok'] for c in variants['checks']), variants['checks']
    for r in variants['rows']:  # every candidate timed by the tuner, the winner the fastest, its roofline share
        times = {n: t for n, t in r['candidates'].items() if isinstance(t, float)}
        assert len(times) >= 3 and r['winner'] == min(times, key=times.get) and r['failed'] == [], r
        assert r['winner_ms'] > 0 and 0 < r['roofline_share'] < 1 and r['gflops'] > 0 and r['gbytes'] > 0, r
    assert variants['peaks']['copy_gbps'] > 0 and variants['peaks']['mm_tflops']['float32'] > 0
    assert '| pass | dtype | N,C,HxW | layout | cells | winner |' in data['table']
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


# ------------------------------------------------------------------------------------------------ variants
# 9 cells (8 + 1 split) and 17 H-cells (16 + 1 split, with tl.dot) after cropping
VARIANT_CASES = [(2, 3, 9, 11, peripheral_grid(13)), (1, 2, 36, 10, peripheral_grid(101, 7))]


def _shape_args(h, w, grid):
    ch, cw = axis_cells(grid, h), axis_cells(grid, w)
    return h, w, len(ch.lo), len(cw.lo), cw.hi[-1] - cw.lo[0] + 1


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('case', VARIANT_CASES, ids=_case_id)
def test_triton_every_variant_matches_reference(triton_interpreter, case, dtype):
    """Every launch variant the tuner can pick -- tile shapes, warps, the tl.dot contraction, the 2^p + 1 H-cell
    split, the channel-blocked forward for channels_last -- gives forward, grad-input and grad-weight within the tolerance (bfloat16: the variants whose arithmetic
    differs, i.e. the tl.dot ones)."""
    n, c, h, w, grid = case
    x, wt = _make(n, c, h, w, grid, dtype, seed=11)
    shape = _shape_args(h, w, grid)
    fwd, gw = (_impl_triton.candidates(p, *shape) for p in _impl_triton.PASSES)
    assert any(v.dot for v in fwd) and any(v.dot for v in gw) and any(v.htail for v in fwd), (fwd, gw)
    if dtype != torch.float32:
        fwd, gw = [v for v in fwd if v.dot], [v for v in gw if v.dot]
    for i in range(max(len(fwd), len(gw))):
        with _impl_triton.use_variant('fwd', fwd[i % len(fwd)]), _impl_triton.use_variant('grad_w', gw[i % len(gw)]):
            check_impl('triton', x, wt, grid, TOL[dtype])
    blocked = [v for v in _impl_triton.candidates('fwd', *shape, channels_last=True) if v.bc]
    assert blocked and not any(v.bc for v in fwd)  # the channel-blocked forward: candidates for channels_last only
    if dtype == torch.float32:
        for v in blocked:
            with _impl_triton.use_variant('fwd', v):
                check_impl('triton', x, wt, grid, TOL[dtype], channels_last=True)


@pytest.fixture
def tuning(monkeypatch, tmp_path):
    """Tuning on (as on CUDA), a fresh cache directory, nothing remembered; fake timings from ``times``."""
    monkeypatch.setenv('PELK_MM_CACHE', str(tmp_path))
    monkeypatch.setenv('PELK_MM_TRITON_TUNE', '1')
    monkeypatch.delenv('PELK_MM_TRITON_VARIANT', raising=False)
    timed = []

    def fake_time_ms(launch, v, device, reps=5):
        timed.append(v.name)
        launch(v)  # a real launch: a variant that fails here is not chosen
        return 1.0 if v.dot and v.bw == 32 else 2.0

    monkeypatch.setattr(_impl_triton, '_time_ms', fake_time_ms)
    _impl_triton.clear_variant_cache()
    _tune_store.forget()
    yield timed
    _impl_triton.clear_variant_cache()
    _tune_store.forget()


def test_triton_tuner_times_every_candidate_and_keeps_the_fastest(triton_interpreter, tuning, tmp_path):
    """Every candidate is timed once per pass and shape, the fastest is used and stored in the cache file; a new
    process reads it without timing; the timings stay readable for the GPU check."""
    grid = peripheral_grid(51)
    x, wt = _make(1, 2, 20, 40, grid, torch.float32, seed=12)
    check_impl('triton', x, wt, grid, TOL[torch.float32])
    shape = _shape_args(20, 40, grid)
    expected = {p: [v.name for v in _impl_triton.candidates(p, *shape)] for p in _impl_triton.PASSES}
    assert sorted(tuning) == sorted(expected['fwd'] + expected['grad_w'])  # grad-input reuses the forward's choice
    records = _impl_triton.tuning_records()
    assert {k[0] for k in records} == {'fwd', 'grad_w'}
    for key, rec in records.items():
        assert set(rec['candidates']) == set(expected[key[0]]) and rec['how'] == 'timed'
        assert rec['winner'] == next(n for n in expected[key[0]] if '-dot' in n and '-bw32-' in n), rec
    stored = json.loads(open(_tune_store.cache_file(x.device, 'triton')).read())
    assert sorted(stored.values()) == sorted(r['winner'] for r in records.values())
    _impl_triton.clear_variant_cache()
    _tune_store.forget()
    tuning.clear()
    check_impl('triton', x, wt, grid, TOL[torch.float32])
    assert tuning == [] and all('cache file' in r['how'] for r in _impl_triton.tuning_records().values())


def test_triton_variant_forced_or_default(triton_interpreter, tuning, monkeypatch):
    """``use_variant`` and ``$PELK_MM_TRITON_VARIANT`` run a variant without timing; deterministic algorithms and
    ``$PELK_MM_TRITON_TUNE=0`` run the default; a malformed value is refused in one line naming it."""
    grid = peripheral_grid(13)
    x, wt = _make(1, 2, 9, 11, grid, torch.float32, seed=13)
    with _impl_triton.use_variant('fwd', 'bh16-bw16-w4-s3-dot'), _impl_triton.use_variant('grad_w', 'bh64-bw16-w2-s1'):
        check_impl('triton', x, wt, grid, TOL[torch.float32])
    monkeypatch.setenv('PELK_MM_TRITON_VARIANT', 'fwd=bh64-bw16-w4-s3-htail,grad_w=bh64-bw16-w4-s3-dot')
    check_impl('triton', x, wt, grid, TOL[torch.float32])
    assert tuning == [] and _impl_triton.tuning_records() == {}
    monkeypatch.delenv('PELK_MM_TRITON_VARIANT')
    torch.use_deterministic_algorithms(True)
    try:
        check_impl('triton', x, wt, grid, TOL[torch.float32])
    finally:
        torch.use_deterministic_algorithms(False)
    monkeypatch.setenv('PELK_MM_TRITON_TUNE', '0')
    check_impl('triton', x, wt, grid, TOL[torch.float32])
    assert tuning == []
    monkeypatch.setenv('PELK_MM_TRITON_VARIANT', 'bh64-bw24-w4-s3')
    with pytest.raises(ValueError, match=r"'bh64-bw24-w4-s3': bw24 must be a power of two"):
        peripheral_conv2d(x, wt, grid, 'triton')
    monkeypatch.setenv('PELK_MM_TRITON_VARIANT', 'fast')
    with pytest.raises(ValueError, match=r"'fast' is not a Triton variant name"):
        peripheral_conv2d(x, wt, grid, 'triton')
    monkeypatch.delenv('PELK_MM_TRITON_VARIANT')
    monkeypatch.setenv('PELK_MM_TRITON_TUNE', 'sometimes')
    with pytest.raises(ValueError, match=r"PELK_MM_TRITON_TUNE='sometimes' is neither on nor off"):
        peripheral_conv2d(x, wt, grid, 'triton')
