"""ARD layers on the PyTorch path equal a dense computation with the equivalent explicit mask (values and grads)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_ard.layers import ARDLSTM, ARDDropout, ARDLinear
from lightning_ard.patterns import PeriodicRow, PeriodicTile
from tests.grads import take_grads
from tests.row_families import row_family

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def _assert_same_values_andtake_grads(y, y_ref, x, layer, ref, gen) -> None:
    """Outputs equal, and after one backward with the same random cotangent, the grads of x and all parameters."""
    tol = TOL[y.dtype]
    torch.testing.assert_close(y, y_ref, **tol)
    g = torch.randn(y.shape, dtype=y.dtype, generator=gen)
    y.backward(g)
    got = take_grads(x, *layer.parameters())
    y_ref.backward(g)
    want = take_grads(x, *ref.parameters())
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **tol)


@given(
    data=st.data(),
    n_in=st.integers(1, 40),
    n_out=st.integers(1, 40),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    kind=st.sampled_from(["periodic", "block", "random"]),
    use_in=st.booleans(),
    use_out=st.booleans(),
    compact=st.booleans(),
    bias=st.booleans(),
)
@settings(max_examples=150, deadline=None)
def test_row_linear_matches_masked_dense(data, n_in, n_out, dtype, kind, use_in, use_out, compact, bias) -> None:
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    lin = nn.Linear(n_in, n_out, bias=bias).to(dtype)
    ref = nn.Linear(n_in, n_out, bias=bias).to(dtype)
    ref.load_state_dict(lin.state_dict())
    params = list(lin.parameters())
    layer = ARDLinear.from_linear(lin, backend="torch")
    assert list(layer.parameters()) == params and layer is lin
    pin = row_family(kind, n_in, data.draw).sample(gen) if use_in else None
    pout = row_family(kind, n_out, data.draw).sample(gen) if use_out else None
    layer.set_patterns(in_pattern=pin, out_pattern=pout)
    x = torch.randn(3, 2, n_in, dtype=dtype, generator=gen, requires_grad=True)
    x_in = x[..., pin.kept] if (pin is not None and compact) else x
    y = layer(x_in)
    mask = pin.mask(dtype) if pin is not None else torch.ones(n_in, dtype=dtype)
    y_ref = ref(x * mask)
    if pout is not None:
        y_ref = y_ref[..., pout.kept]
    _assert_same_values_andtake_grads(y, y_ref, x, layer, ref, gen)


@given(
    data=st.data(),
    n_in=st.integers(1, 50),
    n_out=st.integers(1, 50),
    bm=st.integers(1, 12),
    bk=st.integers(1, 12),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
@settings(max_examples=80, deadline=None)
def test_tile_linear_matches_masked_dense(data, n_in, n_out, bm, bk, dtype) -> None:
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    cols = -(-n_in // bk)
    dp = data.draw(st.integers(1, cols))
    fam = PeriodicTile(n_out, n_in, dp, data.draw(st.integers(1, dp)), (bm, bk))
    lin = nn.Linear(n_in, n_out).to(dtype)
    ref = nn.Linear(n_in, n_out).to(dtype)
    ref.load_state_dict(lin.state_dict())
    layer = ARDLinear.from_linear(lin, backend="torch")
    pat = fam.sample(gen)
    layer.set_patterns(tile_pattern=pat)
    x = torch.randn(5, n_in, dtype=dtype, generator=gen, requires_grad=True)
    y = layer(x)
    y_ref = nn.functional.linear(x, ref.weight * pat.element_mask(dtype), ref.bias)
    _assert_same_values_andtake_grads(y, y_ref, x, layer, ref, gen)


def test_producer_consumer_chain_and_grad_accumulation() -> None:
    torch.manual_seed(0)
    dt = torch.float64
    plain = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Dropout(0.5), nn.Linear(20, 3)).to(dt)
    ref = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 3)).to(dt)
    ref.load_state_dict({k.replace("3.", "2."): v for k, v in plain.state_dict().items()})
    keys = set(plain.state_dict())
    ARDLinear.from_linear(plain[0])
    drop = ARDDropout.from_dropout(plain[2])
    ARDLinear.from_linear(plain[3])
    drop.ard_enabled = True
    pat = PeriodicRow(20, 3).pattern(1)
    plain[0].set_patterns(out_pattern=pat)
    plain[3].set_patterns(in_pattern=pat)
    x = torch.randn(7, 12, dtype=dt)
    for _ in range(2):  # twice: gradients accumulate into existing .grad
        plain(x).pow(2).sum().backward()
        h = ref[1](ref[0](x)) * pat.mask(dt)
        ref[2](h).pow(2).sum().backward()
    assert drop.ard_calls == 2
    assert set(plain.state_dict()) == keys
    for a, b in zip(plain.parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10)
    plain.eval()
    torch.testing.assert_close(plain(x), ref.eval()(x))  # eval: exactly the dense model
    plain[0].to_linear(), plain[3].to_linear(), drop.to_dropout()
    assert [type(m) for m in plain] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert not hasattr(plain[0], "ard_in_pattern")


@given(data=st.data(), bidirectional=st.booleans(), batch_first=st.booleans(), layers=st.integers(1, 3))
@settings(max_examples=25, deadline=None)
def test_lstm_matches_masked_layer_by_layer(data, bidirectional, batch_first, layers) -> None:
    dt = torch.float64
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    n_in, hidden = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 9))
    lstm = nn.LSTM(
        n_in, hidden, layers, batch_first=batch_first, bidirectional=bidirectional, dropout=0.3 if layers > 1 else 0.0
    ).to(dt)
    state = {k: v.clone() for k, v in lstm.state_dict().items()}
    layer = ARDLSTM.from_lstm(lstm)
    pats = []
    for i in range(layers):
        width = layer.layer_input_size(i)
        use = data.draw(st.booleans()) or i > 0
        pats.append(
            row_family(data.draw(st.sampled_from(["periodic", "random"])), width, data.draw).sample(gen)
            if use
            else None
        )
    layer.set_patterns(pats)
    x = torch.randn(4, 3, n_in, dtype=dt, generator=gen, requires_grad=True)
    y, (h, c) = layer(x)
    loss = y.pow(2).sum() + h.sum() + c.pow(2).sum()
    loss.backward()
    got = take_grads(x, *layer.parameters())
    # reference: one plain single-layer LSTM per layer on the masked input
    xr = x.detach().clone().requires_grad_(True)
    inp, hs, cs, subs = xr, [], [], []
    for i, pat in enumerate(pats):
        if pat is not None:
            inp = inp * pat.mask(dt)
        sub = nn.LSTM(inp.shape[-1], hidden, batch_first=batch_first, bidirectional=bidirectional).to(dt)
        sub.load_state_dict({k.replace(f"_l{i}", "_l0"): v for k, v in state.items() if f"_l{i}" in k})
        inp, (hh, cc) = sub(inp)
        hs.append(hh), cs.append(cc), subs.append(sub)
    torch.testing.assert_close(y, inp)
    torch.testing.assert_close(h, torch.cat(hs))
    torch.testing.assert_close(c, torch.cat(cs))
    (inp.pow(2).sum() + torch.cat(hs).sum() + torch.cat(cs).pow(2).sum()).backward()
    torch.testing.assert_close(got[0], xr.grad)
    want = {f"{n.replace('_l0', f'_l{i}')}": p.grad for i, s in enumerate(subs) for n, p in s.named_parameters()}
    for (name, _), g in zip(layer.named_parameters(), got[1:]):
        torch.testing.assert_close(g, want[name])
    layer.eval()
    ref = nn.LSTM(n_in, hidden, layers, batch_first=batch_first, bidirectional=bidirectional).to(dt).eval()
    ref.load_state_dict(state)
    torch.testing.assert_close(layer(x)[0], ref(x)[0])


def test_layer_bad_input() -> None:
    lin = ARDLinear.from_linear(nn.Linear(8, 4))
    with pytest.raises(ValueError, match="in_pattern width 9 does not match in_features=8"):
        lin.set_patterns(in_pattern=PeriodicRow(9, 2).sample())
    with pytest.raises(ValueError, match="out_pattern width 8 does not match out_features=4"):
        lin.set_patterns(out_pattern=PeriodicRow(8, 2).sample())
    with pytest.raises(ValueError, match="tile_pattern shape"):
        lin.set_patterns(tile_pattern=PeriodicTile(8, 8, 1, 1, (2, 2)).sample())
    with pytest.raises(ValueError, match="cannot be combined"):
        lin.set_patterns(in_pattern=PeriodicRow(8, 2).sample(), tile_pattern=PeriodicTile(4, 8, 1, 1, (2, 2)).sample())
    lin.set_patterns(in_pattern=PeriodicRow(8, 2).pattern(0))
    with pytest.raises(ValueError, match="got input width 5"):
        lin(torch.randn(2, 5))
    with pytest.raises(ValueError, match="backend must be one of"):
        ARDLinear.from_linear(nn.Linear(2, 2), backend="cuda")
    with pytest.raises(TypeError, match="exact type Linear"):
        ARDLinear.from_linear(nn.Bilinear(2, 2, 2))
    with pytest.raises(ValueError, match="proj_size"):
        ARDLSTM.from_lstm(nn.LSTM(4, 4, proj_size=2))
    lstm = ARDLSTM.from_lstm(nn.LSTM(4, 6, 2))
    with pytest.raises(ValueError, match="pattern for layer 1 has width 4"):
        lstm.set_patterns([None, PeriodicRow(4, 2).sample()])


def test_bf16_autocast_row_linear() -> None:
    lin = nn.Linear(16, 8)
    layer = ARDLinear.from_linear(nn.Linear(16, 8))
    layer.load_state_dict(lin.state_dict())
    pat = PeriodicRow(16, 2).pattern(0)
    layer.set_patterns(in_pattern=pat)
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        y_ref = lin(x * pat.mask())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=2e-2, atol=5e-2)
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32
