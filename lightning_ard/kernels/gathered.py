"""The gathered backend: gather the kept block once, then plain dense GEMMs (cuBLAS on CUDA) on it.

Reading a weight through an index vector inside a GEMM defeats the tensor-core pipeline (no vectorized,
asynchronous loads of the gathered dimension; docs/gpu.md). Here each call instead copies the kept weight block
once into a contiguous buffer of the compute dtype whose row pitch is a multiple of :data:`PITCH` elements, and the
forward and both backward products are ``torch.mm`` / ``addmm`` on aligned dense operands, so each product runs at
the speed of the library GEMM on the compact shape by construction; what is added is the copy. Contiguous
patterns (a block that does not wrap, all units) are weight views and need no copy when already aligned.

Full-size gradients are written in one pass: the compact block goes into a buffer with one extra zero row / column
and the full gradient is a single gather from it through per-unit position maps (dropped units point at the zero
slot), instead of a memset followed by a scatter. Contiguous blocks use a zero tensor and a GEMM that writes
straight into its view.

Pattern groups: when :func:`use_grouped_mm` says so (by default: CUDA, bfloat16, sm90/sm100, where torch runs one
CUTLASS grouped launch without a host sync) and every group keeps the same counts, all groups run through
:func:`~lightning_ard.kernels.grouped_mm.grouped_mm_linear` (one ``torch._grouped_mm`` per product on stacked
gathered blocks); otherwise through :func:`~lightning_ard.kernels.torch_grouped.grouped_linear` (one product per
group, views for ranges, one full-size gradient for all groups). On the CPU the per-group path is kept: measured mostly
slower there (docs/results/gpu/grouped_mm_cpu.md). :data:`GROUPED_MM` forces either path. Device-agnostic: the same
code runs on the CPU, where it is tested against the PyTorch ops.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lightning_ard.kernels import grouped_mm
from lightning_ard.kernels.base import Backend
from lightning_ard.kernels.indices import check_kept
from lightning_ard.kernels.torch_backend import TorchBackend
from lightning_ard.kernels.torch_ops import compute_dtype, put, tile_groups
from lightning_ard.patterns import RowPattern, TilePattern

PITCH = 64
"""Row pitch (elements) of every buffer this backend allocates: a multiple of 64 keeps each row 128-byte aligned
in 16-bit types, so the library GEMM takes its vectorized, aligned kernels whatever the kept count (2867, 1229)."""


GROUPED_MM = "auto"
"""How :meth:`GatheredBackend.row_linear_groups` runs pattern groups: ``"auto"`` (:func:`use_grouped_mm`),
``"always"`` (``torch._grouped_mm`` whenever torch has it and the groups keep uniform counts) or ``"never"`` (one
product per group). For tests and benchmarks."""

GROUPED_MM_MODES = ("auto", "always", "never")


def use_grouped_mm(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether pattern groups on ``device`` computing in ``dtype`` go through ``torch._grouped_mm`` (given uniform
    kept counts). ``"auto"``: only on CUDA in bfloat16 on compute capability 9.x/10.x, where torch runs a CUTLASS
    grouped kernel; elsewhere torch loops over ``mm`` after a device-to-host copy of the offsets, no better than the
    per-group path (on the CPU measured 0.76-0.96x of it in 7 of 8 cases: docs/results/gpu/grouped_mm_cpu.md)."""
    if GROUPED_MM not in GROUPED_MM_MODES:
        raise ValueError(f"gathered.GROUPED_MM must be one of {GROUPED_MM_MODES}, got {GROUPED_MM!r}")
    if GROUPED_MM == "never" or not grouped_mm.AVAILABLE:
        return False
    if GROUPED_MM == "always":
        return True
    return device.type == "cuda" and dtype == torch.bfloat16 and torch.cuda.get_device_capability(device)[0] in (9, 10)


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def padded_empty(rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialized ``(rows, cols)`` view of a ``(rows, pitch)`` buffer, pitch = ``cols`` rounded up to PITCH."""
    return torch.empty(rows, max(_round_up(cols, PITCH), PITCH), dtype=dtype, device=device)[:, :cols]


def is_aligned(t: torch.Tensor) -> bool:
    """A 2-D operand the library GEMM takes as it is: unit column stride, 16-byte aligned rows and start."""
    size = t.element_size()
    return (
        t.dim() == 2
        and (t.stride(1) == 1 or t.shape[1] <= 1)
        and (t.stride(0) * size) % 16 == 0
        and t.data_ptr() % 16 == 0
    )


def aligned(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` (2-D) in ``dtype`` and :func:`is_aligned`: itself when it already is, else one copy into a padded
    buffer (the dtype conversion and the re-pitch in the same pass)."""
    if t.dtype == dtype and is_aligned(t):
        return t
    out = padded_empty(t.shape[0], t.shape[1], dtype, t.device)
    out.copy_(t)
    return out


# --- kept units of one side -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """How one side (rows or columns of the weight) keeps its units.

    Attributes:
        width: number of units of the side.
        count: number of kept units.
        span: ``(start, stop)`` when the kept units are one contiguous range (``(0, width)``: all kept).
        index: int64 kept indices on the device (None for a span).
        pos: int64 ``(width,)`` position of each unit among the kept ones, ``count`` where dropped (the zero slot
            of a one-pass scatter); built on first use.
    """

    width: int
    count: int
    span: tuple[int, int] | None
    index: torch.Tensor | None
    _pos: dict

    @property
    def full(self) -> bool:
        return self.span == (0, self.width)

    def take(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """``t`` restricted to the kept units along ``dim``: a view for a span, a gather for an index."""
        if self.span is not None:
            return t.narrow(dim, self.span[0], self.span[1] - self.span[0])
        return t.index_select(dim, self.index)

    def pos(self, device: torch.device) -> torch.Tensor:
        """Position map (see the class docstring) on ``device``, built on the CPU once."""
        pos = self._pos.get(device)
        if pos is None:
            cpu = torch.full((self.width,), self.count, dtype=torch.int64)
            if self.span is not None:
                cpu[self.span[0] : self.span[1]] = torch.arange(self.count)
            else:
                cpu[self.index.cpu()] = torch.arange(self.count)
            pos = self._pos[device] = cpu.to(device)
        return pos


def all_units(width: int) -> Side:
    """Every unit kept."""
    return Side(width, width, (0, width), None, {})


_SIDES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def side_of(pattern: RowPattern | None, width: int, device: torch.device) -> Side:
    """The :class:`Side` of a row pattern on ``device`` (cached per pattern and device; its kept indices are
    checked once, :func:`~lightning_ard.kernels.indices.check_kept`)."""
    if pattern is None:
        return all_units(width)
    per_pattern = _SIDES.setdefault(pattern, {})
    side = per_pattern.get(device)
    if side is None:
        if pattern.width != width:
            raise ValueError(f"pattern width {pattern.width} does not match the layer width {width}")
        check_kept(pattern.kept, width, "row pattern")
        ranges = pattern.ranges
        if pattern.num_kept == width:
            side = all_units(width)
        elif ranges is not None and len(ranges) == 1:
            side = Side(width, pattern.num_kept, ranges[0], None, {})
        else:
            side = Side(width, pattern.num_kept, None, pattern.kept.to(device), {})
        per_pattern[device] = side
    return side


# --- gathers and one-pass scatters ----------------------------------------------------------------------------


def gather_block(weight: torch.Tensor, rows: Side, cols: Side, dtype: torch.dtype) -> torch.Tensor:
    """The kept ``(rows.count, cols.count)`` block of ``weight`` in ``dtype``, aligned: a view when the block is
    contiguous and aligned already, else one gather (plus the conversion) into a padded buffer."""
    if rows.index is None and cols.index is None:
        return aligned(rows.take(cols.take(weight, 1), 0), dtype)
    if rows.index is not None and cols.index is not None:
        block = weight[rows.index[:, None], cols.index[None, :]]  # one gather kernel for both sides
        return aligned(block, dtype)
    out = padded_empty(rows.count, cols.count, weight.dtype, weight.device)
    if rows.index is not None:
        torch.index_select(cols.take(weight, 1), 0, rows.index, out=out)
    else:
        torch.index_select(rows.take(weight, 0), 1, cols.index, out=out)
    return aligned(out, dtype)


def gather_columns(x: torch.Tensor, cols: Side, dtype: torch.dtype) -> torch.Tensor:
    """``x[:, kept]`` (2-D ``x``) in ``dtype``, aligned, in one pass when the dtype already matches."""
    if cols.index is None:
        return aligned(cols.take(x, 1), dtype)
    out = padded_empty(x.shape[0], cols.count, x.dtype, x.device)
    torch.index_select(x, 1, cols.index, out=out)
    return aligned(out, dtype)


def mm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """``out = scale · a @ b`` written straight into ``out`` (a view of a larger tensor is fine); an intermediate
    and a converting copy only when ``out`` has another dtype than the operands."""
    if out.dtype != a.dtype:
        out.copy_(mm_into(torch.empty(out.shape, dtype=a.dtype, device=a.device), a, b, scale))
        return out
    if scale == 1.0:
        return torch.mm(a, b, out=out)
    return torch.addmm(out, a, b, beta=0, alpha=scale, out=out)


def write_full(
    product: Callable[[torch.Tensor], object],
    rows: Side,
    cols: Side,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """A full ``(rows.width, cols.width)`` tensor that is zero outside the kept block, whose kept block
    ``product(view)`` writes in place.

    Contiguous blocks: a zero tensor and the product written straight into its view. Otherwise the product goes
    into a padded compact buffer with one extra zero row and/or column, and the full tensor is one gather through
    the sides' position maps (each element written once, no memset of the full size)."""
    shape = (rows.width, cols.width)
    if rows.index is None and cols.index is None:
        if rows.full and cols.full:
            full = torch.empty(shape, dtype=dtype, device=device)
        else:
            full = torch.zeros(shape, dtype=dtype, device=device)
        product(rows.take(cols.take(full, 1), 0))
        return full
    ext_rows = rows.count + (0 if rows.full else 1)
    ext_cols = cols.count + (0 if cols.full else 1)
    ext = padded_empty(ext_rows, ext_cols, dtype, device)
    if not rows.full:
        ext[rows.count].zero_()
    if not cols.full:
        ext[:, cols.count].zero_()
    product(ext[: rows.count, : cols.count])
    if rows.full:
        return ext.index_select(1, cols.pos(device))
    if cols.full:
        return ext.index_select(0, rows.pos(device))
    return ext[rows.pos(device)[:, None], cols.pos(device)[None, :]]


# --- row patterns ---------------------------------------------------------------------------------------------


class GatheredRowLinearFn(torch.autograd.Function):
    """``y = scale · x[:, in] · W[out][:, in]ᵀ + b[out]`` on a gathered, aligned compact block; the backward reuses
    the block and writes full-size gradients in one pass each."""

    @staticmethod
    def forward(ctx, x, weight, bias, ins, outs, scale, x_compact, dtype):  # type: ignore[override]
        x2 = x.reshape(-1, x.shape[-1])
        xc = aligned(x2, dtype) if (x_compact or ins.full) else gather_columns(x2, ins, dtype)
        wc = gather_block(weight, outs, ins, dtype)
        y = torch.empty(x2.shape[0], outs.count, dtype=dtype, device=x.device)
        if bias is not None:  # bias folded into the GEMM (beta = 1 on the broadcast bias, alpha = scale)
            torch.addmm(outs.take(bias, 0).to(dtype), xc, wc.t(), alpha=scale, out=y)
        else:
            mm_into(y, xc, wc.t(), scale)
        ctx.save_for_backward(xc, wc)
        ctx.meta = (x.shape, x.dtype, ins, outs, scale, x_compact, bias is not None)
        ctx.weight_meta = (weight.dtype, weight.device)
        return y.reshape(*x.shape[:-1], outs.count)

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        xc, wc = ctx.saved_tensors
        x_shape, x_dtype, ins, outs, scale, x_compact, has_bias = ctx.meta
        weight_dtype, device = ctx.weight_meta
        g = aligned(grad_y.reshape(-1, grad_y.shape[-1]), wc.dtype)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            if x_compact or ins.full:
                grad_x = mm_into(torch.empty(g.shape[0], ins.count, dtype=x_dtype, device=device), g, wc, scale)
            else:
                grad_x = write_full(lambda out: mm_into(out, g, wc, scale), all_units(g.shape[0]), ins, x_dtype, device)
            grad_x = grad_x.reshape(x_shape)
        if ctx.needs_input_grad[1]:
            grad_w = write_full(lambda out: mm_into(out, g.t(), xc, scale), outs, ins, weight_dtype, device)
        if has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0).to(weight_dtype)
            grad_b = gb if outs.full else write_full(lambda out: out.copy_(gb[:, None]), outs, all_units(1),
                                                     weight_dtype, device).flatten()  # fmt: skip
        return grad_x, grad_w, grad_b, None, None, None, None, None


def gathered_row_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_pattern: RowPattern | None,
    out_pattern: RowPattern | None,
    x_compact: bool = False,
) -> torch.Tensor:
    """Compact Linear for row patterns on gathered blocks (same contract as
    :func:`~lightning_ard.kernels.torch_ops.row_linear` with the patterns' selectors and scale)."""
    n_out, n_in = weight.shape
    ins, outs = side_of(in_pattern, n_in, x.device), side_of(out_pattern, n_out, x.device)
    x_compact = bool(x_compact) and in_pattern is not None
    expected = ins.count if x_compact else n_in
    if x.dim() < 1 or x.shape[-1] != expected:
        raise ValueError(f"x must be (..., {expected}) for this pattern, got {tuple(x.shape)}")
    scale = float(in_pattern.scale) if in_pattern is not None else 1.0
    dtype = compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        return GatheredRowLinearFn.apply(x, weight, bias, ins, outs, scale, x_compact, dtype)


# --- tile patterns --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TileBlocks:
    """The dense blocks of a tile pattern on one device: tile rows sharing a kept column set form one block.

    Attributes:
        blocks: ``(weight rows, weight columns)`` int64 index pairs, one per distinct kept column set.
        out_pos: int64 ``(out_features,)`` column of each output unit in the concatenated block outputs, or their
            total (a zero column) for units of tile rows that keep no tile.
        total: number of output units covered by the blocks.
    """

    blocks: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    out_pos: torch.Tensor
    total: int


_TILE_BLOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tile_blocks(pattern: TilePattern, device: torch.device) -> TileBlocks:
    """:class:`TileBlocks` of ``pattern`` on ``device`` (built on the CPU once per pattern and device)."""
    per_pattern = _TILE_BLOCKS.setdefault(pattern, {})
    blocks = per_pattern.get(device)
    if blocks is None:
        groups = [
            (rows, cols)
            for rows, cols in tile_groups(
                pattern.kept_tiles, pattern.tile, pattern.out_features, pattern.in_features, torch.device("cpu")
            )  # fmt: skip
            if cols.numel() and rows.numel()
        ]
        total = sum(int(rows.numel()) for rows, _ in groups)
        pos = torch.full((pattern.out_features,), total, dtype=torch.int64)
        at = 0
        for rows, _ in groups:
            pos[rows] = torch.arange(at, at + rows.numel())
            at += rows.numel()
        on_device = tuple((rows.to(device), cols.to(device)) for rows, cols in groups)
        blocks = per_pattern[device] = TileBlocks(on_device, pos.to(device), total)
    return blocks


class GatheredTileLinearFn(torch.autograd.Function):
    """``y = x · (scale · W ⊙ M)ᵀ + b``: one dense product per distinct kept column set, on blocks gathered once
    (forward) and reused by the backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, tiles, scale, dtype):  # type: ignore[override]
        x2 = x.reshape(-1, x.shape[-1])
        m = x2.shape[0]
        wgs, xgs = [], []
        ext = padded_empty(m, tiles.total + 1, dtype, x.device)
        ext[:, tiles.total].zero_()
        at = 0
        for rows, cols in tiles.blocks:
            wg = aligned(weight.index_select(0, rows).index_select(1, cols), dtype)
            xg = gather_columns(x2, Side(x2.shape[1], cols.numel(), None, cols, {}), dtype)
            mm_into(ext[:, at : at + rows.numel()], xg, wg.t(), scale)
            at += rows.numel()
            wgs.append(wg)
            xgs.append(xg)
        y = ext.index_select(1, tiles.out_pos)
        if bias is not None:
            y.add_(bias.to(dtype))
        ctx.save_for_backward(*wgs, *xgs)
        ctx.meta = (x.shape, x.dtype, tiles, scale, bias is not None, weight.shape, weight.dtype)
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        x_shape, x_dtype, tiles, scale, has_bias, w_shape, w_dtype = ctx.meta
        saved = ctx.saved_tensors
        n = len(tiles.blocks)
        wgs, xgs = saved[:n], saved[n:]
        g = grad_y.reshape(-1, grad_y.shape[-1])
        dtype = wgs[0].dtype if n else g.dtype
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = torch.zeros(g.shape[0], x_shape[-1], dtype=dtype, device=g.device) if want_x else None
        grad_w = torch.zeros(w_shape, dtype=w_dtype, device=g.device) if want_w else None
        for (rows, cols), wg, xg in zip(tiles.blocks, wgs, xgs, strict=True):
            gg = aligned(g.index_select(1, rows), dtype)
            if want_x:
                grad_x.index_add_(1, cols, torch.mm(gg, wg), alpha=scale)
            if want_w:
                block = mm_into(torch.empty(rows.numel(), cols.numel(), dtype=dtype, device=g.device),
                                gg.t(), xg, scale)  # fmt: skip
                put(grad_w, rows, cols, block.to(w_dtype))
        if want_x:
            grad_x = grad_x.to(x_dtype).reshape(x_shape)
        grad_b = g.sum(0).to(w_dtype) if has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None, None


def gathered_tile_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pattern: TilePattern
) -> torch.Tensor:
    """Tile-skipping Linear on gathered blocks (same contract as
    :func:`~lightning_ard.kernels.torch_ops.tile_linear`)."""
    if (pattern.out_features, pattern.in_features) != tuple(weight.shape):
        raise ValueError(
            f"tile pattern shape {(pattern.out_features, pattern.in_features)} does not match the weight shape "
            f"{tuple(weight.shape)}"
        )
    tiles = tile_blocks(pattern, x.device)
    dtype = compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        return GatheredTileLinearFn.apply(x, weight, bias, tiles, float(pattern.scale), dtype)


class GatheredBackend(Backend):
    """Gathered kept blocks and library GEMMs (cuBLAS on CUDA): at least the library's speed on the compact shape,
    plus one copy of the kept block per call. Runs on any device and dtype."""

    name = "gathered"

    def row_linear(self, x, weight, bias, in_pattern, out_pattern, x_compact):  # type: ignore[no-untyped-def]
        if x.device != weight.device:
            raise ValueError(f"input on {x.device} but weight on {weight.device}")
        return gathered_row_linear(x, weight, bias, in_pattern, out_pattern, x_compact)

    def tile_linear(self, x, weight, bias, pattern):  # type: ignore[no-untyped-def]
        if x.device != weight.device:
            raise ValueError(f"input on {x.device} but weight on {weight.device}")
        return gathered_tile_linear(x, weight, bias, pattern)

    def row_linear_groups(  # type: ignore[no-untyped-def]
        self, x, weight, bias, in_patterns, out_patterns, x_compact=False, out_compact=False
    ):
        """All groups in one ``torch._grouped_mm`` per product when :func:`use_grouped_mm` (and the groups keep
        uniform counts), else through :func:`~lightning_ard.kernels.torch_grouped.grouped_linear`: weight views for
        ranges, one full-size weight gradient shared by the groups."""
        if x.device != weight.device:
            raise ValueError(f"input on {x.device} but weight on {weight.device}")
        for pattern in (*(in_patterns or ()), *(out_patterns or ())):
            side_of(pattern, pattern.width, x.device)  # validates (once per pattern) the kept indices
        if use_grouped_mm(x.device, compute_dtype(x)):
            return grouped_mm.grouped_mm_linear(x, weight, bias, in_patterns, out_patterns, x_compact, out_compact)
        return TorchBackend().row_linear_groups(x, weight, bias, in_patterns, out_patterns, x_compact, out_compact)
