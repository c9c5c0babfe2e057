"""build_plan: a pure function of the model and the config; the group bound by the step's rows."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_ard import ARDConfig
from lightning_ard.planning import bound_groups, build_plan, config_of
from tests.lm import TinyLM as LM


def _mlp(p: float = 0.5) -> nn.Sequential:
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(p), nn.Linear(64, 64), nn.ReLU(), nn.Dropout(p),
                         nn.Linear(64, 5))  # fmt: skip


def test_building_a_plan_does_not_change_the_model() -> None:
    model = _mlp()
    before = copy.deepcopy(model.state_dict())
    classes = [type(m) for m in model.modules()]
    plan = build_plan(model, ARDConfig(pattern="tile"))
    assert [type(m) for m in model.modules()] == classes
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [sp.family for sp in plan.sites] == ["tile", "tile"]
    assert all(sp.site.producer is None for sp in plan.sites)  # a tile consumer keeps its producer whole


def test_the_plan_keeps_its_config() -> None:
    config = ARDConfig(pattern="random", p=0.3, groups=2, exclude=("nothing",))
    plan = build_plan(_mlp(), config)
    assert config_of(plan) == config
    assert {sp.site.p for sp in plan.sites} == {0.3}


def test_groups_follow_the_batch_and_never_exceed_its_rows() -> None:
    plan = build_plan(_mlp(), ARDConfig(groups=10**6))
    bounded = bound_groups(plan, samples=32)
    assert [(sp.groups, sp.requested_groups) for sp in bounded.sites] == [(32, 10**6), (32, 10**6)]
    wider = bound_groups(bounded, samples=32, rows={"2": 320, "5": 10})  # e.g. tokens of a sequence input
    assert [(sp.groups, sp.requested_groups) for sp in wider.sites] == [(320, 10**6), (10, 10**6)]
    auto = bound_groups(build_plan(_mlp(), ARDConfig()), samples=1024)
    assert {sp.groups for sp in auto.sites} == {8} and auto.samples == 1024
    assert {sp.groups for sp in bound_groups(auto, samples=2).sites} == {2}


def test_lstm_sites_under_auto_groups() -> None:
    """groups='auto' serves the LSTM sites with one random pattern dropping 0.6 of p (element-wise the rest) up to
    p = 0.5; above it they stay nn.Dropout, and the decoder too when it shares their dropout module. The plan keeps
    the settings as given (a replay resolves them the same way)."""
    for bidirectional in (False, True):
        plan = build_plan(LM(bidirectional), ARDConfig())
        assert {sp.name: (sp.family, sp.groups, round(sp.site.p, 6), round(sp.element_p, 6)) for sp in plan.sites} == {
            "drop->lstm": ("random", 1, 0.3, 0.285714), "lstm.l1": ("random", 1, 0.3, 0.285714),
            "drop->dec": ("block", 4, 0.5, 0.0),
        }  # fmt: skip
        assert plan.config["lstm_groups"] is None and plan.config["lstm_pattern_share"] is None
        high = build_plan(LM(bidirectional), ARDConfig(p=0.7))
        skipped = dict(high.skipped)
        assert high.sites == () and skipped["drop->lstm"].startswith("LSTM sites above p = 0.5 stay nn.Dropout")
        assert skipped["drop->dec"] == "another use of drop stays nn.Dropout (an LSTM site)"
    chunks = build_plan(LM(False), ARDConfig(lstm_groups=2))
    assert {sp.name: (sp.groups, sp.tied) for sp in chunks.sites} == {
        "drop->lstm": (2, True), "lstm.l1": (2, True), "drop->dec": (4, False)
    }  # fmt: skip


def test_lstm_sites_take_their_own_family() -> None:
    plan = build_plan(LM(False), ARDConfig(pattern="block", lstm_pattern="random", lstm_groups=2))
    families = {sp.name: sp.family for sp in plan.sites}
    assert families == {"drop->lstm": "random", "lstm.l1": "random", "drop->dec": "block"}
    tile = build_plan(LM(False), ARDConfig(pattern="tile", lstm_groups=2))
    assert {sp.name: sp.family for sp in tile.sites}["lstm.l1"] == "row"


def test_a_rate_without_a_pattern_distribution_names_the_site() -> None:
    with pytest.raises(ValueError, match=r"site '2' \(p=0.7, width=64\): p=0.7 cannot be reached by the 'row' "):
        build_plan(_mlp(0.7), ARDConfig(pattern="row", search={"dp_max": 2}))
