"""The backend interface: what an ARD layer calls for its compact products, so kernels can change without the layers.

Implementations: :class:`~lightning_ard.kernels.torch_backend.TorchBackend` (PyTorch ops, any device),
:class:`~lightning_ard.kernels.gathered.GatheredBackend` (gathered blocks and library GEMMs),
:class:`~lightning_ard.kernels.grouped_mm.GroupedMMBackend` (the gathered backend with ``torch._grouped_mm`` for
pattern groups) and :class:`~lightning_ard.kernels.triton.backend.TritonBackend` (Triton kernels on CUDA);
:func:`~lightning_ard.kernels.select.get_backend` picks one for a device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

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

    @abstractmethod
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
        compact per group (``out_compact``, every group keeping the same number of output units). Gradients:
        ``x`` in its own layout, ``weight`` and ``bias`` full size with each group's kept block added in.
        """

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


def check_devices(x: torch.Tensor, weight: torch.Tensor) -> None:
    """Raise unless the input and the weight are on one device."""
    if x.device != weight.device:
        raise ValueError(f"input on {x.device} but weight on {weight.device}: move both to one device")
