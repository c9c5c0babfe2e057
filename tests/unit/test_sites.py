"""Site detection: what is proven (consumer, producer+consumer, LSTM) and what is skipped, with the reason."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_ard.sites.detect import find_sites


def _sites(model, **kw):
    report = find_sites(model, **kw)
    return {s.name: s for s in report.sites}, {s.name: s.reason for s in report.skipped}


def test_sequential_producer_consumer_chain() -> None:
    model = nn.Sequential(
        nn.Linear(8, 16), nn.GELU(), nn.Dropout(0.5), nn.Linear(16, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2)
    )
    sites, skipped = _sites(model)
    assert {n: (s.kind, s.producer, s.consumer, s.p, s.width) for n, s in sites.items()} == {
        "2": ("producer+consumer", "0", "3", 0.5, 16),
        "5": ("producer+consumer", "3", "6", 0.3, 16),
    }
    assert not skipped
    assert _sites(model, p=0.2)[0]["2"].p == 0.2


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.d = nn.Linear(8, 8), nn.Linear(8, 8), nn.Dropout(0.5)

    def forward(self, x):
        h = self.d(self.a(x))
        return self.b(h) + h


class SigmoidBetween(Residual):
    def forward(self, x):
        return self.b(torch.sigmoid(self.d(self.a(x))))


class Flatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.d, self.b = nn.Conv2d(1, 2, 3), nn.Dropout(0.5), nn.Linear(72, 3)

    def forward(self, x):
        return self.b(torch.flatten(self.d(F.relu(self.c(x))), 1))


class Untraceable(Residual):
    def forward(self, x):
        h = self.d(self.a(x))
        if h.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return self.b(h)
        return h


class Channel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.d2, self.alpha, self.b = nn.Dropout2d(0.5), nn.AlphaDropout(0.2), nn.Linear(4, 4)

    def forward(self, x):
        return self.b(self.alpha(self.d2(x)))


class Functional(Residual):
    def forward(self, x):
        return self.b(F.dropout(self.a(x), 0.5, self.training))


def test_unproven_uses_are_skipped_with_reasons() -> None:
    _, skipped = _sites(Residual())
    assert "2 readers" in skipped["d"]
    _, skipped = _sites(SigmoidBetween())
    assert "sigmoid" in skipped["d"]  # sigmoid(0) != 0: gathering after it would change the result
    sites, _ = _sites(Flatten())
    assert sites["d"].kind == "consumer" and sites["d"].width == 72  # flatten between: consumer only
    _, skipped = _sites(Untraceable())
    assert "does not trace" in skipped["d"]
    _, skipped = _sites(Channel())
    assert "Dropout2d is not nn.Dropout" in skipped["d2"] and "AlphaDropout" in skipped["alpha"]
    sites, skipped = _sites(Functional())
    assert not sites and any("functional dropout" in r for r in skipped.values())


def test_explicit_sites_include_exclude() -> None:
    sites, _ = _sites(Untraceable(), sites=["d->b"])
    assert sites["d"].kind == "consumer" and sites["d"].consumer == "b"
    with pytest.raises(ValueError, match="must name an nn.Dropout and an nn.Linear"):
        find_sites(Untraceable(), sites=["a->b"])
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 4))
    sites, skipped = _sites(model, exclude=["3"])
    assert set(sites) == {"1"} and "exclude" in skipped["3"]
    sites, skipped = _sites(model, include=["3"])
    assert set(sites) == {"3"} and "include" in skipped["1"]


def test_lstm_sites() -> None:
    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.drop = nn.Embedding(30, 10), nn.Dropout(0.4)
            self.lstm = nn.LSTM(10, 12, 3, dropout=0.25, bidirectional=True)
            self.out_drop, self.dec = nn.Dropout(0.4), nn.Linear(24, 30)

        def forward(self, x):
            return self.dec(self.out_drop(self.lstm(self.drop(self.emb(x)))[0]))

    sites, _ = _sites(LM())
    assert {n: (s.kind, s.width, s.p) for n, s in sites.items()} == {
        "drop": ("lstm-input", 10, 0.4),
        "out_drop": ("consumer", 24, 0.4),
        "lstm.l1": ("lstm-inter", 24, 0.25),
        "lstm.l2": ("lstm-inter", 24, 0.25),
    }
