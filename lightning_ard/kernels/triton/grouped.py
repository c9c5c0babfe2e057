"""Grouped gather GEMM: all pattern groups of a row-pattern Linear in one kernel launch per product (Triton).

A step's rows are cut into G contiguous groups (:func:`~lightning_ard.patterns.groups.group_bounds`), group g with
its own kept input and/or output units. Instead of G launches of :func:`~lightning_ard.kernels.triton.row.gather_gemm`
(and G full-size weight gradients), each product is one launch whose program id is mapped to (group, tile_m,
tile_n) through small per-launch tables, as Mixture-of-Experts grouped GEMMs do:

* forward ``y`` and ``grad_x``: :func:`grouped_gemm`. The tables hold each group's row range and, per side, the
  offset and length of its index vector in one concatenated int32 buffer; a program finds its group by a scan of
  the G cumulative tile counts (G is small). A full-width (scattered) side reads the permutation
  ``kept ++ dropped``: columns past the kept count are written as zeros by the same program, so every element
  of the output is written exactly once (no memset).
* ``grad_W``: :func:`grouped_grad_weight`. Groups overlap in (out, in) blocks, so each program owns one tile of the
  full weight and loops over the groups, adding the blocks of those whose kept sets touch the tile (membership
  through per-group position maps ``pos[g, unit]``, -1 = dropped). No atomics, each element written once, zeros
  where no group keeps it. The price: inside a touched tile the dropped (out, in) pairs are multiplied as zeros,
  so contiguous (block) patterns cost about their kept work, strided/random ones about the dense work of the
  touched tiles.
* ``grad_b``: :func:`grouped_bias_grad`, per-unit sums over the rows of the groups that keep the unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from lightning_ard.kernels.kept import kept_units
from lightning_ard.kernels.torch_ops import compute_dtype
from lightning_ard.kernels.triton.common import (
    GEMM_FULL,
    INTERPRET,
    Precision,
    check_offsets,
    empty_output,
    gemm_configs,
    grouped_pid,
    interpreter_config,
    load_mma,
    precision_for,
    tune_bucket,
    tuned,
)
from lightning_ard.kernels.triton.row import prune_configs
from lightning_ard.patterns import RowPattern
from lightning_ard.patterns.groups import group_bounds

BIAS_BLOCKS = (16, 16) if INTERPRET else (64, 64)
"""(BLOCK_M rows, BLOCK_N units) of the grouped bias gradient."""


def _cuda_configs() -> list[triton.Config]:
    """:data:`~lightning_ard.kernels.triton.common.GEMM_FULL` without its widest block."""
    return gemm_configs(GEMM_FULL[1:])


# --- kernels -----------------------------------------------------------------------------------------------------


def _prune_gemm(configs: list, named_args: dict, **kwargs: object) -> list:
    """Shared-memory and warp-group pruning (:func:`~lightning_ard.kernels.triton.row.prune_configs`)."""
    return prune_configs(configs, named_args["a_ptr"], named_args["b_ptr"])


def _prune_grad_weight(configs: list, named_args: dict, **kwargs: object) -> list:
    return prune_configs(configs, named_args["g_ptr"], named_args["x_ptr"])


@tuned(
    configs=_cuda_configs(),
    key=["tune_m", "tune_n", "tune_r", "RED_IDX", "A_RED_IDX", "COL_IDX", "SCATTER", "HAS_BIAS", "DOT_DTYPE",
         "INPUT_PRECISION"],
    prune=_prune_gemm,
)  # fmt: skip
@triton.jit(do_not_specialize=["tune_m", "tune_n", "tune_r"])
def _grouped_gemm_kernel(
    a_ptr, b_ptr, c_ptr, bias_ptr, idx_ptr, rows_ptr, red_ptr, col_ptr, scale_ptr,
    G, N_FULL,
    stride_am, stride_ar, stride_bn, stride_br, stride_cm, stride_cn,
    tune_m, tune_n, tune_r,
    RED_IDX: tl.constexpr, A_RED_IDX: tl.constexpr, COL_IDX: tl.constexpr, SCATTER: tl.constexpr,
    HAS_BIAS: tl.constexpr, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """``C[rows_g, col_g] = scale_g · A[rows_g, red_g] · B[col_g][:, red_g]ᵀ (+ bias[col_g])`` for every group g.

    Tables (int32, G entries each): ``rows_ptr`` = [row_start; row_end], ``red_ptr`` / ``col_ptr`` = [offset in
    ``idx_ptr``; kept count] of the reduction / column side. A group has ``N_FULL`` columns when SCATTER (the
    permutation kept ++ dropped, zeros past the kept count), else its kept count.
    """
    pid = tl.program_id(0)
    start = pid * 0
    grp = pid * 0
    local = pid * 0
    for g in range(0, G):  # which group's tiles hold this program (G is small)
        m_g = tl.load(rows_ptr + G + g) - tl.load(rows_ptr + g)
        if SCATTER:
            n_g = N_FULL
        else:
            n_g = tl.load(col_ptr + G + g)
        tiles = tl.cdiv(m_g, BLOCK_M) * tl.cdiv(n_g, BLOCK_N)
        hit = (pid >= start) & (pid < start + tiles)
        grp = tl.where(hit, g, grp)
        local = tl.where(hit, pid - start, local)
        start += tiles
    row0 = tl.load(rows_ptr + grp)
    m = tl.load(rows_ptr + G + grp) - row0
    red_off = tl.load(red_ptr + grp)
    R = tl.load(red_ptr + G + grp)
    col_off = tl.load(col_ptr + grp)
    K = tl.load(col_ptr + G + grp)
    if SCATTER:
        n = N_FULL
    else:
        n = K
    pid_m, pid_n = grouped_pid(local, tl.cdiv(m, BLOCK_M), tl.cdiv(n, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < m
    mask_n = offs_n < n
    mask_k = offs_n < K  # columns that are computed (the rest of a scattered row is zeros)
    rows = row0 + offs_m
    if COL_IDX:
        cols = tl.load(idx_ptr + col_off + offs_n, mask=mask_n, other=0)
    else:
        cols = offs_n
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    r_end = tl.where(pid_n * BLOCK_N < K, R, 0)  # an all-dropped column tile only writes zeros
    for r0 in range(0, r_end, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask_r = offs_r < R
        if RED_IDX:
            red = tl.load(idx_ptr + red_off + offs_r, mask=mask_r, other=0)
        else:
            red = offs_r
        if A_RED_IDX:
            a_red = red
        else:
            a_red = offs_r
        acc = load_mma(
            acc, a_ptr, b_ptr, rows, a_red, red, cols, mask_m, mask_r, mask_k,
            stride_am, stride_ar, stride_br, stride_bn, DOT_DTYPE, INPUT_PRECISION, UPCAST,
        )  # fmt: skip
    acc = acc * tl.load(scale_ptr + grp)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=mask_k, other=0.0).to(tl.float32)[None, :]
    if SCATTER:
        c_cols = cols
    else:
        c_cols = offs_n
    c_ptrs = c_ptr + rows[:, None] * stride_cm + c_cols[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@tuned(configs=_cuda_configs(), key=["tune_m", "tune_n", "tune_r", "OUT_POS", "IN_POS", "G_COMPACT", "X_COMPACT",
                                     "DOT_DTYPE", "INPUT_PRECISION"], prune=_prune_grad_weight)  # fmt: skip
@triton.jit(do_not_specialize=["tune_m", "tune_n", "tune_r"])
def _grouped_grad_weight_kernel(
    g_ptr, x_ptr, w_ptr, rows_ptr, pos_out_ptr, pos_in_ptr, scale_ptr,
    G, N_OUT, N_IN,
    stride_gm, stride_gn, stride_xm, stride_xk, stride_wn, stride_wk,
    tune_m, tune_n, tune_r,
    OUT_POS: tl.constexpr, IN_POS: tl.constexpr, G_COMPACT: tl.constexpr, X_COMPACT: tl.constexpr,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """One (BLOCK_M out, BLOCK_N in) tile of the full grad_W: ``Σ_g scale_g · g[rows_g, out]ᵀ x[rows_g, in]`` over
    the groups whose kept sets touch the tile, masked to each group's kept (out, in) pairs; written once.

    ``pos_out_ptr`` / ``pos_in_ptr`` (OUT_POS / IN_POS): (G, N) int32, a unit's position among its group's kept
    units, -1 where dropped; a compact operand (G_COMPACT / X_COMPACT) is read at that position.
    """
    pid_m, pid_n = grouped_pid(tl.program_id(0), tl.cdiv(N_OUT, BLOCK_M), tl.cdiv(N_IN, BLOCK_N), GROUP_M)
    offs_o = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_i = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    in_o = offs_o < N_OUT
    in_i = offs_i < N_IN
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(0, G):
        row0 = tl.load(rows_ptr + g)
        m = tl.load(rows_ptr + G + g) - row0
        if OUT_POS:
            po = tl.load(pos_out_ptr + g * N_OUT + offs_o, mask=in_o, other=-1)
            mask_o = po >= 0
            if G_COMPACT:
                g_cols = tl.where(mask_o, po, 0)
            else:
                g_cols = offs_o
        else:
            mask_o = in_o
            g_cols = offs_o
        if IN_POS:
            pi = tl.load(pos_in_ptr + g * N_IN + offs_i, mask=in_i, other=-1)
            mask_i = pi >= 0
            if X_COMPACT:
                x_cols = tl.where(mask_i, pi, 0)
            else:
                x_cols = offs_i
        else:
            mask_i = in_i
            x_cols = offs_i
        touched = (tl.max(mask_o.to(tl.int32), axis=0) > 0) & (tl.max(mask_i.to(tl.int32), axis=0) > 0)
        r_end = tl.where(touched, m, 0)
        part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for r0 in range(0, r_end, BLOCK_R):
            offs_r = r0 + tl.arange(0, BLOCK_R)
            mask_r = offs_r < m
            rows = row0 + offs_r
            part = load_mma(
                part, g_ptr, x_ptr, g_cols, rows, rows, x_cols, mask_o, mask_r, mask_i,
                stride_gn, stride_gm, stride_xm, stride_xk, DOT_DTYPE, INPUT_PRECISION, UPCAST,
            )  # fmt: skip
        acc += part * tl.load(scale_ptr + g)
    w_ptrs = w_ptr + offs_o[:, None] * stride_wn + offs_i[None, :] * stride_wk
    tl.store(w_ptrs, acc.to(w_ptr.dtype.element_ty), mask=in_o[:, None] & in_i[None, :])


@triton.jit
def _grouped_bias_grad_kernel(
    g_ptr, out_ptr, rows_ptr, pos_ptr, G, N, stride_gm, stride_gn,
    OUT_POS: tl.constexpr, G_COMPACT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """``out[u] = Σ_g Σ_{r ∈ rows_g} g[r, u]`` over the groups that keep unit u (float32 sums), for BLOCK_N units."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_n = offs_n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for g in range(0, G):
        row0 = tl.load(rows_ptr + g)
        m = tl.load(rows_ptr + G + g) - row0
        if OUT_POS:
            p = tl.load(pos_ptr + g * N + offs_n, mask=in_n, other=-1)
            mask_n = p >= 0
            if G_COMPACT:
                cols = tl.where(mask_n, p, 0)
            else:
                cols = offs_n
        else:
            mask_n = in_n
            cols = offs_n
        r_end = tl.where(tl.max(mask_n.to(tl.int32), axis=0) > 0, m, 0)
        for r0 in range(0, r_end, BLOCK_M):
            offs_m = r0 + tl.arange(0, BLOCK_M)
            tile = tl.load(
                g_ptr + (row0 + offs_m)[:, None] * stride_gm + cols[None, :] * stride_gn,
                mask=(offs_m < m)[:, None] & mask_n[None, :],
                other=0.0,
            )
            acc += tl.sum(tile.to(tl.float32), axis=0)
    tl.store(out_ptr + offs_n, acc.to(out_ptr.dtype.element_ty), mask=in_n)


# --- per-launch tables -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupTables:
    """Device tables of one grouped Linear call (built once on the CPU, one host-to-device copy).

    Attributes:
        bounds: ``(row_start, row_end)`` per group (host copy, for the grids).
        in_len, out_len: kept input / output units per group (host copy; the full width where no pattern).
        idx: concatenated int32 index buffer: per group and side the permutation ``kept ++ dropped``.
        rows, in_tab, out_tab: (2, G) int32 views: [row_start; row_end], [offset in idx; kept count] per side.
        scales: (G,) float32 scale per group (the input pattern's, 1 without one).
        pos_in, pos_out: (G, width) int32 position of each unit among its group's kept units, -1 if dropped
            (None for a side without patterns).
    """

    bounds: tuple[tuple[int, int], ...]
    in_len: tuple[int, ...]
    out_len: tuple[int, ...]
    idx: torch.Tensor
    rows: torch.Tensor
    in_tab: torch.Tensor
    out_tab: torch.Tensor
    scales: torch.Tensor
    pos_in: torch.Tensor | None
    pos_out: torch.Tensor | None


def _side(
    patterns: Sequence[RowPattern] | None, width: int, groups: int, at: int, name: str
) -> tuple[list[torch.Tensor], list[int], list[int], torch.Tensor | None]:
    """Index permutations (kept ++ dropped), offsets, kept counts and position maps of one side's patterns."""
    if patterns is None:
        return [], [0] * groups, [width] * groups, None
    perms: list[torch.Tensor] = []
    offs: list[int] = []
    lens: list[int] = []
    pos = torch.full((groups, width), -1, dtype=torch.int32)
    cpu = torch.device("cpu")
    for g, p in enumerate(patterns):
        units = kept_units(p, width, cpu, f"{name}[{g}]")  # checks the width and the indices once per pattern
        kept = p.kept
        perms.append(torch.cat([kept, units.dropped_cpu()]).to(torch.int32))
        offs.append(at + g * width)
        lens.append(int(kept.numel()))
        pos[g, kept] = torch.arange(kept.numel(), dtype=torch.int32)
    return perms, offs, lens, pos


def group_tables(
    rows: int,
    in_patterns: Sequence[RowPattern] | None,
    out_patterns: Sequence[RowPattern] | None,
    in_features: int,
    out_features: int,
    device: torch.device,
) -> GroupTables:
    """Build the per-launch tables of G = len(patterns) groups over ``rows`` rows (CPU work, one copy)."""
    groups = len(in_patterns or out_patterns or ()) or 1
    for name, pats in (("in_patterns", in_patterns), ("out_patterns", out_patterns)):
        if pats is not None and len(pats) != groups:
            raise ValueError(f"{name} has {len(pats)} patterns for {groups} groups")
    bounds = tuple(group_bounds(rows, groups))
    in_perm, in_off, in_len, pos_in = _side(in_patterns, in_features, groups, 0, "in_patterns")
    n_in_idx = sum(p.numel() for p in in_perm)
    out_perm, out_off, out_len, pos_out = _side(out_patterns, out_features, groups, n_in_idx, "out_patterns")
    scales = [float(p.scale) for p in in_patterns] if in_patterns is not None else [1.0] * groups
    table = torch.tensor(
        [[r0 for r0, _ in bounds], [r1 for _, r1 in bounds], in_off, in_len, out_off, out_len], dtype=torch.int32
    )
    parts = [*in_perm, *out_perm, table.flatten(), torch.tensor(scales, dtype=torch.float32).view(torch.int32)]
    parts += [p.flatten() for p in (pos_in, pos_out) if p is not None]
    buf = torch.cat(parts).to(device, non_blocking=True)
    at = n_in_idx + sum(p.numel() for p in out_perm)
    idx = buf[:at] if at else buf[:1]  # a valid (unused) pointer when no side has patterns
    tab = buf[at : at + 6 * groups].view(6, groups)
    at += 6 * groups
    scale_t = buf[at : at + groups].view(torch.float32)
    at += groups
    pos_in_t = pos_out_t = None
    if pos_in is not None:
        pos_in_t = buf[at : at + pos_in.numel()].view(groups, in_features)
        at += pos_in.numel()
    if pos_out is not None:
        pos_out_t = buf[at : at + pos_out.numel()].view(groups, out_features)
    return GroupTables(
        bounds, tuple(in_len), tuple(out_len), idx, tab[0:2], tab[2:4], tab[4:6], scale_t, pos_in_t, pos_out_t
    )


# --- launchers ---------------------------------------------------------------------------------------------------


def grouped_gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    tables: GroupTables,
    red_tab: torch.Tensor,
    col_tab: torch.Tensor,
    col_len: tuple[int, ...],
    n_full: int,
    precision: Precision,
    *,
    red_idx: bool,
    a_red_idx: bool,
    col_idx: bool,
    scatter: bool,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``C[rows_g, col_g] = scale_g · A[rows_g, red_g] · B[col_g][:, red_g]ᵀ (+ bias[col_g])``, one launch for all
    groups; returns ``c``. ``B`` is (columns, reduction), e.g. W for the forward and Wᵀ for grad_x."""
    check_offsets(a=a, b=b, c=c)
    n_per_group = [n_full if scatter else k for k in col_len]
    sizes = [(r1 - r0, n) for (r0, r1), n in zip(tables.bounds, n_per_group)]
    if not any(m and n for m, n in sizes):
        return c

    def grid(meta: dict) -> tuple[int]:
        return (sum(triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]) for m, n in sizes),)

    _grouped_gemm_kernel[grid](
        a, b, c, bias, tables.idx, tables.rows, red_tab, col_tab, tables.scales,
        len(tables.bounds), n_full,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
        tune_bucket(max(m for m, _ in sizes)), tune_bucket(max(n_per_group)), tune_bucket(b.shape[1]),
        RED_IDX=red_idx, A_RED_IDX=a_red_idx, COL_IDX=col_idx, SCATTER=scatter, HAS_BIAS=bias is not None,
        DOT_DTYPE=precision.dtype, INPUT_PRECISION=precision.input_precision, UPCAST=precision.upcast,
        **interpreter_config(),
    )  # fmt: skip
    return c


def grouped_grad_weight(
    g: torch.Tensor,
    x: torch.Tensor,
    grad_w: torch.Tensor,
    tables: GroupTables,
    g_compact: bool,
    x_compact: bool,
    precision: Precision,
) -> torch.Tensor:
    """The full grad_W (every element written once) from all groups' kept blocks, one launch; returns ``grad_w``."""
    check_offsets(g=g, x=x, grad_w=grad_w)
    n_out, n_in = grad_w.shape
    if grad_w.numel() == 0:
        return grad_w

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(n_out, meta["BLOCK_M"]) * triton.cdiv(n_in, meta["BLOCK_N"]),)

    _grouped_grad_weight_kernel[grid](
        g, x, grad_w, tables.rows, tables.pos_out, tables.pos_in, tables.scales,
        len(tables.bounds), n_out, n_in,
        g.stride(0), g.stride(1), x.stride(0), x.stride(1), grad_w.stride(0), grad_w.stride(1),
        tune_bucket(n_out), tune_bucket(n_in), tune_bucket(max(r1 - r0 for r0, r1 in tables.bounds)),
        OUT_POS=tables.pos_out is not None, IN_POS=tables.pos_in is not None,
        G_COMPACT=g_compact and tables.pos_out is not None, X_COMPACT=x_compact and tables.pos_in is not None,
        DOT_DTYPE=precision.dtype, INPUT_PRECISION=precision.input_precision, UPCAST=precision.upcast,
        **interpreter_config(),
    )  # fmt: skip
    return grad_w


def grouped_bias_grad(g: torch.Tensor, out: torch.Tensor, tables: GroupTables, g_compact: bool) -> torch.Tensor:
    """``out[u] = Σ`` of ``g`` over the rows of the groups keeping unit u (0 if none), one launch; returns ``out``."""
    check_offsets(g=g)
    n = out.shape[0]
    if n == 0:
        return out
    block_m, block_n = BIAS_BLOCKS
    _grouped_bias_grad_kernel[(triton.cdiv(n, block_n),)](
        g, out, tables.rows, tables.pos_out, len(tables.bounds), n, g.stride(0), g.stride(1),
        OUT_POS=tables.pos_out is not None, G_COMPACT=g_compact and tables.pos_out is not None,
        BLOCK_M=block_m, BLOCK_N=block_n,
    )  # fmt: skip
    return out


# --- autograd ----------------------------------------------------------------------------------------------------


class GroupedRowLinearFn(torch.autograd.Function):
    """``y[rows_g] = scale_g · x[rows_g][:, in_g] · W[out_g][:, in_g]ᵀ + b[out_g]`` for all groups, one launch per
    product (forward, grad_x, grad_W, grad_b)."""

    @staticmethod
    def forward(ctx, x, weight, bias, tables, x_compact, out_compact, dtype):  # type: ignore[override]
        x2 = x.reshape(-1, x.shape[-1])
        n_out, n_in = weight.shape
        has_in, has_out = tables.pos_in is not None, tables.pos_out is not None
        precision = precision_for(dtype, x.device)
        width = tables.out_len[0] if out_compact else n_out
        y = empty_output((x2.shape[0], width), dtype, x.device)
        grouped_gemm(
            x2, weight, y, tables, tables.in_tab, tables.out_tab, tables.out_len, width, precision,
            red_idx=has_in, a_red_idx=has_in and not x_compact, col_idx=has_out, scatter=has_out and not out_compact,
            bias=bias,
        )  # fmt: skip
        ctx.save_for_backward(x2, weight)
        ctx.meta = (x.shape, x.dtype, tables, x_compact, out_compact, precision)
        ctx.bias_meta = None if bias is None else (bias.shape, bias.dtype)
        return y.reshape(*x.shape[:-1], width)

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        x2, weight = ctx.saved_tensors
        x_shape, x_dtype, tables, x_compact, out_compact, precision = ctx.meta
        has_in, has_out = tables.pos_in is not None, tables.pos_out is not None
        g = grad_y.reshape(-1, grad_y.shape[-1])
        device = g.device
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = empty_output((g.shape[0], x_shape[-1]), x_dtype, device)
            grouped_gemm(
                g, weight.t(), grad_x, tables, tables.out_tab, tables.in_tab, tables.in_len, x_shape[-1], precision,
                red_idx=has_out, a_red_idx=has_out and not out_compact, col_idx=has_in,
                scatter=has_in and not x_compact,
            )  # fmt: skip
            grad_x = grad_x.reshape(x_shape)
        if ctx.needs_input_grad[1]:
            grad_w = empty_output(tuple(weight.shape), weight.dtype, device)
            grouped_grad_weight(g, x2, grad_w, tables, out_compact, x_compact, precision)
        if ctx.bias_meta is not None and ctx.needs_input_grad[2]:
            shape, dtype = ctx.bias_meta
            grad_b = grouped_bias_grad(g, empty_output(shape, dtype, device), tables, out_compact)
        return grad_x, grad_w, grad_b, None, None, None, None


def grouped_row_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_patterns: Sequence[RowPattern] | None,
    out_patterns: Sequence[RowPattern] | None,
    x_compact: bool = False,
    out_compact: bool = False,
) -> torch.Tensor:
    """Linear with one row pattern per contiguous group of rows, as
    :meth:`~lightning_ard.kernels.base.Backend.row_linear_groups` (same layouts and gradients), in one launch per
    product. ``x_compact`` / ``out_compact`` need every group to keep the same number of units on that side."""
    x_compact = bool(x_compact) and in_patterns is not None
    out_compact = bool(out_compact) and out_patterns is not None
    n_out, n_in = weight.shape
    rows = x.numel() // max(x.shape[-1], 1) if x.dim() else 0
    tables = group_tables(rows, in_patterns, out_patterns, n_in, n_out, x.device)
    for compact, lens, side in ((x_compact, tables.in_len, "input"), (out_compact, tables.out_len, "output")):
        if compact and len(set(lens)) != 1:
            raise ValueError(f"a compact {side} needs every group to keep the same number of units, got {lens}")
    expected = tables.in_len[0] if x_compact else n_in
    if x.dim() < 1 or x.shape[-1] != expected:
        raise ValueError(f"x must be (..., {expected}) for these patterns, got {tuple(x.shape)}")
    if bias is not None and tuple(bias.shape) != (n_out,):
        raise ValueError(f"bias must have shape ({n_out},), got {tuple(bias.shape)}")
    dtype = compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        return GroupedRowLinearFn.apply(x, weight, bias, tables, x_compact, out_compact, dtype)
