"""Every peripheral conv implementation vs an independent dense reference (forward, grad-input, grad-weight).

Error metric: ``max|impl - ref| / max|ref|`` against a float64 reference built here (``repeat_interleave``
expansion + ``F.conv2d``), not with the code under test. Tolerances: float64 1e-10, float32 1e-5, float16 1e-2,
bfloat16 6e-2 (half types: inputs rounded to the half type first, so only the op's own rounding is measured).
"""
import importlib.util
import json
import os
import random
import subprocess
import sys
import textwrap
import types

import pytest
import torch
import torch.nn.functional as F

from pelk_mm.ops import (autotune_cache, available_impls, clear_autotune_cache, peripheral_conv2d, peripheral_grid,
                         resolve_impl, set_autotune)
from pelk_mm.ops import _impl_cpp, peripheral_conv as pc

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}
CPU_IMPLS = ['cpp', 'box', 'fft', 'dense_cl', 'cumsum', 'dense']
HAS_TRITON = importlib.util.find_spec('triton') is not None


# ------------------------------------------------------------------------------------------------ reference
def ref_dense_kernel(weight: torch.Tensor, grid) -> torch.Tensor:
    """(C, 1, k', k') -> (C, 1, K, K) by repeating each cell ``s`` times along both axes."""
    sizes = torch.tensor(list(grid))
    return weight.repeat_interleave(sizes, dim=-1).repeat_interleave(sizes, dim=-2)


def ref_conv(x: torch.Tensor, weight: torch.Tensor, grid) -> torch.Tensor:
    k = sum(grid)
    return F.conv2d(x, ref_dense_kernel(weight, grid).to(x.dtype), padding=k // 2, groups=x.shape[1])


def random_grid(rng: random.Random, k: int):
    """Random (generally asymmetric) positive cell widths summing to the odd ``k``."""
    cells, left = [], k
    while left > 0:
        s = min(left, rng.choice([1, 1, 2, 3, 5, 8]))
        cells.append(s)
        left -= s
    return tuple(cells)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300)).item()


def check_impl(impl, x, w, grid, tol, channels_last=False):
    """Forward, grad-input and grad-weight of ``impl`` vs the float64 reference on the same (rounded) inputs."""
    x = x.detach().clone()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    y = peripheral_conv2d(x, w, grid, impl)
    assert y.shape == x.shape and y.dtype == x.dtype, (impl, y.shape, y.dtype)
    gy = torch.randn(y.shape, dtype=torch.float64).to(x.device, x.dtype)
    gx, gw = torch.autograd.grad(y, (x, w), gy)
    xr = x.detach().double().requires_grad_(True)
    wr = w.detach().double().requires_grad_(True)
    yr = ref_conv(xr, wr, grid)
    gxr, gwr = torch.autograd.grad(yr, (xr, wr), gy.double())
    for name, a, b in (('forward', y, yr), ('grad_input', gx, gxr), ('grad_weight', gw, gwr)):
        err = rel_err(a, b)
        assert err <= tol, f'{impl} {name}: rel err {err:.2e} > {tol:.0e} (x {tuple(x.shape)} {x.dtype}, grid {grid})'


def make(n, c, h, w, grid, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64).to(dtype)
    wt = torch.randn(c, 1, len(grid), len(grid), generator=g, dtype=torch.float64).to(dtype)
    return x, wt


# ------------------------------------------------------------------------------------------------ cases
_rng = random.Random(1234)
GRID_CASES = [
    # (N, C, H, W, grid): odd/even sizes, batch 1, maps smaller than the kernel, K from 3 to 101
    (1, 2, 5, 4, peripheral_grid(1, 1)),  # K = 1
    (1, 2, 1, 9, peripheral_grid(13)),  # a single row
    (1, 3, 7, 7, peripheral_grid(3, 3)),
    (2, 2, 8, 11, peripheral_grid(5, 3)),
    (1, 4, 7, 7, peripheral_grid(13)),
    (2, 3, 14, 13, peripheral_grid(47)),
    (1, 2, 12, 16, peripheral_grid(51)),  # map much smaller than the kernel
    (1, 2, 6, 5, peripheral_grid(49)),
    (1, 2, 24, 9, peripheral_grid(101, 7)),
    (1, 2, 56, 3, peripheral_grid(101)),
    (2, 2, 9, 10, random_grid(_rng, 7)),
    (1, 3, 13, 12, random_grid(_rng, 21)),
    (1, 2, 20, 17, random_grid(_rng, 33)),
    (1, 2, 11, 30, random_grid(_rng, 61)),
    (1, 1, 40, 33, random_grid(_rng, 101)),
]


def _case_id(case):
    n, c, h, w, grid = case
    return f'{n}x{c}x{h}x{w}-K{sum(grid)}-g{len(grid)}'


@pytest.mark.parametrize('impl', CPU_IMPLS)
@pytest.mark.parametrize('case', GRID_CASES, ids=_case_id)
def test_impl_matches_reference_fp64(impl, case):
    n, c, h, w, grid = case
    x, wt = make(n, c, h, w, grid, torch.float64, seed=sum(grid))
    check_impl(impl, x, wt, grid, TOL[torch.float64])


@pytest.mark.parametrize('impl', CPU_IMPLS)
@pytest.mark.parametrize('case', GRID_CASES[1::3], ids=_case_id)
def test_impl_matches_reference_fp32_channels_last(impl, case):
    n, c, h, w, grid = case
    x, wt = make(n, c, h, w, grid, torch.float32, seed=1)
    check_impl(impl, x, wt, grid, TOL[torch.float32])
    check_impl(impl, x, wt, grid, TOL[torch.float32], channels_last=True)


@pytest.mark.parametrize('impl', CPU_IMPLS)
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_impl_half_types(impl, dtype):
    for case in (GRID_CASES[2], GRID_CASES[4]):
        n, c, h, w, grid = case
        x, wt = make(n, c, h, w, grid, dtype, seed=2)
        check_impl(impl, x, wt, grid, TOL[dtype])


@pytest.mark.parametrize('impl', ['cpp', 'box', 'auto'])
def test_autocast_bf16_like_conv2d(impl):
    grid = peripheral_grid(13)
    x, wt = make(1, 3, 9, 8, grid, torch.float32, seed=3)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = peripheral_conv2d(x, wt, grid, impl)
        y_dense = peripheral_conv2d(x, wt, grid, 'dense')
    assert y.dtype == y_dense.dtype == torch.bfloat16
    ref = ref_conv(x.bfloat16().double(), wt.bfloat16().double(), grid)
    assert rel_err(y, ref) <= TOL[torch.bfloat16]


@pytest.mark.parametrize('case', [GRID_CASES[5], GRID_CASES[8], GRID_CASES[12], GRID_CASES[13]], ids=_case_id)
def test_cpp_single_gradient_paths(case):
    """With both gradients needed ``cpp`` runs one fused backward; with one, its own kernel (mirrored forward for
    grad-input, the box-summed correlation for grad-weight). All three against the float64 reference."""
    if _impl_cpp.extension() is None:
        pytest.skip(f'C++ extension unavailable: {_impl_cpp.unavailable_reason()}')
    n, c, h, w, grid = case
    x, wt = make(n, c, h, w, grid, torch.float64, seed=5)
    gy = torch.randn(n, c, h, w, dtype=torch.float64)
    xr, wr = x.clone().requires_grad_(True), wt.clone().requires_grad_(True)
    gxr, gwr = torch.autograd.grad(ref_conv(xr, wr, grid), (xr, wr), gy)
    only_x = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(peripheral_conv2d(only_x, wt, grid, 'cpp'), (only_x,), gy)
    only_w = wt.clone().requires_grad_(True)
    (gw,) = torch.autograd.grad(peripheral_conv2d(x, only_w, grid, 'cpp'), (only_w,), gy)
    both = x.clone().requires_grad_(True), wt.clone().requires_grad_(True)
    gx2, gw2 = torch.autograd.grad(peripheral_conv2d(*both, grid, 'cpp'), both, gy)
    for name, a, b in (('grad_input only', gx, gxr), ('grad_weight only', gw, gwr), ('fused grad_input', gx2, gxr),
                       ('fused grad_weight', gw2, gwr)):
        assert rel_err(a, b) <= TOL[torch.float64], (name, rel_err(a, b))


def strided_view(base: torch.Tensor, view: str) -> torch.Tensor:
    """A non-contiguous view of ``base`` (N, C, H, W): ``channels_last`` (also ``channels_last_37ch``), a channel
    slice, a channel slice of a channels_last tensor, or every other column."""
    cl = base.contiguous(memory_format=torch.channels_last)
    return {'channels_last': cl, 'channels_last_37ch': cl, 'channel_slice': base[:, 1:4],
            'channels_last_slice': cl[:, 2:5], 'strided_w': base[..., ::2]}[view]


@pytest.mark.parametrize('view', ['channels_last', 'channel_slice', 'channels_last_slice', 'strided_w',
                                  'channels_last_37ch'])
def test_cpp_reads_and_writes_any_layout(view):
    """The C++ kernels take any layout without a copy: unit-stride rows in place (the partial conv's channel split),
    channels_last through in-kernel blocks of 16 channels (37 channels: partial blocks, blocks across images);
    channels_last in -> channels_last out. Results and gradients equal the reference."""
    if _impl_cpp.extension() is None:
        pytest.skip(f'C++ extension unavailable: {_impl_cpp.unavailable_reason()}')
    grid = peripheral_grid(13)
    base, wt = make(2, 37 if view.endswith('37ch') else 6, 9, 22, grid, torch.float64, seed=6)
    x = strided_view(base, view)
    assert not x.is_contiguous()
    x.requires_grad_(True)
    w = wt[:x.shape[1]].clone().requires_grad_(True)
    y = peripheral_conv2d(x, w, grid, 'cpp')
    if view.startswith('channels_last') and not view.endswith('slice'):
        assert y.is_contiguous(memory_format=torch.channels_last)
    gy = torch.randn(y.shape, dtype=torch.float64)
    gx, gw = torch.autograd.grad(y, (x, w), gy)
    xr, wr = x.detach().contiguous().requires_grad_(True), w.detach().clone().requires_grad_(True)
    yr = ref_conv(xr, wr, grid)
    gxr, gwr = torch.autograd.grad(yr, (xr, wr), gy)
    for name, a, b in (('forward', y, yr), ('grad_input', gx, gxr), ('grad_weight', gw, gwr)):
        assert rel_err(a, b) <= TOL[torch.float64], (view, name, rel_err(a, b))


def test_pelk_stage_shape_fp32():
    """One realistic PeLK-T stage-3 shape (14x14, K=47) through every CPU implementation."""
    grid = peripheral_grid(47)
    x, wt = make(1, 16, 14, 14, grid, torch.float32, seed=4)
    for impl in CPU_IMPLS:
        check_impl(impl, x, wt, grid, TOL[torch.float32])


# ------------------------------------------------------------------------------------------------ triton
@pytest.fixture
def triton_interpreter(monkeypatch):
    if not HAS_TRITON:
        pytest.skip('triton is not installed in this environment, so its interpreter cannot run the kernels')
    if torch.cuda.is_available():
        yield  # real GPU: run the compiled kernels
        return
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    if not isinstance(tl.zeros, InterpretedFunction):
        pytest.skip('triton was imported before TRITON_INTERPRET=1 was set (conftest sets it); run tests/test_ops '
                    'in its own pytest process')
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    yield


@pytest.mark.parametrize('case,dtype', [
    ((1, 2, 5, 6, peripheral_grid(13)), torch.float64),
    ((1, 1, 4, 9, random_grid(random.Random(7), 9)), torch.float64),
    ((2, 1, 3, 3, peripheral_grid(51)), torch.float32),
], ids=['K13-fp64', 'random-fp64', 'K51-small-map-fp32'])
def test_triton_interpreter_matches_reference(triton_interpreter, case, dtype):
    n, c, h, w, grid = case
    x, wt = make(n, c, h, w, grid, dtype, seed=5)
    if torch.cuda.is_available():
        x, wt = x.cuda(), wt.cuda()
    check_impl('triton', x, wt, grid, TOL[dtype])


def test_triton_not_supported_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    grid = peripheral_grid(13)
    x, wt = make(1, 1, 5, 5, grid)
    with pytest.raises(ValueError, match="'triton' does not support"):
        peripheral_conv2d(x, wt, grid, 'triton')
    assert resolve_impl(x, wt, grid).name != 'triton'


# ------------------------------------------------------------------------------------------------ dispatcher
def test_all_impls_registered():
    assert set(CPU_IMPLS + ['triton']) <= set(available_impls())


def test_auto_picks_cpp_on_cpu_or_falls_back(monkeypatch):
    monkeypatch.delenv('PELK_MM_CONV_IMPL', raising=False)
    grid = peripheral_grid(13)
    x, wt = make(1, 2, 7, 7, grid, torch.float32)
    expected = 'cpp' if _impl_cpp.extension() is not None else 'box'
    assert resolve_impl(x, wt, grid).name == expected
    monkeypatch.setitem(_impl_cpp._state, 'tried', True)
    monkeypatch.setitem(_impl_cpp._state, 'module', None)
    assert resolve_impl(x, wt, grid).name == 'box'  # clean fallback when the extension is unavailable


def test_env_override_and_argument_precedence(monkeypatch):
    grid = peripheral_grid(13)
    x, wt = make(1, 2, 7, 7, grid)
    monkeypatch.setenv('PELK_MM_CONV_IMPL', 'fft')
    assert resolve_impl(x, wt, grid).name == 'fft'
    assert resolve_impl(x, wt, grid, 'box').name == 'box'  # explicit argument wins
    monkeypatch.setenv('PELK_MM_CONV_IMPL', 'dense')
    check_impl('auto', x, wt, grid, TOL[torch.float64])


def test_unknown_impl_errors(monkeypatch):
    grid = peripheral_grid(13)
    x, wt = make(1, 2, 7, 7, grid)
    with pytest.raises(ValueError, match="unknown peripheral conv implementation 'nope'"):
        peripheral_conv2d(x, wt, grid, 'nope')
    monkeypatch.setenv('PELK_MM_CONV_IMPL', 'bogus')
    with pytest.raises(ValueError, match="'bogus'.*PELK_MM_CONV_IMPL"):
        peripheral_conv2d(x, wt, grid)


def test_bad_inputs_error():
    grid = peripheral_grid(13)
    x, wt = make(1, 2, 7, 7, grid)
    with pytest.raises(ValueError, match='weight must have shape'):
        peripheral_conv2d(x, wt[:, :, :-1], grid)
    with pytest.raises(ValueError, match='odd kernel size'):
        peripheral_conv2d(x, wt[:, :, :2, :2], (2, 2))


def test_autotune_caches_once_per_key(monkeypatch, tmp_path):
    monkeypatch.delenv('PELK_MM_CONV_IMPL', raising=False)
    monkeypatch.setenv('PELK_MM_CACHE', str(tmp_path))  # no cache file from an earlier run
    calls = []
    real = pc._time_once
    monkeypatch.setattr(pc, '_time_once', lambda impl, *a: calls.append(impl.name) or real(impl, *a))
    clear_autotune_cache()
    set_autotune(True)
    try:
        grid = peripheral_grid(13)
        x, wt = make(1, 2, 9, 9, grid, torch.float32)
        y1 = peripheral_conv2d(x, wt, grid)
        n_timed = len(calls)
        assert n_timed > 0 and 'dense' not in calls
        cache = autotune_cache()
        key = pc.autotune_key(x, wt, grid)
        assert key[:6] == ('cpu', torch.float32, 1, 2, 9, 9) and cache[key] in available_impls()
        y2 = peripheral_conv2d(x, wt, grid)
        assert len(calls) == n_timed  # cached: no re-timing
        assert rel_err(y2, y1) < 1e-5
        peripheral_conv2d(x[:, :1], wt[:1], grid)  # new shape -> new key
        assert len(autotune_cache()) == 2
    finally:
        set_autotune(None)
        clear_autotune_cache()


def test_autotune_env_opt_in(monkeypatch):
    set_autotune(None)
    monkeypatch.setenv('PELK_MM_CONV_AUTOTUNE', '0')
    assert not pc.autotune_enabled()
    monkeypatch.setenv('PELK_MM_CONV_AUTOTUNE', '1')
    assert pc.autotune_enabled()
    monkeypatch.setenv('PELK_MM_CONV_AUTOTUNE', 'sometimes')
    with pytest.raises(ValueError, match="PELK_MM_CONV_AUTOTUNE='sometimes' is neither on nor off"):
        pc.autotune_enabled()
    monkeypatch.delenv('PELK_MM_CONV_AUTOTUNE')
    assert not pc.autotune_enabled(torch.empty(1))  # CPU: the static choice (cpp) unless asked
    assert pc.autotune_enabled(types.SimpleNamespace(device=torch.device('cuda')))  # CUDA: timed by default


FAKE_MS = {'fft': 1.0, 'box': 2.0, 'cpp': 3.0, 'dense_cl': 4.0, 'triton': 5.0, 'dense': 0.1, 'cumsum': 0.1}


def _fake_timings(monkeypatch, times, calls):
    def fake(impl, x, weight, grid, grad):
        calls.append(impl.name)
        return times[impl.name] * 1e-3
    monkeypatch.setattr(pc, '_time_once', fake)


def test_autotune_keeps_the_fastest_and_persists_it(monkeypatch, tmp_path):
    """With fake timings: the fastest timed candidate wins (never dense on CPU, never the ONNX-only cumsum), the
    choice lands in the cache file, a new process (in-process cache cleared) reads it without timing, and
    conv_impl / $PELK_MM_CONV_IMPL still force a choice."""
    monkeypatch.delenv('PELK_MM_CONV_IMPL', raising=False)
    monkeypatch.setenv('PELK_MM_CACHE', str(tmp_path))
    calls = []
    _fake_timings(monkeypatch, FAKE_MS, calls)
    clear_autotune_cache()
    set_autotune(True)
    try:
        grid = peripheral_grid(13)
        x, wt = make(1, 2, 9, 9, grid, torch.float32)
        assert resolve_impl(x, wt, grid).name == 'fft'
        assert calls and not {'dense', 'cumsum'} & set(calls)
        path = pc.autotune_cache_file(x.device)
        assert path.startswith(str(tmp_path)) and torch.__version__.split('+')[0] in path
        stored = json.load(open(path))
        assert stored == {pc._key_text(pc.autotune_key(x, wt, grid)): 'fft'}
        clear_autotune_cache()
        calls.clear()
        assert resolve_impl(x, wt, grid).name == 'fft' and calls == []  # from the file, not re-timed
        assert resolve_impl(x, wt, grid, 'box').name == 'box'
        monkeypatch.setenv('PELK_MM_CONV_IMPL', 'dense')
        assert resolve_impl(x, wt, grid).name == 'dense'
    finally:
        set_autotune(None)
        clear_autotune_cache()


AUTOTUNE_WORKER = textwrap.dedent('''
    import json, os, sys
    import torch, torch.distributed as dist
    import pelk_mm.ops.peripheral_conv as pc
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    # each rank its own cache folder and its own (fake) timings: rank 1 alone would pick box
    os.environ['PELK_MM_CACHE'] = os.path.join(sys.argv[1], f'cache{rank}')
    times = {'fft': 1.0, 'box': 2.0} if rank == 0 else {'fft': 2.0, 'box': 1.0}
    calls = []
    pc._time_once = lambda impl, x, w, g, grad: calls.append(impl.name) or times.get(impl.name, 9.0) * 1e-3
    pc.set_autotune(True)
    from pelk_mm.ops import peripheral_grid
    grid = peripheral_grid(13)
    x, w = torch.randn(1, 2, 9, 9), torch.randn(2, 1, len(grid), len(grid))
    y = pc.peripheral_conv2d(x, w, grid)
    # then a size only rank 1 sees (as multi-scale batches do): no collective, rank 0's choice, no timing
    other = pc.resolve_impl(torch.randn(3, 2, 11, 7), w, grid).name if rank == 1 else None
    json.dump(dict(choice=pc.resolve_impl(x, w, grid).name, timed=len(calls), other=other),
              open(os.path.join(sys.argv[1], f'rank{rank}.json'), 'w'))
    dist.destroy_process_group()
''')


def test_autotune_choice_is_broadcast_from_rank_0(tmp_path):
    script = tmp_path / 'worker.py'
    script.write_text(AUTOTUNE_WORKER)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env.pop('PELK_MM_CONV_IMPL', None)
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                           str(script), str(tmp_path)], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.load(open(tmp_path / f'rank{r}.json')) for r in range(2))
    assert r0['choice'] == r1['choice'] == 'fft'  # rank 0's fastest, on both ranks
    assert r0['timed'] > 0 and r1['timed'] == 0  # only rank 0 timed
    assert r1['other'] == 'fft'  # a size only one rank meets reuses the decision (no collective that could hang)
    assert (tmp_path / 'cache0' / 'autotune').is_dir() and not (tmp_path / 'cache1').exists()


# ------------------------------------------------------------------------------------------------ compile
def check_compile(impl: str, x: torch.Tensor, wt: torch.Tensor, grid, tol: float = 1e-5) -> None:
    """``torch.compile(fullgraph=True)`` of a function around the op gives the eager outputs and gradients."""
    torch._dynamo.reset()

    def f(x, w):
        return peripheral_conv2d(x * 2, w, grid, impl).sin()

    compiled = torch.compile(f, backend='aot_eager', fullgraph=True)
    xa, wa = x.clone().requires_grad_(True), wt.clone().requires_grad_(True)
    xb, wb = x.clone().requires_grad_(True), wt.clone().requires_grad_(True)
    ya, yb = compiled(xa, wa), f(xb, wb)
    ya.sum().backward()
    yb.sum().backward()
    assert rel_err(ya, yb) < tol and rel_err(xa.grad, xb.grad) < tol and rel_err(wa.grad, wb.grad) < tol


@pytest.mark.parametrize('impl', ['auto', 'box'])
def test_torch_compile_forward_backward(impl, monkeypatch):
    monkeypatch.delenv('PELK_MM_CONV_IMPL', raising=False)
    grid = peripheral_grid(13)
    check_compile(impl, *make(1, 3, 9, 8, grid, torch.float32, seed=6), grid)


def test_torch_compile_inductor_default_impl(monkeypatch):
    monkeypatch.delenv('PELK_MM_CONV_IMPL', raising=False)
    torch._dynamo.reset()
    grid = peripheral_grid(13)
    x, wt = make(1, 2, 7, 7, grid, torch.float32, seed=8)
    compiled = torch.compile(lambda x, w: peripheral_conv2d(x, w, grid) + 1)
    with torch.no_grad():
        assert rel_err(compiled(x, wt) - 1, ref_conv(x.double(), wt.double(), grid)) < 1e-5


def test_cpp_build_failure_is_reported(monkeypatch):
    monkeypatch.setenv('PELK_MM_NO_CPP_EXT', '1')
    module, reason = _impl_cpp._build()
    assert module is None and 'PELK_MM_NO_CPP_EXT' in reason
    monkeypatch.delenv('PELK_MM_NO_CPP_EXT')
    monkeypatch.setenv('CXX', 'no-such-compiler-xyz')
    module, reason = _impl_cpp._build()
    assert module is None and 'no-such-compiler-xyz' in reason


def test_benchmark_quick_smoke(tmp_path):
    """``benchmarks/bench_peripheral_conv.py --quick`` on one tiny shape writes a JSON table."""
    import json
    path = os.path.join(os.path.dirname(__file__), '..', '..', 'benchmarks', 'bench_peripheral_conv.py')
    spec = importlib.util.spec_from_file_location('bench_peripheral_conv', path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / 'pc.json'
    rows = bench.main(['--quick', '--out', str(out), '--layouts', 'NCHW', '--impls', 'auto', 'box', 'dense'])
    data = json.loads(out.read_text())
    assert {r['impl'] for r in rows} == {'dw7', 'auto', 'box', 'dense'}
    assert all(r['fwd_ms'] > 0 and r['fwd_bwd_ms'] > 0 for r in data['rows'])
    assert '| N,C,HxW,K' in data['table']
    assert all(r['paired_ratio_to_dw7_fwd_bwd'] > 0 for r in data['rows'] if r['impl'] != 'dw7')


def test_train_benchmark_smoke(tmp_path):
    """``benchmarks/bench_pelk_train.py`` runs each implementation in its own process (clean peak memory) and the
    ``--bound`` row replaces the peripheral conv by the identity."""
    import json
    import subprocess
    import sys
    path = os.path.join(os.path.dirname(__file__), '..', '..', 'benchmarks', 'bench_pelk_train.py')
    out = tmp_path / 'train.json'
    proc = subprocess.run([sys.executable, path, '--size', '64', '--batch', '1', '--iters', '1', '--threads', '1',
                           '--impls', 'auto', '--bound', '--out', str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r['impl']: r for r in json.loads(out.read_text())['rows']}
    assert set(rows) == {'auto', 'none'}
    assert all(r['step_s'] > 0 and r['peak_mb'] > 100 for r in rows.values())
    assert 'none (conv = identity: the bound)' in proc.stdout
    # --config: the demo config's backbone, image size (64) and batch size (32, here overridden to 2)
    root = os.path.join(os.path.dirname(__file__), '..', '..')
    proc = subprocess.run([sys.executable, path, '--config', os.path.join(root, 'configs/demo/pelk_demo_in1k.py'),
                           '--batch', '2', '--iters', '1', '--threads', '1', '--impls', 'auto', '--out', str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data['args']['size'] == 64 and data['args']['batch'] == 2 and data['args']['num_classes'] == 6
    assert data['args']['backbone']['arch']['kernel_sizes'] == [13, 11, 7, 5]
    # a config it cannot run fails in one line naming it
    proc = subprocess.run([sys.executable, path, '--config', os.path.join(root, 'configs/pelk_t_upernet_ade20k.py')],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and 'classification config' in proc.stderr and 'Traceback' not in proc.stderr


def test_ops_import_with_torch_alone():
    """``import pelk_mm.ops`` (and running the op) in a fresh interpreter loads no OpenMMLab module: the operator
    package works on a machine with torch (and triton) only."""
    code = ('import sys, torch\n'
            'from pelk_mm.ops import peripheral_conv2d, peripheral_grid\n'
            'g = peripheral_grid(13)\n'
            'y = peripheral_conv2d(torch.randn(1, 2, 9, 9), torch.randn(2, 1, len(g), len(g)), g, "box")\n'
            'print(sorted({m.split(".")[0] for m in sys.modules} & {"mmengine", "mmcv", "mmpretrain", "mmseg", '
            '"mmdet"}))\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == '[]', proc.stdout
