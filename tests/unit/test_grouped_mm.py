"""Pattern groups through ``torch._grouped_mm`` equal the per-group PyTorch path (the torch backend): forward and
every gradient, float32 and bfloat16, G = 1, 2, 4, 7, ragged rows and empty groups, full-width and compact layouts,
block / row / random families; non-uniform kept counts fall back; the ``grouped_mm`` backend takes the grouped path
and the gathered backend the per-group one."""

import pytest
import torch

from lightning_ard.kernels import get_backend, grouped_mm
from lightning_ard.kernels.gathered import GatheredBackend
from lightning_ard.kernels.grouped_mm import GroupedMMBackend, grouped_mm_linear, plan_groups
from lightning_ard.kernels.torch_backend import TorchBackend
from lightning_ard.patterns import BlockRow, PeriodicRow, RandomSubsetRow

pytestmark = pytest.mark.skipif(not grouped_mm.AVAILABLE, reason="this torch has no torch._grouped_mm")

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
N_IN, N_OUT = 24, 20


def _family(kind: str, width: int):
    if kind == "row":
        return PeriodicRow(width, 4, 2)  # 4 divides both widths: every offset keeps width / 2
    return BlockRow(width, width // 2) if kind == "block" else RandomSubsetRow(width, width // 2)


def _run(fn, x, weight, bias, gy):
    x = x.detach().clone().requires_grad_(True)
    w = weight.detach().clone().requires_grad_(True)
    b = bias.detach().clone().requires_grad_(True)
    y = fn(x, w, b)
    (y.float() * gy).sum().backward()
    return y, [y.detach(), x.grad, w.grad, b.grad]


def _assert_same(got, want, dtype, what):
    for name, a, b in zip(("y", "grad_x", "grad_W", "grad_b"), got, want, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what} {name}: {a.dtype} {a.shape} vs {b.dtype} {b.shape}"
        err = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
        bound = TOL[dtype] * (1.0 + float(b.double().abs().max()))
        assert err <= bound, f"{what} {name}: max error {err:.3g} > {bound:.3g}"


def _case(kind, groups, rows, role, x_compact, out_compact, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ins = _family(kind, N_IN).sample_many(groups, gen) if role != "producer" else None
    outs = _family(kind, N_OUT).sample_many(groups, gen) if role != "consumer" else None
    x_compact, out_compact = x_compact and ins is not None, out_compact and outs is not None
    x = torch.randn(rows, ins[0].num_kept if x_compact else N_IN, generator=gen).to(dtype)
    weight = (torch.randn(N_OUT, N_IN, generator=gen) / N_IN**0.5).to(dtype)
    bias = torch.randn(N_OUT, generator=gen).to(dtype)
    gy = torch.randn(rows, outs[0].num_kept if out_compact else N_OUT, generator=gen)
    return ins, outs, x_compact, out_compact, x, weight, bias, gy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["block", "row", "random"])
@pytest.mark.parametrize("groups,rows", [(1, 6), (2, 9), (4, 13), (7, 5), (4, 3)])
@pytest.mark.parametrize("role,x_compact,out_compact",
                         [("consumer", False, False), ("consumer", True, False), ("producer", False, False),
                          ("producer", False, True), ("both", False, False), ("both", True, True),
                          ("both", True, False), ("both", False, True)])  # fmt: skip
def test_grouped_mm_matches_the_per_group_path(dtype, kind, groups, rows, role, x_compact, out_compact) -> None:
    """Ragged rows (13 over 4 groups, 9 over 2) and empty groups (5 rows over 7 groups, 3 over 4) included."""
    ins, outs, xc, oc, x, weight, bias, gy = _case(kind, groups, rows, role, x_compact, out_compact, dtype)
    assert plan_groups(rows, ins, outs, N_IN, N_OUT, x.device) is not None  # really the grouped GEMM
    y, got = _run(lambda a, w, b: grouped_mm_linear(a, w, b, ins, outs, xc, oc), x, weight, bias, gy)
    assert type(y.grad_fn).__name__ == "GroupedMMLinearFnBackward"
    _, want = _run(lambda a, w, b: TorchBackend().row_linear_groups(a, w, b, ins, outs, xc, oc), x, weight, bias, gy)
    _assert_same(got, want, dtype, f"{kind} G={groups} rows={rows} {role} x_compact={xc} out_compact={oc}")


def test_three_dimensional_input_and_no_bias() -> None:
    gen = torch.Generator().manual_seed(3)
    ins = _family("random", N_IN).sample_many(3, gen)
    outs = _family("block", N_OUT).sample_many(3, gen)
    x = torch.randn(2, 5, N_IN, generator=gen, requires_grad=True)
    w = torch.randn(N_OUT, N_IN, generator=gen, requires_grad=True)
    y = grouped_mm_linear(x, w, None, ins, outs)
    ref = TorchBackend().row_linear_groups(x, w, None, ins, outs)
    assert y.shape == ref.shape == (2, 5, N_OUT)
    torch.testing.assert_close(y, ref)
    gx, gw = torch.autograd.grad(y.square().sum(), (x, w))
    rx, rw = torch.autograd.grad(ref.square().sum(), (x, w))
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)


def test_non_uniform_counts_fall_back_to_the_per_group_path() -> None:
    gen = torch.Generator().manual_seed(1)
    fam = PeriodicRow(N_IN, 5, 2)  # 24 units, period 5: offsets keep 10 or 9 units
    ins = [fam.pattern(0), fam.pattern(4)]
    assert ins[0].num_kept != ins[1].num_kept
    assert plan_groups(8, ins, None, N_IN, N_OUT, torch.device("cpu")) is None
    x = torch.randn(8, N_IN, generator=gen)
    w = torch.randn(N_OUT, N_IN, generator=gen)
    bias = torch.randn(N_OUT, generator=gen)
    gy = torch.randn(8, N_OUT, generator=gen)
    y, got = _run(lambda a, ww, b: grouped_mm_linear(a, ww, b, ins, None), x, w, bias, gy)
    assert type(y.grad_fn).__name__ != "GroupedMMLinearFnBackward"
    _, want = _run(lambda a, ww, b: TorchBackend().row_linear_groups(a, ww, b, ins, None), x, w, bias, gy)
    _assert_same(got, want, torch.float32, "fallback")


def test_bad_inputs_name_the_value() -> None:
    fam = BlockRow(N_IN, 8)
    ins = fam.sample_many(2, torch.Generator().manual_seed(0))
    w = torch.randn(N_OUT, N_IN)
    with pytest.raises(ValueError, match=r"x must be \(\.\.\., 8\)"):
        grouped_mm_linear(torch.randn(4, N_IN), w, None, ins, None, x_compact=True)
    with pytest.raises(ValueError, match=r"bias must have shape \(20,\)"):
        grouped_mm_linear(torch.randn(4, N_IN), w, torch.zeros(3), ins, None)
    with pytest.raises(ValueError, match="input pattern width 24 does not match the layer width 30"):
        grouped_mm_linear(torch.randn(4, 30), torch.randn(N_OUT, 30), None, ins, None)


@pytest.mark.parametrize("backend", [GroupedMMBackend(), GatheredBackend()], ids=lambda b: b.name)
def test_grouped_mm_is_a_backend_of_its_own(backend) -> None:
    """``grouped_mm`` runs pattern groups through ``torch._grouped_mm``; ``gathered`` through the per-group path."""
    ins, outs, xc, oc, x, weight, bias, gy = _case("row", 4, 13, "both", False, False, torch.float32, seed=5)
    y, got = _run(lambda a, w, b: backend.row_linear_groups(a, w, b, ins, outs, xc, oc), x, weight, bias, gy)
    assert (type(y.grad_fn).__name__ == "GroupedMMLinearFnBackward") == (backend.name == "grouped_mm")
    _, want = _run(lambda a, w, b: TorchBackend().row_linear_groups(a, w, b, ins, outs, xc, oc), x, weight, bias, gy)
    _assert_same(got, want, torch.float32, backend.name)


def test_grouped_mm_backend_by_name_runs_single_patterns_as_the_gathered_backend() -> None:
    backend = get_backend("grouped_mm", "cpu")
    assert isinstance(backend, GroupedMMBackend) and backend.name == "grouped_mm"
    ins, outs, _, _, x, weight, bias, gy = _case("block", 1, 6, "both", False, True, torch.float32, seed=2)
    y, got = _run(lambda a, w, b: backend.row_linear(a, w, b, ins[0], outs[0], False), x, weight, bias, gy)
    _, want = _run(lambda a, w, b: GatheredBackend().row_linear(a, w, b, ins[0], outs[0], False), x, weight, bias, gy)
    _assert_same(got, want, torch.float32, "single pattern")
