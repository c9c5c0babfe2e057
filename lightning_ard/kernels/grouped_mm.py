"""The ``grouped_mm`` backend: pattern groups through one grouped GEMM per product (``torch._grouped_mm``) on
stacked, gathered weight blocks; single patterns and tiles as the gathered backend.

The G pattern groups of a step share one candidate (:meth:`~lightning_ard.patterns.distribution.PatternDistribution.
sample_group`), hence one kept count per side, with different offsets. Their kept weight blocks are then gathered
once into one stacked ``(G, K_out, K_in)`` buffer of the compute dtype (row pitch a multiple of
:data:`~lightning_ard.kernels.gathered.PITCH`, the input scale folded in), and each product is one
``torch._grouped_mm`` over the groups' contiguous row ranges (int32 cumulative row ends):

* forward ``y_c = x_c · W_gᵀ`` and ``grad_x_c = g_c · W_g``: 2-D x 3-D grouped products;
* ``grad_W`` blocks ``g_cᵀ · x_c`` per group: one 2-D x 2-D grouped product (groups along the contracted rows),
  then one accumulating scatter (``index_put_``) into the zero full-size gradient (groups overlap in the weight).

Inputs and outputs follow :meth:`~lightning_ard.kernels.base.Backend.row_linear_groups`: full width (columns
gathered, or scattered into zeros, per group) or compact per group. On CUDA with bf16 on sm90/sm100 torch runs a
CUTLASS grouped kernel (one launch, no host sync); elsewhere (CPU, fp32/fp16) it loops over ``mm`` after copying
the offsets to the host (no faster than the per-group path: docs/notes/kernels.md), so the backend is only a
candidate on CUDA, where :func:`~lightning_ard.kernels.select.fastest_backend` times it against the others.
:func:`grouped_mm_linear` falls back to the per-group path
(:func:`~lightning_ard.kernels.torch_grouped.grouped_linear`) when kept counts or scales differ across groups, the
dtype is not float32/bfloat16/float16, or torch lacks ``_grouped_mm``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lightning_ard.kernels.base import check_devices
from lightning_ard.kernels.gathered import GatheredBackend, aligned, padded_empty
from lightning_ard.kernels.kept import kept_units
from lightning_ard.kernels.torch_backend import TorchBackend
from lightning_ard.kernels.torch_ops import compute_dtype
from lightning_ard.patterns import RowPattern
from lightning_ard.patterns.groups import group_bounds

AVAILABLE = hasattr(torch, "_grouped_mm")
"""Whether the installed torch has ``torch._grouped_mm``."""

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""Compute dtypes ``torch._grouped_mm`` takes."""

MAX_LAUNCH_GROUPS = 1023
"""Most groups one CUTLASS grouped launch takes (torch checks ``group_count < 1024``); more go per group."""


@dataclass(frozen=True)
class GroupPlan:
    """The groups of one call, on the device.

    Attributes:
        bounds: ``(start, stop)`` rows of each of the G groups (empty groups included).
        offs: int32 ``(G,)`` cumulative row ends, the ``offs`` of ``_grouped_mm``.
        in_index, out_index: int64 ``(G, K)`` kept units per group, or None (all units of that side).
        k_in, k_out: kept counts per group (the full width for a side without patterns).
        scale: the input patterns' scale (1.0 without input patterns).
    """

    bounds: tuple[tuple[int, int], ...]
    offs: torch.Tensor
    in_index: torch.Tensor | None
    out_index: torch.Tensor | None
    k_in: int
    k_out: int
    scale: float


def _stacked_index(
    patterns: Sequence[RowPattern] | None, width: int, side: str, device: torch.device
) -> tuple[torch.Tensor | None, int] | None:
    """``(G, K)`` kept indices of a side's patterns, or ``(None, width)`` without patterns; ``None`` when the groups
    keep different counts (no stacked buffer)."""
    if patterns is None:
        return None, width
    kept = [kept_units(p, width, device, f"{side} pattern") for p in patterns]
    counts = {k.count for k in kept}
    if len(counts) != 1:
        return None
    return torch.stack([k.index for k in kept]), counts.pop()


def plan_groups(
    rows: int,
    in_patterns: Sequence[RowPattern] | None,
    out_patterns: Sequence[RowPattern] | None,
    n_in: int,
    n_out: int,
    device: torch.device,
) -> GroupPlan | None:
    """The :class:`GroupPlan` of a call, or None when the grouped GEMM cannot take it (kept counts or scales
    differ across groups, no patterns at all, more than :data:`MAX_LAUNCH_GROUPS` groups, no rows)."""
    groups = len(in_patterns or out_patterns or ())
    if groups == 0 or groups > MAX_LAUNCH_GROUPS or rows == 0:
        return None
    if in_patterns is not None and out_patterns is not None and len(in_patterns) != len(out_patterns):
        raise ValueError(
            f"got {len(in_patterns)} input and {len(out_patterns)} output patterns: give one of each per group"
        )
    ins = _stacked_index(in_patterns, n_in, "input", device)
    outs = _stacked_index(out_patterns, n_out, "output", device)
    if ins is None or outs is None:
        return None
    scales = {float(p.scale) for p in in_patterns} if in_patterns is not None else {1.0}
    if len(scales) != 1:
        return None
    bounds = tuple(group_bounds(rows, groups))
    offs = torch.tensor([stop for _, stop in bounds], dtype=torch.int32).to(device, non_blocking=True)
    return GroupPlan(bounds, offs, ins[0], outs[0], ins[1], outs[1], scales.pop())


def _gather_columns(t: torch.Tensor, plan: GroupPlan, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Compact per group ``(rows, K)``: row r of group g holds ``t[r, index[g]]`` (one gather per group)."""
    same = t.dtype == dtype
    out = padded_empty(t.shape[0], index.shape[1], dtype=t.dtype if same else dtype, device=t.device)
    for g, (r0, r1) in enumerate(plan.bounds):
        if r1 > r0:
            if same:
                torch.index_select(t[r0:r1], 1, index[g], out=out[r0:r1])
            else:
                out[r0:r1].copy_(t[r0:r1].index_select(1, index[g]))
    return out


def _scatter_columns(
    c: torch.Tensor, plan: GroupPlan, index: torch.Tensor, width: int, dtype: torch.dtype
) -> torch.Tensor:
    """Full width ``(rows, width)`` in ``dtype``, zero outside each group's kept columns ``index[g]``."""
    c = c.to(dtype)
    full = torch.zeros(c.shape[0], width, dtype=dtype, device=c.device)
    for g, (r0, r1) in enumerate(plan.bounds):
        if r1 > r0:
            full[r0:r1].index_copy_(1, index[g], c[r0:r1])
    return full


def _block_index(plan: GroupPlan, w_shape: torch.Size, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcasting ``(rows, cols)`` index of the stacked blocks in the full weight (for ``index_put_``)."""
    out_index, in_index = plan.out_index, plan.in_index
    rows = out_index[:, :, None] if out_index is not None else torch.arange(w_shape[0], device=device)[None, :, None]
    cols = in_index[:, None, :] if in_index is not None else torch.arange(w_shape[1], device=device)[None, None, :]
    return rows, cols


def stack_blocks(weight: torch.Tensor, plan: GroupPlan, dtype: torch.dtype) -> torch.Tensor:
    """``scale · W[out_g][:, in_g]`` for every group, stacked ``(G, K_out, K_in)`` in ``dtype``, pitch-padded: one
    gather of the weight, then the scale and the dtype conversion in one pass."""
    block = weight[_block_index(plan, weight.shape, weight.device)]  # (G, K_out, K_in)
    out = padded_empty(*block.shape, dtype=dtype, device=weight.device)
    if plan.scale != 1.0:
        torch.mul(block, plan.scale, out=out)
    else:
        out.copy_(block)
    return out


class GroupedMMLinearFn(torch.autograd.Function):
    """``y[rows_g] = scale · x[rows_g][:, in_g] · W[out_g][:, in_g]ᵀ + b[out_g]`` for all groups, one
    ``_grouped_mm`` per product on the stacked blocks (saved for the backward)."""

    @staticmethod
    def forward(ctx, x, weight, bias, plan, x_compact, out_compact, dtype):  # type: ignore[override]
        x2 = x.reshape(-1, x.shape[-1])
        n_out, n_in = weight.shape
        if x_compact or plan.in_index is None:
            xc = aligned(x2, dtype)
        else:
            xc = _gather_columns(x2, plan, plan.in_index, dtype)
        wg = stack_blocks(weight, plan, dtype)
        yc = torch._grouped_mm(xc, wg.transpose(1, 2), offs=plan.offs)
        if bias is not None:
            if plan.out_index is None:
                yc.add_(bias.to(dtype))
            else:
                b = bias[plan.out_index].to(dtype)  # (G, K_out)
                for g, (r0, r1) in enumerate(plan.bounds):
                    if r1 > r0:
                        yc[r0:r1].add_(b[g])
        if out_compact or plan.out_index is None:
            y = yc
        else:
            y = _scatter_columns(yc, plan, plan.out_index, n_out, dtype)
        ctx.save_for_backward(xc, wg)
        ctx.meta = (x.shape, x.dtype, plan, x_compact, out_compact, bias is not None, weight.shape, weight.dtype)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        xc, wg = ctx.saved_tensors
        x_shape, x_dtype, plan, x_compact, out_compact, has_bias, w_shape, w_dtype = ctx.meta
        dtype = wg.dtype
        g2 = grad_y.reshape(-1, grad_y.shape[-1])
        if out_compact or plan.out_index is None:
            gc = aligned(g2, dtype)
        else:
            gc = _gather_columns(g2, plan, plan.out_index, dtype)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            gxc = torch._grouped_mm(gc, wg, offs=plan.offs)  # the scale is in wg
            if x_compact or plan.in_index is None:
                grad_x = gxc.to(x_dtype)
            else:
                grad_x = _scatter_columns(gxc, plan, plan.in_index, x_shape[-1], x_dtype)
            grad_x = grad_x.reshape(x_shape)
        if ctx.needs_input_grad[1]:
            blocks = torch._grouped_mm(gc.t(), xc, offs=plan.offs).to(w_dtype)  # (G, K_out, K_in)
            if plan.scale != 1.0:
                blocks.mul_(plan.scale)
            grad_w = torch.zeros(w_shape, dtype=w_dtype, device=gc.device)
            grad_w.index_put_(_block_index(plan, w_shape, gc.device), blocks, accumulate=True)
        if has_bias and ctx.needs_input_grad[2]:
            if plan.out_index is None:
                grad_b = gc.sum(0).to(w_dtype)
            else:
                sums = torch.stack([gc[r0:r1].sum(0) for r0, r1 in plan.bounds]).to(w_dtype)  # (G, K_out)
                grad_b = torch.zeros(w_shape[0], dtype=w_dtype, device=gc.device)
                grad_b.index_put_((plan.out_index,), sums, accumulate=True)
        return grad_x, grad_w, grad_b, None, None, None, None


def grouped_mm_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_patterns: Sequence[RowPattern] | None,
    out_patterns: Sequence[RowPattern] | None,
    x_compact: bool = False,
    out_compact: bool = False,
) -> torch.Tensor:
    """Linear with one row pattern per contiguous group of rows, as
    :meth:`~lightning_ard.kernels.base.Backend.row_linear_groups` (same layouts and gradients): one
    ``_grouped_mm`` per product when every group keeps the same counts (see the module docstring), else the
    per-group PyTorch path."""
    x_compact = bool(x_compact) and in_patterns is not None
    out_compact = bool(out_compact) and out_patterns is not None
    n_out, n_in = weight.shape
    dtype = compute_dtype(x)
    rows = x.numel() // max(x.shape[-1], 1) if x.dim() else 0
    plan = None
    if AVAILABLE and dtype in DTYPES:
        plan = plan_groups(rows, in_patterns, out_patterns, n_in, n_out, x.device)
    if plan is None:
        return TorchBackend().row_linear_groups(x, weight, bias, in_patterns, out_patterns, x_compact, out_compact)
    expected = plan.k_in if x_compact else n_in
    if x.shape[-1] != expected:
        raise ValueError(f"x must be (..., {expected}) for these patterns, got {tuple(x.shape)}")
    if bias is not None and tuple(bias.shape) != (n_out,):
        raise ValueError(f"bias must have shape ({n_out},), got {tuple(bias.shape)}")
    with torch.autocast(x.device.type, enabled=False):
        return GroupedMMLinearFn.apply(x, weight, bias, plan, x_compact, out_compact, dtype)


class GroupedMMBackend(GatheredBackend):
    """The gathered backend with pattern groups through ``torch._grouped_mm`` (:func:`grouped_mm_linear`): one
    grouped launch per product where torch runs a CUTLASS grouped kernel (CUDA, bfloat16, sm90/sm100)."""

    name = "grouped_mm"

    def row_linear_groups(  # type: ignore[no-untyped-def]
        self, x, weight, bias, in_patterns, out_patterns, x_compact=False, out_compact=False
    ):
        check_devices(x, weight)
        return grouped_mm_linear(x, weight, bias, in_patterns, out_patterns, x_compact, out_compact)
