"""The PyTorch backend: ARD products through the ops of :mod:`lightning_ard.kernels.torch_ops` (CPU path and oracle)."""

from __future__ import annotations

import torch

from lightning_ard.kernels import torch_ops
from lightning_ard.kernels.base import Backend, row_sets


class TorchBackend(Backend):
    """PyTorch ops: strided views for periodic k = 1 patterns, index gathers otherwise. Runs on any device."""

    name = "torch"

    def row_linear(self, x, weight, bias, in_pattern, out_pattern, x_compact):  # type: ignore[no-untyped-def]
        scale = in_pattern.scale if in_pattern is not None else 1.0
        return torch_ops.row_linear(
            x,
            weight,
            bias,
            in_pattern.selector(x.device) if in_pattern is not None else None,
            out_pattern.selector(x.device) if out_pattern is not None else None,
            scale,
            x_compact,
        )

    def tile_linear(self, x, weight, bias, pattern):  # type: ignore[no-untyped-def]
        return torch_ops.tile_linear(x, weight, bias, pattern.kept_tiles, pattern.tile, pattern.scale)

    def row_linear_groups(self, x, weight, bias, in_patterns, out_patterns):  # type: ignore[no-untyped-def]
        sets = row_sets(x.numel() // max(x.shape[-1], 1), in_patterns, out_patterns, x.device)
        if not sets:  # no rows at all
            return torch.nn.functional.linear(x, weight, bias)
        spec = [
            (
                rows,
                inp.selector(x.device) if inp is not None else None,
                out.selector(x.device) if out is not None else None,
                inp.scale if inp is not None else 1.0,
            )
            for rows, inp, out in sets
        ]
        return torch_ops.grouped_row_linear(x, weight, bias, spec)
