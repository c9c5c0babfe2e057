"""Site detection: what is proven (consumer, producer+consumer, LSTM) and what is skipped, with the reason."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_ard.layers import ARDDropout, ARDLinear
from lightning_ard.sites import Site, SiteKind, Surgery, find_sites


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


class Shared(nn.Module):
    """A producer called twice (consumer only), a consumer called twice (skipped), a dropout used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.sh, self.fc4, self.fc5 = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.fa, self.fb, self.fr = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.d3, self.d4, self.d5, self.unused = nn.Dropout(0.1), nn.Dropout(0.2), nn.Dropout(0.3), nn.Dropout(0.4)

    def forward(self, x):
        h = self.fc4(self.d3(F.relu(self.sh(x)))) + self.sh(x)
        h = self.fc5(self.d4(h)) + self.fc5(x)
        return self.fa(self.d5(h)) + self.fb(self.d5(self.fr(x)))


class SelfLoop(Residual):
    def forward(self, x):
        return self.a(self.d(self.a(x)))


class LanguageModel(nn.Module):
    """LSTM input and inter-layer sites, a consumer after the LSTM, and a projected LSTM (not supported)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.drop = nn.Embedding(30, 10), nn.Dropout(0.4)
        self.lstm = nn.LSTM(10, 12, 3, dropout=0.25, bidirectional=True)
        self.out_drop, self.dec = nn.Dropout(0.4), nn.Linear(24, 30)
        self.pdrop, self.proj = nn.Dropout(0.2), nn.LSTM(24, 12, 2, dropout=0.3, proj_size=6)

    def forward(self, x):
        h = self.lstm(self.drop(self.emb(x)))[0]
        return self.dec(self.out_drop(h)), self.proj(self.pdrop(h))


class Mixed(nn.Module):
    """Every site kind and every skip reason; its own forward does not trace, so each child is traced alone."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(8, 16),
            nn.GELU(),
            nn.Dropout(0.5),
            nn.Linear(16, 16),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(16, 4),
        )
        self.conv, self.shared, self.lm = Flatten(), Shared(), LanguageModel()
        self.residual, self.channel, self.func = Residual(), Channel(), Functional()
        self.untraced, self.loop, self.top_drop = Untraceable(), SelfLoop(), nn.Dropout(0.1)
        self.inter = nn.LSTM(4, 4, 2, dropout=0.1)

    def forward(self, x):
        if x.sum() > 0:
            return x
        return x


UNTRACED = "no traced forward reaches it (the model's forward does not trace); name the site explicitly with "


def test_mixed_model_report_is_unchanged() -> None:
    """The exact report (sites in order, skipped reasons in order) of a model mixing every case."""
    report = find_sites(Mixed(), sites=["untraced.d->untraced.b", "top_drop->inter"])
    assert [(s.name, s.kind, s.width, s.producer, s.consumer) for s in report.sites] == [
        ("mlp.2", "producer+consumer", 16, "mlp.0", "mlp.3"),
        ("mlp.5", "producer+consumer", 16, "mlp.3", "mlp.6"),
        ("conv.d", "consumer", 72, None, "conv.b"),
        ("shared.d3", "consumer", 8, None, "shared.fc4"),  # its producer shared.sh is called twice
        ("shared.d5->shared.fa", "consumer", 8, None, "shared.fa"),
        ("shared.d5->shared.fb", "producer+consumer", 8, "shared.fr", "shared.fb"),
        ("lm.drop", "lstm-input", 10, None, "lm.lstm"),
        ("lm.out_drop", "consumer", 24, None, "lm.dec"),
        ("untraced.d", "consumer", 8, None, "untraced.b"),
        ("top_drop", "lstm-input", 4, None, "inter"),
        ("lm.lstm.l1", "lstm-inter", 24, None, "lm.lstm"),
        ("lm.lstm.l2", "lstm-inter", 24, None, "lm.lstm"),
        ("inter.l1", "lstm-inter", 4, None, "inter"),
    ]
    assert all(type(s.kind) is SiteKind for s in report.sites)
    assert [(s.p, s.consumer_layer) for s in report.sites if s.kind == "lstm-inter"] == [(0.25, 1), (0.25, 2), (0.1, 1)]
    other = "is not nn.Dropout (another semantics, or a subclass that may override forward); left as it is"
    assert [(s.name, s.reason) for s in report.skipped] == [
        (
            "func.dropout",
            "functional dropout call (F.dropout): only nn.Dropout modules can be swapped; use an nn.Dropout module",
        ),
        ("channel.d2", f"Dropout2d {other}"),
        ("channel.alpha", f"AlphaDropout {other}"),
        ("lm.pdrop", "it does not feed the LSTM's input (or the LSTM has proj_size > 0)"),
        ("residual.d", "its output has 2 readers; ARD needs exactly one"),
        ("shared.unused", UNTRACED + "sites=['dropout->consumer']"),
        ("func.d", UNTRACED + "sites=['dropout->consumer']"),
        ("shared.d4", "its consumer shared.fc5 is called 2 times per forward"),
        ("loop.d", "its consumer loop.a is called 2 times per forward"),
        ("lm.proj", "nn.LSTM with proj_size > 0 is not supported"),
    ]


def test_mixed_model_filters_and_errors() -> None:
    report = find_sites(Mixed(), include=["mlp.*", "lm.*", "shared.*"], exclude=["lm.lstm.l2", "shared.d5->shared.fb"])
    assert [s.name for s in report.sites] == ["mlp.2", "mlp.5", "shared.d3", "lm.drop", "lm.out_drop", "lm.lstm.l1"]
    assert [(s.name, s.reason) for s in report.skipped[-5:]] == [
        ("conv.d", "not matched by include=['mlp.*', 'lm.*', 'shared.*']"),
        ("shared.d5->shared.fb", "matched by exclude=['lm.lstm.l2', 'shared.d5->shared.fb']"),
        ("lm.lstm.l2", "matched by exclude=['lm.lstm.l2', 'shared.d5->shared.fb']"),
        ("inter.l1", "not matched by include=['mlp.*', 'lm.*', 'shared.*']"),
        ("shared.d5->shared.fa", "another use of shared.d5 is excluded"),
    ]
    sites, _ = _sites(Mixed(), sites=["mlp.2->mlp.3"])  # an explicit pair replaces the proven site
    assert (sites["mlp.2"].kind, sites["mlp.2"].producer) == ("consumer", None)
    with pytest.raises(ValueError, match="consumer mlp.6 is fed by several sites"):
        find_sites(Mixed(), sites=["untraced.d->mlp.6"])
    with pytest.raises(ValueError, match="sites entry 'untraced.d->untraced.zz': Untraceable has no attribute `zz`"):
        find_sites(Mixed(), sites=["untraced.d->untraced.zz"])


def test_surgery_swaps_and_restores_in_place() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 4))
    weight = model[2].weight
    surgery = Surgery(model, find_sites(model).sites).apply()
    assert type(model[0]) is ARDLinear and type(model[2]) is ARDLinear and type(model[1]) is ARDDropout
    assert model[2].weight is weight and surgery.dropout_uses == {"1": 1}
    surgery.restore()
    assert [type(m) for m in model] == [nn.Linear, nn.Dropout, nn.Linear] and not surgery.linears
