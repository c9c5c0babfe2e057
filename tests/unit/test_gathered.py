"""The gathered backend equals the PyTorch ops (the oracle): forward and every gradient, row / block / random
families, consumer / producer / both, tile patterns and pattern groups (ragged included), float32 and bfloat16."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_ard.kernels import get_backend
from lightning_ard.kernels.gathered import (
    PITCH,
    GatheredBackend,
    aligned,
    gather_block,
    is_aligned,
    write_full,
)
from lightning_ard.kernels.kept import kept_units
from lightning_ard.kernels.torch_backend import TorchBackend
from lightning_ard.layers import ARDLinear
from lightning_ard.patterns import BlockRow, PeriodicRow, PeriodicTile, RandomSubsetRow, RowPattern
from tests.row_families import row_family

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _run(backend, call, x, weight, bias, gy):
    x = x.detach().clone().requires_grad_(True)
    w = weight.detach().clone().requires_grad_(True)
    b = bias.detach().clone().requires_grad_(True) if bias is not None else None
    y = call(backend, x, w, b)
    (y.float() * gy).sum().backward()
    return [y.detach(), x.grad, w.grad, b.grad if b is not None else None]


def _assert_same(got, want, dtype, what):
    for name, a, b in zip(("y", "grad_x", "grad_W", "grad_b"), got, want, strict=True):
        if b is None:
            assert a is None, f"{what} {name}"
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what} {name}: {a.dtype} {a.shape} vs {b.dtype} {b.shape}"
        err = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
        bound = TOL[dtype] * (1.0 + (float(b.double().abs().max()) if b.numel() else 0.0))
        assert err <= bound, f"{what} {name}: max error {err:.3g} > {bound:.3g}"


def _compare(call, x, weight, bias, gy, dtype, what=""):
    got = _run(GatheredBackend(), call, x, weight, bias, gy)
    want = _run(TorchBackend(), call, x, weight, bias, gy)
    _assert_same(got, want, dtype, what)
    return got


@given(
    data=st.data(),
    n_in=st.integers(1, 40),
    n_out=st.integers(1, 40),
    rows=st.integers(1, 9),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    kind=st.sampled_from(["periodic", "block", "random"]),
    role=st.sampled_from(["consumer", "producer", "both"]),
    compact=st.booleans(),
    bias=st.booleans(),
)
@settings(max_examples=150, deadline=None)
def test_row_linear_matches_torch_ops(data, n_in, n_out, rows, dtype, kind, role, compact, bias) -> None:
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    pin = row_family(kind, n_in, data.draw).sample(gen) if role != "producer" else None
    pout = row_family(kind, n_out, data.draw).sample(gen) if role != "consumer" else None
    compact = compact and pin is not None
    width = pin.num_kept if compact else n_in
    x = torch.randn(rows, width, generator=gen).to(dtype)
    weight = (torch.randn(n_out, n_in, generator=gen) / n_in**0.5).to(dtype)
    b = torch.randn(n_out, generator=gen).to(dtype) if bias else None
    gy = torch.randn(rows, pout.num_kept if pout is not None else n_out, generator=gen)
    _compare(lambda be, a, w, bb: be.row_linear(a, w, bb, pin, pout, compact), x, weight, b, gy, dtype)


@pytest.mark.parametrize("kind", ["periodic", "block", "random", "wrapped"])
def test_row_linear_large_odd_counts_and_autocast(kind) -> None:
    """Kept counts that are not multiples of 8 (p = 0.3 on 4096 units keeps 2867-2869), a 3-D input, and bf16
    autocast over float32 parameters: output bf16, gradients in the parameters' dtype, equal to the oracle."""
    gen = torch.Generator().manual_seed(1)
    n = 300
    fams = {
        "periodic": PeriodicRow(n, 10, 7),
        "block": BlockRow(n, 211),
        "random": RandomSubsetRow(n, 123),
        "wrapped": BlockRow(n, 211),
    }
    pin = fams[kind].pattern(250) if kind == "wrapped" else fams[kind].sample(gen)
    pout = PeriodicRow(n, 10, 3).sample(gen)
    x = torch.randn(2, 5, n, generator=gen)
    weight, bias = torch.randn(n, n, generator=gen) / 17, torch.randn(n, generator=gen)
    gy = torch.randn(2, 5, pout.num_kept, generator=gen)

    def call(be, a, w, b):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return be.row_linear(a, w, b, pin, pout, False)

    got = _compare(call, x, weight, bias, gy, torch.bfloat16, kind)
    assert got[0].dtype == torch.bfloat16 and got[2].dtype == torch.float32


@given(
    data=st.data(),
    n_in=st.integers(1, 50),
    n_out=st.integers(1, 50),
    bm=st.integers(1, 12),
    bk=st.integers(1, 12),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    bias=st.booleans(),
)
@settings(max_examples=60, deadline=None)
def test_tile_linear_matches_torch_ops(data, n_in, n_out, bm, bk, dtype, bias) -> None:
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    cols = -(-n_in // bk)
    dp = data.draw(st.integers(1, cols))
    pattern = PeriodicTile(n_out, n_in, dp, data.draw(st.integers(1, dp)), (bm, bk)).sample(gen)
    x = torch.randn(2, 3, n_in, generator=gen).to(dtype)
    weight = (torch.randn(n_out, n_in, generator=gen) / n_in**0.5).to(dtype)
    b = torch.randn(n_out, generator=gen).to(dtype) if bias else None
    gy = torch.randn(2, 3, n_out, generator=gen)
    _compare(lambda be, a, w, bb: be.tile_linear(a, w, bb, pattern), x, weight, b, gy, dtype)


@given(
    data=st.data(),
    groups=st.integers(1, 7),
    rows=st.integers(1, 23),
    kind=st.sampled_from(["periodic", "block", "random"]),
    role=st.sampled_from(["consumer", "producer", "both"]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
@settings(max_examples=60, deadline=None)
def test_row_linear_groups_match_torch_ops(data, groups, rows, kind, role, dtype) -> None:
    """Ragged groups (rows not a multiple of groups, empty groups when rows < groups), compact layouts when every
    group keeps the same count."""
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    n_in, n_out = 24, 18
    fin, fout = row_family(kind, n_in, data.draw), row_family(kind, n_out, data.draw)
    ins = fin.sample_many(groups, gen) if role != "producer" else None
    outs = fout.sample_many(groups, gen) if role != "consumer" else None
    x_compact = ins is not None and len({p.num_kept for p in ins}) == 1 and data.draw(st.booleans())
    out_compact = outs is not None and len({p.num_kept for p in outs}) == 1 and data.draw(st.booleans())
    x = torch.randn(rows, ins[0].num_kept if x_compact else n_in, generator=gen).to(dtype)
    weight = (torch.randn(n_out, n_in, generator=gen) / 5).to(dtype)
    bias = torch.randn(n_out, generator=gen).to(dtype)
    gy = torch.randn(rows, outs[0].num_kept if out_compact else n_out, generator=gen)
    _compare(
        lambda be, a, w, b: be.row_linear_groups(a, w, b, ins, outs, x_compact, out_compact), x, weight, bias, gy, dtype
    )


def test_tile_linear_groups_match_torch_ops() -> None:
    gen = torch.Generator().manual_seed(4)
    fam = PeriodicTile(20, 30, 3, 1, (4, 8))
    pats = tuple(fam.sample_many(3, gen))
    x, weight, bias = torch.randn(10, 30, generator=gen), torch.randn(20, 30, generator=gen), torch.randn(20)
    gy = torch.randn(10, 20, generator=gen)
    _compare(lambda be, a, w, b: be.tile_linear_groups(a, w, b, pats), x, weight, bias, gy, torch.float32)


def test_buffers_are_pitch_padded_and_contiguous_blocks_are_views() -> None:
    weight = torch.randn(64, 128)
    cpu = torch.device("cpu")
    idx = kept_units(PeriodicRow(128, 10, 7).pattern(3), 128, cpu)  # 90 kept columns, gathered
    block = gather_block(weight, kept_units(None, 64, cpu), idx, torch.float32)
    assert block.shape == (64, idx.count) and block.stride() == (_pitch(idx.count), 1)
    assert torch.equal(block, weight[:, PeriodicRow(128, 10, 7).pattern(3).kept])
    span = kept_units(BlockRow(64, 16).pattern(8), 64, cpu)
    view = gather_block(weight, span, kept_units(None, 128, cpu), torch.float32)
    assert view.data_ptr() == weight[8].data_ptr() and view.shape == (16, 128)  # no copy
    as_bf16 = gather_block(weight, span, kept_units(None, 128, cpu), torch.bfloat16)
    assert as_bf16.dtype == torch.bfloat16 and is_aligned(as_bf16)
    odd = torch.randn(7, 2867)
    assert (
        not is_aligned(odd)
        and is_aligned(aligned(odd, torch.float32))
        and aligned(odd, torch.float32).stride(0) % PITCH == 0
    )
    assert aligned(weight, torch.float32) is weight


def _pitch(cols: int) -> int:
    return -(-cols // PITCH) * PITCH


@pytest.mark.parametrize("rows_kind", ["all", "span", "index"])
@pytest.mark.parametrize("cols_kind", ["all", "span", "index"])
def test_write_full_zeros_outside_the_block(rows_kind, cols_kind) -> None:
    cpu = torch.device("cpu")
    pats = {
        "all": lambda n: None,
        "span": lambda n: BlockRow(n, n // 2).pattern(1),
        "index": lambda n: RandomSubsetRow(n, n // 3).sample(torch.Generator().manual_seed(n)),
    }
    pr, pc = pats[rows_kind](30), pats[cols_kind](45)
    rows, cols = kept_units(pr, 30, cpu), kept_units(pc, 45, cpu)
    block = torch.randn(rows.count, cols.count)
    full = write_full(lambda out: out.copy_(block), rows, cols, torch.float64, cpu)
    expected = torch.zeros(30, 45, dtype=torch.float64)
    r = pr.kept if pr is not None else torch.arange(30)
    c = pc.kept if pc is not None else torch.arange(45)
    expected[r[:, None], c[None, :]] = block.double()
    assert full.dtype == torch.float64 and torch.equal(full, expected)


def test_duplicate_kept_indices_are_rejected_before_any_product() -> None:
    bad = RowPattern(10, torch.tensor([1, 3, 3, 7]), 2.5)
    with pytest.raises(ValueError, match="sorted and distinct"):
        GatheredBackend().row_linear(torch.randn(2, 10), torch.randn(4, 10), None, bad, None, False)
    out_of_range = RowPattern(10, torch.tensor([1, 12]), 5.0)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        GatheredBackend().row_linear(torch.randn(2, 3), torch.randn(10, 3), None, None, out_of_range, False)


def test_selected_by_name_and_through_the_layer() -> None:
    assert get_backend("gathered", "cpu").name == "gathered"
    gen = torch.Generator().manual_seed(2)
    p1, p2 = PeriodicRow(40, 3).sample(gen), RandomSubsetRow(36, 15).sample(gen)
    x = torch.randn(2, 9, 24, generator=gen)
    results = []
    for backend in ("gathered", "torch"):
        torch.manual_seed(0)
        layers = [ARDLinear.from_linear(nn.Linear(a, b), backend) for a, b in ((24, 40), (40, 36), (36, 7))]
        layers[0].set_patterns(out_pattern=p1)
        layers[1].set_patterns(in_pattern=p1, out_pattern=p2)
        layers[2].set_patterns(in_pattern=p2)
        y = layers[2](torch.relu(layers[1](torch.relu(layers[0](x)))))
        y.square().sum().backward()
        results.append([y.detach()] + [p.grad for layer in layers for p in layer.parameters()])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_pattern_lives_as_long_as_a_product_needs_it_and_no_longer() -> None:
    """The backward still finds the kept units of a pattern nobody else holds (the saved Kept holds it), and once
    the graph is gone the pattern and its cached device tensors are freed without waiting for the cycle collector."""
    import gc
    import weakref

    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 30, generator=gen, requires_grad=True)
    w = torch.randn(12, 30, generator=gen, requires_grad=True)
    pattern = RandomSubsetRow(30, 11).sample(gen)
    kept = pattern.kept.clone()
    alive = weakref.ref(pattern)
    y = GatheredBackend().row_linear(x, w, None, pattern, None, False)
    del pattern
    gc.collect()
    y.sum().backward()
    expected = torch.zeros(12, 30)
    expected[:, kept] = x.detach()[:, kept].sum(0) * 30 / 11
    torch.testing.assert_close(w.grad, expected)
    gc.disable()
    try:
        del y
        assert alive() is None  # freed by reference counting alone: no cycle through the pattern's cache
    finally:
        gc.enable()
