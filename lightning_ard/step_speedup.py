"""The user's own step speedup, measured: short interleaved windows of plain (nn.Dropout) and ARD steps in the fit.

nn.Dropout steps are valid training steps (the plain modules, random masks), so the callback can time the real step
both ways without a side experiment: from step ``start`` on, and again every ``every`` steps, ``steps`` plain steps
alternate with ``steps`` ARD steps, each timed (device synchronized) from batch start to batch end (forward,
backward, optimizer). ``median plain / median ARD`` over a window is ``ard/step_speedup``. Training stays
statistically the same: those steps use nn.Dropout's masks instead of a pattern, with the same rate.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from lightning_ard._validate import check_positive_int
from lightning_ard.plan import ARD, PLAIN, Schedule  # noqa: F401 - ARD and PLAIN are the modes mode() returns

START = 10
"""Step of the fit at which the first window starts: after warm-up and the one-off calibration of step 1."""
STEPS = 5
"""Timed steps per mode in a window."""
EVERY = 500
"""Steps between two windows by default (``measure_every``)."""


@dataclass
class StepSpeedMeter:
    """Schedules the timed windows and keeps their step times.

    Args:
        start: the first window starts at this step (0-based batch count of the fit): after warm-up.
        every: a window starts every ``every`` steps after ``start`` (0: only one window).
        steps: timed steps per mode in a window (plain and ARD alternate, so a window is ``2 * steps`` steps).
    """

    start: int = START
    every: int = EVERY
    steps: int = STEPS
    plain_ms: list[float] = field(default_factory=list, init=False)
    ard_ms: list[float] = field(default_factory=list, init=False)
    _last: tuple[float, float] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_positive_int("start", self.start, minimum=0)
        check_positive_int("steps", self.steps)
        if self.every != 0:
            check_positive_int("every", self.every, minimum=2 * self.steps + 1)

    def mode(self, step: int) -> str | None:
        """``"plain"`` or ``"ard"`` when step ``step`` is timed (in a window), None otherwise (an untimed ARD step)."""
        return self.schedule.mode(step)

    @property
    def schedule(self) -> Schedule:
        """The windows' schedule, as a plan record stores it."""
        return Schedule(self.start, self.every, self.steps)

    def record(self, mode: str, ms: float) -> bool:
        """Add one timed step; True when it completes a window (then :meth:`result` has that window's figures)."""
        (self.plain_ms if mode == PLAIN else self.ard_ms).append(ms)
        if len(self.ard_ms) < self.steps or len(self.plain_ms) < self.steps:
            return False
        self._last = (statistics.median(self.plain_ms), statistics.median(self.ard_ms))
        self.plain_ms, self.ard_ms = [], []
        return True

    def result(self) -> tuple[float, float]:
        """(median plain step, median ARD step) in ms of the last completed window."""
        if self._last is None:
            raise RuntimeError("no timing window has completed yet")
        return self._last
