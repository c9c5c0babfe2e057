"""LSTM sequence groups (locked masks) and recurrent-path structured dropout: the ARD LSTM equals a dense
``nn.LSTM`` with the equivalent per-sequence masks (outputs, states, gradients), on padded and packed input; the
Linear after the LSTM groups its tokens by their sequence's group; the controller and config wiring."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lightning_ard import ApproximateDropout, ARDConfig, ARDController
from lightning_ard.layers import ARDLSTM
from lightning_ard.patterns import BlockRow, RowPattern
from lightning_ard.patterns.groups import group_bounds
from tests.grads import take_grads
from tests.row_families import row_family

TOL = dict(rtol=1e-10, atol=1e-10)
DT = torch.float64


def _seq_masks(patterns: tuple[RowPattern, ...], order: list[int], dtype=DT) -> torch.Tensor:
    """(B, width) scaled masks: sequence ``order[pos]`` takes the pattern of the group of sorted position pos."""
    out = torch.zeros(len(order), patterns[0].width, dtype=dtype)
    for pat, (b0, b1) in zip(patterns, group_bounds(len(order), len(patterns)), strict=True):
        for pos in range(b0, b1):
            out[order[pos]] = pat.mask(dtype)
    return out


def _draw_slots(draw, gen, layer: ARDLSTM, groups: int) -> list:
    slots = []
    for i in range(layer.num_layers):
        if draw(st.booleans()):
            family = row_family(draw(st.sampled_from(["periodic", "random", "block"])), layer.layer_input_size(i), draw)
            slots.append(tuple(family.sample(gen) for _ in range(groups)))
        else:
            slots.append(None)
    return slots


def _sub(state: dict, layer: int, width: int, hidden: int, bidirectional: bool) -> nn.LSTM:
    sub = nn.LSTM(width, hidden, bidirectional=bidirectional).to(DT)
    sub.load_state_dict({k.replace(f"_l{layer}", "_l0"): v for k, v in state.items() if f"_l{layer}" in k})
    return sub


@given(
    data=st.data(),
    bidirectional=st.booleans(),
    batch_first=st.booleans(),
    layers=st.integers(1, 3),
    groups=st.integers(1, 5),
    batch=st.integers(1, 7),
    steps=st.integers(1, 5),
)
@settings(max_examples=30, deadline=None)
def test_sequence_groups_match_per_sequence_masks(data, bidirectional, batch_first, layers, groups, batch, steps):
    """Padded input: group g of sequences uses pattern g at every time step (batch < groups leaves groups empty)."""
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    n_in, hidden = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 7))
    lstm = nn.LSTM(n_in, hidden, layers, batch_first=batch_first, bidirectional=bidirectional).to(DT)
    state = {k: v.clone() for k, v in lstm.state_dict().items()}
    layer = ARDLSTM.from_lstm(lstm)
    slots = _draw_slots(data.draw, gen, layer, groups)
    layer.set_patterns(slots, mode="sequence")
    dirs = 2 if bidirectional else 1
    x_tm = torch.randn(steps, batch, n_in, dtype=DT, generator=gen)
    x = (x_tm.transpose(0, 1) if batch_first else x_tm).clone().requires_grad_(True)
    h0 = torch.randn(layers * dirs, batch, hidden, dtype=DT, generator=gen)
    c0 = torch.randn(layers * dirs, batch, hidden, dtype=DT, generator=gen)
    y, (h, c) = layer(x, (h0, c0))
    (y.pow(2).sum() + h.sum() + c.pow(2).sum()).backward()
    got = take_grads(x, *layer.parameters())

    xr = x_tm.clone().requires_grad_(True)
    inp, hs, cs, subs = xr, [], [], []
    for i, slot in enumerate(slots):
        if slot is not None:
            inp = inp * _seq_masks(slot, list(range(batch)))[None]
        sub = _sub(state, i, inp.shape[-1], hidden, bidirectional)
        inp, (hh, cc) = sub(inp, (h0[i * dirs : (i + 1) * dirs], c0[i * dirs : (i + 1) * dirs]))
        hs.append(hh), cs.append(cc), subs.append(sub)
    torch.testing.assert_close(y, inp.transpose(0, 1) if batch_first else inp, **TOL)
    torch.testing.assert_close(h, torch.cat(hs), **TOL)
    torch.testing.assert_close(c, torch.cat(cs), **TOL)
    (inp.pow(2).sum() + torch.cat(hs).sum() + torch.cat(cs).pow(2).sum()).backward()
    torch.testing.assert_close(got[0], xr.grad.transpose(0, 1) if batch_first else xr.grad, **TOL)
    want = {n.replace("_l0", f"_l{i}"): p.grad for i, s in enumerate(subs) for n, p in s.named_parameters()}
    for (name, _), g in zip(layer.named_parameters(), got[1:], strict=True):
        torch.testing.assert_close(g, want[name], **TOL)
    if any(slot is not None for slot in slots):
        assert layer.ard_record.group_rows == [(b1 - b0) * steps for b0, b1 in group_bounds(batch, groups)]


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("groups", [1, 2, 3])
def test_sequence_groups_on_packed_sequences(bidirectional: bool, groups: int) -> None:
    """Packed input (bidirectional too): groups are contiguous in the sorted order, each with its own batch sizes."""
    gen = torch.Generator().manual_seed(3 + groups)
    lstm = nn.LSTM(6, 5, 2, bidirectional=bidirectional).to(DT)
    state = {k: v.clone() for k, v in lstm.state_dict().items()}
    layer = ARDLSTM.from_lstm(lstm)
    slots = [tuple(BlockRow(layer.layer_input_size(i), 3).sample(gen) for _ in range(groups)) for i in range(2)]
    layer.set_patterns(slots, mode="sequence")
    lengths = torch.tensor([4, 7, 2, 7, 5])
    order = torch.sort(lengths, descending=True)[1].tolist()  # pack_padded_sequence's sorted order
    x = torch.randn(7, 5, 6, dtype=DT, generator=gen, requires_grad=True)
    h0 = torch.randn(2 * (2 if bidirectional else 1), 5, 5, dtype=DT, generator=gen)
    out, (h, c) = layer(pack_padded_sequence(x, lengths, enforce_sorted=False), (h0, h0.flip(1)))
    y = pad_packed_sequence(out, total_length=7)[0]
    (y.pow(2).sum() + h.sum() + c.sum()).backward()
    got = take_grads(x, *layer.parameters())

    xr = x.detach().clone().requires_grad_(True)
    dirs = 2 if bidirectional else 1
    inp, hs, cs, subs = xr, [], [], []
    for i, slot in enumerate(slots):
        inp = inp * _seq_masks(slot, order)[None]
        sub = _sub(state, i, inp.shape[-1], 5, bidirectional)
        packed, (hh, cc) = sub(
            pack_padded_sequence(inp, lengths, enforce_sorted=False),
            (h0[i * dirs : (i + 1) * dirs], h0.flip(1)[i * dirs : (i + 1) * dirs]),
        )
        inp = pad_packed_sequence(packed, total_length=7)[0]
        hs.append(hh), cs.append(cc), subs.append(sub)
    torch.testing.assert_close(y, inp, **TOL)
    torch.testing.assert_close(h, torch.cat(hs), **TOL)
    torch.testing.assert_close(c, torch.cat(cs), **TOL)
    (inp.pow(2).sum() + torch.cat(hs).sum() + torch.cat(cs).sum()).backward()
    torch.testing.assert_close(got[0], xr.grad, **TOL)
    want = {n.replace("_l0", f"_l{i}"): p.grad for i, s in enumerate(subs) for n, p in s.named_parameters()}
    for (name, _), g in zip(layer.named_parameters(), got[1:], strict=True):
        torch.testing.assert_close(g, want[name], **TOL)
    groups_of = [g for g, (b0, b1) in enumerate(group_bounds(5, groups)) for _ in range(b1 - b0)]
    assert layer.ard_layout.seq_groups == tuple(groups_of[order.index(i)] for i in range(5))


def _structured_reference(params, x_tm, h0, c0, in_slot, hidden_slots, order):
    """Dense single-layer nn.LSTMs, one group of sequences at a time: the recurrent input of a dropped unit is masked
    out (``weight_hh`` columns times the scaled mask), its output is zero, kept outputs are scaled, and its
    ``(h, c)`` stays as it came in."""
    steps, batch, _ = x_tm.shape
    groups = len(hidden_slots[0])
    hidden = h0.shape[-1]
    ys, hs, cs = [], [], []
    for g, (b0, b1) in enumerate(group_bounds(batch, groups)):
        if b1 == b0:
            continue
        inp = x_tm[:, b0:b1]
        if in_slot is not None:
            inp = inp * in_slot[g].mask(DT)
        h_layers, c_layers = [], []
        for layer, slot in enumerate(hidden_slots):
            unit = slot[g]
            keep = unit.mask(DT, scaled=False)
            sub = nn.LSTM(inp.shape[-1], hidden).to(DT)
            weights = {
                "weight_ih_l0": params[f"weight_ih_l{layer}"],
                "weight_hh_l0": params[f"weight_hh_l{layer}"] * unit.mask(DT),
                "bias_ih_l0": params[f"bias_ih_l{layer}"],
                "bias_hh_l0": params[f"bias_hh_l{layer}"],
            }
            h_in, c_in = h0[layer : layer + 1, b0:b1], c0[layer : layer + 1, b0:b1]
            out, (hh, cc) = functional_call(sub, weights, (inp, (h_in * keep, c_in)))
            inp = out * unit.mask(DT)
            h_layers.append(torch.where(keep.bool(), hh, h_in))
            c_layers.append(torch.where(keep.bool(), cc, c_in))
        ys.append(inp), hs.append(torch.cat(h_layers)), cs.append(torch.cat(c_layers))
    return torch.cat(ys, 1), torch.cat(hs, 1), torch.cat(cs, 1)


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("input_pattern", [False, True])
def test_structured_layer_equals_masked_dense_lstm(groups, batch_first, layers, input_pattern) -> None:
    """Recurrent structured dropout = dense nn.LSTM with the dropped units masked (see the reference), forward and
    gradients; dropped units' final (h, c) are exactly the initial ones (state carried unchanged)."""
    gen = torch.Generator().manual_seed(11 * groups + layers)
    lstm = nn.LSTM(7, 9, layers, batch_first=batch_first).to(DT)
    layer = ARDLSTM.from_lstm(lstm)
    in_slot = tuple(BlockRow(7, 4).sample(gen) for _ in range(groups)) if input_pattern else None
    hidden = [tuple(BlockRow(9, 5 + i).sample(gen) for _ in range(groups)) for i in range(layers)]
    layer.set_patterns([in_slot] + [None] * (layers - 1), mode="sequence", hidden=hidden)
    batch, steps = 5, 4
    x_tm = torch.randn(steps, batch, 7, dtype=DT, generator=gen)
    x = (x_tm.transpose(0, 1) if batch_first else x_tm).clone().requires_grad_(True)
    h0 = torch.randn(layers, batch, 9, dtype=DT, generator=gen, requires_grad=True)
    c0 = torch.randn(layers, batch, 9, dtype=DT, generator=gen, requires_grad=True)
    y, (h, c) = layer(x, (h0, c0))
    (y.pow(2).sum() + h.pow(2).sum() + c.sum()).backward()
    got = take_grads(x, h0, c0, *layer.parameters())

    params = {n: p.detach().clone().requires_grad_(True) for n, p in layer.named_parameters()}
    xr = x_tm.clone().requires_grad_(True)
    h0r, c0r = h0.detach().clone().requires_grad_(True), c0.detach().clone().requires_grad_(True)
    y_ref, h_ref, c_ref = _structured_reference(params, xr, h0r, c0r, in_slot, hidden, list(range(batch)))
    torch.testing.assert_close(y, y_ref.transpose(0, 1) if batch_first else y_ref, **TOL)
    torch.testing.assert_close(h, h_ref, **TOL)
    torch.testing.assert_close(c, c_ref, **TOL)
    (y_ref.pow(2).sum() + h_ref.pow(2).sum() + c_ref.sum()).backward()
    torch.testing.assert_close(got[0], xr.grad.transpose(0, 1) if batch_first else xr.grad, **TOL)
    torch.testing.assert_close(got[1], h0r.grad, **TOL)
    torch.testing.assert_close(got[2], c0r.grad, **TOL)
    for (name, _), g in zip(layer.named_parameters(), got[3:], strict=True):
        torch.testing.assert_close(g, params[name].grad, **TOL)
    for i, slot in enumerate(hidden):  # the state rule: dropped units carried unchanged, bit for bit
        for unit, (b0, b1) in zip(slot, group_bounds(batch, groups), strict=True):
            dropped = unit.mask(DT, scaled=False) == 0
            assert torch.equal(h[i, b0:b1][:, dropped], h0[i, b0:b1][:, dropped].detach())
            assert torch.equal(c[i, b0:b1][:, dropped], c0[i, b0:b1][:, dropped].detach())
    assert [sum(t for t, _, _ in w) for w in layer.ard_record.work] == [batch * steps] * layers
    assert [w[0][2] for w in layer.ard_record.work] == [hidden[i][0].num_kept for i in range(layers)]


def test_structured_state_carries_across_bptt_windows() -> None:
    """Two truncated-BPTT windows of the LM: a unit dropped in window 2 ends it with its state from window 1."""
    from lightning_ard.app.models.lstm_lm import LSTMLanguageModel

    torch.manual_seed(0)
    model = LSTMLanguageModel(40, 12, 12, 2, 0.5)
    ctl = ARDController(model, seed=1, lstm_groups=2, lstm_mode="sequence", lstm_recurrent_p=0.5).apply()
    tokens = torch.randint(0, 40, (4, 6))
    ctl.step()
    _, (h1, c1) = model(tokens)
    ctl.step()
    _, (h2, c2) = model(tokens, (h1.detach(), c1.detach()))
    for layer, slot in enumerate(model.lstm.ard_hidden):
        for unit, (b0, b1) in zip(slot, group_bounds(4, 2), strict=True):
            dropped = unit.mask(scaled=False) == 0
            assert dropped.any()
            assert torch.equal(h2[layer, b0:b1][:, dropped], h1[layer, b0:b1][:, dropped])
            assert torch.equal(c2[layer, b0:b1][:, dropped], c1[layer, b0:b1][:, dropped])
            assert not torch.equal(h2[layer, b0:b1][:, ~dropped], h1[layer, b0:b1][:, ~dropped])
    ctl.restore()


class _TimeMajorLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.drop_in, self.drop_out = nn.Embedding(30, 12), nn.Dropout(0.5), nn.Dropout(0.5)
        self.lstm, self.dec = nn.LSTM(12, 10, 2, dropout=0.5), nn.Linear(10, 30)

    def forward(self, x):
        return self.dec(self.drop_out(self.lstm(self.drop_in(self.emb(x)))[0]))


def _lm(batch_first: bool) -> nn.Module:
    from lightning_ard.app.models.lstm_lm import LSTMLanguageModel

    torch.manual_seed(0)
    if batch_first:
        model = LSTMLanguageModel(30, 12, 10, 2, 0.5).to(DT)
        model.forward_logits = lambda x: model(x)[0]  # type: ignore[attr-defined]
        return model
    model = _TimeMajorLM().to(DT)
    model.forward_logits = model.forward  # type: ignore[attr-defined]
    return model


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("structured", [False, True])
def test_decoder_tokens_follow_their_sequence_group(batch_first: bool, structured: bool) -> None:
    """The Linear after the LSTM: every token uses its sequence's group pattern (the decoder site's own draw, or
    under structured dropout the LSTM's last hidden-unit pattern, unscaled: the LSTM output is already scaled)."""
    model = _lm(batch_first)
    q = 0.4 if structured else None
    ctl = ARDController(model, seed=3, lstm_groups=3, lstm_mode="sequence", lstm_recurrent_p=q).apply()
    dec_site = "drop_out"
    assert {sp.name: sp.follows for sp in ctl.plan.sites if sp.follows} == {dec_site: "lstm"}
    pats = ctl.step()
    batch, steps = 7, 5
    tokens = torch.randint(0, 30, (batch, steps) if batch_first else (steps, batch))
    captured = {}
    decoder = model.decoder if batch_first else model.dec
    handle = decoder.register_forward_hook(lambda m, a, out: captured.update(x=a[0], y=out))
    model.forward_logits(tokens)
    handle.remove()
    want = pats[dec_site]
    if structured:
        want = model.lstm.ard_hidden[-1]
        assert all(p.scale == 1.0 for p in decoder.ard_in_patterns)
    seq_group = [g for g, (b0, b1) in enumerate(group_bounds(batch, 3)) for _ in range(b1 - b0)]
    x, y = captured["x"], captured["y"]
    masks = torch.stack([want[g].mask(DT, scaled=not structured) for g in seq_group])  # (B, hidden)
    masked = x * (masks[:, None] if batch_first else masks[None])
    torch.testing.assert_close(y, nn.functional.linear(masked, decoder.weight, decoder.bias), **TOL)
    per_row = decoder.ard_in_patterns
    assert len(per_row) == (batch if batch_first else batch * steps)
    for r, pat in enumerate(per_row):
        b = r if batch_first else r % batch
        assert set(pat.kept.tolist()) == set(want[seq_group[b]].kept.tolist())
    ctl.check_calls()
    ctl.restore()
    assert not decoder._forward_pre_hooks  # the follower's hook left with the ARD layers


def test_follower_rejects_an_input_without_the_lstm_layout() -> None:
    model = _lm(True)
    ctl = ARDController(model, seed=0, lstm_groups=2, lstm_mode="sequence").apply()
    ctl.step()
    model(torch.randint(0, 30, (4, 3)))
    with pytest.raises(ValueError, match=re.escape("input of shape (5, 10) holds neither one row per token")):
        model.decoder(torch.randn(5, 10, dtype=DT))
    ctl.restore()


def test_structured_rejects_bidirectional_before_any_swap() -> None:
    class Bi(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop, self.lstm = nn.Dropout(0.5), nn.LSTM(6, 4, bidirectional=True)

        def forward(self, x):
            return self.lstm(self.drop(x))[0]

    model = Bi()
    msg = "lstm_recurrent_p=0.5 supports unidirectional LSTMs only, got bidirectional 'lstm'; set lstm_recurrent_p=None"
    with pytest.raises(ValueError, match=re.escape(msg)):
        ARDController(model, lstm_groups=2, lstm_mode="sequence", lstm_recurrent_p=0.5).apply()
    assert type(model.lstm) is nn.LSTM and type(model.drop) is nn.Dropout


def test_time_groups_on_packed_bidirectional_name_the_working_settings() -> None:
    layer = ARDLSTM.from_lstm(nn.LSTM(6, 5, bidirectional=True).to(DT))
    layer.set_patterns([tuple(BlockRow(6, 3).sample() for _ in range(2))])
    packed = pack_padded_sequence(torch.randn(4, 3, 6, dtype=DT), torch.tensor([4, 2, 3]), enforce_sorted=False)
    with pytest.raises(ValueError, match=re.escape("lstm_groups=1, or lstm_mode='sequence'")):
        layer(packed)
    layer.set_patterns([tuple(BlockRow(6, 3).sample() for _ in range(2))], mode="sequence")
    layer(packed)  # sequence groups run it


def test_set_patterns_checks_modes_and_hidden_patterns() -> None:
    layer = ARDLSTM.from_lstm(nn.LSTM(6, 5, 2))
    unit = BlockRow(5, 3).sample()
    with pytest.raises(ValueError, match=re.escape("mode must be one of ['time', 'sequence'], got 'batch'")):
        layer.set_patterns([None, None], mode="batch")
    with pytest.raises(ValueError, match="hidden patterns need mode='sequence'"):
        layer.set_patterns([None, None], hidden=[unit, unit])
    with pytest.raises(ValueError, match="layer 1 reads layer 0's kept units: its input pattern must be None"):
        layer.set_patterns([None, unit], mode="sequence", hidden=[unit, unit])
    with pytest.raises(ValueError, match="hidden pattern for layer 1 has width 6, hidden_size is 5"):
        layer.set_patterns([None, None], mode="sequence", hidden=[unit, BlockRow(6, 3).sample()])
    with pytest.raises(ValueError, match="same number of groups"):
        layer.set_patterns([None, None], mode="sequence", hidden=[unit, [unit, unit]])


def test_site_table_after_fit_on_an_lstm_model() -> None:
    """expected_site_saving (the site table) works on the restored nn.LSTM, and equals the value during fit."""
    model = _lm(True)
    cb = ApproximateDropout(lstm_groups=2, lstm_mode="sequence", lstm_recurrent_p=0.5, seed=0)
    cb.controller = ARDController(model, cb.config, seed=0).apply()
    during = cb.site_table()
    cb.controller.step()
    model(torch.randint(0, 30, (4, 3)))
    cb.controller.restore()
    assert type(model.lstm) is nn.LSTM
    assert cb.site_table() == during
    ctl = cb.controller
    saving = {s.name: ctl.expected_site_saving(s) for s in ctl.report.sites}
    keep = 1 - 0.5  # block family: exact keep fraction at p = 0.5 on these widths
    k_in = ctl.distributions["drop_in"].expected_keep_fraction
    k_h = [ctl.distributions[s].expected_keep_fraction for s in ("lstm.l1", "drop_out")]
    assert k_h[0] == pytest.approx(keep, abs=0.05)
    size = 4 * 10 * (12 + 10)  # layer 0: 4H x (input + H)
    assert saving["drop_in"] == pytest.approx(1 - (12 * k_in * k_h[0] + 10 * k_h[0] ** 2) / (12 + 10))
    layer1 = (10 * k_h[0] * k_h[1] + 10 * k_h[1] ** 2) / 20
    layer0 = (12 * k_in * k_h[0] + 10 * k_h[0] ** 2) / 22
    assert saving["lstm.l1"] == pytest.approx(1 - (size * layer0 + 4 * 10 * 20 * layer1) / (size + 4 * 10 * 20))
    assert [s.p for s in ctl.report.sites if s.name != "drop_in"] == [0.5, 0.5]


def test_config_checks_lstm_settings() -> None:
    def raises(message: str, **kwargs) -> None:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            ARDConfig(**kwargs)

    raises("lstm_mode must be one of ['time', 'sequence'], got 'batch'", lstm_mode="batch")
    raises(
        "lstm_recurrent_p=0.3 needs lstm_mode='sequence' (one hidden-unit pattern per group of sequences), got "
        "lstm_mode='time'; set lstm_mode='sequence'",
        lstm_recurrent_p=0.3,
    )
    raises("lstm_recurrent_p must be in (0, 1) or None (off), got 0.0", lstm_recurrent_p=0, lstm_mode="sequence")
    raises("lstm_recurrent_p must be in [0, 1), got 1.5", lstm_recurrent_p=1.5, lstm_mode="sequence")
    assert ARDConfig().lstm_mode == "time" and ARDConfig().lstm_recurrent_p is None  # opt-in, never on silently


class _BiLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.drop_in, self.drop_out = nn.Embedding(30, 12), nn.Dropout(0.5), nn.Dropout(0.5)
        self.lstm, self.dec = nn.LSTM(12, 10, bidirectional=True), nn.Linear(20, 30)

    def forward(self, x):
        return self.dec(self.drop_out(self.lstm(self.drop_in(self.emb(x)))[0]))


def test_defaults_serve_lstm_sites_with_the_studied_setting() -> None:
    """groups='auto' without lstm_groups: sites that feed an LSTM (in every mode, bidirectional or not) take one
    random pattern per step dropping 0.6 of p and element-wise dropout for the rest, the decoder site the Linear
    safe count; above p = 0.5 they stay nn.Dropout with the reason; lstm_groups or structured dropout serve them as
    asked."""
    from lightning_ard.lstm_policy import AUTO_LSTM_REASON

    for model, extra in ((_lm(True), {}), (_lm(True), {"lstm_mode": "sequence"}), (_BiLM(), {})):
        ctl = ARDController(model, **extra).apply()
        lstm_sites = [sp for sp in ctl.plan.sites if sp.site.kind.feeds_lstm]
        assert {sp.name for sp in lstm_sites} == {"drop_in", "lstm.l1"} & {s.name for s in ctl.report.sites}
        for sp in lstm_sites:
            assert (sp.family, sp.groups, sp.site.p) == ("random", 1, pytest.approx(0.3))
            assert sp.element_p == pytest.approx(2 / 7) and sp.follows is None
        assert ctl.site_groups("drop_out") == 4
        ctl.restore()
    ctl = ARDController(_lm(True), p=0.7).apply()
    skipped = {s.name: s.reason for s in ctl.report.skipped}
    assert {s.name for s in ctl.report.sites} == {"drop_out"} and ctl.site_groups("drop_out") == 10
    assert skipped["drop_in"] == skipped["lstm.l1"] == AUTO_LSTM_REASON
    assert "above p = 0.5" in AUTO_LSTM_REASON and "set lstm_groups=N to serve them" in AUTO_LSTM_REASON
    ctl.restore()
    ctl = ARDController(_lm(True), lstm_groups=2).apply()
    assert {s.name for s in ctl.report.sites} == {"drop_in", "lstm.l1", "drop_out"}
    assert ctl.site_groups("drop_in") == ctl.site_groups("lstm.l1") == 2 and ctl.site_groups("drop_out") == 4
    assert all(sp.element_p == 0.0 and sp.site.p == 0.5 for sp in ctl.plan.sites)  # lstm_groups: all of p
    ctl.restore()
    ctl = ARDController(_lm(True), lstm_mode="sequence", lstm_recurrent_p=0.5).apply()
    assert {s.name for s in ctl.report.sites} == {"drop_in", "lstm.l1", "drop_out"}
    assert ctl.site_groups("lstm.l1") == ctl.site_groups("drop_out") == 4
    ctl.restore()


def test_token_groups_of_packed_data_and_per_sequence_rows() -> None:
    """Packed input: a Linear on ``.data`` gets one entry per packed row (its sequence's group, sorted order); on
    ``pad_packed_sequence``'s output (caller's order) one per sequence (batch-first) or per row (time-major)."""
    layer = ARDLSTM.from_lstm(nn.LSTM(6, 5))
    layer.set_patterns([tuple(BlockRow(6, 3).sample() for _ in range(2))], mode="sequence")
    lengths = torch.tensor([2, 4, 1])  # sorted order: sequences 1 (4 steps), 0 (2), 2 (1); groups {1, 0} and {2}
    layer(pack_padded_sequence(torch.randn(4, 3, 6), lengths, enforce_sorted=False))
    # packed rows: t=0: seqs 1, 0, 2; t=1: 1, 0; t=2: 1; t=3: 1
    assert layer.token_groups((7, 5)) == [0, 0, 1, 0, 0, 0, 0]
    assert layer.token_groups((3, 4, 5)) == [0, 0, 1]  # batch-first padded, caller's order: seqs 0, 1, 2
    assert layer.token_groups((4, 3, 5)) == [0, 0, 1] * 4  # time-major padded
    assert layer.token_groups((5, 5, 5)) is None
