"""The Triton backend: autograd Functions over the compact gather GEMM and the tile-skipping GEMM.

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
import weakref

import torch

from lightning_ard.kernels.base import Backend
from lightning_ard.kernels.indices import check_kept
from lightning_ard.kernels.torch_backend import TorchBackend
from lightning_ard.kernels.torch_ops import compute_dtype
from lightning_ard.kernels.triton.common import INTERPRET, precision_for  # noqa: F401 (re-exported for tests)
from lightning_ard.kernels.triton.grouped import grouped_row_linear
from lightning_ard.kernels.triton.row import column_sum, complement, row_forward, row_grad_input, row_grad_weight
from lightning_ard.kernels.triton.tile import TileTables, tile_forward, tile_grad_input, tile_grad_weight, tile_tables
from lightning_ard.patterns import RowPattern

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

POISON_OUTPUTS = False
"""Test hook: when True, outputs the kernels must write completely are allocated filled with NaN instead of
uninitialized, so an element a kernel forgets to write shows up as NaN."""


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


class _RowLinearFn(torch.autograd.Function):
    """y = scale · x[:, in] · W[out][:, in]ᵀ + b[out] and its backward, all on the kept block (Triton)."""

    @staticmethod
    def forward(ctx, x, weight, bias, in_idx, out_idx, dropped_idx, scale, x_compact, dtype):  # type: ignore[override]
        x2 = x.reshape(-1, x.shape[-1])
        precision = precision_for(dtype, x.device)
        n_out = out_idx.numel() if out_idx is not None else weight.shape[0]
        y = _empty((x2.shape[0], n_out), dtype, x.device)
        row_forward(x2, weight, bias, in_idx, out_idx, scale, x_compact, precision, out=y)
        ctx.save_for_backward(x2, weight)
        ctx.meta = (x.shape, x.dtype, in_idx, out_idx, dropped_idx, scale, x_compact, precision)
        ctx.bias_meta = None if bias is None else (bias.shape, bias.dtype)
        return y.reshape(*x.shape[:-1], n_out)

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        x2, weight = ctx.saved_tensors
        x_shape, x_dtype, in_idx, out_idx, dropped_idx, scale, x_compact, precision = ctx.meta
        g = grad_y.reshape(-1, grad_y.shape[-1])
        device = g.device
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _empty((g.shape[0], x_shape[-1]), x_dtype, device)
            row_grad_input(g, weight, in_idx, out_idx, scale, grad_x, precision, dropped_idx)
            grad_x = grad_x.reshape(x_shape)
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros(weight.shape, dtype=weight.dtype, device=device)
            row_grad_weight(g, x2, grad_w, in_idx, out_idx, scale, x_compact, precision)
        if ctx.bias_meta is not None and ctx.needs_input_grad[2]:
            shape, dtype = ctx.bias_meta
            grad_b = _empty(shape, dtype, device) if out_idx is None else torch.zeros(shape, dtype=dtype, device=device)
            column_sum(g, grad_b, out_idx)
        return grad_x, grad_w, grad_b, None, None, None, None, None, None


class _TileLinearFn(torch.autograd.Function):
    """y = x · (scale · W ⊙ M)ᵀ + b for a tile mask M and its backward, visiting kept tiles only (Triton)."""

    @staticmethod
    def forward(ctx, x, weight, bias, tables, tile, scale, dtype):  # type: ignore[override]
        x2 = x.reshape(-1, x.shape[-1])
        precision = precision_for(dtype, x.device)
        y = _empty((x2.shape[0], weight.shape[0]), dtype, x.device)
        tile_forward(x2, weight, bias, tables, tile, scale, precision, y)
        ctx.save_for_backward(x2, weight)
        ctx.meta = (x.shape, x.dtype, tables, tile, scale, precision)
        ctx.bias_meta = None if bias is None else (bias.shape, bias.dtype)
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        x2, weight = ctx.saved_tensors
        x_shape, x_dtype, tables, tile, scale, precision = ctx.meta
        g = grad_y.reshape(-1, grad_y.shape[-1])
        device = g.device
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _empty((g.shape[0], x_shape[-1]), x_dtype, device)
            tile_grad_input(g, weight, tables, tile, scale, precision, grad_x)
            grad_x = grad_x.reshape(x_shape)
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros(weight.shape, dtype=weight.dtype, device=device)
            tile_grad_weight(g, x2, grad_w, tables, tile, scale, precision)
        if ctx.bias_meta is not None and ctx.needs_input_grad[2]:
            shape, dtype = ctx.bias_meta
            grad_b = column_sum(g, _empty(shape, dtype, device))
        return grad_x, grad_w, grad_b, None, None, None, None


_INDICES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cached(pattern: RowPattern, key: tuple, build) -> torch.Tensor:  # type: ignore[no-untyped-def]
    per_pattern = _INDICES.setdefault(pattern, {})
    idx = per_pattern.get(key)
    if idx is None:
        idx = per_pattern[key] = build()
    return idx


def row_index(pattern: RowPattern | None, device: torch.device) -> torch.Tensor | None:
    """The kept-index vector a kernel reads, int32 on ``device`` (None when every unit is kept: no gather at all).

    int32 rather than the pattern's int64: half the index bytes and 32-bit address arithmetic in the gathers.
    Built from the CPU copy (no device sync) once per pattern and device, after checking that the kept indices are
    sorted and distinct (:func:`~lightning_ard.kernels.indices.check_kept`; a duplicate would race in the
    scattered stores).
    """
    if pattern is None or pattern.num_kept == pattern.width:
        return None

    def build() -> torch.Tensor:
        check_kept(pattern.kept, pattern.width, "row pattern")  # once per pattern: distinct, in range
        return pattern.kept.to(torch.int32).to(device, non_blocking=True)

    return _cached(pattern, ("kept", device), build)


def dropped_index(pattern: RowPattern, device: torch.device) -> torch.Tensor:
    """The pattern's dropped units, int32 on ``device`` (built on the CPU, no device sync; cached per pattern)."""

    def build() -> torch.Tensor:
        return complement(pattern.kept, pattern.width).to(torch.int32).to(device, non_blocking=True)

    return _cached(pattern, ("dropped", device), build)


class TritonBackend(Backend):
    """Triton kernels for CUDA tensors (or any tensors under TRITON_INTERPRET=1).

    float32, float16 and bfloat16 run the kernels; other dtypes (float64) fall back to the PyTorch ops, with a
    warning, since tensor cores do not multiply them.
    """

    name = "triton"

    def _check_device(self, x: torch.Tensor, weight: torch.Tensor) -> None:
        if x.device != weight.device:
            raise ValueError(f"input on {x.device} but weight on {weight.device}")
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
        in_idx, out_idx = row_index(in_pattern, device), row_index(out_pattern, device)
        scale = float(in_pattern.scale) if in_pattern is not None else 1.0
        x_compact = bool(x_compact) and in_idx is not None
        dropped = None
        if in_idx is not None and not x_compact and torch.is_grad_enabled() and x.requires_grad:
            dropped = dropped_index(in_pattern, device)  # type: ignore[arg-type]
        with torch.autocast(device.type, enabled=False):
            return _RowLinearFn.apply(x, weight, bias, in_idx, out_idx, dropped, scale, x_compact, dtype)

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
                f"shape {tuple(weight.shape)}"
            )
        dtype = compute_dtype(x)
        if self._fallback(dtype):
            return TorchBackend().tile_linear(x, weight, bias, pattern)
        tables: TileTables = tile_tables(pattern, x.device)
        with torch.autocast(x.device.type, enabled=False):
            return _TileLinearFn.apply(x, weight, bias, tables, tuple(pattern.tile), float(pattern.scale), dtype)
