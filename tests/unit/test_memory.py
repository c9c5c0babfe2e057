"""The peak memory of a step: the CPU reader (torch.profiler's memory events) against allocations known by hand."""

import pytest
import torch
from torch import nn

from lightning_ard import memory

MIB = memory.MIB


def test_known_allocations_give_their_peak_exactly() -> None:
    """4 MiB and 8 MiB held together, the 4 MiB freed, then 2 MiB: the peak is 12 MiB, whatever is freed later."""

    def step() -> None:
        a = torch.empty(MIB)  # 4 MiB of float32
        b = torch.empty(2 * MIB)  # 8 MiB
        del a
        c = torch.empty(MIB // 2)  # 2 MiB
        del b, c

    assert memory.peak_bytes(step, "cpu") == 12 * MIB
    assert memory.peak_mib(step, torch.device("cpu")) == pytest.approx(12.0)


def test_linear_forward_backward_matches_the_hand_count() -> None:
    """Linear(I, O) on a (B, I) input without grad, backward of ones: output B·O, its gradient B·O, the weight's
    gradient O·I and the bias's O float32 values are alive together at the end of the step."""
    b, i, o = 512, 300, 700
    lin, x = nn.Linear(i, o), torch.randn(b, i)

    def step() -> None:
        y = lin(x)
        y.backward(torch.ones_like(y))

    expected = (2 * b * o + o * i + o) * 4
    for _ in range(2):  # the same figure on a repeat (gradients set to None before each)
        lin.zero_grad(set_to_none=True)
        assert memory.peak_bytes(step, "cpu") == pytest.approx(expected, rel=0.01)


def test_refuses_to_run_inside_another_profiler() -> None:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
        with pytest.raises(RuntimeError, match="a profiler is already running; measure outside it"):
            memory.peak_bytes(lambda: torch.empty(4), "cpu")


def test_step_peak_is_none_where_the_device_keeps_no_statistics() -> None:
    """The per-step reader of the callback measures on CUDA only; on the CPU it reports nothing."""
    peak = memory.StepPeak()
    peak.begin(torch.device("cpu"))
    torch.empty(MIB)
    assert peak.end() is None and not memory.StepPeak.supported(torch.device("cpu"))


def test_callback_logs_the_step_peak_of_ard_and_reference_steps(tmp_path, monkeypatch) -> None:
    """With a device that reports a step's peak (here a fake reader: 3 MiB for ARD steps, 5 MiB for reference steps
    of the plain model), every logged ARD step carries ``ard/step_peak_mib`` and every reference step of the timing
    window (steps 10-19: 5 of them) ``ard/step_peak_mib_plain``; on the CPU's own reader neither is logged."""
    import lightning.pytorch as pl

    from lightning_ard import ApproximateDropout
    from tests.integration.test_callback import MLP, _data, _scalars, _trainer

    pl.seed_everything(0)
    plain_fit = ApproximateDropout(measure_speedup=False)
    _trainer(tmp_path / "cpu", plain_fit, max_steps=2).fit(MLP(), _data())
    assert not any("step_peak" in tag for tag in _scalars(tmp_path / "cpu"))

    cb = ApproximateDropout(measure_speedup=True, never_slower=False)
    begun: list[torch.device] = []
    monkeypatch.setattr(memory.StepPeak, "begin", lambda self, device: begun.append(device))
    monkeypatch.setattr(memory.StepPeak, "end", lambda self: (5 if cb.guard.mode == "plain" else 3) * MIB)
    _trainer(tmp_path, cb, max_steps=20).fit(MLP(), _data())
    scalars = _scalars(tmp_path)
    assert len(begun) == 20 and begun[0] == torch.device("cpu")
    assert scalars["ard/step_peak_mib"] == [3.0] * 15
    assert scalars["ard/step_peak_mib_plain"] == [5.0] * 5
