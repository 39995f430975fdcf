"""The channel-blocked Triton forward (:mod:`pelk_mm.ops._triton_kernels_cl`): forward and grad-input (the same
kernel on mirrored cells with flipped weights) against the float64 dense reference, for channels_last and NCHW
inputs, channel blocks of 1 to 8 (channel counts that are no multiple of the block), several row blocks and column
tiles; the default block sizes at the PeLK stage shapes; and the kernel compiles for Hopper.

On a machine without CUDA the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``, set by conftest), so the
shapes are small; tolerances as in ``test_peripheral_conv_impls`` (float64 1e-10, float32 1e-5, bfloat16 6e-2).
"""
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from pelk_mm.ops import peripheral_grid
from pelk_mm.ops import _triton_kernels_cl as cl
from pelk_mm.ops._cells import axis_cells, crop_weight, mirror_cells

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_battery():
    """The shared battery module (cases, reference); pytest's importlib mode puts no test folder on ``sys.path``."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'test_peripheral_conv_impls.py')
    spec = importlib.util.spec_from_file_location('_peripheral_conv_battery', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_battery = _load_battery()
GRID_CASES, TOL, _case_id = _battery.GRID_CASES, _battery.TOL, _battery._case_id
make, ref_conv, rel_err = _battery.make, _battery.ref_conv, _battery.rel_err
triton_interpreter = _battery.triton_interpreter  # the fixture (skips without triton / interpreter)

# K=1, a single row, K=5 (centre 3) on two images, K=13 on 7x7, K=47 on 14x13, K=101 (centre 7) on 24x9,
# asymmetric random grids (K=7, K=33)
CASES = [GRID_CASES[i] for i in (0, 1, 3, 4, 5, 8, 10, 12)]
# (BC, BH, BW, num_warps): one channel per program, channel blocks wider than C, row blocks and column tiles
# smaller than the map
TILES = [(1, 4, 8, 2), (2, 8, 4, 2), (4, 4, 2, 1), (8, 16, 8, 4)]


def _device() -> str:
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if layout == 'channels_last' else x.contiguous()


def _cells(grid, h: int, w: int):
    ch, cw = axis_cells(grid, h), axis_cells(grid, w)
    return ch, cw, (list(ch.lo), list(ch.hi), list(cw.lo), list(cw.hi))


def _forward(x: torch.Tensor, wt: torch.Tensor, grid, tiles=None) -> torch.Tensor:
    """``forward_triton_cl`` on the cells cropped to ``x``'s map, with ``tiles`` or ``cl_tiles``' choice."""
    h, w = x.shape[-2:]
    ch, cw, bounds = _cells(grid, h, w)
    if tiles is None:
        tiles = cl.cl_tiles(h, w, len(ch.lo), len(cw.lo), cw.hi[-1] - cw.lo[0] + 1)
    return cl.forward_triton_cl(x, crop_weight(wt, ch, cw).to(x.dtype).contiguous(), *bounds, *tiles)


def _check_forward(x: torch.Tensor, wt: torch.Tensor, grid, tiles, tol: float) -> None:
    y = _forward(x, wt, grid, tiles)
    layout = torch.empty_like(x).stride()  # channels_last in, channels_last out (views: their dense layout)
    assert y.shape == x.shape and y.dtype == x.dtype and y.stride() == layout, (y.shape, y.dtype, y.stride())
    err = rel_err(y, ref_conv(x.double(), wt.double(), grid))
    assert err <= tol, f'rel err {err:.2e} > {tol:.0e} (x {tuple(x.shape)} {x.dtype} {x.stride()}, tiles {tiles})'


# ------------------------------------------------------------------------------------------------ forward
@pytest.mark.parametrize('layout', ['channels_last', 'nchw'])
@pytest.mark.parametrize('index', range(len(CASES)), ids=[_case_id(c) for c in CASES])
def test_cl_forward_fp64(triton_interpreter, index, layout):
    """``cl_tiles``' block sizes and one of ``TILES`` (a different one per case)."""
    n, c, h, w, grid = CASES[index]
    x, wt = make(n, c, h, w, grid, torch.float64, seed=sum(grid))
    x, wt = _layout(x.to(_device()), layout), wt.to(_device())
    _check_forward(x, wt, grid, None, TOL[torch.float64])
    _check_forward(x, wt, grid, TILES[index % len(TILES)], TOL[torch.float64])


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('layout', ['channels_last', 'nchw'])
def test_cl_forward_fp32_bf16(triton_interpreter, dtype, layout):
    for n, c, h, w, grid in (GRID_CASES[4], GRID_CASES[13]):
        x, wt = make(n, c, h, w, grid, dtype, seed=2)
        x, wt = _layout(x.to(_device()), layout), wt.to(_device())
        _check_forward(x, wt, grid, None, TOL[dtype])


@pytest.mark.parametrize('bc', [1, 2, 4, 8])
def test_cl_channel_blocks(triton_interpreter, bc):
    """7 channels (no multiple of 2, 4 or 8: the last block is partial; with 8, one block spans fewer channels
    than it holds), two row blocks and three column tiles; channels_last, NCHW and a channel slice of a
    channels_last tensor (channel stride 1, column stride the full channel count)."""
    grid = peripheral_grid(13)
    base, wt = make(1, 9, 12, 17, grid, torch.float64, seed=11)
    base, wt = base.to(_device()), wt.to(_device())
    for x, w in ((_layout(base[:, :7], 'channels_last'), wt[:7]), (_layout(base[:, :7], 'nchw'), wt[:7]),
                 (_layout(base, 'channels_last')[:, 1:8], wt[1:8])):
        _check_forward(x, w, grid, (bc, 8, 8, 2), TOL[torch.float64])


# ------------------------------------------------------------------------------------------------ grad-input
@pytest.mark.parametrize('index', [5, 8, 10, 11, 12], ids=[_case_id(GRID_CASES[i]) for i in (5, 8, 10, 11, 12)])
def test_cl_grad_input_via_mirrored_cells(triton_interpreter, index):
    """``gx`` = the kernel on ``gy`` with the mirrored cells and the flipped weights (asymmetric random grids
    included), channels_last, equals the reference's grad-input."""
    n, c, h, w, grid = GRID_CASES[index]
    x, wt = make(n, c, h, w, grid, torch.float64, seed=5)
    gy = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    xr = x.clone().requires_grad_(True)
    (gxr,) = torch.autograd.grad(ref_conv(xr, wt, grid), (xr,), gy)
    ch, cw, _ = _cells(grid, h, w)
    mh, mw = mirror_cells(list(ch.lo), list(ch.hi)), mirror_cells(list(cw.lo), list(cw.hi))
    flipped = crop_weight(wt, ch, cw).flip(-2, -1).contiguous().to(_device())
    gy = _layout(gy.to(_device()), 'channels_last')
    tiles = cl.cl_tiles(h, w, len(mh[0]), len(mw[0]), mw[1][-1] - mw[0][0] + 1)
    for t in (tiles, (2, 8, 4, 2)):
        gx = cl.forward_triton_cl(gy, flipped, *mh, *mw, *t)
        assert gx.is_contiguous(memory_format=torch.channels_last)
        assert rel_err(gx, gxr) <= TOL[torch.float64], (t, rel_err(gx, gxr))


# ------------------------------------------------------------------------------------------------ block sizes
def _stage_cells(kernel_size: int, centre: int, size: int):
    cells = axis_cells(peripheral_grid(kernel_size, centre), size)
    return len(cells.lo), cells.hi[-1] - cells.lo[0] + 1


@pytest.mark.parametrize('kernel_size,centre,size,expected', [
    (51, 5, 56, (4, 64, 8, 8)),  # 13 x 13 cells (16 x 16 padded): 4 x 256 x 8 = 8192
    (101, 7, 56, (2, 64, 4, 8)),  # 17 x 17 cells (32 x 32 padded): 2 x 1024 x 4 = 8192
    (13, 5, 7, (4, 8, 8, 8)),  # 9 x 9 cells (16 x 16 padded) on a 7-wide map: one 8-column tile
    (3, 3, 28, (8, 32, 32, 8)),  # 3 x 3 cells: the widest blocks
])
def test_cl_tiles_at_pelk_stages(kernel_size, centre, size, expected):
    """``cl_tiles`` keeps the contraction block and the W-box sums' gather source within the register budget, and
    the padding gives every gather a source at least as large as the program's thread count."""
    g, kw = _stage_cells(kernel_size, centre, size)
    t = cl.cl_tiles(size, size, g, g, kw)
    assert tuple(t) == expected
    bwh, ghp, gwp = cl.cl_padding(t.bc, t.bw, g, g, kw, t.num_warps)
    assert t.bc * ghp * gwp * t.bw <= cl._BLOCK_ELEMS and t.bc * gwp * bwh <= cl._BLOCK_ELEMS
    assert min(t.bc * ghp * t.bw, t.bc * gwp * bwh) >= 32 * t.num_warps
    assert bwh >= t.bw + kw - 1 and ghp >= g and gwp >= g


def test_cl_padding_for_gather_lowering():
    """Tiny blocks get a longer row segment and padded H-cells so that both gather sources hold at least one
    element per thread."""
    assert cl.cl_padding(1, 2, 1, 1, 1, 4) == (64, 64, 2)
    assert cl.cl_padding(8, 8, 13, 13, 51, 8) == (64, 16, 16)


def test_cl_rejects_block_sizes_that_are_not_powers_of_two():
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match='bc must be a power of two'):
        cl.forward_triton_cl(x, torch.zeros(1, 1, 1), [0], [0], [0], [0], 3, 4, 4, 1)


# ------------------------------------------------------------------------------------------------ Hopper
COMPILE_SCRIPT = textwrap.dedent('''
    import os, sys
    sys.path.insert(0, sys.argv[1])
    import types
    pkg = types.ModuleType('pelk_mm')  # the ops alone, without the OpenMMLab stack
    pkg.__path__ = [os.path.join(sys.argv[1], 'pelk_mm')]
    sys.modules['pelk_mm'] = pkg
    import triton
    from triton.backends.compiler import GPUTarget
    from pelk_mm.ops import _triton_kernels_cl as cl, peripheral_grid
    from pelk_mm.ops._cells import axis_cells
    fn = cl.kernels().periconv_fwd_cl_kernel
    for kernel_size, centre, size, dtype in [(51, 5, 56, 'fp32'), (101, 7, 56, 'bf16'), (13, 5, 7, 'fp32'),
                                             (3, 3, 7, 'fp16')]:
        cells = axis_cells(peripheral_grid(kernel_size, centre), size)
        g, kw = len(cells.lo), cells.hi[-1] - cells.lo[0] + 1
        default = cl.cl_tiles(size, size, g, g, kw)
        # cl_tiles' choice as a channels_last launch (Triton specialises the unit channel stride) and as NCHW;
        # then a wider channel block and a wider column tile
        others = [(8, default.bh, 2, 4), (1, default.bh, 16, 4)]
        for tiles, unit_c in [(tuple(default), True), (tuple(default), False)] + [(t, True) for t in others]:
            bc, bh, bw, num_warps = tiles
            bwh, ghp, gwp = cl.cl_padding(bc, bw, g, g, kw, num_warps)
            const = dict(BC=bc, BH=bh, BW=bw, BWH=bwh, GHP=ghp, GWP=gwp, F64=False)
            if unit_c:
                const.update(sxc=1, syc=1)
            sig = {a: 'constexpr' if a in const else
                   ('*i32' if a in ('cell_ptr', 'lo_w_ptr', 'hi_w_ptr') else '*' + dtype) if a.endswith('_ptr')
                   else 'i32' for a in fn.arg_names}
            # what a launch with 16-byte aligned tensors and a multiple of 16 channels (PeLK's 96 .. 768) passes
            aligned = [a for a in fn.arg_names if a.endswith('_ptr')]
            if unit_c:
                aligned += ['C', 'sxn', 'sxh', 'sxw', 'syn', 'syh', 'syw']
            attrs = {(fn.arg_names.index(a),): [['tt.divisibility', 16]] for a in aligned}
            src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs)
            try:
                triton.compile(src, target=GPUTarget('cuda', 90, 32), options=dict(num_warps=num_warps))
            except Exception as err:
                print('FAILED', kernel_size, size, dtype, tiles, unit_c, repr(err)[-800:], flush=True)
                continue
            print('compiled', kernel_size, size, dtype, tiles, 'channels_last' if unit_c else 'nchw',
                  (bwh, ghp, gwp), flush=True)
''')


def test_cl_kernel_compiles_for_hopper(tmp_path):
    """The kernel compiles to sm_90 cubins (bundled ptxas; no GPU needed) at the PeLK stage shapes with
    ``cl_tiles``' block sizes and two other channel-block / column-tile choices, and for a tiny grid (padded
    gather sources): the interpreter does not check what
    the GPU compiler rejects (e.g. gathers from tiles smaller than a program)."""
    try:
        import triton.backends.nvidia  # noqa: F401
    except Exception as err:  # noqa: BLE001 - no CUDA backend in this triton build
        pytest.skip(f'triton has no CUDA backend here: {err}')
    script = tmp_path / 'compile.py'
    script.write_text(COMPILE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env['TRITON_CACHE_DIR'] = str(tmp_path / 'cache')
    proc = subprocess.run([sys.executable, str(script), ROOT], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert proc.stdout.count('compiled') == 16 and 'FAILED' not in proc.stdout, proc.stdout[-3000:]
