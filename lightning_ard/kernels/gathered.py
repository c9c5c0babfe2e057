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

Pattern groups run through :func:`~lightning_ard.kernels.torch_grouped.grouped_linear` (one product per group,
views for ranges, one full-size gradient for all groups); the ``grouped_mm`` backend
(:mod:`lightning_ard.kernels.grouped_mm`) is this backend with one ``torch._grouped_mm`` per product instead.
Device-agnostic: the same code runs on the CPU, where it is tested against the PyTorch ops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lightning_ard.kernels.base import Backend, check_devices
from lightning_ard.kernels.kept import Kept, all_kept, kept_units
from lightning_ard.kernels.torch_backend import TorchBackend
from lightning_ard.kernels.torch_ops import compute_dtype, put, tile_groups
from lightning_ard.patterns import RowPattern, TilePattern

PITCH = 64
"""Row pitch (elements) of every buffer the gathered and grouped backends allocate: a multiple of 64 keeps each
row 128-byte aligned in 16-bit types, so the library GEMM takes its vectorized, aligned kernels whatever the kept
count (2867, 1229), and ``torch._grouped_mm`` gets the 16-byte aligned strides it needs (TMA)."""


def padded_empty(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialized view of ``shape`` in a buffer whose last dimension is padded to a multiple of PITCH."""
    pitch = max(-(-shape[-1] // PITCH) * PITCH, PITCH)
    return torch.empty(*shape[:-1], pitch, dtype=dtype, device=device)[..., : shape[-1]]


def is_aligned(t: torch.Tensor) -> bool:
    """An operand the library GEMM (and ``torch._grouped_mm``) takes as it is: unit last stride, 16-byte aligned
    other strides and start."""
    size = t.element_size()
    return (
        (t.stride(-1) == 1 or t.shape[-1] <= 1)
        and all((s * size) % 16 == 0 for s in t.stride()[:-1])
        and t.data_ptr() % 16 == 0
    )


def aligned(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype`` and :func:`is_aligned`: itself when it already is, else one copy into a padded buffer
    (the dtype conversion and the re-pitch in the same pass)."""
    if t.dtype == dtype and is_aligned(t):
        return t
    out = padded_empty(*t.shape, dtype=dtype, device=t.device)
    out.copy_(t)
    return out


# --- gathers and one-pass scatters ----------------------------------------------------------------------------


def gather_block(weight: torch.Tensor, rows: Kept, cols: Kept, dtype: torch.dtype) -> torch.Tensor:
    """The kept ``(rows.count, cols.count)`` block of ``weight`` in ``dtype``, aligned: a view when the block is
    contiguous and aligned already, else one gather (plus the conversion) into a padded buffer."""
    if rows.span is not None and cols.span is not None:
        return aligned(rows.take(cols.take(weight, 1), 0), dtype)
    if rows.span is None and cols.span is None:
        block = weight[rows.index[:, None], cols.index[None, :]]  # one gather kernel for both sides
        return aligned(block, dtype)
    out = padded_empty(rows.count, cols.count, dtype=weight.dtype, device=weight.device)
    if rows.span is None:
        torch.index_select(cols.take(weight, 1), 0, rows.index, out=out)
    else:
        torch.index_select(rows.take(weight, 0), 1, cols.index, out=out)
    return aligned(out, dtype)


def gather_columns(x: torch.Tensor, cols: Kept, dtype: torch.dtype) -> torch.Tensor:
    """``x[:, kept]`` (2-D ``x``) in ``dtype``, aligned, in one pass when the dtype already matches."""
    if cols.span is not None:
        return aligned(cols.take(x, 1), dtype)
    return gather_index(x, cols.index, dtype)


def gather_index(x: torch.Tensor, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x[:, index]`` (2-D ``x``, int64 ``index``) in ``dtype``, aligned, in one pass when the dtype matches."""
    out = padded_empty(x.shape[0], index.numel(), dtype=x.dtype, device=x.device)
    torch.index_select(x, 1, index, out=out)
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
    rows: Kept,
    cols: Kept,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """A full ``(rows.width, cols.width)`` tensor that is zero outside the kept block, whose kept block
    ``product(view)`` writes in place.

    Contiguous blocks: a zero tensor and the product written straight into its view. Otherwise the product goes
    into a padded compact buffer with one extra zero row and/or column, and the full tensor is one gather through
    the sides' position maps (each element written once, no memset of the full size)."""
    shape = (rows.width, cols.width)
    if rows.span is not None and cols.span is not None:
        if rows.full and cols.full:
            full = torch.empty(shape, dtype=dtype, device=device)
        else:
            full = torch.zeros(shape, dtype=dtype, device=device)
        product(rows.take(cols.take(full, 1), 0))
        return full
    ext_rows = rows.count + (0 if rows.full else 1)
    ext_cols = cols.count + (0 if cols.full else 1)
    ext = padded_empty(ext_rows, ext_cols, dtype=dtype, device=device)
    if not rows.full:
        ext[rows.count].zero_()
    if not cols.full:
        ext[:, cols.count].zero_()
    product(ext[: rows.count, : cols.count])
    if rows.full:
        return ext.index_select(1, cols.pos())
    if cols.full:
        return ext.index_select(0, rows.pos())
    return ext[rows.pos()[:, None], cols.pos()[None, :]]


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
                grad_x = write_full(lambda out: mm_into(out, g, wc, scale), all_kept(g.shape[0], device), ins, x_dtype,
                                    device)  # fmt: skip
            grad_x = grad_x.reshape(x_shape)
        if ctx.needs_input_grad[1]:
            grad_w = write_full(lambda out: mm_into(out, g.t(), xc, scale), outs, ins, weight_dtype, device)
        if has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0).to(weight_dtype)
            grad_b = gb if outs.full else write_full(lambda out: out.copy_(gb[:, None]), outs, all_kept(1, device),
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
    ins = kept_units(in_pattern, n_in, x.device, "input pattern")
    outs = kept_units(out_pattern, n_out, x.device, "output pattern")
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


def tile_blocks(pattern: TilePattern, device: torch.device) -> TileBlocks:
    """:class:`TileBlocks` of ``pattern`` on ``device`` (built on the CPU once per pattern and device, in the
    pattern's cache)."""
    return pattern.cached("tile_blocks", device, lambda: _build_tile_blocks(pattern, torch.device(device)))


def _build_tile_blocks(pattern: TilePattern, device: torch.device) -> TileBlocks:
    shape = (pattern.out_features, pattern.in_features)
    groups = [
        (rows, cols)
        for rows, cols in tile_groups(pattern.kept_tiles, pattern.tile, *shape, torch.device("cpu"))
        if cols.numel() and rows.numel()
    ]
    total = sum(int(rows.numel()) for rows, _ in groups)
    pos = torch.full((pattern.out_features,), total, dtype=torch.int64)
    at = 0
    for rows, _ in groups:
        pos[rows] = torch.arange(at, at + rows.numel())
        at += rows.numel()
    on_device = tuple((rows.to(device), cols.to(device)) for rows, cols in groups)
    return TileBlocks(on_device, pos.to(device), total)


class GatheredTileLinearFn(torch.autograd.Function):
    """``y = x · (scale · W ⊙ M)ᵀ + b``: one dense product per distinct kept column set, on blocks gathered once
    (forward) and reused by the backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, tiles, scale, dtype):  # type: ignore[override]
        x2 = x.reshape(-1, x.shape[-1])
        m = x2.shape[0]
        wgs, xgs = [], []
        ext = padded_empty(m, tiles.total + 1, dtype=dtype, device=x.device)
        ext[:, tiles.total].zero_()
        at = 0
        for rows, cols in tiles.blocks:
            wg = aligned(weight.index_select(0, rows).index_select(1, cols), dtype)
            xg = gather_index(x2, cols, dtype)
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
        check_devices(x, weight)
        return gathered_row_linear(x, weight, bias, in_pattern, out_pattern, x_compact)

    def tile_linear(self, x, weight, bias, pattern):  # type: ignore[no-untyped-def]
        check_devices(x, weight)
        return gathered_tile_linear(x, weight, bias, pattern)

    def row_linear_groups(  # type: ignore[no-untyped-def]
        self, x, weight, bias, in_patterns, out_patterns, x_compact=False, out_compact=False
    ):
        """Through :func:`~lightning_ard.kernels.torch_grouped.grouped_linear`: weight views for ranges, one
        full-size weight gradient shared by the groups."""
        check_devices(x, weight)
        return TorchBackend().row_linear_groups(x, weight, bias, in_patterns, out_patterns, x_compact, out_compact)
