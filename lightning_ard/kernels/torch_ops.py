"""PyTorch reference kernels (the oracle every Triton kernel is tested against, and the CPU path).

Both ops compute only the kept part of a Linear and are autograd Functions so that the backward pass also does
only the kept work and writes the weight gradient straight into the kept block of one full-size tensor (one
allocation, no chain of index_add's).

An index (:data:`~lightning_ard.kernels.kept.Index`) is ``None`` (every unit), a ``slice`` (a strided view:
cheapest on the CPU) or an int64 tensor of kept indices (any family).
"""

from __future__ import annotations

import torch

from lightning_ard.kernels.kept import Index


def take(t: torch.Tensor, dim: int, index: Index) -> torch.Tensor:
    """``t`` restricted to ``index`` along ``dim`` (a view for slices, a gathered copy for tensors)."""
    if index is None:
        return t
    if isinstance(index, slice):
        return t[(slice(None),) * (dim % t.dim()) + (index,)]
    return t.index_select(dim, index)


def put(dst: torch.Tensor, rows: Index, cols: Index, src: torch.Tensor, accumulate: bool = False) -> None:
    """Write (or add) ``src`` into ``dst[rows][:, cols]`` in place, for any mix of index kinds."""
    if isinstance(rows, torch.Tensor) and isinstance(cols, torch.Tensor):
        if accumulate:  # widen the columns in a small buffer, then add whole rows (no 2-D index to build)
            wide = src.new_zeros(src.shape[0], dst.shape[1]).index_copy_(1, cols, src)
            dst.index_add_(0, rows, wide)
            return
        # 1-D scatter into the (contiguous) gradient: about 2x faster than a 2-D index_put_
        flat = (rows[:, None] * dst.shape[1] + cols[None, :]).flatten()
        dst.view(-1).index_copy_(0, flat, src.reshape(-1))
        return
    if isinstance(rows, torch.Tensor):
        view = dst if cols is None else dst[:, cols]
        (view.index_add_ if accumulate else view.index_copy_)(0, rows, src)
        return
    view = dst if rows is None else dst[rows]
    if isinstance(cols, torch.Tensor):
        (view.index_add_ if accumulate else view.index_copy_)(1, cols, src)
    else:
        view = view if cols is None else view[:, cols]
        view.add_(src) if accumulate else view.copy_(src)


def scaled_mm(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale · a @ b`` with the scale applied inside the GEMM (its alpha), not as a second pass."""
    if scale == 1.0:
        return torch.mm(a, b)
    return torch.addmm(a.new_zeros(()), a, b, beta=0, alpha=scale)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a Linear on ``x`` computes in: the autocast dtype when autocast is on for x's device, else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class _RowLinear(torch.autograd.Function):
    """y = scale · x[:, in] · W[out][:, in]ᵀ + b[out], with the backward on the same compact block."""

    @staticmethod
    def forward(ctx, x, weight, bias, in_index, out_index, scale, x_compact, dtype):  # type: ignore[override]
        xc = x if (in_index is None or x_compact) else take(x, -1, in_index)
        x2 = xc.reshape(-1, xc.shape[-1]).to(dtype)
        wc = take(take(weight, 0, out_index), 1, in_index).to(dtype)
        if wc.stride(-1) != 1:  # column-strided: copy once here, so that the backward GEMMs reuse it
            wc = wc.contiguous()
        if bias is not None:  # bias and scale folded into the GEMM (beta = 1, alpha = scale)
            y = torch.addmm(take(bias, 0, out_index).to(dtype), x2, wc.t(), alpha=scale)
        else:
            y = scaled_mm(x2, wc.t(), scale)
        ctx.save_for_backward(x2, wc)
        ctx.meta = (x.shape, x.dtype, in_index, out_index, scale, x_compact, bias is not None)
        ctx.weight_shape, ctx.weight_dtype = weight.shape, weight.dtype
        return y.reshape(*xc.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        x2, wc = ctx.saved_tensors
        x_shape, x_dtype, in_index, out_index, scale, x_compact, has_bias = ctx.meta
        weight_shape = ctx.weight_shape
        g = grad_y.reshape(-1, grad_y.shape[-1]).to(wc.dtype)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            gxc = scaled_mm(g, wc, scale)
            if in_index is None or x_compact:
                grad_x = gxc.to(x_dtype).reshape(x_shape)
            else:
                grad_x = torch.zeros(x2.shape[0], x_shape[-1], dtype=x_dtype, device=g.device)
                put(grad_x, None, in_index, gxc.to(x_dtype))
                grad_x = grad_x.reshape(x_shape)
        if ctx.needs_input_grad[1]:
            gwc = scaled_mm(g.t(), x2, scale)
            grad_w = torch.zeros(weight_shape, dtype=ctx.weight_dtype, device=g.device)
            put(grad_w, out_index, in_index, gwc.to(ctx.weight_dtype))
        if has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0).to(ctx.weight_dtype)
            if out_index is None:
                grad_b = gb
            else:
                grad_b = torch.zeros(weight_shape[0], dtype=ctx.weight_dtype, device=g.device)
                put(grad_b[:, None], out_index, None, gb[:, None])
        return grad_x, grad_w, grad_b, None, None, None, None, None


def row_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_index: Index = None,
    out_index: Index = None,
    scale: float = 1.0,
    x_compact: bool = False,
) -> torch.Tensor:
    """Compact Linear for row patterns.

    Args:
        x: input ``(..., in_features)``, or ``(..., K_in)`` already gathered when ``x_compact``.
        weight, bias: the full parameters of the Linear (never copied whole).
        in_index: kept input units (columns of ``weight``); ``None`` = all.
        out_index: kept output units (rows of ``weight``); ``None`` = all.
        scale: factor on the product (the dropout scale of the input pattern; the bias is not scaled).
        x_compact: whether ``x`` already holds only the kept input units.

    Returns:
        ``(..., K_out)`` (or ``(..., out_features)`` when ``out_index`` is None). Gradients: ``x`` in its own layout
        (zeros at dropped units), ``weight``/``bias`` full size, zero outside the kept block.
    """
    dtype = compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        return _RowLinear.apply(x, weight, bias, in_index, out_index, float(scale), x_compact, dtype)


def tile_groups(
    kept_tiles: torch.Tensor, tile: tuple[int, int], out_features: int, in_features: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Group the tile rows that keep the same tile columns: (weight rows, weight columns) per group.

    A periodic tile pattern has at most ``dp`` distinct tile rows, so the tile GEMM becomes a handful of dense
    GEMMs on gathered blocks instead of one small GEMM per tile.
    """
    bm, bk = tile
    unique, inverse = torch.unique(kept_tiles.cpu(), dim=0, return_inverse=True)
    groups = []
    for g in range(unique.shape[0]):
        tile_rows = (inverse == g).nonzero().flatten()
        tile_cols = unique[g].nonzero().flatten()
        rows = (tile_rows[:, None] * bm + torch.arange(bm)).flatten()
        cols = (tile_cols[:, None] * bk + torch.arange(bk)).flatten()
        groups.append((rows[rows < out_features].to(device), cols[cols < in_features].to(device)))
    return groups


class _TileLinear(torch.autograd.Function):
    """y = x · (scale · W ⊙ M)ᵀ + b for a tile mask M, computed group by group on the kept tiles only."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups, scale, dtype):  # type: ignore[override]
        x2 = x.reshape(-1, x.shape[-1]).to(dtype)
        y = torch.zeros(x2.shape[0], weight.shape[0], dtype=dtype, device=x.device)
        for rows, cols in groups:
            if cols.numel():
                wg = weight.index_select(0, rows).index_select(1, cols).to(dtype)
                y.index_copy_(1, rows, torch.mm(x2.index_select(1, cols), wg.t()))
        if scale != 1.0:
            y.mul_(scale)
        if bias is not None:
            y.add_(bias.to(dtype))
        ctx.save_for_backward(x2, weight)
        ctx.meta = (x.shape, x.dtype, groups, scale, bias is not None)
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        x2, weight = ctx.saved_tensors
        x_shape, x_dtype, groups, scale, has_bias = ctx.meta
        g = grad_y.reshape(-1, grad_y.shape[-1]).to(x2.dtype)
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = torch.zeros_like(x2) if want_x else None
        grad_w = torch.zeros_like(weight) if want_w else None
        for rows, cols in groups:
            if not cols.numel():
                continue
            gg = g.index_select(1, rows)
            if want_x:
                wg = weight.index_select(0, rows).index_select(1, cols).to(x2.dtype)
                grad_x.index_add_(1, cols, torch.mm(gg, wg), alpha=scale)
            if want_w:
                gw = torch.mm(gg.t(), x2.index_select(1, cols))
                if scale != 1.0:
                    gw.mul_(scale)
                put(grad_w, rows, cols, gw.to(weight.dtype))
        if want_x:
            grad_x = grad_x.to(x_dtype).reshape(x_shape)
        grad_b = g.sum(0).to(weight.dtype) if has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None, None


def tile_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    kept_tiles: torch.Tensor,
    tile: tuple[int, int],
    scale: float = 1.0,
) -> torch.Tensor:
    """Tile-skipping Linear: ``x · (scale · W ⊙ M)ᵀ + b`` where M keeps whole ``tile``-shaped blocks of ``W``.

    Args:
        x: input ``(..., in_features)``.
        weight, bias: full parameters of the Linear.
        kept_tiles: bool ``(ceil(out/rows), ceil(in/cols))``, True where a tile is kept.
        tile: ``(rows, cols)`` of a tile.
        scale: factor on kept weights (``dp / k``); the bias is not scaled.

    Returns:
        ``(..., out_features)``; gradients of ``weight`` are zero on dropped tiles.
    """
    dtype = compute_dtype(x)
    groups = tile_groups(kept_tiles, tile, weight.shape[0], weight.shape[1], x.device)
    with torch.autocast(x.device.type, enabled=False):
        return _TileLinear.apply(x, weight, bias, groups, float(scale), dtype)
