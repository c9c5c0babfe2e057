"""Tuning and robustness of the row gather GEMM: one autotune cache per product, configurations pruned by the
device's shared memory (and no 2-warp mma.sync config on sm_90+), 64-bit offsets instead of an error for large
operands, and the index checks (always on per pattern, under a debug flag per launch)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.kernels.interpreter import ROOT, InterpreterTests, assert_close  # noqa: E402 (before triton)

_CHILD = InterpreterTests(__file__)
interpreted = _CHILD.interpreted

pytest.importorskip("triton")

import torch  # noqa: E402

from lightning_ard.kernels.torch_backend import TorchBackend  # noqa: E402
from lightning_ard.patterns import PeriodicRow, RandomSubsetRow, RowPattern  # noqa: E402


@pytest.fixture(scope="module")
def kernels():
    import importlib

    from triton.runtime.interpreter import InterpretedFunction

    row = importlib.import_module("lightning_ard.kernels.triton.row")
    backend = importlib.import_module("lightning_ard.kernels.triton.backend")
    common = importlib.import_module("lightning_ard.kernels.triton.common")
    assert isinstance(row._gather_gemm_kernel, InterpretedFunction)
    common.POISON_OUTPUTS = True
    yield type("Kernels", (), {"row": row, "backend": backend})
    common.POISON_OUTPUTS = False


@pytest.fixture(scope="module")
def child_results(tmp_path_factory) -> dict[str, tuple[str, str]]:
    return _CHILD.run_child(tmp_path_factory)


def test_one_autotuner_per_product_and_pruning_in_a_compiled_import():
    """Without the interpreter each product has its own autotuner (own cache) keyed on INT64 too; pruning keeps
    only configurations that fit the device's shared memory, drops 2-warp ones on sm_90+ and keeps them before."""
    code = r"""
import os, torch, triton
assert os.environ.get("TRITON_INTERPRET") is None
from lightning_ard.kernels.triton import row
ks = row.PRODUCT_KERNELS
assert sorted(ks) == ["forward", "grad_w", "grad_x"]
assert len({id(k) for k in ks.values()}) == 3 and all(isinstance(k, triton.runtime.Autotuner) for k in ks.values())
assert all("INT64" in k.keys for k in ks.values())
configs = row._cuda_configs()
a, b = torch.empty(4096, 4096, dtype=torch.bfloat16), torch.empty(4096, 4096, dtype=torch.float32)
need = {id(c): row.smem_bytes(c, 2, 4) for c in configs}
for smem, major in ((232448, 9), (101376, 8)):
    row.device_limits = lambda device, s=smem, m=major: (s, m)
    kept = row.prune_configs(configs, a, b, 4096, 4096)
    too_big = [c for c in configs if need[id(c)] > smem]
    assert too_big and kept and all(need[id(c)] <= smem for c in kept), smem
    assert any(c.num_warps == 2 for c in kept) == (major < 9), major
print("tuning ok", len(configs))
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tuning ok" in proc.stdout


def test_smem_estimate_and_fallback():
    import triton

    from lightning_ard.kernels.triton import row

    big = triton.Config({"BLOCK_M": 256, "BLOCK_N": 256, "BLOCK_R": 128, "GROUP_M": 8}, num_stages=5, num_warps=8)
    small = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_R": 32, "GROUP_M": 8}, num_stages=3, num_warps=4)
    assert row.smem_bytes(big, 2, 2) == 5 * 128 * (256 * 2 + 256 * 2)
    assert row.smem_bytes(small, 4, 4) == max(3 * 32 * (64 * 4 + 64 * 4), 64 * 64 * 4)
    a = torch.empty(8, 8)
    assert row.prune_configs([big, small], a, a, 4096, 4096) == [small]  # 1.3 MB never fits 227 KB
    assert row.prune_configs([big], a, a, 4096, 4096) == [big]  # never empty


@interpreted
def test_each_product_uses_its_own_kernel(kernels, monkeypatch):
    row = kernels.row
    seen = []

    class Recorder:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            seen.append(self.name)
            return self.kernel[grid]

    monkeypatch.setattr(row, "PRODUCT_KERNELS", {n: Recorder(n, k) for n, k in row.PRODUCT_KERNELS.items()})
    gen = torch.Generator().manual_seed(0)
    pin, pout = PeriodicRow(20, 3).pattern(1), RandomSubsetRow(18, 7).sample(gen)
    x = torch.randn(9, 20, generator=gen, requires_grad=True)
    w = torch.randn(18, 20, generator=gen, requires_grad=True)
    kernels.backend.TritonBackend().row_linear(x, w, None, pin, pout, False).sum().backward()
    assert seen == ["forward", "grad_x", "grad_w"]
    with pytest.raises(ValueError, match="product must be one of"):
        row.gather_gemm(torch.randn(2, 3), torch.randn(4, 3), torch.empty(2, 4),
                        kernels.backend.precision_for(torch.float32, torch.device("cpu")), product="fwd")  # fmt: skip


@interpreted
def test_int64_offsets_give_the_same_result(kernels, monkeypatch):
    """The 64-bit-offset variant (taken past 2**31 elements; forced here by lowering the threshold) computes the
    same forward and gradients as the 32-bit one, instead of raising."""
    row = kernels.row
    gen = torch.Generator().manual_seed(1)
    pin, pout = PeriodicRow(30, 4).pattern(2), RandomSubsetRow(26, 11).sample(gen)
    x, w, b = torch.randn(13, 30, generator=gen), torch.randn(26, 30, generator=gen), torch.randn(26, generator=gen)
    gy = torch.randn(13, 11, generator=gen)

    def run():
        xs, ws, bs = (t.clone().requires_grad_(True) for t in (x, w, b))
        y = kernels.backend.TritonBackend().row_linear(xs, ws, bs, pin, pout, False)
        (y * gy).sum().backward()
        return y.detach(), xs.grad, ws.grad, bs.grad

    assert not row.needs_int64(x, w)
    small = run()
    monkeypatch.setattr(row, "INT64_SPAN", 16)
    assert row.needs_int64(x)
    large = run()
    for name, a, e in zip(("y", "grad_x", "grad_W", "grad_b"), large, small, strict=True):
        assert_close(a, e, 1e-6, name)
    ref = TorchBackend().row_linear(x, w, b, pin, pout, False)
    assert_close(large[0], ref, 1e-5, "y vs torch path")


@interpreted
def test_index_checks(kernels, monkeypatch):
    """A pattern with a duplicate index is refused once, before any launch; raw launcher indices are checked per
    launch only under LIGHTNING_ARD_CHECK_INDICES=1 (a device sync)."""
    row = kernels.row
    bad = RowPattern(10, torch.tensor([0, 4, 4, 8]), 2.5)
    with pytest.raises(ValueError, match="sorted and distinct"):
        kernels.backend.TritonBackend().row_linear(torch.randn(3, 10), torch.randn(5, 10), None, bad, None, False)
    prec = kernels.backend.precision_for(torch.float32, torch.device("cpu"))
    a, bmat, dup = torch.randn(3, 4), torch.randn(6, 4), torch.tensor([1, 1, 2], dtype=torch.int32)
    monkeypatch.delenv("LIGHTNING_ARD_CHECK_INDICES", raising=False)
    row.gather_gemm(a, bmat, torch.empty(3, 3), prec, b_row_idx=dup)  # not checked: no sync by default
    monkeypatch.setenv("LIGHTNING_ARD_CHECK_INDICES", "1")
    with pytest.raises(ValueError, match="b_row_idx has duplicate entries"):
        row.gather_gemm(a, bmat, torch.empty(3, 3), prec, b_row_idx=dup)
