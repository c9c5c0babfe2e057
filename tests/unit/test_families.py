"""Family rules: row families drop units, the tile family drops the consumer's weight tiles."""

from __future__ import annotations

import pytest
from torch import nn

from lightning_ard.families import rule_for, rule_of, unit_family
from lightning_ard.patterns import BlockRow, PeriodicTile
from lightning_ard.sites import Site, SiteKind

LINEAR = Site("d", SiteKind.PRODUCER_CONSUMER, 0.5, 64, "d", "c", producer="a")
LSTM = Site("e", SiteKind.LSTM_INPUT, 0.5, 16, "e", "lstm")


def test_the_tile_family_serves_linear_consumers_only() -> None:
    assert rule_for("tile", LINEAR).tiles and not rule_for("tile", LSTM).tiles
    assert rule_for("tile", LSTM).name == "row" and unit_family("tile") == "row" and unit_family("block") == "block"
    assert rule_of("tile").tiles and not rule_of("random").tiles


def test_a_tile_consumer_keeps_its_producer_whole() -> None:
    shaped = rule_for("tile", LINEAR).shape_site(LINEAR)
    assert shaped.producer is None and shaped.kind == SiteKind.CONSUMER and LINEAR.producer == "a"
    assert rule_for("block", LINEAR).shape_site(LINEAR) is LINEAR


def test_each_rule_searches_its_own_candidates() -> None:
    model = nn.Module()
    model.c = nn.Linear(64, 32)
    tile = rule_for("tile", LINEAR).search(LINEAR, model, (8, 8), {})
    assert all(isinstance(c, PeriodicTile) and c.tile == (8, 8) for c in tile.candidates)
    block = rule_for("block", LINEAR).search(LINEAR, model, "auto", {})
    assert all(isinstance(c, BlockRow) for c in block.candidates)
    assert block.expected_rate == pytest.approx(0.5, abs=1e-3)
