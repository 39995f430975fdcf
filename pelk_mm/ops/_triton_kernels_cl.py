"""Channel-blocked fused Triton forward of the peripheral convolution, for channels_last inputs.

Notation as in :mod:`._triton_kernels`: one plane ``x[r, j]`` of ``(n, c)``, H-cells ``a`` with offsets
``[lo_h[a], hi_h[a]]``, W-cells ``b`` with ``[lo_w[b], hi_w[b]]`` (cropped to the map, contiguous, increasing), block
weights ``w[c, a, b]``, ``R_b[r, j] = sum_{v in cell b} x[r, j + v]``, ``T_a[r] = sum_b w[a, b] R_b[r]`` and
``y[i, j] = sum_a sum_{u in cell a} T_a[i + u, j]``.

* :func:`periconv_fwd_cl_kernel <kernels>`: one program per ``(n, block of BC channels, BH-row block, BW-column
  tile)``. Every tensor carries the channel block as its leading axis, so in a channels_last tensor (channel stride
  1) each row-segment load and each output store reads/writes ``BC`` consecutive elements per column instead of one
  element every ``C``:

  - the ``(BC, BW + KW - 1)`` row segment (halo included) is loaded, prefix-summed along the columns
    (``tl.cumsum``), and every W-cell's box sum is read as the difference of two prefix values by ``tl.gather``
    into ``(BC, GWP, BW)`` (indices of :func:`._triton_kernels._cell_gather_indices`, the same for every channel);
  - the per-channel ``k' x k'`` contraction ``(BC, GHP, GWP) x (BC, GWP, BW) -> (BC, GHP, BW)`` runs in registers;
  - ``T_{cell(r - i)}[r]`` is picked by a gather along the cell axis into the ``(BC, BH, BW)`` accumulator of every
    output row ``i`` the streamed row ``r`` reaches.

  The work per output pixel is that of :func:`._triton_kernels.periconv_fwd_kernel`; the register block of the
  contraction is ``BC * GHP * GWP * BW`` elements (:func:`cl_tiles` keeps it within a budget). Strides are passed
  in, so NCHW inputs and channel-sliced views work too (with strided channel loads).
* grad-input: the same kernel on the mirrored cells with the flipped weights (:func:`._cells.mirror_cells`).

Accumulation is float32 (float64 for float64 inputs, ``F64``); channels ``>= C``, rows ``>= H``, columns ``>= W`` and
padded cells (zero weights) are masked.

NOTE: ``triton.jit`` reads ``TRITON_INTERPRET`` when it wraps a kernel, so the module imports no triton at import
time: :func:`kernels` imports triton and jits the kernels on first use (like :func:`._impl_triton.kernels`), and a
test process that sets the variable before that runs them in Triton's interpreter (on CPU tensors).
"""
from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import NamedTuple, Sequence, Tuple

import torch

from ._triton_launch import cdiv as _cdiv, cell_of as _cell_of, int_table as _int_table, next_pow2 as _next_pow2

_BLOCK_ELEMS = 8192  # elements of the (BC, k'_h, k'_w, BW) register block of the contraction
_MAX_BC = 8  # channels per program: 32 bytes of float32 per column of a channels_last row segment
_MAX_BH = 64  # output rows per program
_MAX_BW = 32  # output columns per program


# ------------------------------------------------------------------------------------------------------- kernels
# NOTE: the functions below become Triton kernels in `kernels()`, which rebinds their module-level names to the
# jitted objects; the kernel bodies resolve `tl` and each other through this module's globals (Triton's compiler and
# its interpreter both look names up there).
tl = None  # triton.language
_cell_gather_indices = None  # ._triton_kernels._cell_gather_indices: W-cell prefix positions (GWP, BW)


def _row_cell_sums_cl(row_ptr, seg_off, seg_ok, idx_hi, idx_lo, has_lo, BC: tl.constexpr, GWP: tl.constexpr,
                      BWH: tl.constexpr, F64: tl.constexpr):
    """``(BC, GWP, BW)`` W-box sums ``R_b[j0 + j]`` of one row of ``BC`` channels: the ``(BC, BWH)`` segment at
    ``row_ptr + seg_off`` (``seg_ok`` masks channels, the halo's end and the map's borders)."""
    acc_ty = tl.float64 if F64 else tl.float32
    seg = tl.load(row_ptr + seg_off, mask=seg_ok, other=0.0).to(acc_ty)
    # NOTE: prefix sums over the tile's segment only (<= BW + K - 1 values per channel) keep the rounding of the
    # differences at the level of a direct sum of the cell
    pre = tl.broadcast_to(tl.cumsum(seg, axis=1)[:, None, :], (BC, GWP, BWH))
    upper = tl.gather(pre, idx_hi, axis=2)
    lower = tl.gather(pre, idx_lo, axis=2)
    return upper - tl.where(has_lo, lower, 0.0)


def periconv_fwd_cl_kernel(x_ptr, w_ptr, y_ptr, cell_ptr, lo_w_ptr, hi_w_ptr,
                           C, H, W, GH, GW, DMIN, DMAX, LW, KW,
                           sxn, sxc, sxh, sxw, syn, syc, syh, syw,
                           BC: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, BWH: tl.constexpr,
                           GHP: tl.constexpr, GWP: tl.constexpr, F64: tl.constexpr):
    """``y = conv(x)`` for image ``n``, channels ``c0 .. c0 + BC``, ``BH`` output rows and ``BW`` output columns;
    program ``(n * cdiv(C, BC) + c0 / BC, row block, column tile)``.

    ``cell_ptr[d - DMIN]`` is the H-cell holding row offset ``d`` in ``[DMIN, DMAX]``; ``LW``/``KW`` are the first
    W offset and the W extent of the cropped kernel; ``w_ptr`` holds contiguous ``(C, GH, GW)`` weights.
    """
    acc_ty = tl.float64 if F64 else tl.float32
    n_cb = tl.cdiv(C, BC)
    pid_nc = tl.program_id(0)
    n = (pid_nc // n_cb).to(tl.int64)
    c0 = (pid_nc % n_cb) * BC
    i0 = tl.program_id(1) * BH
    j0 = tl.program_id(2) * BW
    offs_c = c0 + tl.arange(0, BC)
    offs_a = tl.arange(0, GHP)
    offs_b = tl.arange(0, GWP)
    offs_i = tl.arange(0, BH)
    offs_j = tl.arange(0, BW)
    offs_t = tl.arange(0, BWH)
    c_ok = offs_c < C
    c64 = offs_c.to(tl.int64)
    idx_hi, idx_lo, has_lo = _cell_gather_indices(lo_w_ptr, hi_w_ptr, GW, LW, BW, BWH, GWP)
    idx_hi = tl.broadcast_to(idx_hi[None, :, :], (BC, GWP, BW))
    idx_lo = tl.broadcast_to(idx_lo[None, :, :], (BC, GWP, BW))
    has_lo = tl.broadcast_to(has_lo[None, :, :], (BC, GWP, BW))
    w_mask = c_ok[:, None, None] & (offs_a < GH)[None, :, None] & (offs_b < GW)[None, None, :]
    w_off = c64[:, None, None] * (GH * GW) + (offs_a[:, None] * GW + offs_b[None, :])[None, :, :]
    wt = tl.load(w_ptr + w_off, mask=w_mask, other=0.0).to(acc_ty)
    # the row segment's offsets and mask are the same for every streamed row
    cols_t = j0 + LW + offs_t
    seg_ok = c_ok[:, None] & ((offs_t < BW + KW - 1) & (cols_t >= 0) & (cols_t < W))[None, :]
    seg_off = c64[:, None] * sxc + cols_t.to(tl.int64)[None, :] * sxw
    x_img = x_ptr + n * sxn
    acc = tl.zeros((BC, BH, BW), dtype=acc_ty)
    r_first = tl.maximum(i0 + DMIN, 0)
    r_last = tl.minimum(i0 + BH - 1 + DMAX, H - 1)
    for r in range(r_first, r_last + 1):
        rb = _row_cell_sums_cl(x_img + tl.cast(r, tl.int64) * sxh, seg_off, seg_ok, idx_hi, idx_lo, has_lo,
                               BC, GWP, BWH, F64)
        t = tl.sum(wt[:, :, :, None] * rb[:, None, :, :], axis=2)  # (BC, GHP, BW): the k' x k' contraction
        d = r - i0 - offs_i  # offset of row r seen from output row i0 + i
        seen = (d >= DMIN) & (d <= DMAX)
        cell = tl.load(cell_ptr + (d - DMIN), mask=seen, other=0)
        picked = tl.gather(t, tl.broadcast_to(cell[None, :, None], (BC, BH, BW)), axis=1)
        acc += tl.where(seen[None, :, None], picked, 0.0)
    rows = i0 + offs_i
    cols = j0 + offs_j
    ptrs = (y_ptr + n * syn + c64[:, None, None] * syc + rows.to(tl.int64)[None, :, None] * syh
            + cols.to(tl.int64)[None, None, :] * syw)
    mask = c_ok[:, None, None] & (rows < H)[None, :, None] & (cols < W)[None, None, :]
    tl.store(ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@functools.lru_cache(maxsize=None)
def kernels() -> SimpleNamespace:
    """The jitted kernels (``periconv_fwd_cl_kernel``, ``_row_cell_sums_cl``), made on first use."""
    import triton
    import triton.language as tl_module

    from ._triton_kernels import _cell_gather_indices as cell_gather_indices
    names = globals()
    names['tl'] = tl_module
    names['_cell_gather_indices'] = cell_gather_indices
    for name in ('_row_cell_sums_cl', 'periconv_fwd_cl_kernel'):
        names[name] = triton.jit(names[name])
    return SimpleNamespace(periconv_fwd_cl_kernel=names['periconv_fwd_cl_kernel'],
                           _row_cell_sums_cl=names['_row_cell_sums_cl'])


# ------------------------------------------------------------------------------------------------------- launcher
def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


class ClTiles(NamedTuple):
    """Block sizes of one launch: channels / output rows / output columns per program, and the warps."""
    bc: int
    bh: int
    bw: int
    num_warps: int


def _warps(elems: int) -> int:
    return 8 if elems >= 8192 else 4 if elems >= 2048 else 2


def cl_padding(bc: int, bw: int, gh: int, gw: int, kw: int, num_warps: int) -> Tuple[int, int, int]:
    """``(BWH, GHP, GWP)``: the row segment (tile + halo) and the padded cell counts of a launch.

    NOTE: Triton's GPU compiler fails (in its thread-locality pass) on a gather whose source holds fewer elements
    than the program has threads, as noted in :func:`._impl_triton.plan`. The H-cell pick's source
    ``(BC, GHP, BW)`` gets padded H-cells (zero weights); the W-box sums' source ``(BC, GWP, BWH)`` a longer masked
    row segment, which costs no contraction work.
    """
    threads = 32 * num_warps
    gwp = _next_pow2(gw, 2)
    bwh = max(_next_pow2(bw + kw - 1), _next_pow2(_cdiv(threads, bc * gwp)))
    ghp = max(_next_pow2(gh, 2), _next_pow2(_cdiv(threads, bc * bw)))
    return bwh, ghp, gwp


def cl_tiles(h: int, w: int, gh: int, gw: int, kw: int, block: int = _BLOCK_ELEMS) -> ClTiles:
    """Default block sizes for an ``h x w`` map, ``gh x gw`` cells and a cropped kernel ``kw`` taps wide.

    The contraction block ``BC * GHP * GWP * BW`` and the W-box sums' gather source ``BC * GWP * BWH`` stay within
    ``block`` elements. Starting from ``BC = 8`` and ``BW = min(W, 32)`` (powers of two), the column tile shrinks to
    8 first, then the channel block to 4, then both in turn (channels first) down to 1.
    """
    gwp = _next_pow2(gw, 2)
    cells = _next_pow2(gh, 2) * gwp
    bh = min(_next_pow2(h, 4), _MAX_BH)
    bc, bw = _MAX_BC, min(_next_pow2(w, 8), _MAX_BW)
    # NOTE: a wide column tile shares the KW - 1 halo columns between more outputs; a channel block of 4 or more
    # fills at least half a 32-byte sector per column of a channels_last row segment
    candidates = [(bc, bw)]
    while bw > 8:
        bw //= 2
        candidates.append((bc, bw))
    while bc > 4:
        bc //= 2
        candidates.append((bc, bw))
    while bc > 1 or bw > 1:
        if bc >= bw and bc > 1:
            bc //= 2
        else:
            bw //= 2
        candidates.append((bc, bw))

    def fits(bc_: int, bw_: int) -> bool:
        return bc_ * cells * bw_ <= block and bc_ * gwp * _next_pow2(bw_ + kw - 1) <= block

    bc, bw = next((c for c in candidates if fits(*c)), candidates[-1])
    bwh = _next_pow2(bw + kw - 1)
    num_warps = _warps(max(bc * cells * bw, bc * bh * bw, bc * gwp * bwh))
    return ClTiles(bc, bh, bw, num_warps)


def forward_triton_cl(x: torch.Tensor, w: torch.Tensor, lo_h: Sequence[int], hi_h: Sequence[int],
                      lo_w: Sequence[int], hi_w: Sequence[int], bc: int, bh: int, bw: int, num_warps: int,
                      num_stages: int = 1) -> torch.Tensor:
    """Channel-blocked fused forward: ``x`` ``(N, C, H, W)`` (any strides; coalesced for channels_last), ``w``
    ``(C, Gh, Gw)`` cropped block weights -> ``y`` in the memory format of ``x``.

    Args:
        x (torch.Tensor): Input, a CUDA tensor (or a CPU tensor under ``TRITON_INTERPRET=1``).
        w (torch.Tensor): Cropped block weights, as :func:`._impl_triton.forward_triton` takes them.
        lo_h, hi_h, lo_w, hi_w (Sequence[int]): Cropped cell bounds (:func:`._cells.axis_cells`).
        bc, bh, bw (int): Channels, output rows and output columns per program (powers of two; :func:`cl_tiles`).
        num_warps (int): Warps per program.
        num_stages (int): Software-pipelining stages of the row loop.

    Returns:
        torch.Tensor: ``torch.empty_like(x)`` filled with the convolution.
    """
    for name, v in (('bc', bc), ('bh', bh), ('bw', bw)):
        if not _is_pow2(v):
            raise ValueError(f'{name} must be a power of two (a Triton block dimension), got {name}={v}')
    N, C, H, W = x.shape
    y = torch.empty_like(x)
    if y.numel() == 0:
        return y
    gh, gw = len(lo_h), len(lo_w)
    kw = hi_w[-1] - lo_w[0] + 1
    bwh, ghp, gwp = cl_padding(bc, bw, gh, gw, kw, num_warps)
    dev = str(x.device)
    grid = (N * _cdiv(C, bc), _cdiv(H, bh), _cdiv(W, bw))
    kernels().periconv_fwd_cl_kernel[grid](
        x, w.contiguous(), y, _int_table(_cell_of(lo_h, hi_h), dev), _int_table(tuple(lo_w), dev),
        _int_table(tuple(hi_w), dev), C, H, W, gh, gw, lo_h[0], hi_h[-1], lo_w[0], kw, *x.stride(), *y.stride(),
        BC=bc, BH=bh, BW=bw, BWH=bwh, GHP=ghp, GWP=gwp, F64=x.dtype == torch.float64, num_warps=num_warps,
        num_stages=num_stages)
    return y
