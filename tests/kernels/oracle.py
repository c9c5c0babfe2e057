"""The oracle of every grouped product: one :meth:`Backend.row_linear` call per set of rows that drew the same
patterns, outputs scattered to full width and put back in the input's row order (each call makes its own full-size
weight gradient, which autograd adds). Slow and obviously right; only tests run it."""

from __future__ import annotations

import torch

from lightning_ard.kernels import torch_ops
from lightning_ard.kernels.base import Backend
from lightning_ard.patterns import RowPattern
from lightning_ard.patterns.groups import group_bounds


def row_linear_groups_oracle(  # type: ignore[no-untyped-def]
    backend: Backend, x, weight, bias, in_patterns, out_patterns, x_compact=False, out_compact=False
) -> torch.Tensor:
    """:meth:`Backend.row_linear_groups` through ``backend.row_linear`` once per row set (same contract)."""
    x2 = x.reshape(-1, x.shape[-1])
    sets = row_sets(x2.shape[0], in_patterns, out_patterns, x.device)
    if not sets:  # no rows at all
        return torch.nn.functional.linear(x, weight, bias)
    parts, order = [], []
    for rows, inp, out in sets:
        y = backend.row_linear(torch_ops.take(x2, 0, rows), weight, bias, inp, out, x_compact and inp is not None)
        parts.append(_scatter_columns(y, out, weight.shape[0]) if out is not None and not out_compact else y)
        order.append(torch.arange(rows.start, rows.stop) if isinstance(rows, slice) else rows.cpu())
    y = torch.cat(parts)
    perm = torch.cat(order)
    if not torch.equal(perm, torch.arange(perm.numel())):  # back to the input's row order
        y = y.index_select(0, torch.argsort(perm).to(y.device))
    return y.reshape(*x.shape[:-1], y.shape[-1])


def _scatter_columns(y: torch.Tensor, pattern: RowPattern, width: int) -> torch.Tensor:
    """Compact ``(rows, K)`` columns placed at the pattern's kept units of a zero ``(rows, width)`` (autograd-safe)."""
    full = y.new_zeros(y.shape[0], width)
    return full.index_copy(1, pattern.index(y.device), y)


def row_sets(
    rows: int,
    in_patterns: tuple[RowPattern, ...] | None,
    out_patterns: tuple[RowPattern, ...] | None,
    device: torch.device,
) -> list[tuple[torch.Tensor | slice, RowPattern | None, RowPattern | None]]:
    """Split ``rows`` into the groups' contiguous chunks and merge the chunks whose groups drew the same
    (input, output) patterns: ``(rows, in_pattern, out_pattern)`` per distinct pair, rows a slice or an index
    tensor on ``device``. Empty chunks are dropped."""
    groups = len(in_patterns or out_patterns or ())
    bounds = group_bounds(rows, groups)
    merged: dict[object, tuple[list[int], RowPattern | None, RowPattern | None]] = {}
    for g, (r0, r1) in enumerate(bounds):
        if r1 == r0:
            continue
        inp = in_patterns[g] if in_patterns is not None else None
        out = out_patterns[g] if out_patterns is not None else None
        key = (inp.merge_key if inp is not None else None, out.merge_key if out is not None else None)
        merged.setdefault(key, ([], inp, out))[0].append(g)
    return [(_row_set(bounds, members, device), inp, out) for members, inp, out in merged.values()]


def _row_set(bounds: list[tuple[int, int]], members: list[int], device: torch.device) -> torch.Tensor | slice:
    """The rows of the groups ``members``: a slice for one group (or adjacent ones), else an index tensor."""
    spans = [bounds[g] for g in members]
    if all(a[1] == b[0] for a, b in zip(spans, spans[1:])):
        return slice(spans[0][0], spans[-1][1])
    starts = torch.tensor([r0 for r0, _ in spans])
    sizes = torch.tensor([r1 - r0 for r0, r1 in spans])
    offsets = torch.arange(int(sizes.sum())) - torch.repeat_interleave(sizes.cumsum(0) - sizes, sizes)
    return (torch.repeat_interleave(starts, sizes) + offsets).to(device, non_blocking=True)
