"""Never slower and a measured speedup: fall-back at calibration, the interleaved timing
windows, and the last step's metrics at fit end."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_ard import ApproximateDropout, profiling, step_speedup
from lightning_ard.layers import ARDLinear
from tests.integration.test_callback import MLP, _data, _scalars, _trainer


def _fake_calibration(times: dict[str, tuple[float, float]]):
    def calibrate(linears, lstms, dropout_p=None, optimizers=()):
        assert set(linears) == set(times)
        return dict(times)

    return calibrate


def test_a_slower_site_falls_back_to_nn_dropout(tmp_path, monkeypatch) -> None:
    """net.5's layers are slower with ARD at calibration: it runs as nn.Dropout from step 2 on, net.2 keeps ARD."""
    monkeypatch.setattr(
        profiling, "calibrate", _fake_calibration({"net.0": (1, 0.5), "net.3": (1, 0.5), "net.6": (1, 2)})
    )
    pl.seed_everything(0)
    model = MLP()
    cb = ApproximateDropout(pattern="block", groups=1, verbose=False)
    with pytest.warns(UserWarning, match=r"site 'net.5' runs as nn.Dropout for the rest of the fit: ARD is not faster "
                      r"there \(measured 0.80x at this step's shapes; never_slower=False keeps it\)"):  # fmt: skip
        _trainer(tmp_path, cb, max_steps=4).fit(model, _data())
    assert cb.controller.fallen_back == {"net.5"}
    scalars = _scalars(tmp_path)
    assert scalars["ard/net.5/flops_saved"][1:] == [0.0] * 3 and scalars["ard/net.5/keep_fraction"][1:] == [1.0] * 3
    assert all(v > 0 for v in scalars["ard/net.2/flops_saved"])
    assert scalars["ard/net.2/speedup_measured"][-1] == pytest.approx(2.0)


def test_fall_back_serves_the_site_plainly() -> None:
    from lightning_ard.controller import ARDController

    model = MLP().net
    ctl = ARDController(model, pattern="block", groups=1).apply()
    assert ctl.fall_back(["net.5"]) == [] and ctl.fall_back(["5"]) == ["5"]
    ctl.step()
    assert model[6].ard_in_patterns is None and model[3].ard_out_patterns is None  # net.5's layers: plain
    assert model[3].ard_in_patterns is not None and not model[5].ard_enabled and model[2].ard_enabled
    model(torch.randn(4, 20))
    ctl.check_calls()  # the plain dropout is not counted
    ctl.restore()


def test_when_no_site_is_faster_the_plain_model_comes_back(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(profiling, "calibrate", _fake_calibration({"net.0": (1, 2), "net.3": (1, 2), "net.6": (1, 2)}))
    model = MLP()
    cb = ApproximateDropout(verbose=False)
    with pytest.warns(UserWarning, match="trains with its plain modules for the rest of the fit: no site is faster"):
        trainer = _trainer(tmp_path, cb, max_steps=4)
        trainer.fit(model, _data())
    assert not cb.active and [type(m) for m in model.net] == [nn.Linear, nn.ReLU, nn.Dropout] * 2 + [nn.Linear]
    assert trainer.global_step == 4 and float(trainer.callback_metrics["ard/flops_saved"]) == 0.0


class _FakeClock:
    """perf_counter for the callback: a step's forward advances it by 10 ms with plain layers, 4 ms with ARD."""

    def __init__(self) -> None:
        self.now = 0.0
        self.ard: list[bool] = []

    def __call__(self) -> float:
        return self.now

    def forward_hook(self, module, args, output) -> None:
        if isinstance(output, torch.fx.Proxy):  # site detection traces the model: not a step
            return
        ard = any(isinstance(m, ARDLinear) and m.ard_in_patterns is not None for m in module.modules())
        self.ard.append(ard)
        self.now += 0.004 if ard else 0.010


def test_step_speedup_is_measured_from_plain_and_ard_steps(tmp_path, monkeypatch) -> None:
    """Steps START.. alternate plain (no pattern on any layer) and ARD; the logged medians are the window's step
    times (a fake clock: 10 ms plain, 4 ms ARD) and their ratio is ard/step_speedup."""
    from lightning_ard import speed_guard

    clock = _FakeClock()
    monkeypatch.setattr(speed_guard, "clock", clock)
    pl.seed_everything(0)
    model = MLP()
    model.net.register_forward_hook(clock.forward_hook)
    cb = ApproximateDropout(pattern="block", groups=1, never_slower=False, measure_every=0, verbose=False)
    steps = step_speedup.START + 2 * step_speedup.STEPS + 2
    data = _data(n=16 * steps)
    _trainer(tmp_path, cb, max_steps=steps).fit(model, data)
    window = range(step_speedup.START, step_speedup.START + 2 * step_speedup.STEPS)
    assert [clock.ard[i] for i in window] == [False, True] * step_speedup.STEPS
    assert all(clock.ard[i] for i in range(steps) if i not in window)
    scalars = _scalars(tmp_path)
    assert scalars["ard/step_ms_plain"][-1] == pytest.approx(10.0)
    assert scalars["ard/step_ms_ard"][-1] == pytest.approx(4.0)
    assert scalars["ard/step_speedup"][-1] == pytest.approx(2.5)
    assert len(scalars["ard/flops_saved"]) == steps - step_speedup.STEPS  # plain steps log no ARD figures


def test_a_slower_measured_step_gives_the_plain_model_back(tmp_path, monkeypatch) -> None:
    """never_slower: when the window's ARD steps are not faster than the plain ones, ARD stops for the fit."""
    from lightning_ard import speed_guard

    clock = _FakeClock()
    clock.forward_hook = lambda module, args, output: setattr(clock, "now", clock.now + 0.005)  # equal steps
    monkeypatch.setattr(speed_guard, "clock", clock)
    model = MLP()
    model.net.register_forward_hook(clock.forward_hook)
    cb = ApproximateDropout(pattern="block", groups=1, measure_every=0, verbose=False)
    monkeypatch.setattr(
        profiling, "calibrate", _fake_calibration({"net.0": (1, 0.5), "net.3": (1, 0.5), "net.6": (1, 0.5)})
    )
    steps = step_speedup.START + 2 * step_speedup.STEPS + 3
    with pytest.warns(
        UserWarning, match=r"plain modules for the rest of the fit: the measured step is not faster \(1.00x\)"
    ):
        trainer = _trainer(tmp_path, cb, max_steps=steps)
        trainer.fit(model, _data(n=16 * steps))
    assert not cb.active and type(model.net[3]) is nn.Linear and trainer.global_step == steps
    assert float(trainer.callback_metrics["ard/step_speedup"]) == pytest.approx(1.0)


def test_measure_every_is_validated() -> None:
    with pytest.raises(ValueError, match=r"every must be an integer >= 11, got 4"):
        ApproximateDropout(measure_every=4)


def test_short_fit_ends_with_the_last_steps_metrics(tmp_path) -> None:
    """A 6-step fit logging every 50 steps still ends with step 6's values in callback_metrics and the logger."""
    pl.seed_everything(0)
    cb = ApproximateDropout(pattern="random", groups=1, measure_speedup=False, verbose=False)
    trainer = _trainer(tmp_path, cb, max_steps=6, log_every_n_steps=50)
    trainer.fit(MLP(), _data())
    last = cb.controller.keep_fraction("net.2")
    assert float(trainer.callback_metrics["ard/net.2/keep_fraction"]) == pytest.approx(last)
    scalars = _scalars(tmp_path)
    assert len(scalars["ard/net.2/keep_fraction"]) == 2  # step 1 (the first) and step 6 (fit end)
    assert scalars["ard/net.2/keep_fraction"][-1] == pytest.approx(last)
    assert scalars["ard/tflops_saved_total"][-1] == pytest.approx(cb.tflops_saved_total)


def test_auto_backend_takes_the_measured_fastest_per_layer(tmp_path, monkeypatch) -> None:
    """backend='auto' with several candidates (as on CUDA): after the first step each layer uses the backend the
    measurement picked (here a fake timer makes 'gathered' faster), and the choice is logged in cb.backends."""
    from lightning_ard.kernels import select

    monkeypatch.setattr(select, "candidate_backends", lambda device: ("torch", "gathered"))
    seconds = {"torch": 2e-3, "gathered": 1e-3}
    chosen: dict[str, str] = {}

    class Spy(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == 1:
                chosen.update({n: m.ard_backend_name for n, m in pl_module.named_modules() if isinstance(m, ARDLinear)})

    original = select.fastest_layer_backend

    def with_fake_timer(layer, timer, candidates=None):
        names = iter(["torch", "gathered"])
        return original(layer, lambda fn, device: (fn(), seconds[next(names)])[1], ("torch", "gathered"))

    monkeypatch.setattr(select, "fastest_layer_backend", with_fake_timer)
    cb = ApproximateDropout(pattern="block", groups=1, measure_speedup=False, verbose=False)
    _trainer(tmp_path, None, max_steps=3, callbacks=[cb, Spy()]).fit(MLP(), _data())
    assert cb.backends == {"net.0": "gathered", "net.3": "gathered", "net.6": "gathered"}
    assert chosen == {"net.0": "gathered", "net.3": "gathered", "net.6": "gathered"}
