"""Fused Triton kernels of the peripheral convolution (imported on first use by :mod:`._impl_triton`).

Notation: one plane ``x[r, j]`` of ``(n, c)``, H-cells ``a`` with offsets ``[lo_h[a], hi_h[a]]``, W-cells ``b`` with
``[lo_w[b], hi_w[b]]`` (cropped to the map, contiguous, increasing), block weights ``w[c, a, b]``.

* ``R_b[r, j] = sum_{v in cell b} x[r, j + v]``: W-box sums of one row. A program loads the row segment its W-tile
  needs (``BW + KW - 1`` values, the halo included), takes its prefix sums (``tl.cumsum``) and reads every cell's
  sum as the difference of two prefix values (``tl.gather``), so each cell sum costs O(1) whatever its width.
* forward ``y[i, j] = sum_a sum_{u in cell a} T_a[i + u, j]``, ``T_a[r] = sum_b w[a, b] R_b[r]``: one program per
  ``(n * C + c, BH-row block, BW-column tile)`` streams the input rows ``r`` its block sees, builds ``R`` and the
  ``k' x k'`` contraction ``T`` in registers, and adds ``T_{cell(r - i)}[r]`` into the ``(BH, BW)`` register
  accumulator of every output row ``i`` (a gather along the cell axis). Work per output pixel: ``K`` adds for the
  H-direction, ``k'^2`` FMAs and O(k') prefix differences per streamed row; nothing but ``y`` is written.
* grad-weight ``gw[a, b] = sum_{n, r, j} V_a[r, j] R_b[r, j]``, ``V_a[r] = sum_{u in cell a} gy[r - u]``: one
  program per ``(chunk of images, c, BH-row block, BW tile)`` keeps ``V`` as a running H-window sum of ``gy`` (two
  row loads per cell and row), builds ``R`` like the forward and accumulates ``V (outer) R`` in a
  ``(k', k', BW)`` register block; it writes one ``k' x k'`` partial per program. The caller sums the partials
  in a fixed order, so the result is the same bit for bit on every run (no atomics).

Loads and stores take the tensors' strides, so NCHW, channels_last and channel-sliced views are read in place.
Accumulation is float32 (float64 for float64 inputs, ``F64``).

NOTE: ``triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is defined, i.e. when this module is first imported;
:mod:`._impl_triton` imports it lazily, so a test process that sets the variable before that runs the kernels in
Triton's interpreter (on CPU tensors).
"""
import triton
import triton.language as tl


@triton.jit
def _row_cell_sums(row_ptr, sw, j0, W, LW, KW, idx_hi, idx_lo, has_lo, BW: tl.constexpr, BWH: tl.constexpr,
                   GWP: tl.constexpr, F64: tl.constexpr):
    """``(GWP, BW)`` W-box sums ``R_b[j0 + j]`` of the row at ``row_ptr`` (column stride ``sw``)."""
    acc_ty = tl.float64 if F64 else tl.float32
    offs_t = tl.arange(0, BWH)
    cols = j0 + LW + offs_t
    ok = (offs_t < BW + KW - 1) & (cols >= 0) & (cols < W)
    seg = tl.load(row_ptr + cols.to(tl.int64) * sw, mask=ok, other=0.0).to(acc_ty)
    # NOTE: prefix sums over the tile's segment only (<= BW + K - 1 values) keep the rounding of the
    # differences at the level of a direct sum of the cell
    pre = tl.broadcast_to(tl.cumsum(seg, axis=0)[None, :], (GWP, BWH))
    upper = tl.gather(pre, idx_hi, axis=1)
    lower = tl.gather(pre, idx_lo, axis=1)
    return upper - tl.where(has_lo, lower, 0.0)


@triton.jit
def _dot_operand(a, in_ty: tl.constexpr):
    """A float32 ``tl.dot`` operand: as it is for float32 inputs, rounded to bfloat16 for half inputs."""
    if in_ty == tl.float32:
        return a
    return a.to(tl.bfloat16).to(tl.float32)


@triton.jit
def _dot(a, b, acc, in_ty: tl.constexpr):
    """``a @ b (+ acc)`` in float32: exact products (``ieee``) for float32 inputs; for half inputs the operands are
    bfloat16 values, which TF32 tensor cores multiply exactly.

    NOTE: bfloat16 operands are passed as float32 with ``tf32`` precision rather than as ``tl.bfloat16``: the same
    products on the GPU, and Triton's interpreter (which misreads ``tl.bfloat16`` dot operands) computes them too,
    so the tests check the arithmetic the GPU runs."""
    if in_ty == tl.float32:
        return tl.dot(a, b, acc, input_precision='ieee', out_dtype=tl.float32)
    return tl.dot(a, b, acc, input_precision='tf32', out_dtype=tl.float32)


@triton.jit
def _cell_gather_indices(lo_w_ptr, hi_w_ptr, GW, LW, BW: tl.constexpr, BWH: tl.constexpr, GWP: tl.constexpr):
    """Prefix-sum positions of every W-cell's last tap and of the tap before its first, per output column."""
    offs_b = tl.arange(0, GWP)
    offs_j = tl.arange(0, BW)
    lo_w = tl.load(lo_w_ptr + offs_b, mask=offs_b < GW, other=LW)
    hi_w = tl.load(hi_w_ptr + offs_b, mask=offs_b < GW, other=LW)
    idx_hi = tl.minimum(offs_j[None, :] + (hi_w - LW)[:, None], BWH - 1)
    idx_lo = offs_j[None, :] + (lo_w - LW - 1)[:, None]
    has_lo = idx_lo >= 0
    return idx_hi, tl.maximum(idx_lo, 0), has_lo


@triton.jit
def periconv_fwd_kernel(x_ptr, w_ptr, y_ptr, cell_ptr, lo_w_ptr, hi_w_ptr,
                        C, H, W, GH, GW, DMIN, DMAX, LW, KW,
                        sxn, sxc, sxh, sxw, syn, syc, syh, syw,
                        BH: tl.constexpr, BW: tl.constexpr, BWH: tl.constexpr, GHP: tl.constexpr,
                        GWP: tl.constexpr, F64: tl.constexpr, DOT: tl.constexpr = False,
                        HTAIL: tl.constexpr = False):
    """``y = conv(x)`` for one ``(n, c)`` plane, ``BH`` output rows and ``BW`` output columns.

    ``cell_ptr[d - DMIN]`` is the H-cell holding row offset ``d`` in ``[DMIN, DMAX]``; ``LW``/``KW`` are the first
    W offset and the W extent of the cropped kernel.

    ``DOT``: the ``k' x k'`` contraction as ``tl.dot`` (tensor cores for half inputs, whose box sums then enter it in
    bfloat16; exact float32 products for float32 inputs). ``HTAIL``: ``GH == GHP + 1`` cells, the last one kept
    apart as a single row of ``T`` (a 17-cell grid is contracted as 16 + 1 rows instead of padded to 32).
    """
    acc_ty = tl.float64 if F64 else tl.float32
    pid_nc = tl.program_id(0)
    n = (pid_nc // C).to(tl.int64)
    c = (pid_nc % C).to(tl.int64)
    i0 = tl.program_id(1) * BH
    j0 = tl.program_id(2) * BW
    offs_a = tl.arange(0, GHP)
    offs_b = tl.arange(0, GWP)
    offs_i = tl.arange(0, BH)
    offs_j = tl.arange(0, BW)
    idx_hi, idx_lo, has_lo = _cell_gather_indices(lo_w_ptr, hi_w_ptr, GW, LW, BW, BWH, GWP)
    w_mask = (offs_a[:, None] < GH) & (offs_b[None, :] < GW)
    w_plane = w_ptr + c * GH * GW
    wt = tl.load(w_plane + offs_a[:, None] * GW + offs_b[None, :], mask=w_mask, other=0.0).to(acc_ty)
    if HTAIL:
        w_tail = tl.load(w_plane + GHP * GW + offs_b, mask=offs_b < GW, other=0.0).to(acc_ty)
    if DOT:
        wt_dot = _dot_operand(wt, x_ptr.dtype.element_ty)
    x_plane = x_ptr + n * sxn + c * sxc
    acc = tl.zeros((BH, BW), dtype=acc_ty)
    r_first = tl.maximum(i0 + DMIN, 0)
    r_last = tl.minimum(i0 + BH - 1 + DMAX, H - 1)
    for r in range(r_first, r_last + 1):
        rb = _row_cell_sums(x_plane + tl.cast(r, tl.int64) * sxh, sxw, j0, W, LW, KW, idx_hi, idx_lo, has_lo,
                            BW, BWH, GWP, F64)
        if DOT:  # (GHP, BW): the k' x k' contraction
            t = _dot(wt_dot, _dot_operand(rb, x_ptr.dtype.element_ty), None, x_ptr.dtype.element_ty)
        else:
            t = tl.sum(wt[:, :, None] * rb[None, :, :], axis=1)
        d = r - i0 - offs_i  # offset of row r seen from output row i0 + i
        seen = (d >= DMIN) & (d <= DMAX)
        cell = tl.load(cell_ptr + (d - DMIN), mask=seen, other=0)
        if HTAIL:
            t_tail = tl.sum(w_tail[:, None] * rb, axis=0)  # (BW,): the contraction row of cell GHP
            picked = tl.gather(t, tl.broadcast_to(tl.minimum(cell, GHP - 1)[:, None], (BH, BW)), axis=0)
            picked = tl.where((cell == GHP)[:, None], t_tail[None, :], picked)
        else:
            picked = tl.gather(t, tl.broadcast_to(cell[:, None], (BH, BW)), axis=0)
        acc += tl.where(seen[:, None], picked, 0.0)
    rows = i0 + offs_i
    cols = j0 + offs_j
    ptrs = y_ptr + n * syn + c * syc + rows.to(tl.int64)[:, None] * syh + cols.to(tl.int64)[None, :] * syw
    tl.store(ptrs, acc.to(y_ptr.dtype.element_ty), mask=(rows < H)[:, None] & (cols < W)[None, :])


@triton.jit
def periconv_grad_w_kernel(x_ptr, g_ptr, part_ptr, lo_h_ptr, hi_h_ptr, lo_w_ptr, hi_w_ptr,
                           N, C, H, W, GH, GW, LW, KW, SMAX, NPER,
                           sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw,
                           BH: tl.constexpr, BW: tl.constexpr, BWH: tl.constexpr, GHP: tl.constexpr,
                           GWP: tl.constexpr, F64: tl.constexpr, DOT: tl.constexpr = False):
    """Partial ``gw[c]`` (``c = pid1``) of images ``NPER * pid0 ..`` (at most ``NPER``), rows ``i0 .. i0 + BH``
    and columns ``j0 .. j0 + BW`` of row/column tile ``pid2``, into ``part_ptr[(pid0 * num_programs(2) + pid2) * C
    + c]`` (``(GH, GW)`` each).

    ``SMAX`` is the widest H-cell (the start-up window sum of ``V`` loops over it once per program). ``DOT``: each
    row's ``V R^T`` as one ``tl.dot`` into a ``(k', k')`` accumulator instead of a ``(k', k', BW)`` block of
    products (bfloat16 operands for half inputs, exact float32 products for float32).
    """
    acc_ty = tl.float64 if F64 else tl.float32
    c = tl.program_id(1).to(tl.int64)
    pid_hw = tl.program_id(2)
    n_w = tl.cdiv(W, BW)
    i0 = (pid_hw // n_w) * BH
    j0 = (pid_hw % n_w) * BW
    offs_a = tl.arange(0, GHP)
    offs_b = tl.arange(0, GWP)
    cols = j0 + tl.arange(0, BW)
    col_ok = cols < W
    col_off = cols.to(tl.int64)[None, :] * sgw
    idx_hi, idx_lo, has_lo = _cell_gather_indices(lo_w_ptr, hi_w_ptr, GW, LW, BW, BWH, GWP)
    cell_ok = offs_a < GH
    lo_h = tl.load(lo_h_ptr + offs_a, mask=cell_ok, other=0)
    hi_h = tl.load(hi_h_ptr + offs_a, mask=cell_ok, other=-1)  # padded cells are empty
    if DOT:
        acc = tl.zeros((GHP, GWP), dtype=acc_ty)
    else:
        acc = tl.zeros((GHP, GWP, BW), dtype=acc_ty)
    r_end = tl.minimum(i0 + BH, H)
    n_first = tl.program_id(0) * NPER
    for n in range(n_first, tl.minimum(n_first + NPER, N)):
        n64 = tl.cast(n, tl.int64)
        x_plane = x_ptr + n64 * sxn + c * sxc
        g_plane = g_ptr + n64 * sgn + c * sgc
        # V_a at row i0 - 1: the window sum of gy rows [i0 - 1 - hi_a, i0 - 1 - lo_a]
        v = tl.zeros((GHP, BW), dtype=acc_ty)
        for s in range(0, SMAX):
            rr = i0 - 1 - lo_h - s
            ok = (s <= hi_h - lo_h) & (rr >= 0) & (rr < H)
            v += tl.load(g_plane + rr.to(tl.int64)[:, None] * sgh + col_off, mask=ok[:, None] & col_ok[None, :],
                         other=0.0).to(acc_ty)
        for r in range(i0, r_end):
            # NOTE: a sliding window (add the row entering, drop the row leaving each cell's window) costs two
            # row loads per cell instead of the cell's width
            r_in = r - lo_h
            r_out = r - 1 - hi_h
            in_ok = cell_ok & (r_in >= 0) & (r_in < H)
            out_ok = cell_ok & (r_out >= 0) & (r_out < H)
            v += tl.load(g_plane + r_in.to(tl.int64)[:, None] * sgh + col_off,
                         mask=in_ok[:, None] & col_ok[None, :], other=0.0).to(acc_ty)
            v -= tl.load(g_plane + r_out.to(tl.int64)[:, None] * sgh + col_off,
                         mask=out_ok[:, None] & col_ok[None, :], other=0.0).to(acc_ty)
            rb = _row_cell_sums(x_plane + tl.cast(r, tl.int64) * sxh, sxw, j0, W, LW, KW, idx_hi, idx_lo,
                                has_lo, BW, BWH, GWP, F64)
            if DOT:
                in_ty = x_ptr.dtype.element_ty
                acc = _dot(_dot_operand(v, in_ty), tl.trans(_dot_operand(rb, in_ty)), acc, in_ty)
            else:
                acc += v[:, None, :] * rb[None, :, :]
    if DOT:
        part = acc
    else:
        part = tl.sum(acc, axis=2)
    tile = (tl.program_id(0) * tl.num_programs(2) + pid_hw).to(tl.int64) * C + c
    p_mask = cell_ok[:, None] & (offs_b[None, :] < GW)
    tl.store(part_ptr + tile * GH * GW + offs_a[:, None] * GW + offs_b[None, :], part, mask=p_mask)
