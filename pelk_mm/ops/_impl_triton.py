"""Triton implementation (CUDA; on CPU only through the interpreter, ``TRITON_INTERPRET=1``, for tests).

Fused kernels (:mod:`._triton_kernels`), no ``K x K`` loop and no ``k'``-times intermediate in memory:

* forward: one kernel, one program per ``(n * C + c, row block, column tile)``: input rows streamed with their halo,
  W-cell box sums from prefix sums (O(1) per cell), the ``k' x k'`` contraction and the H-cell box sums in
  registers; only ``y`` is written.
* grad-input: the same kernel on the mirrored cells with the flipped weights.
* grad-weight: one kernel writing a ``k' x k'`` float32 partial per program (a chunk of images x a row/column tile
  of one channel), summed over the programs in a fixed order (``torch.sum`` over the partials): the same bits on
  every run.

Launch variants. Each pass runs as one :class:`Variant`: rows and columns per program, warps, pipelining stages, the
``k' x k'`` contraction as ``tl.dot`` (tensor cores for half inputs) or as FMAs, and for ``2^p + 1`` H-cells (9, 17)
the last cell kept apart instead of padding the cells to the next power of two, and for channels_last inputs the
channel-blocked forward (:mod:`._triton_kernels_cl`). On CUDA, the first call of a pass
for a ``(dtype, shape, layout, cells)`` times every candidate of :func:`candidates` (the default first), keeps the
fastest in memory and in a cache file beside the implementation choices (:mod:`._tune_store`), and logs it; the
timings stay readable through :func:`tuning_records`. ``$PELK_MM_TRITON_TUNE=0`` or
``torch.use_deterministic_algorithms(True)`` (which wins over the variable) keep the default variant; ``$PELK_MM_TRITON_VARIANT`` or
:func:`use_variant` force one. On CPU (the interpreter) the default runs unless a variant is forced.

Accumulation is float32 for float32/bfloat16/float16 inputs and float64 for float64. The kernels read and write
through the tensors' strides: NCHW, channels_last and channel slices are used in place, and the output has the
memory format of the input (``torch.empty_like``). The ops are ``torch.library`` custom ops, so ``torch.compile``
treats each as one opaque node.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import re
import time
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence

import torch

from . import _tune_store
from ._cells import axis_cells, crop_weight, mirror_cells, save_cells_context
from ._triton_launch import cdiv as _cdiv, cell_of as _cell_of, int_table as _int_table, next_pow2 as _next_pow2

logger = logging.getLogger(__name__)

_BLOCK_ELEMS = 8192  # elements of the forward's (k'_h, k'_w, BW) register block of the contraction
_GRAD_W_BLOCK_ELEMS = 4096  # grad-weight: the (k'_h, k'_w, BW) accumulator and its update are both live
_MAX_BH = 64  # output rows per program
_MAX_BW = 32  # output columns per program (the default variant)
_GRAD_W_PROGRAMS = 1024  # grad-weight: images per program chosen so that about this many programs run
TUNE_ENV_VAR = 'PELK_MM_TRITON_TUNE'
VARIANT_ENV_VAR = 'PELK_MM_TRITON_VARIANT'
PASSES = ('fwd', 'grad_w')  # the forward kernel also runs grad-input (mirrored cells, flipped weights)


# NOTE: looked up once at import: `supports()` runs inside torch.compile traces, and torch 2.11's dynamo refuses to
# trace `importlib.util.find_spec` (a fullgraph compile would fail on it)
_TRITON_FOUND = importlib.util.find_spec('triton') is not None


def triton_available() -> bool:
    """Whether the ``triton`` package can be imported."""
    return _TRITON_FOUND


def interpreter_mode() -> bool:
    """``TRITON_INTERPRET=1``: kernels run on CPU tensors through Triton's interpreter (slow; for tests)."""
    return os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')


def kernels():
    """The kernel module, imported on first use (``triton.jit`` reads ``TRITON_INTERPRET`` at that import)."""
    return importlib.import_module('._triton_kernels', __package__)


# ------------------------------------------------------------------------------------------------------ variants
class Variant(NamedTuple):
    """A launch configuration of one kernel: the upper bounds of the output rows / columns per program (cut to the
    map), warps, software-pipelining stages, the ``tl.dot`` contraction and the 2^p + 1 H-cell split."""
    bh: int
    bw: int
    num_warps: int
    num_stages: int = 3
    dot: bool = False
    htail: bool = False
    bc: int = 0  # forward only: BC channels per program (:mod:`._triton_kernels_cl`, for channels_last); 0: one

    @property
    def name(self) -> str:
        flags = ('-dot' if self.dot else '') + ('-htail' if self.htail else '') + (f'-c{self.bc}' if self.bc else '')
        return f'bh{self.bh}-bw{self.bw}-w{self.num_warps}-s{self.num_stages}{flags}'


def parse_variant(text: str) -> Variant:
    """The variant named ``text`` (:attr:`Variant.name`, e.g. ``'bh64-bw32-w4-s3-dot'``)."""
    m = re.fullmatch(r'bh(\d+)-bw(\d+)-w(\d+)-s(\d+)((?:-dot|-htail)*)(?:-c(\d+))?', str(text).strip())
    if m is None:
        raise ValueError(f'{text!r} is not a Triton variant name; write it like "bh64-bw32-w4-s3" with optional '
                         f'"-dot", "-htail" and "-c<channels>" suffixes')
    bh, bw, warps, stages = (int(g) for g in m.groups()[:4])
    bc = int(m.group(6) or 0)
    for name, v in (('bh', bh), ('bw', bw), ('w', warps)) + ((('c', bc), ) if bc else ()):
        if v < 1 or v & (v - 1):
            raise ValueError(f'{text!r}: {name}{v} must be a power of two')
    return Variant(bh, bw, warps, stages, '-dot' in m.group(5), '-htail' in m.group(5), bc)


class Launch(NamedTuple):
    """What one launch uses: rows / columns per program, the row segment (tile + halo), padded cell counts, warps,
    stages and the kernel switches."""
    bh: int
    bw: int
    bwh: int
    ghp: int
    gwp: int
    num_warps: int
    num_stages: int
    dot: bool
    htail: bool
    bc: int


def plan(v: Variant, h: int, w: int, gh: int, gw: int, kw: int) -> Optional[Launch]:
    """The launch of variant ``v`` on an ``h x w`` map with ``gh x gw`` cropped cells and a kernel ``kw`` taps wide;
    None when the variant cannot run this shape (``htail`` without ``2^p + 1`` H-cells, ``tl.dot`` below 16 rows,
    a channel block with either)."""
    bh = min(_next_pow2(h, 4), v.bh)
    bw = min(_next_pow2(w, 8), v.bw)
    if v.bc:
        if v.dot or v.htail:
            return None
        from ._triton_kernels_cl import cl_padding
        bw = min(_next_pow2(w), v.bw)
        bwh, ghp, gwp = cl_padding(v.bc, bw, gh, gw, kw, v.num_warps)
        return Launch(bh, bw, bwh, ghp, gwp, v.num_warps, v.num_stages, False, False, v.bc)
    if v.htail:
        ghp = gh - 1
        if ghp < 2 or ghp & (ghp - 1):
            return None
    else:
        ghp = _next_pow2(gh, 2)
    gwp = _next_pow2(gw, 2)
    if v.dot:  # NOTE: tl.dot needs every dimension >= 16; padded cells have zero weights, extra columns are masked
        if v.htail and ghp < 16:
            return None
        ghp, gwp, bw = max(ghp, 16), max(gwp, 16), max(bw, 16)
    # NOTE: Triton's gather lowering asserts when the source (GHP, BW) tile holds fewer elements than the program
    # has threads; small grids get padded cells (zero weights) instead
    if ghp * bw < 32 * v.num_warps:
        if v.htail:
            return None
        ghp = _next_pow2(_cdiv(32 * v.num_warps, bw))
    return Launch(bh, bw, _next_pow2(bw + kw - 1), ghp, gwp, v.num_warps, v.num_stages, v.dot, v.htail, 0)


def default_variant(pass_: str, h: int, w: int, gh: int, gw: int) -> Variant:
    """The variant used without tuning: the widest column tile whose ``(k'_h, k'_w, BW)`` contraction block fits
    the pass's register budget, warps by block size."""
    block = _BLOCK_ELEMS if pass_ == 'fwd' else _GRAD_W_BLOCK_ELEMS
    ghp, gwp = _next_pow2(gh, 2), _next_pow2(gw, 2)
    bh = min(_next_pow2(h, 4), _MAX_BH)
    bw = min(_next_pow2(w, 8), _MAX_BW)
    # NOTE: the (k'_h, k'_w, BW) contraction block lives in registers; for 17-cell grids (padded to 32) narrower
    # column tiles keep it within the block budget instead of spilling
    while ghp * gwp * bw > block and bw > 8:
        bw //= 2
    elems = max(ghp * gwp * bw, bh * bw)
    return Variant(_MAX_BH, bw, 8 if elems >= 8192 else 4 if elems >= 2048 else 2)


def candidates(pass_: str, h: int, w: int, gh: int, gw: int, kw: int, f64: bool = False,
               channels_last: bool = False) -> List[Variant]:
    """The variants the tuner times for one shape, the default first; those with the same launch as an earlier
    one, or that cannot run the shape, are left out. Forward on channels_last inputs adds the channel-blocked
    program."""
    d = default_variant(pass_, h, w, gh, gw)
    more = [d._replace(bw=min(d.bw * 2, 64)), d._replace(num_warps=min(d.num_warps * 2, 8))]
    if pass_ == 'fwd':  # NOTE: fewer rows per program: more programs for small batches, more halo rows read
        more += [d._replace(bh=16), d._replace(htail=True), d._replace(htail=True, bw=min(d.bw * 2, 64))]
    if not f64:  # NOTE: tensor-core operands are float32 or bfloat16 values; float64 keeps the FMA contraction
        more += [d._replace(dot=True, bw=bw, num_warps=4) for bw in ((32, 64) if pass_ == 'fwd' else (16, 32, 64))]
        if pass_ == 'fwd':
            more += [d._replace(dot=True, htail=True, bw=32, num_warps=4)]
    if pass_ == 'fwd' and channels_last:
        from ._triton_kernels_cl import cl_tiles
        t = cl_tiles(h, w, gh, gw, kw)
        more += [Variant(t.bh, t.bw, t.num_warps, bc=t.bc), Variant(t.bh, t.bw, t.num_warps, bc=max(t.bc // 2, 1))]
    out, seen = [], set()
    for v in [d] + more:
        launch = plan(v, h, w, gh, gw, kw)
        if launch is not None and launch not in seen:
            seen.add(launch)
            out.append(v)
    return out


_CHOICES: Dict[tuple, Variant] = {}  # tuning key -> chosen variant
_RECORDS: Dict[tuple, Dict] = {}  # tuning key -> what was timed (for the GPU check's table)
_FORCED: Dict[str, Optional[Variant]] = {p: None for p in PASSES}


def clear_variant_cache() -> None:
    """Forget the in-process variant choices and timings (the cache file is kept)."""
    _CHOICES.clear()
    _RECORDS.clear()


def tuning_records() -> Dict[tuple, Dict]:
    """Per tuning key ``(pass, dtype, N, C, H, W, channels_last, lo_h, hi_h, lo_w, hi_w)``: every candidate's time
    in ms (or its error), the winner and how it was chosen."""
    return {k: dict(v) for k, v in _RECORDS.items()}


@contextlib.contextmanager
def use_variant(pass_: str, variant) -> Iterator[None]:
    """Run pass ``pass_`` (``'fwd'`` or ``'grad_w'``) with ``variant`` (a :class:`Variant` or its name) inside the
    block, without tuning (tests, benchmarks)."""
    if pass_ not in PASSES:
        raise ValueError(f'pass_={pass_!r}: use one of {PASSES}')
    old = _FORCED[pass_]
    _FORCED[pass_] = variant if isinstance(variant, Variant) else parse_variant(variant)
    try:
        yield
    finally:
        _FORCED[pass_] = old


def _env_variant(pass_: str) -> Optional[Variant]:
    """``$PELK_MM_TRITON_VARIANT``: ``NAME`` for both passes or ``fwd=NAME,grad_w=NAME``."""
    text = os.environ.get(VARIANT_ENV_VAR, '').strip()
    if not text:
        return None
    for part in text.split(','):
        key, sep, value = part.partition('=')
        if not sep:
            return parse_variant(key)
        if key.strip() not in PASSES:
            raise ValueError(f'${VARIANT_ENV_VAR}={text!r}: {key.strip()!r} is not a pass; write NAME or '
                             f'fwd=NAME,grad_w=NAME')
        if key.strip() == pass_:
            return parse_variant(value)
    return None


def tuning_enabled(x: torch.Tensor) -> bool:
    """Whether the variants are timed: never under ``torch.use_deterministic_algorithms`` (the default variant's
    grad-weight sums in the same order on every run; a tuned choice is the same only on runs that read the same
    cache file), else ``$PELK_MM_TRITON_TUNE`` (1/0), else on for CUDA inputs."""
    if torch.are_deterministic_algorithms_enabled():
        return False
    env = _tune_store.env_switch(TUNE_ENV_VAR, 'time the Triton variants', 'the default variant', 'timed on CUDA')
    if env is not None:
        return env
    return x.is_cuda


def _time_ms(launch: Callable[[Variant], object], v: Variant, device: torch.device, reps: int = 5) -> float:
    """Milliseconds per ``launch(v)`` after one warm-up call (which compiles): one timed call when it takes 20 ms or
    more, else the best of two groups of ``reps``."""

    def timed(count: int) -> float:
        if device.type == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(count):
                launch(v)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / count
        t0 = time.perf_counter()
        for _ in range(count):
            launch(v)
        return (time.perf_counter() - t0) * 1e3 / count

    launch(v)
    first = timed(1)
    if first >= 20.0:
        return first
    return min(first, timed(reps), timed(reps))


def _choose(pass_: str, key: tuple, x: torch.Tensor, cands: Callable[[], List[Variant]],
            launch: Callable[[Variant], object]) -> Variant:
    """The variant for ``key``: forced, else remembered, else from the cache file, else timed (every candidate,
    fastest wins), else the default."""
    forced = _FORCED[pass_] or _env_variant(pass_)
    if forced is not None:
        return forced
    if key in _CHOICES:
        return _CHOICES[key]
    default = default_variant(pass_, key[4], key[5], len(key[7]), len(key[9]))  # key: see _tune_key
    if torch.compiler.is_compiling() or not tuning_enabled(x):
        return default
    path = _tune_store.cache_file(x.device, 'triton')
    stored = _tune_store.load(path).get(_tune_store.key_text(key))
    record: Dict = dict(candidates={})
    chosen = None
    if stored is not None:
        try:
            chosen = parse_variant(stored)
            record['how'] = f'cache file {path}'
        except ValueError:
            chosen = None
    if chosen is None:
        for v in cands():
            try:
                record['candidates'][v.name] = _time_ms(launch, v, x.device)
            except Exception as err:  # noqa: BLE001 - a variant that does not compile or run is not chosen
                record['candidates'][v.name] = f'{type(err).__name__}: {str(err)[:200]}'
        timed = {n: t for n, t in record['candidates'].items() if isinstance(t, float)}
        if not timed:
            raise RuntimeError(f'pelk_mm: no Triton variant of the {pass_} kernel runs for {key}: '
                               f'{record["candidates"]}')
        chosen = parse_variant(min(timed, key=timed.get))
        record['how'] = 'timed'
        choices = _tune_store.load(path)
        choices[_tune_store.key_text(key)] = chosen.name
        _tune_store.save(path, choices)
    record.update(winner=chosen.name, default=default.name)
    _RECORDS[key] = record
    _CHOICES[key] = chosen
    logger.info('pelk_mm triton %s: %s -> %s (%s)', pass_, key, chosen.name, record['how'])
    return chosen


def _tune_key(pass_: str, x: torch.Tensor, lo_h, hi_h, lo_w, hi_w) -> tuple:
    """``(pass, dtype, N, C, H, W, channels_last, lo_h, hi_h, lo_w, hi_w)``."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return (pass_, str(x.dtype).replace('torch.', ''), *x.shape, channels_last, tuple(lo_h), tuple(hi_h),
            tuple(lo_w), tuple(hi_w))


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def forward_triton(x: torch.Tensor, w: torch.Tensor, lo_h: Sequence[int], hi_h: Sequence[int],
                   lo_w: Sequence[int], hi_w: Sequence[int]) -> torch.Tensor:
    """``x`` ``(N, C, H, W)`` (any strides), ``w`` ``(C, Gh, Gw)`` -> ``y`` in the memory format of ``x``."""
    N, C, H, W = x.shape
    if x.numel() == 0:
        return torch.empty_like(x)
    gh, gw = len(lo_h), len(lo_w)
    kw = hi_w[-1] - lo_w[0] + 1
    dev = str(x.device)
    w = w.contiguous()
    tables = (_int_table(_cell_of(lo_h, hi_h), dev), _int_table(tuple(lo_w), dev), _int_table(tuple(hi_w), dev))
    f64 = x.dtype == torch.float64

    def launch(v: Variant) -> torch.Tensor:
        p = plan(v, H, W, gh, gw, kw)
        if p is None or (p.dot and f64):
            raise ValueError(f'Triton variant {v.name} cannot run a {H}x{W} {x.dtype} map with {gh}x{gw} cells')
        if p.bc:
            from ._triton_kernels_cl import forward_triton_cl
            return forward_triton_cl(x, w, lo_h, hi_h, lo_w, hi_w, p.bc, p.bh, p.bw, p.num_warps, p.num_stages)
        y = torch.empty_like(x)
        kernels().periconv_fwd_kernel[(N * C, _cdiv(H, p.bh), _cdiv(W, p.bw))](
            x, w, y, *tables, C, H, W, gh, gw, lo_h[0], hi_h[-1], lo_w[0], kw, *x.stride(), *y.stride(),
            BH=p.bh, BW=p.bw, BWH=p.bwh, GHP=p.ghp, GWP=p.gwp, F64=f64, DOT=p.dot, HTAIL=p.htail,
            num_warps=p.num_warps, num_stages=p.num_stages)
        return y

    key = _tune_key('fwd', x, lo_h, hi_h, lo_w, hi_w)
    # NOTE: the candidate list is only built when the variants are timed, not on every call
    return launch(_choose('fwd', key, x, lambda: candidates('fwd', H, W, gh, gw, kw, f64, key[6]), launch))


def grad_weight_triton(x: torch.Tensor, gy: torch.Tensor, lo_h: Sequence[int], hi_h: Sequence[int],
                       lo_w: Sequence[int], hi_w: Sequence[int]) -> torch.Tensor:
    """``gw[c, a, b] = sum_{n, i, j} gy[n, c, i, j] * (cell (a, b) box sum of x around (i, j))`` ->
    ``(C, Gh, Gw)`` float32 (float64 for float64 inputs), from per-program partials summed in a fixed order."""
    N, C, H, W = x.shape
    gh, gw = len(lo_h), len(lo_w)
    acc = _acc_dtype(x)
    if x.numel() == 0:
        return x.new_zeros((C, gh, gw), dtype=acc)
    kw = hi_w[-1] - lo_w[0] + 1
    dev = str(x.device)
    smax = max(h - l + 1 for l, h in zip(lo_h, hi_h))
    tables = tuple(_int_table(tuple(t), dev) for t in (lo_h, hi_h, lo_w, hi_w))
    f64 = x.dtype == torch.float64

    def launch(v: Variant) -> torch.Tensor:
        p = plan(v, H, W, gh, gw, kw)
        if p is None or (p.dot and f64):
            raise ValueError(f'Triton variant {v.name} cannot run a {H}x{W} {x.dtype} map with {gh}x{gw} cells')
        n_hw = _cdiv(H, p.bh) * _cdiv(W, p.bw)
        # NOTE: the split depends on the shape and the variant only, so the summation order (and the result) is the
        # same on every run and every GPU model that runs this variant
        per_program = _cdiv(N, min(N, max(1, _cdiv(_GRAD_W_PROGRAMS, C * n_hw))))
        chunks = _cdiv(N, per_program)
        part = torch.empty((chunks * n_hw, C, gh, gw), dtype=acc, device=x.device)
        kernels().periconv_grad_w_kernel[(chunks, C, n_hw)](
            x, gy, part, *tables, N, C, H, W, gh, gw, lo_w[0], kw, smax, per_program, *x.stride(), *gy.stride(),
            BH=p.bh, BW=p.bw, BWH=p.bwh, GHP=p.ghp, GWP=p.gwp, F64=f64, DOT=p.dot,
            num_warps=p.num_warps, num_stages=p.num_stages)
        return part.sum(0)

    key = _tune_key('grad_w', x, lo_h, hi_h, lo_w, hi_w)
    return launch(_choose('grad_w', key, x, lambda: candidates('grad_w', H, W, gh, gw, kw, f64, key[6]), launch))


# ----------------------------------------------------------------------------------------------------------- ops
@torch.library.custom_op('pelk_mm::periconv_triton', mutates_args=())
def periconv_triton(x: torch.Tensor, w: torch.Tensor, lo_h: List[int], hi_h: List[int], lo_w: List[int],
                    hi_w: List[int]) -> torch.Tensor:
    """Fused Triton forward on the cropped cells; ``x`` ``(N, C, H, W)`` any strides, ``w`` ``(C, Gh, Gw)``."""
    return forward_triton(x, w, lo_h, hi_h, lo_w, hi_w)


@periconv_triton.register_fake
def _(x, w, lo_h, hi_h, lo_w, hi_w):
    return torch.empty_like(x)


@torch.library.custom_op('pelk_mm::periconv_triton_grad_w', mutates_args=())
def periconv_triton_grad_w(x: torch.Tensor, gy: torch.Tensor, lo_h: List[int], hi_h: List[int], lo_w: List[int],
                           hi_w: List[int]) -> torch.Tensor:
    """Gradient wrt the cropped block weights, ``(C, Gh, Gw)`` in the accumulation dtype."""
    return grad_weight_triton(x, gy, lo_h, hi_h, lo_w, hi_w)


@periconv_triton_grad_w.register_fake
def _(x, gy, lo_h, hi_h, lo_w, hi_w):
    return x.new_empty((x.shape[1], len(lo_h), len(lo_w)), dtype=_acc_dtype(x))


def _backward(ctx, gy):
    x, w = ctx.saved_tensors
    lo_h, hi_h, lo_w, hi_w = ctx.cells
    gx = gw = None
    if ctx.needs_input_grad[0]:  # conv with the mirrored kernel: flipped weights over mirrored cells
        gx = periconv_triton(gy, w.flip(-2, -1).contiguous(), *mirror_cells(lo_h, hi_h), *mirror_cells(lo_w, hi_w))
    if ctx.needs_input_grad[1]:
        gw = periconv_triton_grad_w(x, gy, lo_h, hi_h, lo_w, hi_w).to(w.dtype)
    return gx, gw, None, None, None, None


periconv_triton.register_autograd(_backward, setup_context=save_cells_context)


def supports(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int]) -> bool:
    """CUDA tensors (or any tensor in interpreter mode) of a floating dtype, when triton imports."""
    return (x.is_cuda or interpreter_mode()) and x.is_floating_point() and triton_available()


def triton_peripheral_conv2d(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Fused Triton structure-aware conv: output in ``x``'s dtype and memory format (no layout copy of ``x``)."""
    H, W = x.shape[-2:]
    ch, cw = axis_cells(grid, H), axis_cells(grid, W)
    w = crop_weight(weight, ch, cw).to(x.dtype).contiguous()
    return periconv_triton(x, w, list(ch.lo), list(ch.hi), list(cw.lo), list(cw.hi))
