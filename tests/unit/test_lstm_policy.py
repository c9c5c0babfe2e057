"""The LSTM policy: which LSTM sites ARD serves under each setting, followers, structured rates, tied groups."""

from __future__ import annotations

import pytest
from torch import nn

from lightning_ard import ARDConfig
from lightning_ard.lstm_policy import (
    AUTO_LSTM,
    AUTO_LSTM_MAX_BATCH,
    AUTO_LSTM_REASON,
    auto_lstm_batch_reason,
    lstm_policy,
)
from lightning_ard.planning import bound_lstm_batch, build_plan
from lightning_ard.sites import find_sites


class LM(nn.Module):
    def __init__(self, bidirectional: bool = False) -> None:
        super().__init__()
        self.emb, self.drop_in, self.drop_out = nn.Embedding(30, 16), nn.Dropout(0.5), nn.Dropout(0.5)
        self.lstm = nn.LSTM(16, 16, 2, dropout=0.5, batch_first=True, bidirectional=bidirectional)
        self.dec = nn.Linear(16 * (1 + bidirectional), 30)

    def forward(self, x):
        return self.dec(self.drop_out(self.lstm(self.drop_in(self.emb(x)))[0]))


def _policy(model: nn.Module, **settings):
    config = ARDConfig(**settings)
    sites = find_sites(model, config.p).sites
    return lstm_policy(model, list(sites), config, lambda site: True)


def test_auto_serves_lstm_sites_up_to_the_studied_rate_and_lstm_groups_serves_them() -> None:
    for bidirectional in (False, True):
        policy = _policy(LM(bidirectional))
        assert {s.name: s.p for s in policy.sites} == pytest.approx({"drop_in": 0.3, "drop_out": 0.5, "lstm.l1": 0.3})
        assert policy.element_p == pytest.approx({"drop_in": 2 / 7, "lstm.l1": 2 / 7}) and policy.skipped == []
        assert policy.tied == {"drop_in": 1, "lstm.l1": 1}
        high = _policy(LM(bidirectional), p=0.7)
        assert [s.name for s in high.sites] == ["drop_out"] and high.tied == {}
        assert [(s.name, s.reason) for s in high.skipped] == [(n, AUTO_LSTM_REASON) for n in ("drop_in", "lstm.l1")]
    shared = _policy(LM(), lstm_pattern_share=1.0)  # the user's share wins: the pattern drops all of p
    assert {s.name: s.p for s in shared.sites}["drop_in"] == 0.5 and shared.element_p == {}
    chunks = _policy(LM(), lstm_groups=2)
    assert {s.name for s in chunks.sites} == {"drop_in", "lstm.l1", "drop_out"}
    assert chunks.tied == {"drop_in": 2, "lstm.l1": 2} and chunks.followers == {}


def test_sequence_groups_make_the_decoder_follow_the_lstm() -> None:
    policy = _policy(LM(), lstm_mode="sequence", lstm_groups=3)
    assert policy.followers == {"drop_out": "lstm"}
    assert policy.tied == {"drop_in": 3, "lstm.l1": 3, "drop_out": 3}
    assert _policy(LM(), lstm_mode="sequence").followers == {}  # the automatic setting: one pattern, no groups
    assert _policy(LM(), lstm_mode="sequence", p=0.7).skipped[0].reason == AUTO_LSTM_REASON


def test_structured_dropout_rates_the_hidden_unit_sites() -> None:
    policy = _policy(LM(), lstm_mode="sequence", lstm_groups=2, lstm_recurrent_p=0.3)
    rates = {s.name: s.p for s in policy.sites}
    assert rates == {"drop_in": 0.5, "lstm.l1": 0.3, "drop_out": 0.3}
    assert policy.hidden == {} and policy.tied["drop_out"] == 2  # both layers' hidden units have a site
    with pytest.raises(ValueError, match="lstm_recurrent_p=0.3 supports unidirectional LSTMs only"):
        _policy(LM(bidirectional=True), lstm_mode="sequence", lstm_groups=2, lstm_recurrent_p=0.3)


def test_the_model_is_not_changed() -> None:
    model = LM()
    before = [type(m) for m in model.modules()]
    _policy(model, lstm_mode="sequence", lstm_groups=2, lstm_recurrent_p=0.3)
    assert [type(m) for m in model.modules()] == before


@pytest.mark.parametrize("p", [0.3, 0.5])
def test_the_study_arm_is_the_defaults(p: float) -> None:
    """The LSTM study's arm spells the automatic setting out (lstm_groups=1, lstm_pattern='random',
    lstm_pattern_share=0.6): on the study's model it serves every site exactly as the defaults do."""
    from lightning_ard.app.models.lstm_lm import LSTMLanguageModel
    from lightning_ard.planning import build_plan

    model = LSTMLanguageModel(vocab_size=100, embed_dim=16, hidden_size=16)
    defaults = build_plan(model, ARDConfig(p=p)).to_dict()
    spelled = build_plan(model, ARDConfig(p=p, **AUTO_LSTM)).to_dict()
    assert defaults["sites"] == spelled["sites"] and defaults["skipped"] == spelled["skipped"] == []


def test_the_automatic_setting_falls_back_above_the_studied_batch() -> None:
    """An LSTM reading more sequences than the study measured: its sites (and the decoder's, sharing their module)
    run as nn.Dropout with the reason; at the studied batch, unmeasured, or spelled out by the user: unchanged."""
    plan = build_plan(LM(), ARDConfig())
    big = AUTO_LSTM_MAX_BATCH + 1
    fell = bound_lstm_batch(plan, {"lstm": big})
    why = auto_lstm_batch_reason("lstm", big)
    assert fell.fallen_back == {"drop_in": why, "lstm.l1": why}  # drop_out is its own module: still served
    assert [sp.name for sp in fell.served] == ["drop_out"]
    assert why == (
        f"LSTM 'lstm' reads {big} sequences a step; the LSTM study qualified the automatic setting up to batch "
        f"{AUTO_LSTM_MAX_BATCH} (docs/results.md); set lstm_groups=1, lstm_pattern='random', lstm_pattern_share=0.6 "
        "to serve it at this batch"
    )
    for batches in ({"lstm": AUTO_LSTM_MAX_BATCH}, {"lstm": None}, {}):
        assert bound_lstm_batch(plan, batches) is plan
    spelled = build_plan(LM(), ARDConfig(**AUTO_LSTM))
    assert bound_lstm_batch(spelled, {"lstm": big}) is spelled
