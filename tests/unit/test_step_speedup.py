"""The timing windows of the measured step speedup: schedule, medians per window, argument checks."""

from __future__ import annotations

import pytest

from lightning_ard.step_speedup import ARD, PLAIN, StepSpeedMeter


def test_windows_repeat_every_n_steps_and_alternate() -> None:
    meter = StepSpeedMeter(start=3, every=10, steps=2)
    modes = [meter.mode(i) for i in range(25)]
    window = [PLAIN, ARD, PLAIN, ARD]
    assert modes[:3] == [None] * 3 and modes[3:7] == window and modes[7:13] == [None] * 6
    assert modes[13:17] == window and modes[23:25] == window[:2]


def test_a_window_reports_the_medians_of_its_own_steps() -> None:
    meter = StepSpeedMeter(start=0, every=0, steps=3)
    with pytest.raises(RuntimeError, match="no timing window has completed yet"):
        meter.result()
    done = [meter.record(mode, ms) for mode, ms in zip([PLAIN, ARD] * 3, [10, 5, 30, 4, 12, 6], strict=True)]
    assert done == [False] * 5 + [True] and meter.result() == (12, 5)
    assert meter.mode(6) is None  # every=0: one window only


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"start": -1}, "start must be an integer >= 0, got -1"), ({"steps": 0}, "steps must be an integer >= 1, got 0"),
     ({"every": 5, "steps": 5}, "every must be an integer >= 11, got 5")],
)  # fmt: skip
def test_bad_arguments_name_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StepSpeedMeter(**kwargs)
