"""Grouped compact Linear on the PyTorch path: every pattern group is its own small dense product.

Group g owns a set of rows of the (flattened) input and its own kept input units and output units. Its product
``y_g = scale_g · x_g[:, in_g] · W[out_g][:, in_g]ᵀ + b[out_g]`` is computed on weight *views* where the kept
units are contiguous ranges (block patterns: one range, or two where the block wraps around the end), with the
result written straight into its place in the output (``addmm(..., out=view)``, no per-group temporaries), and the
backward writes each group's block of the weight gradient into one full-size gradient in place: disjoint blocks
overwrite, the rest add on, and only what no block covers is zeroed (:mod:`lightning_ard.kernels.cover`).

Compact layouts: when every group keeps the same number K of input (output) units, the input (output) may be a
dense ``(rows, K)`` tensor whose row r holds the kept units of r's group, in sorted unit order ("compact per
group"). A producer then hands its compact output through the activation to its consumer, as with one pattern.

A unit selection (:data:`~lightning_ard.kernels.kept.Selection`) is ``None`` (all units), a tuple of
``(start, stop)`` ranges in sorted order, a strided slice, or an int64 index tensor (random patterns: gathered).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lightning_ard.kernels.cover import plan_cover
from lightning_ard.kernels.kept import Index, Selection
from lightning_ard.kernels.torch_ops import compute_dtype, put, take


@dataclass(frozen=True)
class Group:
    """One pattern group of a grouped Linear: its rows, kept input and output units and scale."""

    rows: slice | torch.Tensor
    in_units: Selection
    out_units: Selection
    scale: float


def _parts(units: Selection, width: int) -> list[tuple[Index, slice]]:
    """``(units, compact columns)`` pieces of a selection: unit ranges (or one index) and where they sit compact."""
    if units is None:
        return [(slice(0, width), slice(0, width))]
    if isinstance(units, (torch.Tensor, slice)):
        return [(units, slice(0, selection_size(units, width)))]
    parts, at = [], 0
    for start, stop in units:
        parts.append((slice(start, stop), slice(at, at + stop - start)))
        at += stop - start
    return parts


def selection_size(units: Selection, width: int) -> int:
    """Number of kept units of a selection."""
    if units is None:
        return width
    if isinstance(units, torch.Tensor):
        return int(units.numel())
    if isinstance(units, slice):
        return len(range(*units.indices(width)))
    return sum(stop - start for start, stop in units)


class _GroupedLinear(torch.autograd.Function):
    """y[rows_g] = scale_g · x[rows_g][:, in_g] · W[out_g][:, in_g]ᵀ + b[out_g] per group, all on the kept blocks."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups, x_compact, out_compact, dtype):  # type: ignore[override]
        x2 = x.reshape(-1, x.shape[-1])
        n_out, n_in = weight.shape
        out_width = selection_size(groups[0].out_units, n_out) if out_compact else n_out
        covered = out_compact or all(g.out_units is None for g in groups)
        y = (torch.empty if covered else torch.zeros)(x2.shape[0], out_width, dtype=dtype, device=x.device)
        parts = [(_parts(g.out_units, n_out), _parts(g.in_units, n_in)) for g in groups]  # reused by backward
        w_cast = _cast(weight, dtype)
        for g, (o_parts, i_parts) in zip(groups, parts):
            xg = _take(x2, 0, g.rows)
            y_rows = _take(y, 0, g.rows) if isinstance(g.rows, slice) else None
            for o_units, o_cols in o_parts:
                dst_cols = o_cols if out_compact else o_units
                w_rows = _take(w_cast, 0, o_units)
                direct = y_rows is not None and isinstance(dst_cols, slice)
                acc = _take(y_rows, 1, dst_cols) if direct else None  # type: ignore[arg-type]
                for i, (i_units, i_cols) in enumerate(i_parts):
                    a = _cast(_take(xg, 1, i_cols if x_compact else i_units), dtype)
                    w = _take(w_rows, 1, i_units)
                    if i == 0:
                        b = _cast(_take(bias, 0, o_units), dtype) if bias is not None else None
                        if acc is None:
                            acc = torch.mm(a, w.t()).mul_(g.scale) if g.scale != 1.0 else torch.mm(a, w.t())
                            if b is not None:
                                acc.add_(b)
                        elif b is not None:  # bias folded into the product (beta = 1 on the broadcast bias)
                            torch.addmm(b, a, w.t(), alpha=g.scale, out=acc)
                        else:
                            torch.addmm(acc, a, w.t(), beta=0, alpha=g.scale, out=acc)
                    else:
                        torch.addmm(acc, a, w.t(), alpha=g.scale, out=acc)
                if not direct:
                    put(y, g.rows, dst_cols, acc)  # type: ignore[arg-type]
        ctx.save_for_backward(x2, weight)
        ctx.meta = (x.shape, x.dtype, groups, parts, x_compact, out_compact, bias is not None, dtype)
        return y.reshape(*x.shape[:-1], out_width)

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        x2, weight = ctx.saved_tensors
        x_shape, x_dtype, groups, parts, x_compact, out_compact, has_bias, dtype = ctx.meta
        n_out, n_in = weight.shape
        gy = _cast(grad_y.reshape(-1, grad_y.shape[-1]), dtype)
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        want_b = has_bias and ctx.needs_input_grad[2]
        grad_x = grad_w = grad_b = None
        if want_x:
            covered = x_compact or all(g.in_units is None for g in groups)
            grad_x = (torch.empty if covered else torch.zeros)(x2.shape[0], x_shape[-1], dtype=dtype, device=gy.device)
        blocks: list[tuple[Index, Index, torch.Tensor, torch.Tensor, float]] = []  # weight-gradient blocks
        if want_b:
            grad_b = torch.zeros(n_out, dtype=weight.dtype, device=gy.device)
        w_cast = _cast(weight, dtype)
        for g, (o_parts, i_parts) in zip(groups, parts):
            xg, gyg = _take(x2, 0, g.rows), _take(gy, 0, g.rows)
            for o, (o_units, o_cols) in enumerate(o_parts):
                go = _take(gyg, 1, o_cols if out_compact else o_units)
                w_rows = _take(w_cast, 0, o_units)
                if want_b:
                    _add_bias_grad(grad_b, o_units, _cast(go.sum(0), weight.dtype))
                for i_units, i_cols in i_parts:
                    if want_x:
                        w = _take(w_rows, 1, i_units)
                        _grad_input(grad_x, g.rows, i_cols if x_compact else i_units, go, w, g.scale, o > 0)
                    if want_w:
                        a = _cast(_take(xg, 1, i_cols if x_compact else i_units), dtype)
                        blocks.append((o_units, i_units, go, a, g.scale))
        if want_w:
            grad_w = _weight_gradient(blocks, weight)
        if want_x:
            grad_x = grad_x.to(x_dtype).reshape(x_shape)
        return grad_x, grad_w, grad_b, None, None, None, None


def _grad_input(grad_x: torch.Tensor, rows: slice | torch.Tensor, cols: Index, go: torch.Tensor, w: torch.Tensor,
                scale: float, accumulate: bool) -> None:  # fmt: skip
    """``grad_x[rows][:, cols] (+)= scale · go w``, straight into the view when rows and columns are ranges."""
    if isinstance(rows, slice) and _unit_stride(cols):
        view = _take(_take(grad_x, 0, rows), 1, cols)
        torch.addmm(view, go, w, beta=1 if accumulate else 0, alpha=scale, out=view)
        return
    gx = torch.mm(go, w)
    if scale != 1.0:
        gx.mul_(scale)
    put(grad_x, rows, cols, gx, accumulate=accumulate)


def _weight_gradient(
    blocks: list[tuple[Index, Index, torch.Tensor, torch.Tensor, float]], weight: torch.Tensor
) -> torch.Tensor:
    """The full-size weight gradient: the sum of every group's block ``scale · goᵀ a`` at (rows, cols).

    When every block is a pair of ranges, disjoint blocks overwrite (``beta = 0``) and only what none of them
    covers is zeroed (:func:`~lightning_ard.kernels.cover.plan_cover`); gathered units fall back to zeros and
    adding every block."""
    n_out, n_in = weight.shape
    rects = [_rect(rows, cols, n_out, n_in) for rows, cols, *_ in blocks]
    if any(r is None for r in rects):
        grad_w = torch.zeros(n_out, n_in, dtype=weight.dtype, device=weight.device)
        for rows, cols, go, a, scale in blocks:
            _write_weight(grad_w, rows, cols, go, a, scale, accumulate=True)
        return grad_w
    first, fills = plan_cover(rects, n_out, n_in)  # type: ignore[arg-type]
    grad_w = torch.empty(n_out, n_in, dtype=weight.dtype, device=weight.device)
    for r0, r1, c0, c1 in fills:
        grad_w[r0:r1, c0:c1].zero_()
    for k in sorted(range(len(blocks)), key=lambda k: not first[k]):  # overwriting blocks before adding ones
        rows, cols, go, a, scale = blocks[k]
        _write_weight(grad_w, rows, cols, go, a, scale, accumulate=not first[k])
    return grad_w


def _rect(rows: Index, cols: Index, n_rows: int, n_cols: int) -> tuple[int, int, int, int] | None:
    """``(r0, r1, c0, c1)`` of a block whose rows and columns are both ranges; ``None`` otherwise."""
    if not (_unit_stride(rows) and _unit_stride(cols)):
        return None
    r, c = range(n_rows)[rows], range(n_cols)[cols]  # type: ignore[index]
    return (r.start, r.stop, c.start, c.stop)


def _write_weight(grad_w: torch.Tensor, rows: Index, cols: Index, go: torch.Tensor, a: torch.Tensor,
                  scale: float, accumulate: bool) -> None:  # fmt: skip
    """``grad_w[rows][:, cols] (+)= scale · goᵀ a``, in place on a view when both are ranges."""
    if _unit_stride(rows) and _unit_stride(cols) and grad_w.dtype == go.dtype:
        block = _take(_take(grad_w, 0, rows), 1, cols)
        torch.addmm(block, go.t(), a, beta=1 if accumulate else 0, alpha=scale, out=block)  # out=: counted FLOPs
        return
    block = torch.mm(go.t(), a)
    if scale != 1.0:
        block.mul_(scale)
    put(grad_w, rows, cols, block.to(grad_w.dtype), accumulate=accumulate)


def _add_bias_grad(grad_b: torch.Tensor, units: Index, summed: torch.Tensor) -> None:
    """``grad_b[units] += summed`` (a view for ranges)."""
    if type(units) is slice and units.step is None:
        grad_b.narrow(0, units.start, units.stop - units.start).add_(summed)
    else:
        put(grad_b[:, None], units, None, summed[:, None], accumulate=True)


def _take(t: torch.Tensor, dim: int, index: Index) -> torch.Tensor:
    """:func:`~lightning_ard.kernels.torch_ops.take` with ranges as basic-slicing views (dims 0 and 1): cheaper
    than ``t.narrow``, and a grouped step makes hundreds of views (docs/notes/kernels.md)."""
    if type(index) is slice and index.step is None:
        return t[index] if dim == 0 else t[:, index]
    return take(t, dim, index)


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _unit_stride(index: Index) -> bool:
    return isinstance(index, slice) and index.step in (None, 1)


def grouped_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    groups: Sequence[Group],
    x_compact: bool = False,
    out_compact: bool = False,
) -> torch.Tensor:
    """Linear with one row pattern per group of rows, each group a compact product on weight views.

    Args:
        x: input ``(..., in_features)``, or ``(..., K_in)`` compact per group when ``x_compact`` (every group
            keeps K_in input units).
        weight, bias: the full parameters of the Linear (never copied whole).
        groups: the groups; their rows must partition the flattened rows of ``x``.
        x_compact: whether ``x`` holds each row's group's kept input units only.
        out_compact: return ``(..., K_out)`` compact per group (every group keeps K_out output units) instead of
            full width with zeros at each group's dropped output units.

    Returns:
        The output; gradients: ``x`` in its own layout (zeros at dropped units when full width), ``weight`` and
        ``bias`` full size, each group's kept block added in.
    """
    dtype = compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        return _GroupedLinear.apply(x, weight, bias, tuple(groups), bool(x_compact), bool(out_compact), dtype)
