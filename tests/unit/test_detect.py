"""Site detection: what is proven (consumer, producer+consumer, LSTM) and what is skipped, with the reason."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_ard.layers import ARDDropout, ARDLinear
from lightning_ard.sites import SiteKind, find_sites


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
            "func",
            "functional dropout call F.dropout(p=0.5) in the forward of func (Functional): only nn.Dropout modules "
            "can be swapped; use an nn.Dropout module",
        ),
        ("channel.d2", f"Dropout2d {other}"),
        ("channel.alpha", f"AlphaDropout {other}"),
        ("lm.pdrop", "it does not feed the LSTM's input (or the LSTM has proj_size > 0)"),
        ("residual.d", "its output has 2 readers; ARD needs exactly one"),
        ("shared.unused", "it is never called: the forward of shared (Shared) does not call it"),
        ("func.d", "it is never called: the forward of func (Functional) does not call it"),
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


# ------------------------------------------------------------------ skip reasons: the true one, in words


class LSTMClassifier(nn.Module):
    """Packed sequences: its forward does not trace, so only the LSTM's inter-layer dropout is proven."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.drop_in = nn.Embedding(20, 8), nn.Dropout(0.3)
        self.lstm = nn.LSTM(8, 16, 2, dropout=0.2, batch_first=True)
        self.drop_out, self.fc = nn.Dropout(0.3), nn.Linear(16, 3)

    def forward(self, tokens, lengths):
        x = self.drop_in(self.emb(tokens))
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return self.fc(self.drop_out(h[-1]))


def test_untraceable_forward_reason_has_the_tracers_message() -> None:
    model = LSTMClassifier()
    with pytest.raises(Exception) as err:  # what torch.fx says about this forward
        torch.fx.symbolic_trace(model)
    message = f"{type(err.value).__name__}: {str(err.value).strip().splitlines()[0].strip()}"
    sites, skipped = _sites(model)
    assert set(sites) == {"lstm.l1"}
    for name in ("drop_in", "drop_out"):
        assert skipped[name] == (
            f"no traced forward reaches it: the model's forward does not trace ({message}); name the site "
            f"explicitly with sites=['{name}->consumer']"
        )
    assert model(torch.randint(0, 20, (2, 4)), torch.tensor([4, 2])).shape == (2, 3)  # the model still runs


class Mlp(nn.Module):
    """timm's Mlp: fc1 -> act -> drop1 -> norm (Identity) -> fc2 -> drop2."""

    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1, self.act, self.drop1 = nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(drop)
        self.norm, self.fc2, self.drop2 = nn.Identity(), nn.Linear(hidden, dim), nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class MixerBlock(nn.Module):
    """timm's MixerBlock: token mixing on the transposed input, channel mixing, residual additions."""

    def __init__(self, drop: float) -> None:
        super().__init__()
        self.norm1, self.mlp_tokens = nn.LayerNorm(8), Mlp(6, 12, drop)
        self.norm2, self.mlp_channels = nn.LayerNorm(8), Mlp(8, 16, drop)

    def forward(self, x):
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp_channels(self.norm2(x))


def test_zero_rate_dropouts_are_not_sites() -> None:
    sites, skipped = _sites(MixerBlock(0.0), p=0.5)
    zero = "p = 0: it drops nothing, so ARD has nothing to save; left as nn.Dropout"
    assert not sites
    assert skipped == {f"mlp_{m}.drop{i}": zero for m in ("tokens", "channels") for i in (1, 2)}
    sites, skipped = _sites(MixerBlock(0.1))
    assert {n: (s.kind, s.producer) for n, s in sites.items()} == {
        "mlp_tokens.drop1": ("producer+consumer", "mlp_tokens.fc1"),
        "mlp_channels.drop1": ("producer+consumer", "mlp_channels.fc1"),
    }
    assert skipped == {
        "mlp_tokens.drop2": "its output reaches Tensor.transpose() before any Linear",
        "mlp_channels.drop2": "its output reaches operator.add before any Linear",
    }
    zeroed = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.0), nn.Linear(4, 4))
    assert _sites(zeroed, sites=["1->2"]) == ({}, {"1": zero})  # not even when named


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = F.dropout(F.relu(self.fc1(x)), 0.5, self.training)
        return self.fc2(F.dropout(h, p=0.25, training=self.training))


class Pool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = Head()

    def forward(self, x):
        return self.head(torch.dropout(torch.flatten(x, 1), 0.1, self.training))


def test_functional_dropouts_are_named_by_the_module_calling_them() -> None:
    """Also when the top-level module has no forward (a LightningModule that only defines training_step)."""
    import lightning.pytorch as pl

    class LitCNN(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU())
            self.pool = Pool()

        def training_step(self, batch, batch_idx):
            return self.pool(self.features(batch)).sum()

    swap = "only nn.Dropout modules can be swapped; use an nn.Dropout module"
    report = find_sites(LitCNN())
    assert not report.sites
    assert [(s.name, s.reason) for s in report.skipped] == [
        ("pool", f"functional dropout call torch.dropout(p=0.1) in the forward of pool (Pool): {swap}"),
        (
            "pool.head",
            f"2 functional dropout calls F.dropout (p=0.5, p=0.25) in the forward of pool.head (Head): {swap}",
        ),
    ]
    report = find_sites(Head())
    assert [s.name for s in report.skipped] == ["(model)"]
    assert report.skipped[0].reason.startswith("2 functional dropout calls F.dropout (p=0.5, p=0.25) in the model's")


class Returns(Residual):
    def forward(self, x):
        return self.d(self.a(x))


class Never(Residual):
    def forward(self, x):
        return self.b(self.a(x))


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blk, self.b = Returns(), nn.Linear(8, 8)

    def forward(self, x):
        if x.sum() > 0:
            return self.b(self.blk(x))
        return x


class TorchLeaf(nn.Module):
    """Stands in for a torch.nn container no rule covers: fx keeps it a leaf, and its forward does not trace."""

    def __init__(self) -> None:
        super().__init__()
        self.d, self.b = nn.Dropout(0.5), nn.Linear(8, 8)

    def forward(self, x):
        return self.b(self.d(x)) if x.sum() > 0 else x


TorchLeaf.__module__ = "torch.nn.modules.stand_in"


class UsesTorchLeaf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.box, self.b = TorchLeaf(), nn.Linear(8, 8)

    def forward(self, x):
        return self.b(self.box(x))


def test_return_never_called_and_container_reasons() -> None:
    assert _sites(Returns())[1] == {"d": "its output is returned by the model's forward, not read by a Linear"}
    assert _sites(Outer())[1] == {
        "blk.d": "its output leaves blk (Returns), which is traced on its own, so what reads it is not known; name "
        "the site with sites=['blk.d->consumer'] if a Linear reads it"
    }
    assert _sites(Outer(), sites=["blk.d->b"])[0]["blk.d"].consumer == "b"
    assert _sites(Never())[1] == {"d": "it is never called: the model's forward does not call it"}
    assert _sites(UsesTorchLeaf())[1] == {
        "box.d": "it is inside box, a torch.nn container (TorchLeaf) that torch.fx keeps as a leaf; its forward does "
        "not trace (TraceError: symbolically traced variables cannot be used as inputs to control flow) and no site "
        "rule matches it: add one with register_site_rule, or name the site explicitly with "
        "sites=['box.d->consumer']"
    }


def test_no_reason_is_a_graph_dump() -> None:
    models = [Mixed(), LSTMClassifier(), MixerBlock(0.1), Pool(), Outer(), UsesTorchLeaf(), SigmoidBetween()]
    reasons = [s.reason for m in models for s in find_sites(m).skipped]
    assert reasons and not [r for r in reasons if "%" in r or "call_" in r or "return (" in r or "args =" in r]


def test_ard_layers_are_detected_as_the_modules_they_replace() -> None:
    """A converted model (a second fit without restore, a second controller, a retry) gives the same report."""
    from lightning_ard.controller import ARDController

    model, spec = Mixed(), ["untraced.d->untraced.b", "top_drop->inter"]
    before = find_sites(model, sites=spec)
    ctl = ARDController(model, pattern="row", groups=1, sites=spec).apply()
    assert type(model.mlp[3]) is ARDLinear and type(model.mlp[2]) is ARDDropout
    after = find_sites(model, sites=spec)
    assert after.sites == before.sites and after.skipped == before.skipped
    again = ARDController(model, pattern="row", groups=1, sites=spec).apply()
    assert [s.name for s in again.report.sites] == [s.name for s in ctl.report.sites]
    again.restore()
    assert type(model.mlp[3]) is nn.Linear and type(model.mlp[2]) is nn.Dropout


class CachesMask(Residual):
    """Its forward caches a tensor on the module: under tracing that would become a Proxy."""

    def __init__(self) -> None:
        super().__init__()
        self.mask, self.calls = torch.ones(8), 0

    def forward(self, x):
        self.mask, self.calls = x.new_ones(x.shape[-1]), self.calls + 1
        return self.b(self.d(self.a(x))) * self.mask


def test_detection_leaves_module_attributes_as_they_were() -> None:
    model = CachesMask()
    mask = model.mask
    assert set(_sites(model)[0]) == {"d"}
    assert model.mask is mask and model.calls == 0
    assert model(torch.randn(2, 8)).shape == (2, 8)


def test_functional_dropouts_inside_a_module_list_of_a_model_without_forward() -> None:
    model = nn.Module()  # no forward, as a LightningModule that only defines training_step
    model.heads = nn.ModuleList([Head(), nn.Sequential(nn.Linear(3, 3), nn.ReLU())])
    assert [s.name for s in find_sites(model).skipped] == ["heads.0"]


# ------------------------------------------------------------------------------ detection changes nothing


class LazyHead(Residual):
    """Its forward registers a buffer and a layer (for later steps) on first use, and caches its input."""

    def forward(self, x):
        if "seen" not in self._buffers:
            self.register_buffer("seen", torch.zeros(()))
            self.extra = nn.Linear(8, 8)
        self.last = x
        return self.b(self.d(self.a(x)))


def _state(model: nn.Module) -> list:
    """Everything detection could change: each module's class, mode, attributes, parameters, buffers and hooks."""
    modules = [
        (name, type(m), m.training, sorted(vars(m)), list(m._forward_hooks), list(m._forward_pre_hooks))
        for name, m in model.named_modules()
    ]
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return [modules, [(name, id(t), type(t), t.requires_grad) for name, t in tensors], [t.clone() for _, t in tensors]]


def _assert_same(before: list, after: list) -> None:
    assert after[:2] == before[:2]
    assert all(torch.equal(a, b) for a, b in zip(after[2], before[2], strict=True))


def _encoder() -> nn.Module:
    return nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16), 2, enable_nested_tensor=False)


@pytest.mark.parametrize("build", [Mixed, LazyHead, CachesMask, LSTMClassifier, lambda: MixerBlock(0.1), _encoder])
def test_detection_does_not_change_the_model(build) -> None:
    """Parameters (objects and values), buffers, module classes, training flags, attributes and hooks stay as
    they were, whatever the settings; a submodule in eval mode stays in eval mode."""
    torch.manual_seed(0)
    model = build()
    children = list(model.children())
    children[len(children) // 2].eval()
    before = _state(model)
    find_sites(model)
    _assert_same(before, _state(model))
    find_sites(model, p=0.2, include=["*"], exclude=["*.d"])
    _assert_same(before, _state(model))
    model.eval()
    before = _state(model)
    find_sites(model)
    _assert_same(before, _state(model))


def test_lazy_layers_a_forward_builds_while_traced_are_not_kept() -> None:
    model = LazyHead()
    assert set(_sites(model)[0]) == {"d"}
    assert "extra" not in model._modules and "seen" not in model._buffers and not hasattr(model, "last")


def test_each_report_is_new() -> None:
    """Changing a returned report (as the controller does, setting rates and kinds) does not reach the next one."""
    model = Mixed()
    first = find_sites(model)
    expected = [(s.name, s.kind, s.p, s.producer) for s in first.sites]
    for site in first.sites:
        site.p, site.producer, site.kind = 0.9, None, SiteKind.CONSUMER
    first.sites.clear()
    first.skipped.clear()
    second = find_sites(model)
    assert [(s.name, s.kind, s.p, s.producer) for s in second.sites] == expected and second.skipped
