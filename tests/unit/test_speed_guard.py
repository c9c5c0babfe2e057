"""SpeedGuard in a plain PyTorch loop: the callback's never-slower policy as recorded plan changes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_ard import ARDController, profiling, speed_guard
from lightning_ard.plan import Schedule
from lightning_ard.speed_guard import SpeedGuard


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(64, 5))  # fmt: skip


@pytest.fixture
def fake(monkeypatch):
    """Calibration: '6' (the last Linear) is slower with ARD; windows: reference steps 1 ms, ARD steps ``ard`` ms."""
    state = {"now": 0.0, "ard": 0.5}
    monkeypatch.setattr(
        profiling, "calibrate", lambda lin, lstm, rates=None, opts=(): {p: (1.0, 2.0 if p == "6" else 0.5) for p in lin}
    )
    stop = SpeedGuard.stop

    def timed_stop(self) -> None:
        if self.mode is not None and self._ms is None:
            state["now"] += (1.0 if self.mode == "plain" else state["ard"]) / 1e3
        stop(self)

    monkeypatch.setattr(speed_guard, "clock", lambda: state["now"])
    monkeypatch.setattr(SpeedGuard, "stop", timed_stop)
    return state


def _guarded(
    seed: int = 0, momentum: float = 0.0
) -> tuple[nn.Module, torch.optim.Optimizer, ARDController, SpeedGuard]:
    """A model, its optimizer, an applied controller (2 groups) and a guard with one window at steps 2-5."""
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    ctl = ARDController(model, groups=2, seed=seed).apply()
    return model, opt, ctl, SpeedGuard(ctl, [opt], schedule=Schedule(start=2, every=0, steps=2), notify=lambda _: None)


def _train(model, guard, opt, steps: int, g: torch.Generator | None = None) -> list[str | None]:
    """``steps`` training steps on batches of 16 from ``g`` (a fresh stream by default)."""
    g = g if g is not None else torch.Generator().manual_seed(0)
    modes = []
    for _ in range(steps):
        x, y = torch.randn(16, 20, generator=g), torch.randint(0, 5, (16,), generator=g)
        with guard.step(len(x)) as mode:
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        modes.append(mode)
    return modes


def test_the_guard_records_its_decisions_as_plans(fake) -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctl = ARDController(model, groups=2).apply()
    lines: list[str] = []
    guard = SpeedGuard(ctl, [opt], schedule=Schedule(start=2, every=0, steps=2), notify=lines.append)
    fake["ard"] = 0.5
    modes = _train(model, guard, opt, 8)
    assert modes == [None, None, "plain", "ard", "plain", "ard", None, None]
    assert [s for s, _ in guard.record.plans] == [0, 1]  # the first batch, then the calibration
    assert guard.plan.fallen_back == {"5": "ARD is not faster there (measured 0.80x at the first step's shapes)"}
    assert ctl.active and guard.step_ms == (1.0, 0.5)
    assert lines == ["ApproximateDropout: site '5' runs as nn.Dropout for the rest of the fit: ARD is not faster there "
                     "(measured 0.80x at this step's shapes; never_slower=False keeps it)"]  # fmt: skip


def test_a_window_that_is_not_faster_gives_the_plain_model_back(fake) -> None:
    model, opt, ctl, guard = _guarded()
    fake["ard"] = 1.5
    _train(model, guard, opt, 6)
    assert guard.plan.plain == "the measured step is not faster (0.67x)" and not ctl.active
    assert [s for s, _ in guard.record.plans] == [0, 1, 6]
    assert all(type(m) in (nn.Linear, nn.ReLU, nn.Dropout) for m in model)  # the plain modules are back


def test_a_guard_restored_from_its_state_continues_the_same_steps(fake) -> None:
    fake["ard"] = 0.5
    runs = []
    for split in (None, 3):
        model, opt, ctl, guard = _guarded(seed=3, momentum=0.9)
        if split is None:
            _train(model, guard, opt, 8)
        else:
            _train(model, guard, opt, split)
            state, ctl_state = guard.state_dict(), ctl.state_dict()
            ctl2 = ARDController(model, plan=guard.plan, seed=3)
            ctl.restore()
            ctl2.apply().load_state_dict(ctl_state)
            guard = SpeedGuard(ctl2, [opt], notify=lambda line: None)
            guard.load_state_dict(state)
            assert guard.step_index == split and guard.meter.plain_ms == [1.0]
            g = torch.Generator().manual_seed(0)
            for _ in range(split):  # the same data stream as the uninterrupted run
                torch.randn(16, 20, generator=g), torch.randint(0, 5, (16,), generator=g)
            modes = _train(model, guard, opt, 8 - split, g)
            assert modes == ["ard", "plain", "ard", None, None]
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_a_replayed_record_decides_nothing(fake) -> None:
    model, opt, ctl, guard = _guarded()
    fake["ard"] = 1.5
    _train(model, guard, opt, 7)
    record = guard.record
    model2 = _mlp()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1)
    ctl2 = ARDController(model2, plan=record.at(0)).apply()
    replay = SpeedGuard(ctl2, [opt2], record=record, replay=True, notify=lambda line: pytest.fail(line))
    fake["ard"] = 0.1  # would be faster now: a replay does not measure its way to another plan
    _train(model2, replay, opt2, 7)
    assert replay.record is record and replay.plan.plain is not None and not ctl2.active
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters(), strict=True))


def test_a_guard_keeps_the_callbacks_windows_unless_told_not_to() -> None:
    ctl = ARDController(_mlp(), groups=2).apply()
    assert SpeedGuard(ctl).record.schedule == Schedule(start=10, every=500, steps=5)
    assert SpeedGuard(ctl, schedule=None).record.schedule is None


def test_windows_start_after_the_step_the_calibration_measures() -> None:
    ctl = ARDController(_mlp(), groups=2).apply()
    with pytest.raises(ValueError, match=r"the timing windows must start at step 1 or later .*got start=0"):
        SpeedGuard(ctl, schedule=Schedule(start=0, every=0, steps=2))


class _SharedDropout(nn.Module):
    """One nn.Dropout applied twice, before two Linears (as Lightning's demo LSTM LM applies ``self.drop``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.drop, self.a, self.b, self.out = nn.Dropout(0.5), nn.Linear(20, 64), nn.Linear(20, 64), nn.Linear(128, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([self.a(self.drop(x)), self.b(self.drop(x))], dim=1))


@pytest.mark.parametrize(("b_ard_ms", "kept"), [(0.5, True), (0.9, False)])
def test_a_shared_dropout_module_is_judged_on_all_its_uses(monkeypatch, b_ard_ms: float, kept: bool) -> None:
    """'a' alone is slower with ARD (0.80x); the module stays ARD when its two uses together are faster."""
    times = {"a": (1.0, 1.25), "b": (1.0, b_ard_ms)}
    monkeypatch.setattr(profiling, "calibrate", lambda lin, lstm, rates=None, opts=(): {p: times[p] for p in lin})
    model = _SharedDropout()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctl = ARDController(model, groups=2).apply()
    assert sorted(sp.name for sp in ctl.plan.served) == ["drop->a", "drop->b"]
    lines: list[str] = []
    guard = SpeedGuard(ctl, [opt], schedule=Schedule(start=2, every=0, steps=2), notify=lines.append)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        x, y = torch.randn(16, 20, generator=g), torch.randint(0, 5, (16,), generator=g)
        with guard.step(len(x)):
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
    assert guard.speedups == pytest.approx({"drop->a": 0.8, "drop->b": 1.0 / b_ard_ms})
    if kept:
        assert guard.plan.fallen_back == {} and lines == []
    else:
        together = 2.0 / (1.25 + b_ard_ms)
        assert guard.plan.fallen_back["drop->a"] == (
            f"ARD is not faster there (measured 0.80x, {together:.2f}x with the other uses of its dropout module "
            "at the first step's shapes)"
        )
        assert len(lines) == 3 and "measured 1.11x, 0.93x with the other uses" in lines[1]
        assert "no site is faster with ARD" in lines[2]


def test_the_first_step_measurements_leave_the_training_generator_as_it_was(monkeypatch) -> None:
    """Calibration times copies of the layers on random inputs with nn.Dropout and element-wise masks (an LSTM under
    the defaults): the global generator after the first step is the one a fit without measurement has."""
    from lightning_ard.app.models.lstm_lm import LSTMLanguageModel

    states = []
    for measured in (False, True):
        torch.manual_seed(0)
        model = LSTMLanguageModel(vocab_size=50, embed_dim=16, hidden_size=16)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ctl = ARDController(model, p=0.5, seed=0).apply()
        assert any(sp.element_p for sp in ctl.plan.sites)
        schedule = Schedule(start=5, every=0, steps=2) if measured else None
        guard = SpeedGuard(ctl, [opt], schedule=schedule, notify=lambda _: None)
        x = torch.randint(0, 50, (4, 6), generator=torch.Generator().manual_seed(1))
        with guard.step(len(x)):
            model(x)[0].sum().backward()
            opt.step()
        assert (guard.speedups != {}) == measured  # calibration ran only in the measured fit
        states.append(torch.get_rng_state())
    assert torch.equal(states[0], states[1])
