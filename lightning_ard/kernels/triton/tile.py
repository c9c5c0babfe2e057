"""Tile-skipping GEMM: the Triton kernels of tile-pattern (DropConnect) Linears, their launchers and the autograd
Function over them (:class:`TileLinearFn`).

The forward, grad_x (the same kernel on the view Wᵀ with the transposed tables) and grad_W only visit kept tiles of
the weight, so a dropped tile costs no load and no multiply. Blocks along the weight follow the tile shape
(:func:`tile_block`; choose tile sides that are multiples of 16). Design and block-shape rules: docs/method.md,
section "Tile patterns: the tile-skipping GEMM".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from lightning_ard.kernels.triton.common import (
    INTERPRET,
    Precision,
    check_offsets,
    empty_output,
    grouped_pid,
    interpreter_config,
    load_mma,
    precision_for,
    tune_bucket,
    tuned,
    tuning_list,
)
from lightning_ard.kernels.triton.row import column_sum
from lightning_ard.patterns import TilePattern
from lightning_ard.patterns.tile import kept_table

BLOCK_CAPS = (16, 16) if INTERPRET else (128, 64)
"""Largest block along the weight's (rows, columns): small in the interpreter so tiles span several blocks."""


def tile_block(size: int, cap: int) -> int:
    """Block length for a tile side of ``size``: the largest power of two in [16, cap] that divides it; when
    there is none, ``min(next_pow2(size), cap)`` (at least 16), whose last block per tile is partly masked."""
    if cap < 16 or cap & (cap - 1):
        raise ValueError(f"cap must be a power of two >= 16, got {cap}")
    block = cap
    while block >= 16:
        if size % block == 0:
            return block
        block //= 2
    return max(16, min(triton.next_power_of_2(size), cap))


@dataclass(frozen=True)
class TileTables:
    """Kept-tile tables of one pattern on one device (what the kernels iterate over).

    Attributes:
        cols: (grid_rows, max kept per row) int32 kept tile columns of each tile row, padded with -1.
        col_counts: (grid_rows,) int32 number of kept tiles of each tile row.
        rows: (grid_cols, max kept per column) int32 kept tile rows of each tile column, padded with -1.
        row_counts: (grid_cols,) int32 number of kept tiles of each tile column.
    """

    cols: torch.Tensor
    col_counts: torch.Tensor
    rows: torch.Tensor
    row_counts: torch.Tensor


def tile_tables(pattern: TilePattern, device: torch.device | str) -> TileTables:
    """The pattern's tables on ``device``, built once per pattern and device (in the pattern's cache)."""

    def build() -> TileTables:
        kept = pattern.kept_tiles.cpu()
        col_counts = kept.sum(dim=1).to(torch.int32)
        rows, row_counts = kept_table(kept.t())
        cols = pattern.kept_columns_on(device).contiguous()
        return TileTables(cols, col_counts.to(device), rows.to(device), row_counts.to(device))

    return pattern.cached("tile_tables", device, build)


def _cuda_configs(block_ms: tuple[int, ...]) -> list[triton.Config]:
    full = [(m, s, w) for m in block_ms for s, w in ((3, 4), (4, 4), (3, 8))]
    short = [(block_ms[-1], 3, 8), (block_ms[0], 4, 4)]
    return [
        triton.Config({"BLOCK_M": m, "GROUP_M": 8}, num_stages=s, num_warps=w) for m, s, w in tuning_list(full, short)
    ]


_KEY = ["tune_m", "tune_n", "tune_k", "TILE_N", "TILE_K", "BLOCK_N", "BLOCK_K", "DOT_DTYPE", "INPUT_PRECISION"]


@triton.jit(do_not_specialize=["tune_m", "tune_n", "tune_k"])
def _tile_product_kernel(
    a_ptr, w_ptr, bias_ptr, c_ptr, table_ptr, counts_ptr,
    M, N, K,
    stride_am, stride_ak, stride_wn, stride_wk, stride_cm, stride_cn, stride_table,
    scale,
    tune_m, tune_n, tune_k,
    TILE_N: tl.constexpr, TILE_K: tl.constexpr, CHUNKS_N: tl.constexpr, CHUNKS_K: tl.constexpr,
    HAS_BIAS: tl.constexpr, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """c[m-block, n-block] = scale · Σ over the kept tiles (r, t) of tile row r: a[m, t-cols] · w[n, t-cols]ᵀ
    (+ bias[n]), for a (N, K) ``w`` whose kept tile columns per tile row are ``table`` (``counts`` of them).

    Forward: (x, W, kept columns per tile row). grad_input: (g, Wᵀ, kept rows per tile column of W), no bias.
    A tile row with no kept tile gets zeros (the loop runs zero times), so every element is written."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, TILE_N) * CHUNKS_N
    pid_m, pid_n = grouped_pid(pid, num_pid_m, num_pid_n, GROUP_M)
    tile_row = pid_n // CHUNKS_N
    in_n = (pid_n % CHUNKS_N) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_n = tile_row * TILE_N + in_n
    mask_n = (in_n < TILE_N) & (offs_n < N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    count = tl.load(counts_ptr + tile_row)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for i in range(0, count * CHUNKS_K):
        tile_col = tl.load(table_ptr + tile_row * stride_table + i // CHUNKS_K)
        in_k = (i % CHUNKS_K) * BLOCK_K + tl.arange(0, BLOCK_K)
        offs_k = tile_col * TILE_K + in_k
        mask_k = (in_k < TILE_K) & (offs_k < K)
        acc = load_mma(
            acc, a_ptr, w_ptr, offs_m, offs_k, offs_k, offs_n, mask_m, mask_k, mask_n,
            stride_am, stride_ak, stride_wk, stride_wn, DOT_DTYPE, INPUT_PRECISION, UPCAST,
        )  # fmt: skip
    acc = acc * scale
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# One kernel, two tuning caches: for a square layer the forward and grad_input keys coincide, but they read W in
# different layouts, so each keeps its own best configuration.
_tile_forward_kernel = tuned(configs=_cuda_configs((64, 128)), key=_KEY)(_tile_product_kernel)
_tile_grad_input_kernel = tuned(configs=_cuda_configs((64, 128)), key=_KEY)(_tile_product_kernel)


@tuned(configs=_cuda_configs((32, 64)), key=_KEY + ["ACCUMULATE"], restore_value=["dw_ptr"])
@triton.jit(do_not_specialize=["tune_m", "tune_n", "tune_k"])
def _tile_grad_weight_kernel(
    g_ptr, x_ptr, dw_ptr, cols_ptr, counts_ptr,
    M, N, K, max_kept,
    stride_gm, stride_gn, stride_xm, stride_xk, stride_dn, stride_dk, stride_cols,
    scale,
    tune_m, tune_n, tune_k,
    TILE_N: tl.constexpr, TILE_K: tl.constexpr, CHUNKS_N: tl.constexpr, CHUNKS_K: tl.constexpr,
    ACCUMULATE: tl.constexpr, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """dW[block of kept tile (r, slot)] (+)= scale · g[:, n]ᵀ · x[:, k], reducing over the batch.

    Grid: tile rows × max kept per row × blocks per tile; programs whose slot is past their row's count exit.
    GROUP_M is unused (kept so every tile kernel shares one configuration format)."""
    pid = tl.program_id(0)
    chunk_k = pid % CHUNKS_K
    rest = pid // CHUNKS_K
    chunk_n = rest % CHUNKS_N
    rest = rest // CHUNKS_N
    slot = rest % max_kept
    tile_row = rest // max_kept
    count = tl.load(counts_ptr + tile_row)
    if slot < count:
        tile_col = tl.load(cols_ptr + tile_row * stride_cols + slot)
        in_n = chunk_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_n = tile_row * TILE_N + in_n
        mask_n = (in_n < TILE_N) & (offs_n < N)
        in_k = chunk_k * BLOCK_K + tl.arange(0, BLOCK_K)
        offs_k = tile_col * TILE_K + in_k
        mask_k = (in_k < TILE_K) & (offs_k < K)
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for m0 in range(0, M, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            mask_m = offs_m < M
            acc = load_mma(
                acc, g_ptr, x_ptr, offs_n, offs_m, offs_m, offs_k, mask_n, mask_m, mask_k,
                stride_gn, stride_gm, stride_xm, stride_xk, DOT_DTYPE, INPUT_PRECISION, UPCAST,
            )  # fmt: skip
        acc = acc * scale
        dw_ptrs = dw_ptr + offs_n[:, None] * stride_dn + offs_k[None, :] * stride_dk
        mask = mask_n[:, None] & mask_k[None, :]
        if ACCUMULATE:
            acc += tl.load(dw_ptrs, mask=mask, other=0.0).to(tl.float32)
        tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class _Geometry:
    tile_n: int
    tile_k: int
    block_n: int
    block_k: int
    chunks_n: int
    chunks_k: int

    def transposed(self) -> _Geometry:
        """The geometry of Wᵀ (the two sides swapped)."""
        return _Geometry(self.tile_k, self.tile_n, self.block_k, self.block_n, self.chunks_k, self.chunks_n)


def _geometry(weight_shape: torch.Size, tables: TileTables, tile: tuple[int, int]) -> _Geometry:
    n, k = weight_shape
    tile_n, tile_k = tile
    grid = (triton.cdiv(n, tile_n), triton.cdiv(k, tile_k))
    if tuple(tables.cols.shape[:1]) != grid[:1] or tuple(tables.rows.shape[:1]) != grid[1:]:
        raise ValueError(
            f"tile tables for a {tables.cols.shape[0]} x {tables.rows.shape[0]} grid do not fit a weight of shape "
            f"{(n, k)} with tile {tile} (grid {grid})"
        )
    block_n, block_k = tile_block(tile_n, BLOCK_CAPS[0]), tile_block(tile_k, BLOCK_CAPS[1])
    return _Geometry(tile_n, tile_k, block_n, block_k, triton.cdiv(tile_n, block_n), triton.cdiv(tile_k, block_k))


def _geometry_kwargs(geo: _Geometry, precision: Precision) -> dict:
    kwargs = dict(
        TILE_N=geo.tile_n, TILE_K=geo.tile_k, CHUNKS_N=geo.chunks_n, CHUNKS_K=geo.chunks_k,
        DOT_DTYPE=precision.dtype, INPUT_PRECISION=precision.input_precision, UPCAST=precision.upcast,
        BLOCK_N=geo.block_n, BLOCK_K=geo.block_k,
    )  # fmt: skip
    return kwargs | interpreter_config("BLOCK_M", "GROUP_M")


def _check(name: str, t: torch.Tensor, shape: tuple[int, int], device: torch.device) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, the operands on {device}")
    check_offsets(**{name: t})


def _tile_product(
    a: torch.Tensor,
    a_name: str,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    tables: TileTables,
    tile: tuple[int, int],
    scale: float,
    precision: Precision,
    out: torch.Tensor,
    transpose: bool,
) -> torch.Tensor:
    """``out = scale · a · (w ⊙ M)ᵀ (+ bias)`` with ``w`` = W (forward) or, with ``transpose``, the view Wᵀ and
    the transposed tables (grad_input); returns ``out``."""
    w = weight.t() if transpose else weight
    table, counts = (tables.rows, tables.row_counts) if transpose else (tables.cols, tables.col_counts)
    n, k = w.shape
    m = a.shape[0]
    _check(a_name, a, (m, k), weight.device)
    _check("out", out, (m, n), weight.device)
    check_offsets(weight=weight)
    if bias is not None:
        _check("bias", bias[None, :], (1, n), weight.device)
    geo = _geometry(weight.shape, tables, tile)
    if transpose:
        geo = geo.transposed()
    if m == 0:
        return out

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(m, meta["BLOCK_M"]) * table.shape[0] * geo.chunks_n,)

    kernel = _tile_grad_input_kernel if transpose else _tile_forward_kernel
    kernel[grid](
        a, w, bias, out, table, counts,
        m, n, k,
        a.stride(0), a.stride(1), w.stride(0), w.stride(1), out.stride(0), out.stride(1),
        max(table.stride(0), 1), float(scale), tune_bucket(m), tune_bucket(n), tune_bucket(k),
        HAS_BIAS=bias is not None, **_geometry_kwargs(geo, precision),
    )  # fmt: skip
    return out


def tile_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    tables: TileTables,
    tile: tuple[int, int],
    scale: float,
    precision: Precision,
    out: torch.Tensor,
) -> torch.Tensor:
    """``out = scale · x · (W ⊙ M)ᵀ + b`` for a 2-D ``x`` (M, K), visiting kept tiles only; returns ``out``."""
    return _tile_product(x, "x", weight, bias, tables, tile, scale, precision, out, transpose=False)


def tile_grad_input(
    g: torch.Tensor,
    weight: torch.Tensor,
    tables: TileTables,
    tile: tuple[int, int],
    scale: float,
    precision: Precision,
    out: torch.Tensor,
) -> torch.Tensor:
    """``out = scale · g · (W ⊙ M)`` (M, K), visiting kept tiles only (zeros where a tile column keeps none)."""
    return _tile_product(g, "g", weight, None, tables, tile, scale, precision, out, transpose=True)


def tile_grad_weight(
    g: torch.Tensor,
    x: torch.Tensor,
    grad_weight: torch.Tensor,
    tables: TileTables,
    tile: tuple[int, int],
    scale: float,
    precision: Precision,
    accumulate: bool = False,
) -> torch.Tensor:
    """``grad_weight (+)= scale · gᵀ · x`` on the kept tiles only (others untouched); returns ``grad_weight``."""
    n, k = grad_weight.shape
    m = g.shape[0]
    _check("g", g, (m, n), grad_weight.device)
    _check("x", x, (m, k), grad_weight.device)
    check_offsets(grad_weight=grad_weight)
    geo = _geometry(grad_weight.shape, tables, tile)
    max_kept = tables.cols.shape[1]
    programs = tables.cols.shape[0] * max_kept * geo.chunks_n * geo.chunks_k
    if programs == 0:
        return grad_weight
    _tile_grad_weight_kernel[(programs,)](
        g, x, grad_weight, tables.cols, tables.col_counts,
        m, n, k, max_kept,
        g.stride(0), g.stride(1), x.stride(0), x.stride(1), grad_weight.stride(0), grad_weight.stride(1),
        max(tables.cols.stride(0), 1), float(scale), tune_bucket(m), tune_bucket(n), tune_bucket(k),
        ACCUMULATE=bool(accumulate), **_geometry_kwargs(geo, precision),
    )  # fmt: skip
    return grad_weight


# --- autograd ----------------------------------------------------------------------------------------------------


class TileLinearFn(torch.autograd.Function):
    """y = x · (scale · W ⊙ M)ᵀ + b for a tile mask M and its backward, visiting kept tiles only (Triton)."""

    @staticmethod
    def forward(ctx, x, weight, bias, tables, tile, scale, dtype):  # type: ignore[override]
        x2 = x.reshape(-1, x.shape[-1])
        precision = precision_for(dtype, x.device)
        y = empty_output((x2.shape[0], weight.shape[0]), dtype, x.device)
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
            grad_x = empty_output((g.shape[0], x_shape[-1]), x_dtype, device)
            tile_grad_input(g, weight, tables, tile, scale, precision, grad_x)
            grad_x = grad_x.reshape(x_shape)
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros(weight.shape, dtype=weight.dtype, device=device)
            tile_grad_weight(g, x2, grad_w, tables, tile, scale, precision)
        if ctx.bias_meta is not None and ctx.needs_input_grad[2]:
            shape, dtype = ctx.bias_meta
            grad_b = column_sum(g, empty_output(shape, dtype, device))
        return grad_x, grad_w, grad_b, None, None, None, None
