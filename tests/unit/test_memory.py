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
