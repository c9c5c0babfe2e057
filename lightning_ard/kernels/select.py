"""Backend selection: ``"auto" | "torch" | "triton"`` resolved for the device of a layer's tensors."""

from __future__ import annotations

import os

import torch

from lightning_ard.kernels.base import Backend
from lightning_ard.kernels.torch_backend import TorchBackend


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
    if name not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be one of ['auto', 'torch', 'triton'], got {name!r}")
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
        from lightning_ard.kernels.triton.backend import TritonBackend
    except ImportError as err:  # the Triton backend module is optional until it lands
        if name == "auto":
            return TorchBackend()
        raise ValueError(f"backend='triton' is not available: {err}; use backend='torch' or 'auto'") from err
    return TritonBackend()
