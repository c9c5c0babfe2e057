"""The ApproximateDropout callback in real Lightning fits: sites, swap/restore, logging, resume, precision."""

import dataclasses
import glob

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.data import DataLoader, TensorDataset

from lightning_ard import ApproximateDropout
from lightning_ard.callback import batch_samples
from lightning_ard.layers import ARDLinear


class MLP(pl.LightningModule):
    def __init__(self, widths=(20, 64, 64, 5), p=0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(len(widths) - 2):
            layers += [nn.Linear(widths[i], widths[i + 1]), nn.ReLU(), nn.Dropout(p)]
        layers.append(nn.Linear(widths[-2], widths[-1]))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Functional(MLP):
    """Functional forward and one Dropout module used at two places."""

    def __init__(self) -> None:
        pl.LightningModule.__init__(self)
        self.a, self.b, self.c = nn.Linear(20, 32), nn.Linear(32, 32), nn.Linear(32, 5)
        self.drop = nn.Dropout(0.4)

    def forward(self, x):
        h = self.drop(F.relu(self.a(x)))
        h = self.drop(torch.tanh(self.b(h)))
        return self.c(F.relu(h))


class NoSites(MLP):
    def __init__(self) -> None:
        pl.LightningModule.__init__(self)
        self.net = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 5))


class LSTMLM(pl.LightningModule):
    """Zaremba-style: embedding dropout, nn.LSTM(dropout), dropout before the decoder."""

    def __init__(self, vocab=50, hidden=24, p=0.5) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, hidden)
        self.drop = nn.Dropout(p)
        self.lstm = nn.LSTM(hidden, hidden, 2, dropout=p, batch_first=True)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, x):
        out, _ = self.lstm(self.drop(self.emb(x)))
        return self.decoder(self.drop(out))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x).flatten(0, 1), y.flatten())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _data(n=64, batch=16):
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(n, 20, generator=g), torch.randint(0, 5, (n,), generator=g))
    return DataLoader(ds, batch_size=batch)


def _lm_data():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50, (32, 9), generator=g)
    return DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=8)


def _trainer(tmp_path, cb, **kw):
    args = dict(
        max_steps=4,
        logger=TensorBoardLogger(str(tmp_path), name="tb"),
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        limit_val_batches=0,
        callbacks=[cb] if cb else [],
    )
    args.update(kw)
    return pl.Trainer(**args)


def _scalars(tmp_path):
    files = glob.glob(str(tmp_path / "tb" / "**" / "events.out.tfevents.*"), recursive=True)
    acc = EventAccumulator(files[0])
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_mlp_fit_logs_and_restores(tmp_path) -> None:
    pl.seed_everything(0)
    model = MLP()
    params = [id(p) for p in model.parameters()]
    keys = list(model.state_dict())
    cb = ApproximateDropout(pattern="row", measure_speedup=True, never_slower=False)  # tiny layers: slower
    _trainer(tmp_path, cb).fit(model, _data())
    assert [type(m) for m in model.net] == [nn.Linear, nn.ReLU, nn.Dropout] * 2 + [nn.Linear]
    assert [id(p) for p in model.parameters()] == params and list(model.state_dict()) == keys
    sites = [s.name for s in cb.controller.report.sites]
    assert sites == ["net.2", "net.5"]
    assert [s.kind for s in cb.controller.report.sites] == ["producer+consumer"] * 2
    scalars = _scalars(tmp_path)
    for site in sites:
        keep = scalars[f"ard/{site}/keep_fraction"]
        assert len(keep) == 4 and all(0 < k <= 1 for k in keep)
        assert all(0 <= v < 1 for v in scalars[f"ard/{site}/flops_saved"])
        assert all(v > 0 for v in scalars[f"ard/{site}/speedup_measured"])
    assert all(0 < v < 1 for v in scalars["ard/flops_saved"])
    total = scalars["ard/tflops_saved_total"]
    assert total == sorted(total) and total[-1] > 0
    assert "ard/speedup_estimate" not in scalars  # the estimate did not predict real steps: a measurement replaced it


def test_flop_accounting_matches_flop_counter(tmp_path) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from lightning_ard.controller import ARDController

    torch.manual_seed(0)
    model = MLP().net
    x, y = torch.randn(16, 20), torch.randint(0, 5, (16,))
    with FlopCounterMode(display=False) as dense_count:
        F.cross_entropy(model(x), y).backward()
    ctl = ARDController(model, pattern="row").apply()
    ctl.step()
    with FlopCounterMode(display=False) as ard_count:
        F.cross_entropy(model(x), y).backward()
    layer = ctl.layer_flops()
    assert sum(d for d, _ in layer.values()) == dense_count.get_total_flops()
    assert sum(e for _, e in layer.values()) == ard_count.get_total_flops()
    assert ard_count.get_total_flops() < dense_count.get_total_flops()
    ctl.restore()


def test_functional_forward_and_reused_dropout(tmp_path) -> None:
    pl.seed_everything(0)
    model = Functional()
    cb = ApproximateDropout(measure_speedup=False)
    _trainer(tmp_path, cb).fit(model, _data())
    sites = {s.name: s for s in cb.controller.report.sites}
    assert set(sites) == {"drop->b", "drop->c"}
    assert sites["drop->b"].producer == "a" and sites["drop->c"].producer == "b"
    assert type(model.drop) is nn.Dropout and type(model.a) is nn.Linear
    assert "ard/drop->b/keep_fraction" in _scalars(tmp_path)


def test_lstm_language_model_sites_and_training(tmp_path) -> None:
    pl.seed_everything(0)
    model = LSTMLM()
    before = model.lstm.weight_ih_l1.detach().clone()
    cb = ApproximateDropout(pattern="row", groups=1, measure_speedup=True, never_slower=False)
    _trainer(tmp_path, cb).fit(model, _lm_data())
    kinds = {s.name: s.kind for s in cb.controller.report.sites}
    assert kinds == {"drop->lstm": "lstm-input", "drop->decoder": "consumer", "lstm.l1": "lstm-inter"}
    assert type(model.lstm) is nn.LSTM
    assert not torch.equal(before, model.lstm.weight_ih_l1)
    scalars = _scalars(tmp_path)
    assert 0 < scalars["ard/flops_saved"][-1] < 1
    assert "ard/lstm.l1/speedup_measured" in scalars


def test_auto_groups_serve_lstm_sites_up_to_the_studied_rate(tmp_path) -> None:
    """Defaults: the sites that feed the LSTM take one random pattern per step dropping 0.6 of p, element-wise
    dropout the rest (the fit runs with them and gives nn.LSTM back); above p = 0.5 they stay nn.Dropout, with the
    reason, and so does the decoder's site when it shares their dropout module; lstm_groups=N serves them in time
    chunks, the decoder with the safe Linear groups."""
    pl.seed_everything(0)
    model = LSTMLM()  # one nn.Dropout module before the LSTM and before the decoder
    cb = ApproximateDropout(measure_speedup=False)
    _trainer(tmp_path, cb).fit(model, _lm_data())
    plan = cb.controller.plan
    assert {sp.name: (sp.family, sp.groups) for sp in plan.sites} == {
        "drop->lstm": ("random", 1), "drop->decoder": ("block", 4), "lstm.l1": ("random", 1)
    }  # fmt: skip
    assert plan.site("lstm.l1").element_p == pytest.approx(2 / 7)
    assert type(model.lstm) is nn.LSTM  # restored at fit end
    high = ApproximateDropout(p=0.7, measure_speedup=False)
    with pytest.warns(UserWarning, match="found no dropout site"):
        _trainer(tmp_path / "b", high).fit(model, _lm_data())
    skipped = {s.name: s.reason for s in high.controller.report.skipped}
    assert "set lstm_groups=N to serve them" in skipped["lstm.l1"] and "lstm_groups" in skipped["drop->lstm"]
    assert skipped["drop->decoder"] == "another use of drop stays nn.Dropout (an LSTM site)"
    served = ApproximateDropout(lstm_groups=2, measure_speedup=False)
    _trainer(tmp_path / "c", served).fit(model, _lm_data())
    ctl = served.controller
    assert {s.name for s in ctl.report.sites} == {"drop->lstm", "drop->decoder", "lstm.l1"}
    assert ctl.site_groups("drop->lstm") == ctl.site_groups("lstm.l1") == 2
    assert ctl.site_groups("drop->decoder") == ctl.linear_groups == 4
    assert type(model.lstm) is nn.LSTM


def test_auto_lstm_setting_above_the_studied_batch_runs_as_nn_dropout(tmp_path) -> None:
    """A batch above the one the LSTM study measured: ARD serves the first step, then the LSTM sites and the decoder
    site sharing their dropout module run as nn.Dropout, said once each, recorded in the plan record."""
    from lightning_ard.lstm_policy import AUTO_LSTM_MAX_BATCH, auto_lstm_batch_reason

    pl.seed_everything(0)
    batch = AUTO_LSTM_MAX_BATCH + 8
    tokens = torch.randint(0, 50, (batch, 9), generator=torch.Generator().manual_seed(0))
    data = DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=batch)
    cb = ApproximateDropout(measure_speedup=False)
    with pytest.warns(UserWarning, match="runs as nn.Dropout for the rest of the fit") as caught:
        _trainer(tmp_path, cb, max_steps=3).fit(LSTMLM(), data)
    why = auto_lstm_batch_reason("lstm", batch)
    assert [sp.name for sp in cb.record.at(0).served] == ["drop->lstm", "drop->decoder", "lstm.l1"]
    later = cb.record.at(1)
    assert later.served == () and later.fallen_back["drop->lstm"] == later.fallen_back["lstm.l1"] == why
    assert "shares its dropout drop" in later.fallen_back["drop->decoder"]
    said = [str(w.message) for w in caught if "ApproximateDropout: site " in str(w.message)]
    assert len(said) == 3 and any(why in m for m in said)
    assert cb.guard.gave_up == "every site runs as nn.Dropout (the reasons above)" and later.plain == cb.guard.gave_up
    spelled = ApproximateDropout(measure_speedup=False, lstm_groups=1, lstm_pattern="random", lstm_pattern_share=0.6)
    _trainer(tmp_path / "spelled", spelled, max_steps=2).fit(LSTMLM(), data)
    assert spelled.record.at(1).fallen_back == {}


def test_no_sites_warns_and_trains_unchanged(tmp_path) -> None:
    pl.seed_everything(0)
    plain = NoSites()
    _trainer(tmp_path / "a", None).fit(plain, _data())
    pl.seed_everything(0)
    model = NoSites()
    with pytest.warns(UserWarning, match="ApproximateDropout found no dropout site"):
        _trainer(tmp_path / "b", ApproximateDropout()).fit(model, _data())
    for a, b in zip(plain.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("groups", "batch"), [(1, 16), (5, 16), ("auto", 600)])
def test_resume_reproduces_uninterrupted_fit(tmp_path, groups, batch) -> None:
    """Same parameters after a resume; with groups="auto" on batches of 600 (7 groups, from the batch) too."""

    def fit(epochs, ckpt=None, save=None):
        pl.seed_everything(0)
        model = MLP()
        cb = ApproximateDropout(seed=3, measure_speedup=False, groups=groups)
        trainer = _trainer(tmp_path, cb, max_steps=-1, max_epochs=epochs, logger=False)
        trainer.fit(model, _data(n=4 * batch, batch=batch), ckpt_path=ckpt)
        assert cb.controller.site_groups("net.2") == (groups if groups != "auto" else 7)
        if save:
            trainer.save_checkpoint(save)
        return model

    # stop at an epoch boundary so that Lightning replays the same data order too
    full = fit(2)
    fit(1, save=tmp_path / "half.ckpt")
    resumed = fit(2, ckpt=str(tmp_path / "half.ckpt"))
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_batch_samples_is_the_first_tensors_first_dimension() -> None:
    """What groups="auto" follows: Lightning's batch-size walk (collections, dataclasses), packed sequences by their
    sequences; None without a tensor."""

    @dataclasses.dataclass
    class Batch:
        name: str
        ids: torch.Tensor

    x, y = torch.zeros(7, 3), torch.zeros(5)
    assert batch_samples(x) == 7 and batch_samples((x, y)) == 7 and batch_samples([y, x]) == 5
    assert batch_samples({"meta": "a", "inputs": {"ids": torch.zeros(3, 9, dtype=torch.long)}, "y": x}) == 3
    assert batch_samples(Batch("b", torch.zeros(6, 2))) == 6
    assert batch_samples(None) is None and batch_samples(("a", 1)) is None
    packed = pack_padded_sequence(torch.zeros(4, 6, 3), torch.tensor([6, 5, 2, 1]), batch_first=True)
    assert batch_samples((packed, y)) == 4  # its sequences, not its 14 tokens


def test_auto_groups_follow_the_first_batch(tmp_path, caplog) -> None:
    """groups="auto" at batch 1024 draws 8 groups per Linear site from the first step on (4 in the site table),
    says so once, and counts them in the benchmark label; a fixed count stays as set."""
    pl.seed_everything(0)
    cb = ApproximateDropout(measure_speedup=False)
    with caplog.at_level("INFO"):
        _trainer(tmp_path, cb, max_steps=2).fit(MLP(), _data(n=2048, batch=1024))
    ctl = cb.controller
    assert ctl.samples == 1024 and ctl.linear_groups == 8
    assert {s.name: ctl.site_groups(s.name) for s in ctl.report.sites} == {"net.2": 8, "net.5": 8}
    assert all(len(ctl.patterns[name]) == 8 for name in ("net.2", "net.5"))  # the last step's draws
    assert "groups='auto' follows the batch of 1024 samples: pattern groups per step net.2: 8, net.5: 8" in caplog.text
    fixed = ApproximateDropout(groups=4, measure_speedup=False)
    _trainer(tmp_path / "b", fixed, max_steps=1).fit(MLP(), _data(n=1024, batch=1024))
    assert fixed.controller.linear_groups == 4 and len(fixed.controller.patterns["net.2"]) == 4


def test_metrics_reach_callback_metrics_without_a_logger(tmp_path) -> None:
    pl.seed_everything(0)
    cb = ApproximateDropout(measure_speedup=True, never_slower=False)
    trainer = _trainer(tmp_path, cb, logger=False)
    trainer.fit(MLP(), _data())
    metrics = trainer.callback_metrics
    assert 0 < float(metrics["ard/flops_saved"]) < 1 and float(metrics["ard/tflops_saved_total"]) > 0
    assert 0 < float(metrics["ard/net.2/keep_fraction"]) <= 1 and float(metrics["ard/net.2/speedup_measured"]) > 0


def test_gradient_accumulation_and_bf16(tmp_path) -> None:
    pl.seed_everything(0)
    model = MLP()
    cb = ApproximateDropout(measure_speedup=False)
    trainer = _trainer(tmp_path, cb, max_steps=2, accumulate_grad_batches=2, precision="bf16-mixed")
    trainer.fit(model, _data())
    assert cb.controller.sampler.steps == 4  # a new pattern per micro-batch


def test_validation_runs_dense_model(tmp_path) -> None:
    class Check(MLP):
        def validation_step(self, batch, batch_idx):
            x, _ = batch
            assert isinstance(self.net[0], ARDLinear) and not self.training
            self.net.eval()
            plain = x
            for m in self.net:
                plain = F.linear(plain, m.weight, m.bias) if isinstance(m, nn.Linear) else m(plain)
            torch.testing.assert_close(self(x), plain)

    pl.seed_everything(0)
    _trainer(tmp_path, ApproximateDropout(measure_speedup=False), limit_val_batches=1, val_check_interval=2).fit(
        Check(), _data(), _data()
    )


def test_keep_ard_layers_and_restore_on_exception(tmp_path) -> None:
    model = MLP()
    _trainer(tmp_path, ApproximateDropout(restore_on_fit_end=False, measure_speedup=False)).fit(model, _data())
    assert isinstance(model.net[0], ARDLinear) and model.net[0].ard_in_patterns is None
    model.train()
    assert model(torch.randn(3, 20)).shape == (3, 5)

    class Boom(MLP):
        def training_step(self, batch, batch_idx):
            if batch_idx == 1:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    boom = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        _trainer(tmp_path, ApproximateDropout(measure_speedup=False)).fit(boom, _data())
    assert type(boom.net[0]) is nn.Linear and type(boom.net[2]) is nn.Dropout


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(pattern="diagonal"), r"pattern must be one of \['row', 'block', 'random', 'tile'\], got 'diagonal'"),
        (dict(p=1.2), r"p must be in \[0, 1\), got 1.2"),
        (dict(backend="cuda"), "backend must be one of"),
        (dict(seed="x"), r"seed must be an integer in \[0, 2\*\*63 - 2\*\*40 - 1\] or None, got 'x'"),
        (dict(seed=2**70), r"seed must be an integer in .* or None, got 1180591620717411303424"),
        (dict(patern="row"), r"unknown ApproximateDropout arguments \['patern'\]"),
        (dict(include="net.*"), "include must be a list of strings"),
        (dict(search={"dp_maxx": 3}), r"unknown search settings \['dp_maxx'\]"),
        (dict(tile=(0, 4)), "tile must be a pair of positive integers"),
        (dict(groups=0), r"groups must be an integer in \[1, 1048576\] or 'auto', got 0"),
        (dict(groups=2.5), r"groups must be an integer in \[1, 1048576\] or 'auto', got 2.5"),
        (dict(groups=10**9), r"groups must be an integer in \[1, 1048576\] or 'auto', got 1000000000"),
    ],
)
def test_bad_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        ApproximateDropout(**kwargs)


def test_unreachable_rate_names_site(tmp_path) -> None:
    cb = ApproximateDropout(pattern="row", p=0.9, search={"dp_max": 2}, measure_speedup=False)
    model = MLP()
    with pytest.raises(ValueError, match="site 'net.2'"):
        _trainer(tmp_path, cb).fit(model, _data())
    assert [type(m) for m in model.net] == [type(m) for m in MLP().net]  # nothing was converted


def test_layers_built_in_configure_model(tmp_path) -> None:
    class Lazy(MLP):
        def __init__(self) -> None:
            pl.LightningModule.__init__(self)
            self.net = None

        def configure_model(self) -> None:
            if self.net is None:
                self.net = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 5))

    cb = ApproximateDropout(measure_speedup=False)
    model = Lazy()
    _trainer(tmp_path, cb).fit(model, _data())
    assert [s.name for s in cb.controller.report.sites] == ["net.2"]
    assert cb.controller.sampler.steps == 4


def test_tile_family_keeps_producer_dense(tmp_path) -> None:
    pl.seed_everything(0)
    model = MLP(widths=(20, 64, 64, 5))
    cb = ApproximateDropout(pattern="tile", tile=(16, 16), measure_speedup=False)
    _trainer(tmp_path, cb).fit(model, _data())
    assert {s.kind for s in cb.controller.report.sites} == {"consumer"}
    assert all(s.producer is None for s in cb.controller.report.sites)
    scalars = _scalars(tmp_path)
    assert all(0 < v < 1 for v in scalars["ard/net.2/flops_saved"])


def test_config_and_controller_arguments() -> None:
    from lightning_ard import ARDConfig, ARDController

    cfg = ARDConfig(pattern="block", p=0.3, include=["net.2"], tile=[8, 8])
    assert cfg.include == ("net.2",) and cfg.tile == (8, 8)
    with pytest.raises(ValueError, match="pass either config or keyword settings"):
        ARDController(nn.Linear(2, 2), cfg, pattern="row")
    with pytest.raises(ValueError, match="seed must be an integer"):
        ARDController(nn.Linear(2, 2), cfg, seed="1")
    assert ARDController(nn.Linear(2, 2), cfg).seed == 0  # config.seed None -> 0
    assert ARDController(nn.Linear(2, 2), ARDConfig(seed=5)).seed == 5
    assert ARDController(nn.Linear(2, 2), ARDConfig(seed=5), seed=9).seed == 9  # the callback's rank-offset seed
    ctl = ARDController(MLP(), cfg).apply()
    assert [s.p for s in ctl.report.sites] == [0.3]
    ctl.restore()


def test_expected_site_saving_in_site_table() -> None:
    from lightning_ard import ARDController

    cb = ApproximateDropout()
    cb.controller = ARDController(MLP(), seed=0).apply()
    site = cb.controller.report.sites[0]
    # net.2 touches net.0 (20x64, outputs kept 1/2) and net.3 (64x64, inputs and outputs kept 1/2 each)
    want = 1 - (20 * 64 * 0.5 + 64 * 64 * 0.25) / (20 * 64 + 64 * 64)
    assert cb.controller.expected_site_saving(site) == pytest.approx(want, abs=1e-9)
    assert f"{want:.1%}" in cb.site_table()
    cb.controller.restore()


def test_groups_fit_mlp_and_lstm(tmp_path) -> None:
    """groups=4: each step draws 4 patterns per site, logs their mean keep fraction, and the FLOPs still equal
    FlopCounterMode; the LSTM LM trains with per-time-chunk patterns (resume: see the resume test)."""
    from torch.utils.flop_counter import FlopCounterMode

    pl.seed_everything(0)
    model = MLP()
    cb = ApproximateDropout(groups=4, measure_speedup=True, never_slower=False)
    _trainer(tmp_path / "mlp", cb).fit(model, _data())
    pats = cb.controller.patterns
    assert all(isinstance(v, tuple) and len(v) == 4 for v in pats.values())
    assert cb.controller.sampler.steps == 4
    files = glob.glob(str(tmp_path / "mlp" / "tb" / "**" / "events.out.tfevents.*"), recursive=True)
    acc = EventAccumulator(files[0])
    acc.Reload()
    last_keep = acc.Scalars("ard/net.2/keep_fraction")[-1].value
    assert last_keep == pytest.approx(sum(p.keep_fraction for p in pats["net.2"]) / 4, rel=1e-6)
    assert acc.Scalars("ard/net.2/speedup_measured")[-1].value > 0

    ctl_model = MLP().net
    from lightning_ard.controller import ARDController

    ctl = ARDController(ctl_model, pattern="block", groups=3).apply()
    ctl.step()
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(ctl_model(torch.randn(16, 20)), torch.randint(0, 5, (16,))).backward()
    assert sum(e for _, e in ctl.layer_flops().values()) == counter.get_total_flops()
    ctl.restore()

    pl.seed_everything(0)
    lm = LSTMLM()
    lcb = ApproximateDropout(groups=3, measure_speedup=True)
    _trainer(tmp_path / "lm", lcb).fit(lm, _lm_data())
    assert type(lm.lstm) is nn.LSTM
    assert len(lcb.controller.patterns["lstm.l1"]) == 3
