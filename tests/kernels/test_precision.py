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
