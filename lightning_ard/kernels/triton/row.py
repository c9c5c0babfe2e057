"""Compact gather GEMM: the Triton kernels of row-pattern (neuron dropout) Linears, their launchers and the
autograd Function over them (:class:`RowLinearFn`).

:func:`gather_gemm` computes ``C[ci, cj] (+)= scale · A[:, ar] · B[bj][:, br]ᵀ (+ bias[bj])`` on the kept block,
reading operands through optional index vectors (distinct indices) instead of gathered copies; the forward, grad_x
and grad_W of a row-pattern Linear are instances of it, and :func:`column_sum` gives grad_b. Patterns are run-time
data, so a new pattern each step reuses the compiled kernel. The mapping of the three products, compilation
variants and the sm_90 memory-access notes: docs/method.md, section "Row patterns: the compact gather GEMM".
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lightning_ard.kernels.indices import check_device_index
from lightning_ard.kernels.kept import complement
from lightning_ard.kernels.triton.common import (
    GEMM_FULL,
    INTERPRET,
    Precision,
    empty_output,
    gemm_configs,
    grouped_pid,
    interpreter_config,
    load_mma,
    precision_for,
    tune_bucket,
    tuned,
)


def _cuda_configs() -> list[triton.Config]:
    """A short list (tuning time is paid at the first step of every shape bucket): :data:`GEMM_FULL`
    (:func:`_prune_configs` drops its 2-warp block on sm_90+)."""
    return gemm_configs(GEMM_FULL)


def smem_bytes(config: triton.Config, a_size: int, b_size: int) -> int:
    """Shared memory a configuration needs: ``num_stages`` buffers of the A and B blocks (stored dtypes, as the
    asynchronous copies land them), or the float32 accumulator tile staged for the epilogue if that is larger."""
    m, n, r = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.kwargs["BLOCK_R"]
    return max(config.num_stages * r * (m * a_size + n * b_size), m * n * 4)


def device_limits(device: torch.device) -> tuple[int, int]:
    """(shared memory per block in bytes, compute capability major) of a CUDA device; the H100's values elsewhere
    (the interpreter does not prune)."""
    if device.type != "cuda":
        return 232448, 9
    props = torch.cuda.get_device_properties(device)
    smem = getattr(props, "shared_memory_per_block_optin", 0)
    if not smem:
        smem = triton.runtime.driver.active.utils.get_device_properties(device.index or 0)["max_shared_mem"]
    return int(smem), int(props.major)


def prune_configs(
    configs: list[triton.Config], a: torch.Tensor, b: torch.Tensor, m: int | None = None, n: int | None = None
) -> list[triton.Config]:
    """The configurations worth compiling for one launch on ``a``'s device: those that fit its shared memory,
    4+ warps on sm_90+ (wgmma needs a warp group), and blocks not much larger than the problem (256 columns for a
    10-unit layer cannot win; only when ``m`` and ``n`` are given). Never empty: the smallest-memory
    configuration stays if nothing else does."""
    smem, major = device_limits(a.device)
    fits = [c for c in configs if smem_bytes(c, a.element_size(), b.element_size()) <= smem]
    if major >= 9:
        fits = [c for c in fits if c.num_warps >= 4] or fits
    if m is None or n is None:
        return fits or [min(configs, key=lambda c: smem_bytes(c, a.element_size(), b.element_size()))]
    bm, bn = tune_bucket(m), tune_bucket(n)
    sized = [c for c in fits if c.kwargs["BLOCK_M"] <= max(64, bm) and c.kwargs["BLOCK_N"] <= max(64, bn)]
    if sized:
        return sized
    if fits:
        return fits
    return [min(configs, key=lambda c: smem_bytes(c, a.element_size(), b.element_size()))]


def _prune_configs(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    """``early_config_prune`` hook of the autotuner (:func:`prune_configs` on the launch's arguments)."""
    return prune_configs(configs, named_args["a_ptr"], named_args["b_ptr"], named_args["M"], named_args["N"])


@triton.jit
def _positions(idx_ptr, offs, mask, HAS_IDX: tl.constexpr, INT64: tl.constexpr):
    """Where block positions ``offs`` fall in the operand: ``idx[offs]`` through an index vector, else ``offs``;
    int64 with INT64 (then every element offset built from them is 64-bit)."""
    if HAS_IDX:
        pos = tl.load(idx_ptr + offs, mask=mask, other=0)
    else:
        pos = offs
    if INT64:
        pos = pos.to(tl.int64)
    return pos


@triton.jit
def _gemm_block(
    pid, num_pid_m, num_pid_n,
    a_ptr, b_ptr, c_ptr, bias_ptr,
    a_red_idx_ptr, b_row_idx_ptr, b_red_idx_ptr, c_row_idx_ptr, c_col_idx_ptr,
    M, N, R,
    stride_am, stride_ar, stride_bn, stride_br, stride_cm, stride_cn,
    scale,
    A_RED_IDX: tl.constexpr, B_ROW_IDX: tl.constexpr, B_RED_IDX: tl.constexpr,
    C_ROW_IDX: tl.constexpr, C_COL_IDX: tl.constexpr, HAS_BIAS: tl.constexpr, ACCUMULATE: tl.constexpr,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, INT64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """One (BLOCK_M, BLOCK_N) tile of C: loop over R, gathering A's and B's columns through their indices."""
    pid_m, pid_n = grouped_pid(pid, num_pid_m, num_pid_n, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    b_rows = _positions(b_row_idx_ptr, offs_n, mask_n, B_ROW_IDX, INT64)
    a_rows = _positions(a_red_idx_ptr, offs_m, mask_m, False, INT64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask_r = offs_r < R
        a_cols = _positions(a_red_idx_ptr, offs_r, mask_r, A_RED_IDX, INT64)
        b_cols = _positions(b_red_idx_ptr, offs_r, mask_r, B_RED_IDX, INT64)
        acc = load_mma(
            acc, a_ptr, b_ptr, a_rows, a_cols, b_cols, b_rows, mask_m, mask_r, mask_n,
            stride_am, stride_ar, stride_br, stride_bn, DOT_DTYPE, INPUT_PRECISION, UPCAST,
        )  # fmt: skip
    acc = acc * scale
    if HAS_BIAS:
        acc += tl.load(bias_ptr + b_rows, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    c_rows = _positions(c_row_idx_ptr, offs_m, mask_m, C_ROW_IDX, INT64)
    c_cols = _positions(c_col_idx_ptr, offs_n, mask_n, C_COL_IDX, INT64)
    c_ptrs = c_ptr + c_rows[:, None] * stride_cm + c_cols[None, :] * stride_cn
    mask_c = mask_m[:, None] & mask_n[None, :]
    if ACCUMULATE:
        acc += tl.load(c_ptrs, mask=mask_c, other=0.0).to(tl.float32)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask_c)


@triton.jit
def _zero_block(
    zid, num_pid_m,
    c_ptr, c_row_idx_ptr, zero_idx_ptr,
    M, n_zero, stride_cm, stride_cn,
    C_ROW_IDX: tl.constexpr, INT64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One (BLOCK_M, BLOCK_N) tile of zeros at C's rows × the dropped columns ``zero_idx``."""
    pid_m = zid % num_pid_m
    pid_z = zid // num_pid_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_z = pid_z * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_z = offs_z < n_zero
    rows = _positions(c_row_idx_ptr, offs_m, mask_m, C_ROW_IDX, INT64)
    cols = _positions(zero_idx_ptr, offs_z, mask_z, True, INT64)
    zeros = tl.zeros((BLOCK_M, BLOCK_N), dtype=c_ptr.dtype.element_ty)
    tl.store(
        c_ptr + rows[:, None] * stride_cm + cols[None, :] * stride_cn, zeros, mask=mask_m[:, None] & mask_z[None, :]
    )


@triton.jit(do_not_specialize=["tune_m", "tune_n", "tune_r"])
def _gather_gemm_kernel(
    a_ptr, b_ptr, c_ptr, bias_ptr,
    a_red_idx_ptr, b_row_idx_ptr, b_red_idx_ptr, c_row_idx_ptr, c_col_idx_ptr, zero_idx_ptr,
    M, N, R, n_zero,
    stride_am, stride_ar, stride_bn, stride_br, stride_cm, stride_cn,
    scale,
    tune_m, tune_n, tune_r,
    A_RED_IDX: tl.constexpr, B_ROW_IDX: tl.constexpr, B_RED_IDX: tl.constexpr,
    C_ROW_IDX: tl.constexpr, C_COL_IDX: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACCUMULATE: tl.constexpr, ZERO_FILL: tl.constexpr,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, INT64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """Grid: one program per C tile, then (ZERO_FILL) one per tile of C rows × dropped columns.

    ``tune_*`` are power-of-two buckets of M, N, R: unused by the body, they are the autotuning key.
    """
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_compute = num_pid_m * num_pid_n
    if ZERO_FILL:  # compile-time: without it the zero-fill branch is not compiled (its pointers are None)
        if pid >= num_compute:
            _zero_block(
                pid - num_compute, num_pid_m, c_ptr, c_row_idx_ptr, zero_idx_ptr, M, n_zero, stride_cm, stride_cn,
                C_ROW_IDX, INT64, BLOCK_M, BLOCK_N,
            )  # fmt: skip
            return
    _gemm_block(
        pid, num_pid_m, num_pid_n, a_ptr, b_ptr, c_ptr, bias_ptr,
        a_red_idx_ptr, b_row_idx_ptr, b_red_idx_ptr, c_row_idx_ptr, c_col_idx_ptr, M, N, R,
        stride_am, stride_ar, stride_bn, stride_br, stride_cm, stride_cn, scale,
        A_RED_IDX, B_ROW_IDX, B_RED_IDX, C_ROW_IDX, C_COL_IDX, HAS_BIAS, ACCUMULATE,
        DOT_DTYPE, INPUT_PRECISION, UPCAST, INT64, BLOCK_M, BLOCK_N, BLOCK_R, GROUP_M,
    )  # fmt: skip


_KEY = [
    "tune_m", "tune_n", "tune_r", "A_RED_IDX", "B_ROW_IDX", "B_RED_IDX", "C_ROW_IDX", "C_COL_IDX",
    "HAS_BIAS", "ACCUMULATE", "ZERO_FILL", "DOT_DTYPE", "INPUT_PRECISION", "INT64",
]  # fmt: skip


def _tuned_product() -> object:
    return tuned(configs=_cuda_configs(), key=_KEY, restore_value=["c_ptr"], prune=_prune_configs)(_gather_gemm_kernel)


PRODUCT_KERNELS = {"forward": _tuned_product(), "grad_x": _tuned_product(), "grad_w": _tuned_product()}
"""One autotuner (one tuning cache) per product of a row-pattern Linear: the forward reads W with the kept input
units along its contiguous dimension, grad_x along its strided one and grad_W reduces over the batch, so a square
layer's three products share a key but not a best configuration."""

INT64_SPAN = 2**31
"""Operands whose largest element offset reaches this use 64-bit offsets (a separate compiled variant)."""


def needs_int64(*tensors: torch.Tensor | None) -> bool:
    """Whether an operand's largest element offset does not fit in int32 (then the kernel indexes in int64)."""
    return any(
        t is not None and t.numel() and sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride())) >= INT64_SPAN
        for t in tensors
    )


def _check_index(name: str, idx: torch.Tensor | None, device: torch.device, bound: int) -> None:
    if idx is None:
        return
    if idx.dim() != 1 or idx.dtype not in (torch.int32, torch.int64) or not idx.is_contiguous():
        raise ValueError(f"{name} must be a contiguous 1-D int32/int64 tensor, got {idx.dtype} {tuple(idx.shape)}")
    if idx.device != device:
        raise ValueError(f"{name} is on {idx.device}, the operands on {device}")
    if idx.numel() > bound:
        raise ValueError(f"{name} has {idx.numel()} entries for a dimension of size {bound}")
    check_device_index(name, idx, bound)


def _check_gemm(
    product: str,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    bias: torch.Tensor | None,
    idx: dict[str, torch.Tensor | None],
) -> tuple[int, int, int, int]:
    """Check the operands of :func:`gather_gemm` against each other; return ``(M, N, R, zero-filled columns)``."""
    if product not in PRODUCT_KERNELS:
        raise ValueError(f"product must be one of {sorted(PRODUCT_KERNELS)}, got {product!r}")
    a_red_idx, b_row_idx, b_red_idx = idx["a_red_idx"], idx["b_row_idx"], idx["b_red_idx"]
    c_row_idx, c_col_idx, zero_idx = idx["c_row_idx"], idx["c_col_idx"], idx["zero_idx"]
    if a.dim() != 2 or b.dim() != 2 or c.dim() != 2:
        raise ValueError(f"gather_gemm needs 2-D operands, got {a.dim()}-D, {b.dim()}-D, {c.dim()}-D")
    device = a.device
    for name, t in (("b", b), ("c", c), ("bias", bias)):
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device}, a on {device}")
    M = a.shape[0]
    N = b_row_idx.numel() if b_row_idx is not None else b.shape[0]
    R = b_red_idx.numel() if b_red_idx is not None else b.shape[1]
    a_width = a_red_idx.numel() if a_red_idx is not None else a.shape[1]
    if a_width != R:
        raise ValueError(f"reduction sizes differ: A gives {a_width}, B gives {R}")
    bounds = {"a_red_idx": a.shape[1], "b_row_idx": b.shape[0], "b_red_idx": b.shape[1], "c_row_idx": c.shape[0],
              "c_col_idx": c.shape[1], "zero_idx": c.shape[1]}  # fmt: skip
    for name, bound in bounds.items():
        _check_index(name, idx[name], device, bound)
    if (c_row_idx.numel() if c_row_idx is not None else c.shape[0]) != M:
        raise ValueError(f"c has {c.shape[0]} rows (or row indices) for M={M}")
    if c_col_idx is None and c.shape[1] != N:
        raise ValueError(f"c has {c.shape[1]} columns for N={N}")
    if c_col_idx is not None and c_col_idx.numel() != N:
        raise ValueError(f"c_col_idx has {c_col_idx.numel()} entries for N={N}")
    n_zero = zero_idx.numel() if zero_idx is not None else 0
    if n_zero and c_col_idx is None:
        raise ValueError("zero_idx needs c_col_idx (the zero-filled columns are the complement of the written ones)")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != b.shape[0]):
        raise ValueError(f"bias must be 1-D with {b.shape[0]} entries, got {tuple(bias.shape)}")
    return M, N, R, n_zero


def gather_gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    precision: Precision,
    *,
    a_red_idx: torch.Tensor | None = None,
    b_row_idx: torch.Tensor | None = None,
    b_red_idx: torch.Tensor | None = None,
    c_row_idx: torch.Tensor | None = None,
    c_col_idx: torch.Tensor | None = None,
    zero_idx: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    scale: float = 1.0,
    accumulate: bool = False,
    product: str = "forward",
) -> torch.Tensor:
    """``C[ci, cj] (+)= scale · A[:, ar] · B[bj][:, br]ᵀ (+ bias[bj])`` in place; returns ``c``.

    Args:
        a: 2-D (M, ·); its rows are taken as they are.
        b: 2-D (·, ·); rows ``b_row_idx`` (or all) are C's columns, columns ``b_red_idx`` (or all) are reduced.
        c: 2-D output, written at rows ``c_row_idx`` (or 0..M-1) and columns ``c_col_idx`` (or 0..N-1).
        precision: operand dtype and TF32 policy (:func:`~lightning_ard.kernels.triton.common.precision_for`).
        a_red_idx, b_row_idx, b_red_idx, c_row_idx, c_col_idx: optional kept-index vectors (distinct entries).
        zero_idx: columns of ``c`` to set to zero at the same rows (the dropped units when a gradient is
            scattered to full width), in the same launch, so every element of ``c`` is written exactly once.
        bias: 1-D, added at ``b_row_idx`` (the forward's bias of the kept output units).
        scale, accumulate: factor on the product (not on the bias or on ``c``); add to ``c`` instead of writing.
        product: ``"forward"``, ``"grad_x"`` or ``"grad_w"``: which tuning cache (:data:`PRODUCT_KERNELS`).

    Index vectors must hold distinct entries (a duplicate among C's would race): checked at every launch only
    under ``LIGHTNING_ARD_CHECK_INDICES=1`` (a device sync; :mod:`lightning_ard.kernels.indices`), once per
    pattern by the backend. Operands past 2**31 elements switch to 64-bit offsets.
    """
    idx = dict(a_red_idx=a_red_idx, b_row_idx=b_row_idx, b_red_idx=b_red_idx, c_row_idx=c_row_idx, c_col_idx=c_col_idx,
               zero_idx=zero_idx)  # fmt: skip
    M, N, R, n_zero = _check_gemm(product, a, b, c, bias, idx)
    if M == 0 or (N == 0 and n_zero == 0):
        return c

    def grid(meta: dict) -> tuple[int]:
        pm = triton.cdiv(M, meta["BLOCK_M"])
        return (pm * triton.cdiv(N, meta["BLOCK_N"]) + pm * triton.cdiv(n_zero, meta["BLOCK_N"]),)

    PRODUCT_KERNELS[product][grid](
        a, b, c, bias,
        a_red_idx, b_row_idx, b_red_idx, c_row_idx, c_col_idx, zero_idx,
        M, N, R, n_zero,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
        float(scale),
        tune_bucket(M), tune_bucket(N), tune_bucket(R),
        A_RED_IDX=a_red_idx is not None, B_ROW_IDX=b_row_idx is not None, B_RED_IDX=b_red_idx is not None,
        C_ROW_IDX=c_row_idx is not None, C_COL_IDX=c_col_idx is not None, HAS_BIAS=bias is not None,
        ACCUMULATE=bool(accumulate), ZERO_FILL=n_zero > 0,
        DOT_DTYPE=precision.dtype, INPUT_PRECISION=precision.input_precision, UPCAST=precision.upcast,
        INT64=needs_int64(a, b, c), **interpreter_config(),
    )  # fmt: skip
    return c


# --- column sum (grad_b) -----------------------------------------------------------------------------------------

COLUMN_SUM_BLOCKS = (16, 16) if INTERPRET else (128, 32)
"""(BLOCK_M, BLOCK_N) of the column sum: narrow column blocks so that even a 4096-wide layer fills the GPU."""


@triton.jit
def _column_sum_kernel(
    g_ptr, out_ptr, idx_ptr, M, N, stride_gm, stride_gn,
    HAS_IDX: tl.constexpr, ACCUMULATE: tl.constexpr, INT64: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):  # fmt: skip
    """out[idx[j]] (+)= Σ_m g[m, j] for one block of BLOCK_N columns, summed in float32."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    cols = _positions(idx_ptr, offs_n, mask_n, False, INT64)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = _positions(idx_ptr, m0 + tl.arange(0, BLOCK_M), None, False, INT64)
        tile = tl.load(
            g_ptr + offs_m[:, None] * stride_gm + cols[None, :] * stride_gn,
            mask=(offs_m < M)[:, None] & mask_n[None, :],
            other=0.0,
        )
        acc += tl.sum(tile.to(tl.float32), axis=0)
    dst = _positions(idx_ptr, offs_n, mask_n, HAS_IDX, INT64)
    if ACCUMULATE:
        acc += tl.load(out_ptr + dst, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(out_ptr + dst, acc.to(out_ptr.dtype.element_ty), mask=mask_n)


def column_sum(
    g: torch.Tensor, out: torch.Tensor, idx: torch.Tensor | None = None, accumulate: bool = False
) -> torch.Tensor:
    """``out[idx] (+)= g.sum(0)`` in place (``idx`` None: all of ``out``); returns ``out``. The bias gradient."""
    if g.dim() != 2 or out.dim() != 1:
        raise ValueError(f"column_sum needs a 2-D g and a 1-D out, got {g.dim()}-D and {out.dim()}-D")
    N = g.shape[1]
    _check_index("idx", idx, g.device, out.shape[0])
    if (idx.numel() if idx is not None else out.shape[0]) != N:
        raise ValueError(f"g has {N} columns for {out.shape[0]} outputs (or {idx.numel()} indices)")
    if N == 0:
        return out
    block_m, block_n = COLUMN_SUM_BLOCKS
    _column_sum_kernel[(triton.cdiv(N, block_n),)](
        g, out, idx, g.shape[0], N, g.stride(0), g.stride(1),
        HAS_IDX=idx is not None, ACCUMULATE=bool(accumulate), INT64=needs_int64(g, out),
        BLOCK_M=block_m, BLOCK_N=block_n,
    )  # fmt: skip
    return out


# --- the three products of a row-pattern Linear ------------------------------------------------------------------


def _dtype_of(precision: Precision) -> torch.dtype:
    return {tl.float32: torch.float32, tl.float16: torch.float16, tl.bfloat16: torch.bfloat16}[precision.dtype]


def row_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_idx: torch.Tensor | None,
    out_idx: torch.Tensor | None,
    scale: float,
    x_compact: bool,
    precision: Precision,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y = scale · x[:, in] · W[out][:, in]ᵀ + b[out]`` for a 2-D ``x`` (already compact when ``x_compact``).

    ``out`` (optional, for tests): the (M, K_out) tensor to write; by default a new one in the compute dtype.
    """
    k_in = in_idx.numel() if in_idx is not None else weight.shape[1]
    expected = k_in if (x_compact or in_idx is None) else weight.shape[1]
    if x.dim() != 2 or x.shape[1] != expected:
        raise ValueError(f"x must be (M, {expected}) for this pattern, got {tuple(x.shape)}")
    n_out = out_idx.numel() if out_idx is not None else weight.shape[0]
    if out is None:
        out = torch.empty(x.shape[0], n_out, dtype=_dtype_of(precision), device=x.device)
    return gather_gemm(
        x, weight, out, precision,
        a_red_idx=None if x_compact else in_idx, b_row_idx=out_idx, b_red_idx=in_idx, bias=bias, scale=scale,
        product="forward",
    )  # fmt: skip


def row_grad_input(
    g: torch.Tensor,
    weight: torch.Tensor,
    in_idx: torch.Tensor | None,
    out_idx: torch.Tensor | None,
    scale: float,
    out: torch.Tensor,
    precision: Precision,
    dropped_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """``grad_x = scale · g · W[out][:, in]`` into ``out``: compact (M, K_in) or, when ``out`` is full width
    (M, in_features) and ``in_idx`` is given, scattered to the kept columns with zeros written at ``dropped_idx``
    (the complement of ``in_idx``; computed here, with a device sync, when not given)."""
    scatter = in_idx is not None and out.shape[1] == weight.shape[1] and in_idx.numel() != weight.shape[1]
    if scatter and dropped_idx is None:
        dropped_idx = complement(in_idx, weight.shape[1])
    return gather_gemm(
        g, weight.t(), out, precision,
        b_row_idx=in_idx, b_red_idx=out_idx, c_col_idx=in_idx if scatter else None,
        zero_idx=dropped_idx if scatter else None, scale=scale, product="grad_x",
    )  # fmt: skip


def row_grad_weight(
    g: torch.Tensor,
    x: torch.Tensor,
    grad_weight: torch.Tensor,
    in_idx: torch.Tensor | None,
    out_idx: torch.Tensor | None,
    scale: float,
    x_compact: bool,
    precision: Precision,
    accumulate: bool = False,
) -> torch.Tensor:
    """``grad_weight[out][:, in] (+)= scale · gᵀ · x[:, in]``: only the kept block of the full-size gradient is
    written (the caller allocates zeros, or passes an existing gradient with ``accumulate``)."""
    return gather_gemm(
        g.t(), x.t(), grad_weight, precision,
        b_row_idx=None if x_compact else in_idx, c_row_idx=out_idx, c_col_idx=in_idx, scale=scale,
        accumulate=accumulate, product="grad_w",
    )  # fmt: skip


# --- autograd ----------------------------------------------------------------------------------------------------


class RowLinearFn(torch.autograd.Function):
    """y = scale · x[:, in] · W[out][:, in]ᵀ + b[out] and its backward, all on the kept block (Triton). Index
    vectors are int32 (:attr:`~lightning_ard.kernels.kept.Kept.index32`), None where every unit is kept."""

    @staticmethod
    def forward(ctx, x, weight, bias, in_idx, out_idx, dropped_idx, scale, x_compact, dtype):  # type: ignore[override]
        x2 = x.reshape(-1, x.shape[-1])
        precision = precision_for(dtype, x.device)
        n_out = out_idx.numel() if out_idx is not None else weight.shape[0]
        y = empty_output((x2.shape[0], n_out), dtype, x.device)
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
            grad_x = empty_output((g.shape[0], x_shape[-1]), x_dtype, device)
            row_grad_input(g, weight, in_idx, out_idx, scale, grad_x, precision, dropped_idx)
            grad_x = grad_x.reshape(x_shape)
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros(weight.shape, dtype=weight.dtype, device=device)
            row_grad_weight(g, x2, grad_w, in_idx, out_idx, scale, x_compact, precision)
        if ctx.bias_meta is not None and ctx.needs_input_grad[2]:
            shape, dtype = ctx.bias_meta
            if out_idx is None:
                grad_b = empty_output(shape, dtype, device)
            else:
                grad_b = torch.zeros(shape, dtype=dtype, device=device)
            column_sum(g, grad_b, out_idx)
        return grad_x, grad_w, grad_b, None, None, None, None, None, None
