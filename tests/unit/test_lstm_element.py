"""Element-wise dropout on an LSTM pattern's kept units (``lstm_pattern_share``): the ARD LSTM equals dense LSTMs
fed the composite masks (the pattern's kept columns, each element kept or dropped), in every mode; the policy splits
a site's rate, the plan keeps the element rate, the controller hands it to the layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from lightning_ard import ARDConfig, ARDController
from lightning_ard.layers import ARDLSTM
from lightning_ard.lstm_policy import split_rate
from lightning_ard.patterns import RandomSubsetRow
from lightning_ard.patterns.groups import group_bounds
from lightning_ard.plan import ARDPlan
from lightning_ard.plan_table import plan_table
from lightning_ard.planning import build_plan
from tests.grads import take_grads

DT = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)


def _sub_lstms(lstm: nn.LSTM) -> list[nn.LSTM]:
    """One single-layer nn.LSTM per layer of ``lstm``, sharing its Parameters (gradients land on ``lstm``'s)."""
    subs = []
    for i in range(lstm.num_layers):
        dirs = 2 if lstm.bidirectional else 1
        sub = nn.LSTM(lstm.input_size if i == 0 else lstm.hidden_size * dirs, lstm.hidden_size,
                      bidirectional=lstm.bidirectional).to(DT)  # fmt: skip
        for name, _ in list(sub.named_parameters()):
            delattr(sub, name)
            setattr(sub, name, getattr(lstm, name.replace("_l0", f"_l{i}")))
        subs.append(sub)
    return subs


def _assert_equal_to_reference(got, out, hs, cs, x, lstm) -> None:
    """``got`` (output, h, c and the gradients of x and the parameters) equals the reference's: its output, the
    layers' final states, and the gradients its backward leaves."""
    want_h, want_c = torch.cat(hs), torch.cat(cs)
    (out.pow(2).sum() + want_h.sum() + want_c.sum()).backward()
    want = [out, want_h, want_c, *take_grads(x, *lstm.parameters())]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("packed", [False, True])
def test_one_pattern_with_element_rate_equals_dense_lstm_on_the_composite_mask(packed: bool) -> None:
    """One pattern per layer (the fast path): the element masks the ARD forward draws from torch's generator,
    drawn again from the same seed, rebuild its exact input; outputs and gradients equal the dense LSTM's."""
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    lstm = ARDLSTM.from_lstm(nn.LSTM(6, 5, 2, batch_first=True).to(DT))
    patterns = [RandomSubsetRow(6, 4).sample(gen), RandomSubsetRow(5, 3).sample(gen)]
    rates = [0.3, 0.4]
    lstm.set_patterns(patterns, element_p=rates)
    x = torch.randn(4, 7, 6, dtype=DT, generator=gen, requires_grad=True)
    lengths = torch.tensor([7, 3, 5, 1])
    inp = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False) if packed else x
    torch.manual_seed(11)
    y, (h, c) = lstm(inp)
    y = y.data if packed else y
    (y.pow(2).sum() + h.sum() + c.sum()).backward()
    got = [y, h, c, *take_grads(x, *lstm.parameters())]

    lstm.clear_patterns()
    subs = _sub_lstms(lstm)  # built before the seed: their initialisation draws from the generator
    torch.manual_seed(11)
    inp = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False) if packed else x
    cur = inp.data if packed else x
    hs, cs = [], []
    for pattern, rate, sub in zip(patterns, rates, subs, strict=True):
        kept = pattern.index(cur.device)
        element = F.dropout(torch.ones(*cur.shape[:-1], len(kept), dtype=DT), rate, training=True)
        mask = torch.zeros_like(cur).index_copy(-1, kept, element * pattern.scale)
        cur = cur * mask
        if packed:
            out, (h_i, c_i) = sub(PackedSequence(cur, inp.batch_sizes, inp.sorted_indices, inp.unsorted_indices))
            cur = out.data
        else:
            sub.batch_first = True
            cur, (h_i, c_i) = sub(cur)
        hs.append(h_i), cs.append(c_i)
    _assert_equal_to_reference(got, cur, hs, cs, x, lstm)


def _time_major_mask(slot, steps: int, batch: int, mode: str, factor: float) -> torch.Tensor:
    """(T, B, width) input multiplier of one layer: each group's kept columns times the pattern's scale and the
    element factor, by time chunk (``mode="time"``) or group of sequences (``"sequence"``)."""
    out = torch.zeros(steps, batch, slot[0].width, dtype=DT)
    bounds = group_bounds(steps if mode == "time" else batch, len(slot))
    for pattern, (a, b) in zip(slot, bounds, strict=True):
        mask = pattern.mask(DT) * factor
        if mode == "time":
            out[a:b] = mask
        else:
            out[:, a:b] = mask
    return out


@pytest.mark.parametrize(
    ("mode", "groups", "bidirectional", "one_recurrence"),
    [("time", 1, True, False), ("time", 3, False, False), ("sequence", 2, True, False), ("sequence", 3, False, True)],
)
def test_every_mode_applies_the_element_dropout_once_on_each_layers_kept_columns(
    mode: str, groups: int, bidirectional: bool, one_recurrence: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the element-wise dropout replaced by a known factor, time chunks, sequence groups and one recurrence
    all equal dense LSTMs fed each group's kept columns times the pattern's scale and that factor."""
    factor = 3.0
    calls = []

    def fixed_dropout(x, p=0.5, training=True, inplace=False):
        calls.append(p)
        return x * factor

    gen = torch.Generator().manual_seed(4)
    torch.manual_seed(0)
    lstm = ARDLSTM.from_lstm(nn.LSTM(6, 4, 2, bidirectional=bidirectional).to(DT), one_recurrence=one_recurrence)
    slots = [tuple(RandomSubsetRow(lstm.layer_input_size(i), 3).sample(gen) for _ in range(groups)) for i in range(2)]
    lstm.set_patterns(slots, mode=mode, element_p=[0.25, 0.25])
    x = torch.randn(6, 5, 6, dtype=DT, generator=gen, requires_grad=True)
    monkeypatch.setattr(F, "dropout", fixed_dropout)
    y, (h, c) = lstm(x)
    monkeypatch.undo()
    assert calls and set(calls) == {0.25}
    (y.pow(2).sum() + h.sum() + c.sum()).backward()
    got = [y, h, c, *take_grads(x, *lstm.parameters())]

    lstm.clear_patterns()
    cur, hs, cs = x, [], []
    for slot, sub in zip(slots, _sub_lstms(lstm), strict=True):
        cur, (h_i, c_i) = sub(cur * _time_major_mask(slot, 6, 5, mode, factor))
        hs.append(h_i), cs.append(c_i)
    _assert_equal_to_reference(got, cur, hs, cs, x, lstm)


def test_set_patterns_checks_the_element_rates() -> None:
    lstm = ARDLSTM.from_lstm(nn.LSTM(6, 4, 2))
    pattern = RandomSubsetRow(6, 3).sample(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"element_p must have one rate in \[0, 1\) per layer \(2\), got \[0.5\]"):
        lstm.set_patterns([pattern, None], element_p=[0.5])
    with pytest.raises(ValueError, match=r"got \[0.2, 1.0\]"):
        lstm.set_patterns([pattern, None], element_p=[0.2, 1.0])
    lstm.set_patterns([pattern, None], element_p=[0.2, 0.0])
    assert lstm.ard_settings()["element_p"] == [0.2, 0.0]
    lstm.clear_patterns()
    assert lstm.ard_element_p == [0.0, 0.0]


class LM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.drop_in, self.drop_out = nn.Embedding(30, 16), nn.Dropout(0.5), nn.Dropout(0.5)
        self.lstm = nn.LSTM(16, 16, 2, dropout=0.5, batch_first=True)
        self.dec = nn.Linear(16, 30)

    def forward(self, x):
        return self.dec(self.drop_out(self.lstm(self.drop_in(self.emb(x)))[0]))


def test_split_rate_keeps_every_unit_with_probability_one_minus_p() -> None:
    for p in (0.3, 0.5, 0.7):
        for share in (0.25, 0.6, 1.0):
            pattern_p, element_p = split_rate(p, share)
            assert pattern_p == pytest.approx(share * p)
            assert (1 - pattern_p) * (1 - element_p) == pytest.approx(1 - p)
    assert split_rate(0.5, 1.0) == (0.5, 0.0)


def test_the_plan_splits_lstm_sites_and_the_controller_sets_the_element_rates() -> None:
    model = LM()
    config = ARDConfig(p=0.5, lstm_groups=1, lstm_pattern="random", lstm_pattern_share=0.6)
    plan = build_plan(model, config)
    rates = {sp.name: (sp.site.p, sp.element_p) for sp in plan.sites}
    assert rates["drop_out"] == (0.5, 0.0)  # a Linear site keeps its rate
    for name in ("drop_in", "lstm.l1"):
        assert rates[name][0] == pytest.approx(0.3) and rates[name][1] == pytest.approx(2 / 7)
    assert ARDPlan.from_dict(plan.to_dict()) == plan
    table = plan_table(plan)
    rows = {line.split()[0]: line.split() for line in table.splitlines()[3:]}
    assert rows["drop_in"][3:7] == ["0.3", "+", "0.286", "element-wise"]
    assert rows["drop_in"][-1] == "0.5000"  # the site's whole expected rate: pattern and element-wise
    assert rows["drop_out"][3] == "0.5" and rows["drop_out"][-1] == "0.5000"
    controller = ARDController(model, config).apply()
    controller.step()
    assert model.lstm.ard_element_p == pytest.approx([2 / 7, 2 / 7])
    controller.fall_back(["lstm.l1"])
    controller.step()
    assert model.lstm.ard_element_p == pytest.approx([2 / 7, 0.0])  # a site that fell back has no element rate
    controller.restore()


def test_lstm_pattern_share_is_validated() -> None:
    with pytest.raises(ValueError, match=r"lstm_pattern_share must be in \(0, 1\] or None, got 0.0"):
        ARDConfig(lstm_pattern_share=0.0)
    with pytest.raises(ValueError, match=r"lstm_pattern_share must be in \(0, 1\] or None, got 1.5"):
        ARDConfig(lstm_pattern_share=1.5)
    with pytest.raises(ValueError, match="does not combine with lstm_recurrent_p=0.3; set one of them to None"):
        ARDConfig(lstm_mode="sequence", lstm_groups=2, lstm_recurrent_p=0.3, lstm_pattern_share=0.5)
    assert ARDConfig(lstm_pattern_share=1).lstm_pattern_share == 1.0
