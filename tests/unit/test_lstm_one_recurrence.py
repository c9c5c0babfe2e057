"""Sequence groups with one recurrence over the batch (``ard_one_recurrence``): the ARD LSTM equals dense
``nn.LSTM`` layers fed the input masked per sequence (outputs, final states and every gradient), on padded and
packed (unsorted) input, both directions and layouts, and equals one fused call per group; the recurrence alone
passes gradcheck; its FLOPs are recorded per group; the decoder still follows the sequence groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
from torch.utils.flop_counter import FlopCounterMode

from lightning_ard import ARDController, accounting
from lightning_ard.layers import ARDLSTM
from lightning_ard.layers.lstm import recurrence as recurrence_module
from lightning_ard.layers.lstm.recurrence import recurrence
from lightning_ard.patterns import BlockRow, RandomSubsetRow
from lightning_ard.patterns.groups import group_bounds

DT = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)


def _masks(slot, order: list[int]) -> torch.Tensor:
    """(B, width) scaled masks: sequence ``order[pos]`` takes the pattern of the group of sorted position pos."""
    out = torch.zeros(len(order), slot[0].width, dtype=DT)
    for pattern, (b0, b1) in zip(slot, group_bounds(len(order), len(slot)), strict=True):
        for pos in range(b0, b1):
            out[order[pos]] = pattern.mask(DT)
    return out


def _slots(layer: ARDLSTM, groups: int, gen: torch.Generator, shared: bool) -> list:
    """One pattern per group and layer (layer 1 without a pattern when there are 3 layers); ``shared``: groups 0
    and 1 draw the same pattern (merged into one product)."""
    slots = []
    for i in range(layer.num_layers):
        width = layer.layer_input_size(i)
        family = RandomSubsetRow(width, max(width // 2, 1)) if i % 2 else BlockRow(width, max(width // 2, 1))
        slot = [family.sample(gen) for _ in range(groups)]
        if shared and groups > 1:
            slot[1] = slot[0]
        slots.append(None if i == 1 and layer.num_layers == 3 else tuple(slot))
    return slots


def _reference(state, slots, x_tm, hx, bidirectional, order, lengths=None):
    """Dense single-layer nn.LSTMs, layer by layer, each fed its input masked per sequence; ``lengths``: packed."""
    dirs, inp, hs, cs, subs = 2 if bidirectional else 1, x_tm, [], [], []
    for i, slot in enumerate(slots):
        if slot is not None:
            inp = inp * _masks(slot, order)[None]
        sub = nn.LSTM(inp.shape[-1], hx[0].shape[-1], bidirectional=bidirectional).to(DT)
        sub.load_state_dict({k.replace(f"_l{i}", "_l0"): v for k, v in state.items() if f"_l{i}" in k})
        h_i, c_i = hx[0][i * dirs : (i + 1) * dirs], hx[1][i * dirs : (i + 1) * dirs]
        if lengths is None:
            inp, (h, c) = sub(inp, (h_i, c_i))
        else:
            packed, (h, c) = sub(pack_padded_sequence(inp, lengths, enforce_sorted=False), (h_i, c_i))
            inp = pad_packed_sequence(packed, total_length=x_tm.shape[0])[0]
        hs.append(h), cs.append(c), subs.append(sub)
    return inp, torch.cat(hs), torch.cat(cs), subs


CASES = [  # (layers, bidirectional, batch_first, groups, batch, packed, shared pattern)
    (1, False, False, 1, 4, False, False),
    (2, True, True, 3, 5, False, True),
    (3, False, True, 4, 6, False, False),
    (2, False, False, 6, 4, False, False),  # more groups than sequences: empty groups
    (2, True, False, 3, 5, True, False),
    (3, True, True, 2, 6, True, True),
    (1, False, True, 7, 3, True, False),
]


@pytest.mark.parametrize(("layers", "bidirectional", "batch_first", "groups", "batch", "packed", "shared"), CASES)
def test_one_recurrence_equals_dense_lstm_with_sequence_masks(
    layers, bidirectional, batch_first, groups, batch, packed, shared
) -> None:
    gen = torch.Generator().manual_seed(7 * layers + groups + batch)
    n_in, hidden, steps, dirs = 5, 4, 6, 2 if bidirectional else 1
    lstm = nn.LSTM(n_in, hidden, layers, batch_first=batch_first, bidirectional=bidirectional).to(DT)
    state = {k: v.clone() for k, v in lstm.state_dict().items()}
    layer = ARDLSTM.from_lstm(lstm, one_recurrence=True)
    slots = _slots(layer, groups, gen, shared)
    layer.set_patterns(slots, mode="sequence")
    x_tm = torch.randn(steps, batch, n_in, dtype=DT, generator=gen)
    hx = [torch.randn(layers * dirs, batch, hidden, dtype=DT, generator=gen, requires_grad=True) for _ in range(2)]
    lengths = torch.randint(1, steps + 1, (batch,), generator=gen) if packed else None
    x = (x_tm.transpose(0, 1) if batch_first else x_tm).clone().requires_grad_(True)
    if packed:
        inp = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
        order = inp.sorted_indices.tolist()
    else:
        inp, order = x, list(range(batch))
    y, (h, c) = layer(inp, tuple(hx))
    if packed:
        assert isinstance(y, PackedSequence)
        y = pad_packed_sequence(y, batch_first=batch_first, total_length=steps)[0]
    (y.pow(2).sum() + h.sum() + c.pow(2).sum()).backward()
    got = [x.grad, hx[0].grad, hx[1].grad] + [p.grad for p in layer.parameters()]

    xr, hxr = x_tm.clone().requires_grad_(True), [t.detach().clone().requires_grad_(True) for t in hx]
    want_y, want_h, want_c, subs = _reference(state, slots, xr, hxr, bidirectional, order, lengths)
    torch.testing.assert_close(y, want_y.transpose(0, 1) if batch_first else want_y, **TOL)
    torch.testing.assert_close(h, want_h, **TOL)
    torch.testing.assert_close(c, want_c, **TOL)
    (want_y.pow(2).sum() + want_h.sum() + want_c.pow(2).sum()).backward()
    torch.testing.assert_close(got[0], xr.grad.transpose(0, 1) if batch_first else xr.grad, **TOL)
    torch.testing.assert_close(got[1], hxr[0].grad, **TOL)
    torch.testing.assert_close(got[2], hxr[1].grad, **TOL)
    want = {n.replace("_l0", f"_l{i}"): p.grad for i, s in enumerate(subs) for n, p in s.named_parameters()}
    for (name, _), g in zip(layer.named_parameters(), got[3:], strict=True):
        assert g is not None, name
        torch.testing.assert_close(g, want[name], **TOL)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("sizes", [[3, 3, 3], [4, 4, 2, 1]])
def test_recurrence_gradcheck(reverse: bool, sizes: list[int]) -> None:
    """The hand-written backward against finite differences (padded and packed steps, both directions)."""
    gen = torch.Generator().manual_seed(len(sizes))
    offsets = torch.tensor([0, *sizes]).cumsum(0).tolist()
    steps, hidden = list(zip(offsets[:-1], sizes, strict=True)), 3

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, dtype=DT, generator=gen, requires_grad=True)

    args = (rand(offsets[-1], 4 * hidden), rand(sizes[0], hidden), rand(sizes[0], hidden), rand(4 * hidden, hidden))
    assert torch.autograd.gradcheck(lambda *a: recurrence(*a, steps, reverse), args)


@pytest.mark.parametrize("packed_weights", [True, False])
def test_float32_recurrence_matches_float64(packed_weights: bool, monkeypatch) -> None:
    """float32 on the CPU multiplies by a weight packed once (oneDNN) or by plain GEMMs: both agree with float64."""
    monkeypatch.setattr(recurrence_module, "PACKED_WEIGHTS", packed_weights)
    gen = torch.Generator().manual_seed(0)
    steps = [(0, 5), (5, 5), (10, 3), (13, 1)]  # hidden 16
    args64 = [torch.randn(*s, dtype=DT, generator=gen) for s in ((14, 64), (5, 16), (5, 16), (64, 16))]
    for reverse in (False, True):
        a64 = [t.clone().requires_grad_(True) for t in args64]
        a32 = [t.float().requires_grad_(True) for t in args64]
        outs = [recurrence(*a, steps, reverse) for a in (a64, a32)]
        for out in outs:
            sum(o.pow(2).sum() for o in out).backward()
        for o64, o32 in zip(*outs, strict=True):
            torch.testing.assert_close(o32, o64.float(), rtol=1e-4, atol=1e-4)
        for t64, t32 in zip(a64, a32, strict=True):
            torch.testing.assert_close(t32.grad, t64.grad.float(), rtol=1e-4, atol=1e-4)


def test_executed_flops_per_group_and_counter() -> None:
    """Bidirectional, 3 groups of 7 sequences (3, 2, 2) with groups 0 and 1 sharing a pattern, 4 steps: the record
    holds one entry per group, compact input and full hidden width, and FlopCounterMode (float64: plain GEMMs)
    sees exactly the analytic count (compact projections merged or not, one recurrence for all)."""
    gen = torch.Generator().manual_seed(2)
    layer = ARDLSTM.from_lstm(nn.LSTM(6, 5, 2, bidirectional=True).to(DT), one_recurrence=True)
    slots = _slots(layer, 3, gen, shared=True)
    layer.set_patterns(slots, mode="sequence")
    x = torch.randn(4, 7, 6, dtype=DT, requires_grad=True)
    with FlopCounterMode(display=False) as mode:
        layer(x)[0].sum().backward()
    tokens = [12, 8, 8]
    assert layer.ard_record.group_rows == tokens
    assert layer.ard_record.work == [[(t, p.num_kept, 5) for t, p in zip(tokens, s, strict=True)] for s in slots]
    executed = sum(
        accounting.lstm_layer_step_flops(t, p.num_kept, 5, 2, True) for s in slots for t, p in zip(tokens, s)
    )
    dense = accounting.lstm_layer_step_flops(28, 6, 5, 2, True) + accounting.lstm_layer_step_flops(28, 10, 5, 2, True)
    assert accounting.ard_lstm_flops(layer, layer.ard_record) == (dense, executed)
    assert mode.get_total_flops() == executed


def test_layout_maps_packed_rows_and_sequences_to_their_groups() -> None:
    """Unsorted packed input: the layout the decoder's follower reads gives each sequence (in the caller's order)
    and each packed row the group of its sorted position."""
    layer = ARDLSTM.from_lstm(nn.LSTM(4, 3).to(DT), one_recurrence=True)
    layer.set_patterns([tuple(BlockRow(4, 2).sample() for _ in range(2))], mode="sequence")
    lengths = torch.tensor([2, 4, 1, 3])
    packed = pack_padded_sequence(torch.randn(4, 4, 4, dtype=DT), lengths, enforce_sorted=False)
    out, _ = layer(packed)
    order = packed.sorted_indices.tolist()  # sorted position -> sequence
    group_of_pos = [0, 0, 1, 1]
    assert layer.ard_layout.seq_groups == tuple(group_of_pos[order.index(s)] for s in range(4))
    rows = [group_of_pos[pos] for n in packed.batch_sizes.tolist() for pos in range(n)]
    assert layer.token_groups(tuple(out.data.shape)) == rows


@pytest.mark.parametrize(("bidirectional", "packed"), [(False, False), (True, False), (True, True)])
def test_one_recurrence_equals_one_fused_call_per_group(bidirectional: bool, packed: bool) -> None:
    """The opt-in path and the default one (one fused call per group) compute the same outputs and gradients, with
    the module's own dropout above layer 0 off (layer 1 has no pattern) and groups sharing a pattern."""
    gen = torch.Generator().manual_seed(5)
    runs = []
    for one in (False, True):
        torch.manual_seed(0)
        layer = ARDLSTM.from_lstm(nn.LSTM(5, 4, 3, bidirectional=bidirectional).to(DT), one_recurrence=one)
        gen.manual_seed(5)
        layer.set_patterns(_slots(layer, 3, gen, shared=True), mode="sequence")
        x = torch.randn(6, 5, 5, dtype=DT, generator=gen, requires_grad=True)
        inp = pack_padded_sequence(x, torch.tensor([3, 6, 1, 6, 2]), enforce_sorted=False) if packed else x
        y, (h, c) = layer(inp)
        y = y.data if packed else y
        (y.pow(2).sum() + h.sum() + c.sum()).backward()
        runs.append([y, h, c, x.grad, *(p.grad for p in layer.parameters()), layer.ard_record.group_rows])
    for a, b in zip(*runs, strict=True):
        assert a == b if isinstance(a, list) else torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def test_decoder_follows_the_sequence_groups_with_one_recurrence() -> None:
    """The LM through the controller (sequence mode, 3 groups), its LSTM on one recurrence: every token of the
    decoder's input uses the pattern of its sequence's group."""
    from lightning_ard.app.models.lstm_lm import LSTMLanguageModel

    torch.manual_seed(0)
    model = LSTMLanguageModel(30, 12, 10, 2, 0.5).to(DT)
    ctl = ARDController(model, seed=3, lstm_groups=3, lstm_mode="sequence").apply()
    model.lstm.ard_one_recurrence = True
    want = ctl.step()["drop_out"]
    model(torch.randint(0, 30, (7, 5)))
    seq_group = [g for g, (b0, b1) in enumerate(group_bounds(7, 3)) for _ in range(b1 - b0)]
    assert model.lstm.ard_layout.seq_groups == tuple(seq_group)
    per_row = model.decoder.ard_in_patterns
    assert [set(p.kept.tolist()) for p in per_row] == [set(want[g].kept.tolist()) for g in seq_group]
    ctl.restore()
