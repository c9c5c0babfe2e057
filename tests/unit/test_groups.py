"""Pattern groups (several patterns per forward pass): layers equal the dense computation with a per-row mask."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lightning_ard import ARDController
from lightning_ard.kernels.torch_backend import TorchBackend
from lightning_ard.layers import ARDLSTM, ARDLinear
from lightning_ard.patterns import BlockRow, PeriodicRow, PeriodicTile, RandomSubsetRow, RowPattern
from lightning_ard.patterns.groups import as_groups, common_groups, group_bounds
from tests.grads import take_grads
from tests.kernels.oracle import row_linear_groups_oracle
from tests.row_families import row_family

TOL = dict(rtol=1e-10, atol=1e-10)


def _row_masks(patterns, rows: int, dtype, scaled: bool) -> torch.Tensor:
    """(rows, width) mask: row r takes the mask of the group it falls in."""
    out = torch.zeros(rows, patterns[0].width, dtype=dtype)
    for pat, (r0, r1) in zip(patterns, group_bounds(rows, len(patterns)), strict=True):
        out[r0:r1] = pat.mask(dtype, scaled=scaled)
    return out


@given(n=st.integers(0, 50), groups=st.integers(1, 9))
def test_group_bounds_cover_rows_in_order(n, groups) -> None:
    bounds = group_bounds(n, groups)
    assert len(bounds) == groups and bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [e - s for s, e in bounds]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == [len(c) for c in torch.arange(n).tensor_split(groups)]


def test_group_helpers_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="groups must be an integer >= 1, got 0"):
        group_bounds(4, 0)
    with pytest.raises(ValueError, match="in_pattern must be a pattern or a non-empty sequence"):
        as_groups([], "in_pattern")
    with pytest.raises(ValueError, match="same number of groups"):
        common_groups({"a": (1, 2), "b": (1,)})
    assert common_groups({"a": None}) == 1
    lin = ARDLinear.from_linear(nn.Linear(8, 6))
    with pytest.raises(ValueError, match=r"same number of groups, got \{'in_pattern': 2, 'out_pattern': 3\}"):
        lin.set_patterns(in_pattern=[PeriodicRow(8, 2).sample()] * 2, out_pattern=[PeriodicRow(6, 2).sample()] * 3)
    lin.set_patterns(in_pattern=[PeriodicRow(8, 2).pattern(0), PeriodicRow(8, 2).pattern(1)])
    with pytest.raises(
        ValueError,
        match=r"got input width 5: expected in_features=8, or the kept count its groups "
        r"share \(\[4\]\)",
    ):
        lin(torch.randn(4, 5))


@given(
    data=st.data(),
    n_in=st.integers(1, 24),
    n_out=st.integers(1, 24),
    rows=st.integers(1, 13),
    groups=st.integers(2, 5),
    kind=st.sampled_from(["periodic", "block", "random"]),
    use_in=st.booleans(),
    use_out=st.booleans(),
    bias=st.booleans(),
    default_loop=st.booleans(),
)
@settings(max_examples=120, deadline=None)
def test_grouped_row_linear_matches_per_row_masks(
    data, n_in, n_out, rows, groups, kind, use_in, use_out, bias, default_loop
) -> None:
    """Forward and every gradient, for the PyTorch single pass and for the tests' per-row-set oracle."""
    dt = torch.float64
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    if not (use_in or use_out):
        use_in = True
    weight = torch.randn(n_out, n_in, dtype=dt, generator=gen, requires_grad=True)
    b = torch.randn(n_out, dtype=dt, generator=gen, requires_grad=True) if bias else None
    fin, fout = row_family(kind, n_in, data.draw), row_family(kind, n_out, data.draw)
    ins = tuple(fin.sample(gen) for _ in range(groups)) if use_in else None
    outs = tuple(fout.sample(gen) for _ in range(groups)) if use_out else None
    x = torch.randn(rows, n_in, dtype=dt, generator=gen, requires_grad=True)
    if default_loop:
        y = row_linear_groups_oracle(TorchBackend(), x, weight, b, ins, outs)
    else:
        y = TorchBackend().row_linear_groups(x, weight, b, ins, outs)
    m_in = _row_masks(ins, rows, dt, True) if ins else torch.ones(rows, n_in, dtype=dt)
    m_out = _row_masks(outs, rows, dt, False) if outs else torch.ones(rows, n_out, dtype=dt)
    y_ref = torch.nn.functional.linear(x * m_in, weight, b) * m_out
    torch.testing.assert_close(y, y_ref, **TOL)
    cot = torch.randn(y.shape, dtype=dt, generator=gen)
    y.backward(cot)
    got = take_grads(x, weight, *([b] if bias else []))
    y_ref.backward(cot)
    want = take_grads(x, weight, *([b] if bias else []))
    for a, w in zip(got, want, strict=True):
        torch.testing.assert_close(a, w, **TOL)


@given(
    data=st.data(),
    n_in=st.integers(2, 20),
    hidden=st.integers(2, 20),
    rows=st.integers(1, 13),
    groups=st.integers(2, 5),
    kind=st.sampled_from(["block", "random"]),
    default_loop=st.booleans(),
    stratified=st.booleans(),
)
@settings(max_examples=80, deadline=None)
def test_compact_per_group_chain_matches_masked_dense(
    data, n_in, hidden, rows, groups, kind, default_loop, stratified
) -> None:
    """producer (out patterns, compact output) -> ReLU -> consumer (same patterns, compact input) equals the
    masked dense chain, forward and every gradient; blocks that wrap included (weight views in two pieces), and
    stratified groups, whose blocks tile the weight (overwriting blocks, little or nothing zeroed)."""
    dt = torch.float64
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    keep = data.draw(st.integers(1, hidden))
    fam = BlockRow(hidden, keep) if kind == "block" else RandomSubsetRow(hidden, keep)
    draw = fam.sample_stratified if stratified else fam.sample_many
    pats = tuple(draw(groups, gen))  # one candidate per step: every group keeps `keep` units
    w1 = torch.randn(hidden, n_in, dtype=dt, generator=gen, requires_grad=True)
    b1 = torch.randn(hidden, dtype=dt, generator=gen, requires_grad=True)
    w2 = torch.randn(3, hidden, dtype=dt, generator=gen, requires_grad=True)
    x = torch.randn(rows, n_in, dtype=dt, generator=gen, requires_grad=True)
    backend = TorchBackend()
    run = (lambda *a: row_linear_groups_oracle(backend, *a)) if default_loop else backend.row_linear_groups
    h = run(x, w1, b1, None, pats, False, True)
    assert h.shape == (rows, keep)
    y = run(torch.relu(h), w2, None, pats, None, True, False)
    mask = _row_masks(pats, rows, dt, False)
    y_ref = torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(x, w1, b1)) * mask * fam.scale, w2)
    torch.testing.assert_close(y, y_ref, **TOL)
    cot = torch.randn(y.shape, dtype=dt, generator=gen)
    y.backward(cot)
    got = take_grads(x, w1, b1, w2)
    y_ref.backward(cot)
    for a, w in zip(got, take_grads(x, w1, b1, w2), strict=True):
        torch.testing.assert_close(a, w, **TOL)


def test_block_pattern_ranges() -> None:
    """Blocks are one range, or two where they wrap; strided and random patterns have none (gathered)."""
    assert BlockRow(10, 4).pattern(2).ranges == ((2, 6),)
    assert BlockRow(10, 4).pattern(8).ranges == ((0, 2), (8, 10))
    assert PeriodicRow(10, 1).pattern(0).ranges == ((0, 10),)
    assert PeriodicRow(10, 2).pattern(1).ranges is None
    assert RowPattern(10, torch.tensor([1, 4, 7]), 1.0).ranges is None
    assert RowPattern(10, torch.tensor([0, 1, 5, 8, 9]), 1.0).ranges is None  # three runs: gathered
    assert RowPattern(10, torch.tensor([3, 4, 5]), 1.0).ranges == ((3, 6),)


@given(data=st.data(), groups=st.integers(2, 4), rows=st.integers(1, 9))
@settings(max_examples=30, deadline=None)
def test_grouped_tile_linear_matches_per_row_masks(data, groups, rows) -> None:
    dt = torch.float64
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    n_out, n_in = data.draw(st.integers(1, 20)), data.draw(st.integers(1, 20))
    tile = (data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6)))
    dp = data.draw(st.integers(1, -(-n_in // tile[1])))
    family = PeriodicTile(n_out, n_in, dp, data.draw(st.integers(1, dp)), tile)
    lin = ARDLinear.from_linear(nn.Linear(n_in, n_out).to(dt), backend="torch")
    pats = [family.sample(gen) for _ in range(groups)]
    lin.set_patterns(tile_pattern=pats)
    x = torch.randn(rows, n_in, dtype=dt, generator=gen, requires_grad=True)
    y = lin(x)
    xr = x.detach().clone().requires_grad_(True)
    wr = lin.weight.detach().clone().requires_grad_(True)
    parts = []
    for pat, (r0, r1) in zip(pats, group_bounds(rows, groups), strict=True):
        parts.append(torch.nn.functional.linear(xr[r0:r1], wr * pat.element_mask(dt), lin.bias.detach()))
    y_ref = torch.cat(parts)
    torch.testing.assert_close(y, y_ref, **TOL)
    cot = torch.randn(y.shape, dtype=dt, generator=gen)
    y.backward(cot)
    y_ref.backward(cot)
    torch.testing.assert_close(x.grad, xr.grad, **TOL)
    torch.testing.assert_close(lin.weight.grad, wr.grad, **TOL)
    assert lin.ard_record.group_rows == [e - s for s, e in group_bounds(rows, groups)]


def test_grouped_producer_consumer_chain_equals_masked_mlp() -> None:
    """Producer and consumer share a site's G patterns: 3-D input, a ReLU between, the same rows in each group."""
    dt = torch.float64
    gen = torch.Generator().manual_seed(3)
    mlp = nn.Sequential(nn.Linear(9, 12), nn.ReLU(), nn.Linear(12, 5)).to(dt)
    ref = nn.Sequential(nn.Linear(9, 12), nn.ReLU(), nn.Linear(12, 5)).to(dt)
    ref.load_state_dict(mlp.state_dict())
    ARDLinear.from_linear(mlp[0], "torch")
    ARDLinear.from_linear(mlp[2], "torch")
    pats = [PeriodicRow(12, 3).sample(gen) for _ in range(4)]
    mlp[0].set_patterns(out_pattern=pats)
    mlp[2].set_patterns(in_pattern=pats)
    x = torch.randn(3, 5, 9, dtype=dt, generator=gen, requires_grad=True)  # 15 rows: groups of 4, 4, 4, 3
    y = mlp(x)
    xr = x.detach().clone().requires_grad_(True)
    y_ref = ref[2](ref[1](ref[0](xr)) * _row_masks(pats, 15, dt, True).reshape(3, 5, 12))
    torch.testing.assert_close(y, y_ref, **TOL)
    y.pow(2).sum().backward()
    y_ref.pow(2).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, **TOL)
    for p, q in zip(mlp.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, **TOL)


def _lstm_reference(state, hidden, bidirectional, slots, x_tm, lengths=None):
    """Plain single-layer LSTMs on inputs masked per time step (time-major x), layer by layer."""
    dt = x_tm.dtype
    inp, hs, cs, subs = x_tm, [], [], []
    for i, slot in enumerate(slots):
        if slot is not None:
            masks = _row_masks(slot, inp.shape[0], dt, True)  # (T, width): one mask per time step
            inp = inp * masks[:, None, :]
        sub = nn.LSTM(inp.shape[-1], hidden, bidirectional=bidirectional).to(dt)
        sub.load_state_dict({k.replace(f"_l{i}", "_l0"): v for k, v in state.items() if f"_l{i}" in k})
        if lengths is None:
            inp, (hh, cc) = sub(inp)
        else:
            out, (hh, cc) = sub(pack_padded_sequence(inp, lengths, enforce_sorted=False))
            inp = pad_packed_sequence(out, total_length=x_tm.shape[0])[0]
        hs.append(hh), cs.append(cc), subs.append(sub)
    return inp, torch.cat(hs), torch.cat(cs), subs


@given(
    data=st.data(),
    bidirectional=st.booleans(),
    batch_first=st.booleans(),
    layers=st.integers(1, 3),
    groups=st.integers(2, 6),
    steps=st.integers(1, 7),
)
@settings(max_examples=25, deadline=None)
def test_grouped_lstm_matches_per_time_step_masks(data, bidirectional, batch_first, layers, groups, steps) -> None:
    dt = torch.float64
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    n_in, hidden = data.draw(st.integers(1, 10)), data.draw(st.integers(1, 8))
    lstm = nn.LSTM(n_in, hidden, layers, batch_first=batch_first, bidirectional=bidirectional).to(dt)
    state = {k: v.clone() for k, v in lstm.state_dict().items()}
    layer = ARDLSTM.from_lstm(lstm)
    slots = []
    for i in range(layers):
        if i > 0 or data.draw(st.booleans()):
            family = row_family(
                data.draw(st.sampled_from(["periodic", "random", "block"])), layer.layer_input_size(i), data.draw
            )
            pool = [family.sample(gen) for _ in range(data.draw(st.integers(1, groups)))]  # repeats: merged runs
            slots.append(tuple(pool[data.draw(st.integers(0, len(pool) - 1))] for _ in range(groups)))
        else:
            slots.append(None)
    layer.set_patterns(slots)
    x_tm = torch.randn(steps, 3, n_in, dtype=dt, generator=gen)
    x = (x_tm.transpose(0, 1) if batch_first else x_tm).clone().requires_grad_(True)
    h0 = torch.randn(layers * (2 if bidirectional else 1), 3, hidden, dtype=dt, generator=gen)
    y, (h, c) = layer(x, (h0, h0.flip(1)))
    (y.pow(2).sum() + h.sum() + c.pow(2).sum()).backward()
    got = take_grads(x, *layer.parameters())
    xr = x_tm.clone().requires_grad_(True)
    # reference with the same initial state: fold it in by running the plain LSTMs with hx
    inp, hs, cs, subs = xr, [], [], []
    dirs = 2 if bidirectional else 1
    for i, slot in enumerate(slots):
        if slot is not None:
            inp = inp * _row_masks(slot, steps, dt, True)[:, None, :]
        sub = nn.LSTM(inp.shape[-1], hidden, bidirectional=bidirectional).to(dt)
        sub.load_state_dict({k.replace(f"_l{i}", "_l0"): v for k, v in state.items() if f"_l{i}" in k})
        inp, (hh, cc) = sub(inp, (h0[i * dirs : (i + 1) * dirs], h0.flip(1)[i * dirs : (i + 1) * dirs]))
        hs.append(hh), cs.append(cc), subs.append(sub)
    y_ref = inp.transpose(0, 1) if batch_first else inp
    torch.testing.assert_close(y, y_ref, **TOL)
    torch.testing.assert_close(h, torch.cat(hs), **TOL)
    torch.testing.assert_close(c, torch.cat(cs), **TOL)
    (inp.pow(2).sum() + torch.cat(hs).sum() + torch.cat(cs).pow(2).sum()).backward()
    torch.testing.assert_close(got[0], xr.grad.transpose(0, 1) if batch_first else xr.grad, **TOL)
    want = {n.replace("_l0", f"_l{i}"): p.grad for i, s in enumerate(subs) for n, p in s.named_parameters()}
    for (name, _), g in zip(layer.named_parameters(), got[1:], strict=True):
        torch.testing.assert_close(g, want[name], **TOL)
    if any(slot is not None for slot in slots):
        assert layer.ard_record.group_rows == [(e - s) * 3 for s, e in group_bounds(steps, groups)]


def test_grouped_lstm_packed_sequences() -> None:
    """Packed input of uneven lengths: each sequence's final state comes from its own last step."""
    dt = torch.float64
    gen = torch.Generator().manual_seed(5)
    lstm = nn.LSTM(6, 5, 2).to(dt)
    state = {k: v.clone() for k, v in lstm.state_dict().items()}
    layer = ARDLSTM.from_lstm(lstm)
    slots = [tuple(RandomSubsetRow(w, 3).sample(gen) for _ in range(3)) for w in (6, 5)]
    layer.set_patterns(slots)
    lengths = torch.tensor([4, 7, 2, 7, 5])
    x = torch.randn(7, 5, 6, dtype=dt, generator=gen, requires_grad=True)
    out, (h, c) = layer(pack_padded_sequence(x, lengths, enforce_sorted=False))
    y = pad_packed_sequence(out, total_length=7)[0]
    xr = x.detach().clone().requires_grad_(True)
    y_ref, h_ref, c_ref, subs = _lstm_reference(state, 5, False, slots, xr, lengths)
    # the packed run's time chunks follow the packed steps (7 steps: chunks 3, 2, 2), as in the reference
    torch.testing.assert_close(y, y_ref, **TOL)
    torch.testing.assert_close(h, h_ref, **TOL)
    torch.testing.assert_close(c, c_ref, **TOL)
    (y.pow(2).sum() + h.sum() + c.sum()).backward()
    (y_ref.pow(2).sum() + h_ref.sum() + c_ref.sum()).backward()
    torch.testing.assert_close(x.grad, xr.grad, **TOL)
    assert layer.ard_record.group_rows == [5 + 5 + 4, 4 + 3, 2 + 2]
    bi = ARDLSTM.from_lstm(nn.LSTM(6, 5, bidirectional=True).to(dt))
    bi.set_patterns([slots[0]])
    with pytest.raises(ValueError, match="bidirectional LSTM on packed sequences; pass padded input, or use groups=1"):
        bi(pack_padded_sequence(x, lengths, enforce_sorted=False))


def test_controller_groups_draws_g_patterns_and_counts_flops() -> None:
    """groups=4: four patterns per site per step; the FLOP accounting equals FlopCounterMode on the grouped ops."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 4)
    )
    ctl = ARDController(model, pattern="row", groups=4, seed=1).apply()
    pats = ctl.step()
    assert all(isinstance(v, tuple) and len(v) == 4 for v in pats.values())
    assert len({tuple(p.kept.tolist()) for v in pats.values() for p in v}) > 2
    x = torch.randn(30, 20)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    ctl.check_calls()
    executed = sum(e for _, e in ctl.layer_flops().values())
    assert executed == counter.get_total_flops()
    for name in pats:
        assert ctl.keep_fraction(name) == pytest.approx(sum(p.keep_fraction for p in pats[name]) / 4)
    ctl.restore()
    with pytest.raises(ValueError, match=r"groups must be an integer in \[1, 1048576\] or 'auto', got 0"):
        ARDController(model, pattern="row", groups=0)


def test_pool_limits_distinct_patterns_per_step() -> None:
    """pool=3 with 40 groups: every site's 40 groups share at most 3 patterns; the step is still exact in FLOPs,
    and the same seed gives the same draws."""
    from torch.utils.flop_counter import FlopCounterMode

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(20, 48), nn.ReLU(), nn.Dropout(0.5), nn.Linear(48, 4))

    draws = []
    for _ in range(2):
        model = build()
        ctl = ARDController(model, pattern="random", groups=40, pool=3, seed=7).apply()
        pats = ctl.step()
        draws.append([tuple(p.kept.tolist()) for p in pats["2"]])
        assert len(pats["2"]) == 40 and len({id(p) for p in pats["2"]}) <= 3
        with FlopCounterMode(display=False) as counter:
            model(torch.randn(40, 20)).sum().backward()
        assert sum(e for _, e in ctl.layer_flops().values()) == counter.get_total_flops()
        ctl.restore()
    assert draws[0] == draws[1]
    with pytest.raises(ValueError, match="pool must be an integer >= 1, got 0"):
        ARDController(build(), groups=4, pool=0)


def test_lstm_groups_apply_to_lstm_sites_only() -> None:
    """groups=7, lstm_groups=3: sites feeding the LSTM draw 3 patterns, the decoder site 7; the step runs."""

    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.drop = nn.Embedding(30, 12), nn.Dropout(0.5)
            self.lstm, self.dec = nn.LSTM(12, 10, 2, dropout=0.5), nn.Linear(10, 30)

        def forward(self, x):
            return self.dec(self.drop(self.lstm(self.drop(self.emb(x)))[0]))

    model = LM()
    ctl = ARDController(model, groups=7, lstm_groups=3, seed=2).apply()
    pats = ctl.step()
    assert {name: len(v) for name, v in pats.items()} == {"drop->lstm": 3, "lstm.l1": 3, "drop->dec": 7}
    model(torch.randint(0, 30, (9, 4))).sum().backward()
    ctl.check_calls()
    assert model.lstm.ard_record.group_rows == [12, 12, 12] and model.dec.ard_record.group_rows == [6, 5, 5, 5, 5, 5, 5]
    ctl.restore()


def test_describe_labels_group_settings() -> None:
    from lightning_ard.patterns.groups import describe

    assert describe("row") == "row" and describe("row", 1, pool=8) == "row"  # a pool needs groups
    assert describe("row", 700, 8, 5) == "row x700 groups pool 8 lstm 5"
    assert describe("block", 4) == "block x4 groups" and describe("row", 1, None, 5) == "row lstm 5"
