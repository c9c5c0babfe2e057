"""The backend interface: what an ARD layer calls for its compact products, so kernels can change without the layers.

Implementations: :class:`~lightning_ard.kernels.torch_backend.TorchBackend` (PyTorch ops, any device) and
:class:`~lightning_ard.kernels.triton.backend.TritonBackend` (Triton kernels on CUDA);
:func:`~lightning_ard.kernels.select.get_backend` picks one for a device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from lightning_ard.kernels import torch_ops
from lightning_ard.patterns import RowPattern, TilePattern
from lightning_ard.patterns.groups import group_bounds


class Backend(ABC):
    """Computes ARD Linear products for row and tile patterns."""

    name: str

    @abstractmethod
    def row_linear(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        in_pattern: RowPattern | None,
        out_pattern: RowPattern | None,
        x_compact: bool,
    ) -> torch.Tensor:
        """``in_scale · x[:, in] · W[out][:, in]ᵀ + b[out]`` (see :func:`torch_ops.row_linear`)."""

    @abstractmethod
    def tile_linear(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pattern: TilePattern
    ) -> torch.Tensor:
        """``x · (scale · W ⊙ M)ᵀ + b`` (see :func:`torch_ops.tile_linear`)."""

    def row_linear_groups(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        in_patterns: tuple[RowPattern, ...] | None,
        out_patterns: tuple[RowPattern, ...] | None,
        x_compact: bool = False,
        out_compact: bool = False,
    ) -> torch.Tensor:
        """One row pattern per group of rows (:mod:`lightning_ard.patterns.groups`).

        ``x`` is full width, or compact per group (``x_compact``: every group keeps K input units and row r holds
        its group's kept units). The output is full width with zeros at a group's dropped output units, or
        compact per group (``out_compact``, every group keeping the same number of output units). Groups that
        drew the same patterns are merged into one row set. This default runs :meth:`row_linear` once per row set
        (each call makes its own full-size weight gradient, which autograd adds: cheap on a GPU).
        """
        x2 = x.reshape(-1, x.shape[-1])
        sets = row_sets(x2.shape[0], in_patterns, out_patterns, x.device)
        if not sets:  # no rows at all
            return torch.nn.functional.linear(x, weight, bias)
        parts, order = [], []
        for rows, inp, out in sets:
            y = self.row_linear(torch_ops.take(x2, 0, rows), weight, bias, inp, out, x_compact and inp is not None)
            parts.append(_scatter_columns(y, out, weight.shape[0]) if out is not None and not out_compact else y)
            order.append(torch.arange(rows.start, rows.stop) if isinstance(rows, slice) else rows.cpu())
        y = torch.cat(parts)
        perm = torch.cat(order)
        if not torch.equal(perm, torch.arange(perm.numel())):  # back to the input's row order
            y = y.index_select(0, torch.argsort(perm).to(y.device))
        return y.reshape(*x.shape[:-1], y.shape[-1])

    def tile_linear_groups(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, patterns: tuple[TilePattern, ...]
    ) -> torch.Tensor:
        """One tile pattern per group of rows: :meth:`tile_linear` on each group's rows."""
        x2 = x.reshape(-1, x.shape[-1])
        parts = [
            self.tile_linear(x2[r0:r1], weight, bias, patterns[g])
            for g, (r0, r1) in enumerate(group_bounds(x2.shape[0], len(patterns)))
            if r1 > r0
        ]
        if not parts:  # no rows at all
            return torch.nn.functional.linear(x, weight, bias)
        return torch.cat(parts).reshape(*x.shape[:-1], weight.shape[0])


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
