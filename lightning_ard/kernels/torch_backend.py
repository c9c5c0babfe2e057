"""The PyTorch backend: ARD products through the ops of :mod:`lightning_ard.kernels.torch_ops` (CPU path and oracle)."""

from __future__ import annotations

import torch

from lightning_ard.kernels import torch_ops
from lightning_ard.kernels.base import Backend
from lightning_ard.kernels.kept import Index, Selection, kept_units
from lightning_ard.kernels.torch_grouped import Group, grouped_linear
from lightning_ard.patterns import RowPattern
from lightning_ard.patterns.groups import group_bounds, pattern_key


class TorchBackend(Backend):
    """PyTorch ops: strided views for periodic k = 1 patterns, index gathers otherwise. Runs on any device."""

    name = "torch"

    def row_linear(self, x, weight, bias, in_pattern, out_pattern, x_compact):  # type: ignore[no-untyped-def]
        scale = in_pattern.scale if in_pattern is not None else 1.0
        return torch_ops.row_linear(
            x,
            weight,
            bias,
            _selector(in_pattern, x.device),
            _selector(out_pattern, x.device),
            scale,
            x_compact,
        )

    def tile_linear(self, x, weight, bias, pattern):  # type: ignore[no-untyped-def]
        return torch_ops.tile_linear(x, weight, bias, pattern.kept_tiles, pattern.tile, pattern.scale)

    def row_linear_groups(  # type: ignore[no-untyped-def]
        self, x, weight, bias, in_patterns, out_patterns, x_compact=False, out_compact=False
    ):
        groups = _groups(x.numel() // max(x.shape[-1], 1), in_patterns, out_patterns, x.device)
        if not groups:  # no rows at all
            return torch.nn.functional.linear(x, weight, bias)
        return grouped_linear(x, weight, bias, groups, x_compact, out_compact)


def _selector(pattern: RowPattern | None, device: torch.device) -> Index:
    """How the ops take a pattern's kept units: all (None), a view (slice) or a gather (the ops check shapes)."""
    return None if pattern is None else kept_units(pattern, pattern.width, device).selector


def _selection(pattern: RowPattern | None, device: torch.device) -> Selection:
    """How the grouped op takes a pattern's kept units: ranges (weight views) when it can, else a gather."""
    return None if pattern is None else kept_units(pattern, pattern.width, device).selection


def _groups(
    rows: int,
    in_patterns: tuple[RowPattern, ...] | None,
    out_patterns: tuple[RowPattern, ...] | None,
    device: torch.device,
) -> list[Group]:
    """One :class:`Group` per run of adjacent row groups that drew the same patterns (empty groups dropped)."""
    count = len(in_patterns or out_patterns or ())
    out: list[Group] = []
    last_key: object = None
    for g, (r0, r1) in enumerate(group_bounds(rows, count)):
        if r1 == r0:
            continue
        inp = in_patterns[g] if in_patterns is not None else None
        outp = out_patterns[g] if out_patterns is not None else None
        key = pattern_key(inp, outp)
        if out and key == last_key and out[-1].rows.stop == r0:  # type: ignore[union-attr]
            prev = out.pop()
            out.append(Group(slice(prev.rows.start, r1), prev.in_units, prev.out_units, prev.scale))  # type: ignore[union-attr]
            continue
        scale = inp.scale if inp is not None else 1.0
        out.append(Group(slice(r0, r1), _selection(inp, device), _selection(outp, device), scale))
        last_key = key
    return out
