"""The Triton backend: the row, tile and grouped Triton ops (:mod:`~lightning_ard.kernels.triton.row`,
:mod:`~lightning_ard.kernels.triton.tile`, :mod:`~lightning_ard.kernels.triton.grouped`) behind the backend
interface.

Same contract as the PyTorch ops of :mod:`lightning_ard.kernels.torch_ops` (the oracle): the output is in the
compute dtype (the autocast dtype when autocast is on, else the input's), ``grad_x`` has the input's layout and
dtype (zeros at dropped units when the input was full width), ``grad_W`` / ``grad_b`` are full-size tensors in the
parameters' dtypes, zero outside the kept part, so autograd accumulation, DDP hooks and optimizers see ordinary
gradients.

Operands are never cast or gathered into copies: kernels read the parameters and activations in their stored
dtype through index vectors / tile tables, cast tiles to the compute dtype in registers and accumulate in float32.
Runs on CUDA, or on any device under ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import warnings

import torch

from lightning_ard.kernels.base import Backend, check_devices
from lightning_ard.kernels.kept import kept_units
from lightning_ard.kernels.torch_backend import TorchBackend
from lightning_ard.kernels.torch_ops import compute_dtype
from lightning_ard.kernels.triton.common import INTERPRET, precision_for  # noqa: F401 (re-exported for tests)
from lightning_ard.kernels.triton.grouped import grouped_row_linear
from lightning_ard.kernels.triton.row import RowLinearFn
from lightning_ard.kernels.triton.tile import TileLinearFn, tile_tables

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class TritonBackend(Backend):
    """Triton kernels for CUDA tensors (or any tensors under TRITON_INTERPRET=1).

    float32, float16 and bfloat16 run the kernels; other dtypes (float64) fall back to the PyTorch ops, with a
    warning, since tensor cores do not multiply them.
    """

    name = "triton"

    def _check_device(self, x: torch.Tensor, weight: torch.Tensor) -> None:
        check_devices(x, weight)
        if x.device.type != "cuda" and not INTERPRET:
            raise ValueError(
                f"the Triton backend got tensors on {x.device}: it needs CUDA tensors (or TRITON_INTERPRET=1 set "
                "before lightning_ard's Triton modules are imported); use backend='torch' or 'auto'"
            )

    def _fallback(self, dtype: torch.dtype) -> bool:
        if dtype in SUPPORTED_DTYPES:
            return False
        warnings.warn(f"Triton ARD kernels do not support {dtype}; using the PyTorch ops", stacklevel=3)
        return True

    def row_linear(self, x, weight, bias, in_pattern, out_pattern, x_compact):  # type: ignore[no-untyped-def]
        self._check_device(x, weight)
        dtype = compute_dtype(x)
        if self._fallback(dtype):
            return TorchBackend().row_linear(x, weight, bias, in_pattern, out_pattern, x_compact)
        device = x.device
        n_out, n_in = weight.shape
        ins = kept_units(in_pattern, in_pattern.width if in_pattern is not None else n_in, device, "input pattern")
        outs = kept_units(out_pattern, out_pattern.width if out_pattern is not None else n_out, device,
                          "output pattern")  # fmt: skip
        in_idx, out_idx = ins.index32, outs.index32
        scale = float(in_pattern.scale) if in_pattern is not None else 1.0
        x_compact = bool(x_compact) and in_idx is not None
        dropped = None
        if in_idx is not None and not x_compact and torch.is_grad_enabled() and x.requires_grad:
            dropped = ins.dropped32
        with torch.autocast(device.type, enabled=False):
            return RowLinearFn.apply(x, weight, bias, in_idx, out_idx, dropped, scale, x_compact, dtype)

    def row_linear_groups(  # type: ignore[no-untyped-def]
        self, x, weight, bias, in_patterns, out_patterns, x_compact=False, out_compact=False
    ):
        """All groups in one launch per product (:mod:`lightning_ard.kernels.triton.grouped`): one grouped kernel
        instead of a launch and a full-size weight gradient per group."""
        self._check_device(x, weight)
        if self._fallback(compute_dtype(x)):
            return TorchBackend().row_linear_groups(x, weight, bias, in_patterns, out_patterns, x_compact, out_compact)
        return grouped_row_linear(x, weight, bias, in_patterns, out_patterns, x_compact, out_compact)

    def tile_linear(self, x, weight, bias, pattern):  # type: ignore[no-untyped-def]
        self._check_device(x, weight)
        if (pattern.out_features, pattern.in_features) != tuple(weight.shape):
            raise ValueError(
                f"tile pattern shape {(pattern.out_features, pattern.in_features)} does not match the weight "
                f"shape {tuple(weight.shape)}: draw the pattern for this layer"
            )
        dtype = compute_dtype(x)
        if self._fallback(dtype):
            return TorchBackend().tile_linear(x, weight, bias, pattern)
        tables = tile_tables(pattern, x.device)
        with torch.autocast(x.device.type, enabled=False):
            return TileLinearFn.apply(x, weight, bias, tables, tuple(pattern.tile), float(pattern.scale), dtype)
