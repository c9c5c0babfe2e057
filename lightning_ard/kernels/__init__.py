"""Kernels: the backend interface, PyTorch ops (CPU path and oracle), Triton kernels (CUDA), backend selection."""

from lightning_ard.kernels.base import Backend
from lightning_ard.kernels.select import get_backend, triton_usable
from lightning_ard.kernels.torch_backend import TorchBackend
from lightning_ard.kernels.torch_ops import row_linear, tile_linear

__all__ = ["Backend", "TorchBackend", "get_backend", "row_linear", "tile_linear", "triton_usable"]
