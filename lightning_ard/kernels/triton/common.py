"""What the Triton kernels share: interpreter detection, dtype policy, the load-and-multiply step and tuning keys.

:data:`INTERPRET` is read once at import (``@triton.jit`` reads ``TRITON_INTERPRET`` at decoration time): the
kernel modules then build autotuned kernels (CUDA) or plain ones with one small fixed configuration (interpreter);
tests that need the interpreter set the variable before import or reload the modules. Details: docs/method.md,
section "Shared machinery".
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
import triton.language as tl


def _interpret() -> bool:
    try:  # Triton >= 3.3 reads the flag through its knobs, exactly as @triton.jit does
        from triton import knobs

        return bool(knobs.runtime.interpret)
    except (ImportError, AttributeError):
        return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


INTERPRET: bool = _interpret()
"""True when the kernels of this import run in Triton's CPU interpreter."""

SHORT_TUNING: bool = os.environ.get("LIGHTNING_ARD_TUNING", "full") == "short"
"""``LIGHTNING_ARD_TUNING=short`` (read at import): each autotuned kernel tries one or two configurations instead
of its full list, so a benchmark on a fresh GPU spends seconds, not minutes, compiling (bench/gpu_kernels.py)."""


INTERPRETER_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_R": 16, "GROUP_M": 2}
"""The one block configuration of the GEMM kernels under TRITON_INTERPRET=1 (small, so ragged edges are
exercised); kernels with fewer block parameters take their subset (:func:`interpreter_config`)."""

POISON_OUTPUTS = False
"""Test hook: when True, outputs the kernels must write completely are allocated filled with NaN instead of
uninitialized, so an element a kernel forgets to write shows up as NaN."""


def interpreter_config(*names: str) -> dict:
    """The launch keywords ``names`` (default: all) of :data:`INTERPRETER_CONFIG` in the interpreter; nothing on
    CUDA, where the autotuner chooses."""
    if not INTERPRET:
        return {}
    return {n: INTERPRETER_CONFIG[n] for n in names or INTERPRETER_CONFIG}


def empty_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An output a kernel writes completely: uninitialized, or NaN under :data:`POISON_OUTPUTS`."""
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def tuning_list(full: list, short: list) -> list:
    """The configurations to autotune over: ``short`` under :data:`SHORT_TUNING`, else ``full``."""
    return short if SHORT_TUNING else full


GEMM_FULL = [  # (BLOCK_M, BLOCK_N, BLOCK_R, stages, warps)
    (128, 256, 64, 3, 8),
    (128, 128, 64, 3, 8),
    (128, 128, 32, 4, 4),
    (128, 64, 32, 4, 4),
    (64, 128, 32, 4, 4),
    (64, 64, 64, 3, 4),
    (64, 64, 32, 5, 2),
]
"""The full tuning list of the gather GEMMs: wgmma-friendly 4- and 8-warp blocks, and one 2-warp block for
pre-Hopper GPUs (pruned on sm_90+, where 2 warps lower to ``mma.sync`` instead of wgmma). The grouped GEMM leaves
out the first (widest) block."""

GEMM_SHORT = [(128, 128, 64, 3, 8), (128, 64, 64, 4, 4)]
"""The short tuning list of the gather GEMMs (row and grouped): ``(BLOCK_M, BLOCK_N, BLOCK_R, stages, warps)``."""


def gemm_configs(full: list[tuple[int, int, int, int, int]]) -> list[triton.Config]:
    """Autotune configurations of a gather GEMM from ``(BLOCK_M, BLOCK_N, BLOCK_R, stages, warps)`` blocks
    (:data:`GEMM_SHORT` under :data:`SHORT_TUNING`), grouped launch order ``GROUP_M = 8``."""
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_R": r, "GROUP_M": 8}, num_stages=s, num_warps=w)
        for m, n, r, s, w in tuning_list(full, GEMM_SHORT)
    ]


_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@dataclass(frozen=True)
class Precision:
    """How a kernel multiplies: operands are cast to ``dtype`` in registers, products accumulate in float32.

    Attributes:
        dtype: Triton dtype of the dot operands (``tl.float32``, ``tl.float16`` or ``tl.bfloat16``).
        input_precision: ``"tf32"`` or ``"ieee"`` for float32 operands (ignored by Triton for 16-bit operands).
        upcast: multiply 16-bit operands as float32 (exact products of the rounded values). Only used in the
            interpreter, whose ``tl.dot`` mishandles bfloat16 operands (Triton 3.x); on CUDA it is always False.
    """

    dtype: tl.dtype
    input_precision: str
    upcast: bool


def cuda_matmul_tf32() -> bool:
    """Whether float32 CUDA matmuls may use TF32. Reads the ``fp32_precision`` API of torch >= 2.9 first: there,
    reading the legacy ``allow_tf32`` (or ``get_float32_matmul_precision()``) raises once both APIs were used."""
    matmul = torch.backends.cuda.matmul
    new = getattr(matmul, "fp32_precision", None)
    if new in ("tf32", "ieee"):
        return new == "tf32"
    return torch.get_float32_matmul_precision() != "highest"


def precision_for(dtype: torch.dtype, device: torch.device) -> Precision:
    """The multiply policy for compute dtype ``dtype`` on ``device``.

    float32 uses TF32 tensor cores only on CUDA and only when torch's matmuls do (:func:`cuda_matmul_tf32`), so the
    Triton and the PyTorch paths round alike.
    """
    if dtype not in _TL_DTYPES:
        raise TypeError(f"Triton ARD kernels support float32, float16 and bfloat16, got {dtype}")
    tf32 = dtype == torch.float32 and device.type == "cuda" and cuda_matmul_tf32()
    upcast = INTERPRET and dtype == torch.bfloat16
    return Precision(_TL_DTYPES[dtype], "tf32" if tf32 else "ieee", upcast)


def tune_bucket(n: int) -> int:
    """Round a size up to a power of two: autotuning keys on buckets, so a pattern whose kept count moves a little
    from step to step (1365 vs 1366) reuses the tuned configuration instead of tuning again."""
    return triton.next_power_of_2(max(int(n), 1))


def check_offsets(**tensors: torch.Tensor | None) -> None:
    """Raise if an operand's largest element offset does not fit in int32 (the kernels index in int32)."""
    for name, t in tensors.items():
        if t is not None and t.numel() and sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride())) >= 2**31:
            raise ValueError(f"{name} {tuple(t.shape)} spans more than 2**31 elements: too large for these kernels")


@triton.jit
def mma(a, b, acc, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + a @ b`` with float32 accumulation (``a``, ``b`` already in the compute dtype)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)


@triton.jit
def load_mma(
    acc, a_ptr, b_ptr,
    rows, a_red, b_red, cols, mask_rows, mask_red, mask_cols,
    stride_a_row, stride_a_red, stride_b_red, stride_b_col,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """One step of a blocked product: ``acc + A[rows, a_red] @ B[b_red, cols]``.

    Both blocks are loaded masked (zero outside ``mask_rows``/``mask_red``/``mask_cols``) and cast to ``DOT_DTYPE``
    in registers. ``a_red`` and ``b_red`` are the same reduction positions as seen by each operand (they differ
    when one of them is read through an index vector); ``mask_red`` masks both.
    """
    a = tl.load(
        a_ptr + rows[:, None] * stride_a_row + a_red[None, :] * stride_a_red,
        mask=mask_rows[:, None] & mask_red[None, :],
        other=0.0,
    )
    b = tl.load(
        b_ptr + b_red[:, None] * stride_b_red + cols[None, :] * stride_b_col,
        mask=mask_red[:, None] & mask_cols[None, :],
        other=0.0,
    )
    return mma(a.to(DOT_DTYPE), b.to(DOT_DTYPE), acc, INPUT_PRECISION, UPCAST)


@triton.jit
def grouped_pid(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Map a linear program id to (pid_m, pid_n) in groups of GROUP_M row blocks (L2 reuse, as in the Triton
    matmul tutorial): consecutive programs share the same B column block and nearby A row blocks."""
    num_in_group = GROUP_M * num_pid_n
    group_id = pid // num_in_group
    first_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % num_in_group) % group_size_m)
    pid_n = (pid % num_in_group) // group_size_m
    return pid_m, pid_n


def tuned(  # type: ignore[no-untyped-def]
    configs: list[triton.Config],
    key: list[str],
    restore_value: list[str] | None = None,
    prune: Callable | None = None,
):
    """``triton.autotune(configs, key, restore_value, prune_configs_by)`` on CUDA; the identity in the interpreter.

    In the interpreter the launchers pass one fixed small configuration instead (tuning there would only time
    NumPy). ``restore_value`` names outputs that tuning runs must leave as they found them (accumulating kernels);
    ``prune`` is an ``early_config_prune`` function.
    """

    def wrap(kernel):  # type: ignore[no-untyped-def]
        if INTERPRET:
            return kernel
        prune_by = {"early_config_prune": prune} if prune is not None else None
        return triton.autotune(configs=configs, key=key, restore_value=restore_value, prune_configs_by=prune_by)(kernel)

    return wrap
