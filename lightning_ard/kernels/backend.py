"""Backends: the object an ARD layer calls for its compact products, so kernels can change without the layers.

``TorchBackend`` runs the PyTorch ops of :mod:`lightning_ard.kernels.torch_ops` (any device).
``TritonBackend`` (:mod:`lightning_ard.kernels.triton_backend`) runs Triton kernels on CUDA.
:func:`get_backend` resolves ``"auto" | "torch" | "triton"`` for a device.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

import torch

from lightning_ard._validate import check_choice
from lightning_ard.kernels import torch_ops
from lightning_ard.patterns import RowPattern, TilePattern

BACKENDS = ("auto", "torch", "triton")


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


def triton_usable(device: torch.device) -> bool:
    """Triton kernels can run on ``device``: CUDA with triton installed, or any device under TRITON_INTERPRET=1."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def get_backend(name: str, device: torch.device | str) -> Backend:
    """Resolve a backend name for tensors on ``device``.

    ``"auto"`` takes Triton for CUDA tensors when the Triton backend is available, the PyTorch path elsewhere;
    ``"triton"`` and ``"torch"`` force one. Forcing Triton where it cannot run raises.
    """
    check_choice("backend", name, BACKENDS)
    device = torch.device(device)
    if name == "torch" or (name == "auto" and device.type != "cuda"):
        return TorchBackend()
    if not triton_usable(device):
        if name == "auto":
            return TorchBackend()
        raise ValueError(
            f"backend='triton' cannot run on device {device}: Triton needs a CUDA device "
            "(or TRITON_INTERPRET=1 set before import for the CPU interpreter); use backend='torch' or 'auto'"
        )
    try:
        from lightning_ard.kernels.triton_backend import TritonBackend
    except ImportError as err:  # the Triton backend module is optional until it lands
        if name == "auto":
            return TorchBackend()
        raise ValueError(f"backend='triton' is not available: {err}; use backend='torch' or 'auto'") from err
    return TritonBackend()
