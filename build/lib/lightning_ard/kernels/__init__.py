"""Kernels: PyTorch reference ops (CPU path and oracle), Triton kernels (CUDA), and backend selection."""

from lightning_ard.kernels.base import Backend, TorchBackend, get_backend
from lightning_ard.kernels.torch_ops import row_linear, tile_linear

__all__ = ["Backend", "TorchBackend", "get_backend", "row_linear", "tile_linear"]
