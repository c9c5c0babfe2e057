"""Kernels: the backend interface, PyTorch ops (CPU path and oracle), the gathered backend (library GEMMs on gathered
blocks), the grouped_mm backend (``torch._grouped_mm`` for pattern groups), Triton kernels (CUDA), the one form of
kept units (:mod:`~lightning_ard.kernels.kept`), backend selection and measurement."""

from lightning_ard.kernels.base import Backend
from lightning_ard.kernels.gathered import GatheredBackend
from lightning_ard.kernels.grouped_mm import GroupedMMBackend
from lightning_ard.kernels.kept import Kept, kept_units
from lightning_ard.kernels.select import (
    BACKEND_NAMES,
    BackendChoice,
    candidate_backends,
    fastest_backend,
    fastest_layer_backend,
    get_backend,
    triton_usable,
)
from lightning_ard.kernels.torch_backend import TorchBackend
from lightning_ard.kernels.torch_ops import row_linear, tile_linear

__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "BackendChoice",
    "GatheredBackend",
    "GroupedMMBackend",
    "Kept",
    "TorchBackend",
    "candidate_backends",
    "fastest_backend",
    "fastest_layer_backend",
    "get_backend",
    "kept_units",
    "row_linear",
    "tile_linear",
    "triton_usable",
]
