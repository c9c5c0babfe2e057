"""The Triton path reads torch's float32 matmul policy without tripping torch >= 2.9's mixed-API error."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from lightning_ard.kernels.triton.common import cuda_matmul_tf32  # noqa: E402


@pytest.fixture
def restore_precision():
    matmul = torch.backends.cuda.matmul
    saved = getattr(matmul, "fp32_precision", None)
    yield
    if saved is not None:
        matmul.fp32_precision = saved


def test_tf32_follows_the_new_api_even_after_the_legacy_one(restore_precision) -> None:
    matmul = torch.backends.cuda.matmul
    if getattr(matmul, "fp32_precision", None) is None:
        pytest.skip("torch without the fp32_precision API")
    matmul.fp32_precision = "tf32"
    assert cuda_matmul_tf32()
    matmul.fp32_precision = "ieee"
    assert not cuda_matmul_tf32()
    matmul.allow_tf32 = True  # legacy setter after the new API: reading allow_tf32 would now raise
    assert cuda_matmul_tf32()
    matmul.fp32_precision = "ieee"
    assert not cuda_matmul_tf32()


def test_float32_kernel_policy_after_the_new_api(restore_precision) -> None:
    """What every float32 Triton call does first on CUDA: on torch >= 2.9, after ``fp32_precision`` was set, the
    legacy read of ``allow_tf32`` raised RuntimeError here (the bug); the policy must follow the new API instead.
    No GPU is needed: only the device type is read."""
    from lightning_ard.kernels.triton.common import precision_for

    matmul = torch.backends.cuda.matmul
    if getattr(matmul, "fp32_precision", None) is None:
        pytest.skip("torch without the fp32_precision API")
    cuda = torch.device("cuda")
    matmul.fp32_precision = "tf32"
    assert precision_for(torch.float32, cuda).input_precision == "tf32"
    matmul.fp32_precision = "ieee"
    assert precision_for(torch.float32, cuda).input_precision == "ieee"
    assert precision_for(torch.bfloat16, cuda).input_precision == "ieee"  # 16-bit operands: TF32 does not apply
