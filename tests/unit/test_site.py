"""The site record: its kind is a string enum, and a site converts a plain string kind."""

from __future__ import annotations

import pytest

from lightning_ard.sites import Site, SiteKind


def test_site_kind_is_a_string() -> None:
    assert SiteKind.CONSUMER == "consumer" and SiteKind("producer+consumer") is SiteKind.PRODUCER_CONSUMER
    assert [str(k) for k in SiteKind] == ["consumer", "producer+consumer", "lstm-input", "lstm-inter"]
    assert f"{SiteKind.LSTM_INTER}" == "lstm-inter" and {"lstm-input": 1}[SiteKind.LSTM_INPUT] == 1
    assert SiteKind.LSTM_INPUT in ("lstm-input", "lstm-inter")
    assert [k.feeds_linear for k in SiteKind] == [True, True, False, False]
    assert [k.feeds_lstm for k in SiteKind] == [False, False, True, True]
    site = Site("d", "consumer", 0.5, 8, "d", "b")  # a plain string is converted
    assert site.kind is SiteKind.CONSUMER
    with pytest.raises(ValueError):
        Site("d", "producer", 0.5, 8, "d", "b")
