"""SpeedGuard: the never-slower policy and the measured step speedup, as plan changes that a fit records.

One object serves the Lightning callback, a plain PyTorch loop over an :class:`~lightning_ard.ARDController`, and
``ard-bench --never-slower``. Around every training step it applies the plan in force (from its
:class:`~lightning_ard.plan.PlanRecord`), draws the step's patterns or runs a reference step of the plain model,
and times the steps of the record's windows. Its decisions are new plans, recorded with the step from which they
hold:

* after the first step: the group counts bounded by the rows the step had; with ``backend="auto"`` each layer's
  measured fastest backend; with ``never_slower``, the sites whose layers are not faster with ARD fall back;
* at the end of a timing window whose ARD steps are not faster than the plain ones: the plain model.

Replaying a record (``replay=True``) applies its plans at their steps and runs its reference steps, deciding
nothing: a replayed or resumed fit trains exactly as the recorded one. Reference steps use ``nn.Dropout``'s masks
from the global generator, whose state the callback keeps in its checkpoints.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

import torch

from lightning_ard import profiling
from lightning_ard.controller import ARDController
from lightning_ard.plan import PLAIN, ARDPlan, PlanRecord, Schedule
from lightning_ard.planning import bound_groups, bound_lstm_batch
from lightning_ard.step_speedup import EVERY, START, STEPS, StepSpeedMeter

T = TypeVar("T")

DEFAULT_SCHEDULE = Schedule(START, EVERY, STEPS)
"""The callback's timing windows: from step 10, every 500 steps, 5 reference and 5 ARD steps."""

clock: Callable[[], float] = time.perf_counter
"""The step clock (seconds); tests replace it to make verdicts reproducible."""


def _same(value: T) -> T:
    return value


class SpeedGuard:
    """Applies, measures and records the plan of one controller, step by step.

    Args:
        controller: the applied controller whose model trains.
        optimizers: the optimizers of the model (calibration times their share of each layer's step).
        never_slower: send sites that are not faster back to nn.Dropout, and give the plain model back when a
            timing window's ARD steps are not faster.
        schedule: the timing windows (default: the callback's; ``None``: no reference step, no window, no
            calibration, so nothing falls back).
        record: a record to continue (a resumed fit) or to replay; ``None`` starts one from the controller's plan.
        replay: apply ``record`` as it is and decide nothing.
        broadcast: makes every rank take rank 0's decision (the callback passes the strategy's broadcast).
        notify: receives one line per decision (default: ``warnings.warn``).
    """

    def __init__(
        self,
        controller: ARDController,
        optimizers: Sequence[torch.optim.Optimizer] = (),
        *,
        never_slower: bool = True,
        schedule: Schedule | None = DEFAULT_SCHEDULE,
        record: PlanRecord | None = None,
        replay: bool = False,
        broadcast: Callable[[Any], Any] = _same,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        if schedule is not None and record is None and schedule.start < 1:
            raise ValueError(
                f"the timing windows must start at step 1 or later (the first step is the ARD step that the "
                f"calibration measures), got start={schedule.start}"
            )
        self.controller, self.optimizers = controller, list(optimizers)
        self.never_slower, self.replay = never_slower, replay
        self.record = record if record is not None else PlanRecord([], schedule)
        self.meter = StepSpeedMeter(*_schedule_args(self.record.schedule))
        self.broadcast = broadcast
        self.notify = notify if notify is not None else (lambda line: warnings.warn(line, stacklevel=3))
        self.step_index = 0  # training steps so far (across resumes: restored by load_state_dict)
        self.speedups: dict[str, float] = {}  # site -> measured dense / ARD time of its layers (calibration)
        self.step_ms: tuple[float, float] | None = None  # (plain, ARD) medians of the last window
        self.gave_up: str | None = None
        self._mode: str | None = None
        self._start = 0.0
        self._ms: float | None = None

    @property
    def plan(self) -> ARDPlan:
        """The plan in force now."""
        return self.record.at(self.step_index) if self.record.plans else self.controller.plan

    @property
    def mode(self) -> str | None:
        """This step's timing mode: ``"plain"`` (a reference step), ``"ard"`` (a timed ARD step) or None."""
        return self._mode

    # ------------------------------------------------------------------ around a step
    @contextmanager
    def step(self, samples: int | None = None) -> Iterator[str | None]:
        """One training step: ``with guard.step(len(x)): loss.backward(); opt.step()``; yields the timing mode."""
        self.begin(samples)
        yield self._mode
        self.end()

    def begin(self, samples: int | None = None) -> None:
        """Before a step: the plan in force, then this step's patterns, or the plain model for a reference step."""
        ctl = self.controller
        if not self.record.plans:
            plan = ctl.plan if ctl.plan.samples is not None or samples is None else bound_groups(ctl.plan, samples)
            self.record.add(0, plan)
        plan = self.record.at(self.step_index)
        if plan is not ctl.plan:  # plans are frozen: a decision is a new object
            ctl.use(plan)
        self._mode = self.record.mode(self.step_index) if ctl.active else None
        if self._mode == PLAIN:
            ctl.plain_step()
        elif ctl.active:
            ctl.step()
        if self._mode is not None:
            profiling.synchronize(_device(ctl))
        self._start = clock()

    def stop(self) -> None:
        """Stop the step's clock (the callback's accounting after it is not timed); :meth:`end` calls it too."""
        if self._mode is not None and self._ms is None:
            profiling.synchronize(_device(self.controller))
            self._ms = (clock() - self._start) * 1e3

    def end(self) -> None:
        """After a step: time it when in a window; after the first step and at the end of a window, decide."""
        self.stop()
        ctl, step, ms = self.controller, self.step_index, self._ms
        self.step_index += 1
        self._ms = None
        if self._mode is not None and self.meter.record(self._mode, ms):  # type: ignore[arg-type]
            self.step_ms = self.meter.result()
            self._window_verdict()
        if step == 0 and ctl.active and not self.replay:
            self._first_step_decisions()

    # ------------------------------------------------------------------ decisions
    def _decide(self, plan: ARDPlan) -> None:
        """Record ``plan`` from the next step on and switch to it now."""
        self.record.add(self.step_index, plan)
        self.controller.use(plan)

    def _first_step_decisions(self) -> None:
        """Group counts bounded by the first step's rows; the measured backends; never slower per site."""
        ctl = self.controller
        plan = bound_groups(ctl.plan, ctl.plan.samples, ctl.step_rows())
        lowered = {sp.name: (sp.requested_groups, sp.groups) for sp in plan.sites if sp.requested_groups}
        if lowered:
            listed = ", ".join(f"{n}: {want} -> {got}" for n, (want, got) in lowered.items())
            self.notify(f"ApproximateDropout: more pattern groups than the step has rows cannot differ from one group "
                        f"per row; lowered ({listed})")  # fmt: skip
        plan = self._bound_lstm_batch(plan)
        if not plan.served:  # nothing left to time: the plain model trains
            self._gave_up(plan.give_up("every site runs as nn.Dropout (the reasons above)"), hint="")
            return
        with self._generators_untouched():  # timing draws inputs and masks: never from the training streams
            if ctl.config.backend == "auto":
                plan = plan.with_backends(self._measured_backends())
            if self.record.schedule is not None:
                plan = self._calibrate(plan)
        self._decide(plan)
        if not plan.served and plan.plain is None:
            self._gave_up(plan.give_up("no site is faster with ARD"))

    def _bound_lstm_batch(self, plan: ARDPlan) -> ARDPlan:
        """The automatic LSTM setting off (nn.Dropout, said once per site) where an LSTM's batch is above the
        batch the LSTM study measured it at (rank 0's batches decide for all ranks)."""
        bounded = bound_lstm_batch(plan, self.broadcast(self.controller.lstm_batches()))
        for name in [n for n in bounded.fallen_back if n not in plan.fallen_back]:
            self.notify(f"ApproximateDropout: site {name!r} runs as nn.Dropout for the rest of the fit: "
                        f"{bounded.fallen_back[name]}")  # fmt: skip
        return bounded

    def _generators_untouched(self) -> AbstractContextManager[Any]:
        """Torch's CPU generator and those of the CUDA devices the model uses, restored on exit: the random inputs,
        nn.Dropout masks and element-wise masks that timing draws leave the fit's masks as they would be without
        measurement."""
        model = self.controller.model
        cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
        return torch.random.fork_rng(devices=cuda)

    def _measured_backends(self) -> dict[str, str]:
        """Each ARD Linear's fastest candidate backend at this step's shapes (nothing timed with one candidate)."""
        from lightning_ard.kernels.select import candidate_backends, fastest_layer_backend

        linears = self.controller.surgery.linears  # type: ignore[union-attr]
        if all(len(candidate_backends(lin.weight.device)) < 2 for lin in linears.values()):
            return {}
        choices = {path: fastest_layer_backend(lin, profiling.median_time) for path, lin in linears.items()}
        names = self.broadcast({path: c.name for path, c in choices.items()})
        for path in names:
            self.notify(f"ApproximateDropout: {path} uses backend {choices[path].describe()}")
        return dict(names)

    def _calibrate(self, plan: ARDPlan) -> ARDPlan:
        """Time every ARD layer's share of a step dense vs ARD; with ``never_slower`` the sites that are not faster
        fall back (rank 0 decides for all ranks)."""
        ctl = self.controller
        surgery = ctl.surgery
        rates = {sp.site.consumer: sp.site.p for sp in plan.served}
        times = profiling.calibrate(surgery.linears, surgery.lstms, rates, self.optimizers)  # type: ignore[union-attr]
        served = [sp.site for sp in plan.served]
        self.speedups = profiling.site_speedups(times, served)
        if not self.never_slower:
            return plan
        together = profiling.module_speedups(times, served)  # a shared dropout module is judged on all its uses
        slower = self.broadcast([name for name, x in together.items() if not x > 1.0])
        reasons = {
            n: f"ARD is not faster there ({self._measured(n, together)} at the first step's shapes)" for n in slower
        }
        new = plan.fall_back(slower, reasons)
        for name in sorted(set(new.fallen_back) - set(plan.fallen_back), key=[sp.name for sp in plan.sites].index):
            why = self._measured(name, together) if name in together else "shares its dropout with a slower site"
            self.notify(
                f"ApproximateDropout: site {name!r} runs as nn.Dropout for the rest of the fit: ARD is not faster "
                f"there ({why} at this step's shapes; never_slower=False keeps it)"
            )
        return new

    def _measured(self, name: str, together: dict[str, float]) -> str:
        """The measured speedup of a site, and of all the uses of its dropout module when they differ."""
        own = self.speedups[name]
        if abs(together[name] - own) < 1e-9:
            return f"measured {own:.2f}x"
        return f"measured {own:.2f}x, {together[name]:.2f}x with the other uses of its dropout module"

    def _window_verdict(self) -> None:
        """At the end of a window: with ``never_slower``, the plain model when its ARD steps are not faster."""
        plain, ard = self.step_ms  # type: ignore[misc]
        if self.replay or not self.broadcast(self.never_slower and not ard < plain):
            return
        self._gave_up(self.plan.give_up(f"the measured step is not faster ({plain / ard:.2f}x)"))

    def _gave_up(self, plan: ARDPlan, hint: str = " (never_slower=False keeps ARD)") -> None:
        self._decide(plan)
        self.gave_up = plan.plain
        self.notify(
            f"ApproximateDropout: the model trains with its plain modules for the rest of the fit: {plan.plain}{hint}"
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The record, the step count and the open window's times: what a resumed fit continues from."""
        return {
            "record": self.record.to_dict(),
            "step": self.step_index,
            "window": (list(self.meter.plain_ms), list(self.meter.ard_ms)),
            "speedups": dict(self.speedups),
            "step_ms": self.step_ms,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.record = PlanRecord.from_dict(state["record"])
        self.meter = StepSpeedMeter(*_schedule_args(self.record.schedule))
        self.meter.plain_ms, self.meter.ard_ms = (list(t) for t in state["window"])
        self.step_index = int(state["step"])
        self.speedups = dict(state["speedups"])
        self.step_ms = tuple(state["step_ms"]) if state["step_ms"] is not None else None  # type: ignore[assignment]
        self.gave_up = self.record.at(self.step_index).plain


def _schedule_args(schedule: Schedule | None) -> tuple[int, int, int]:
    return (schedule.start, schedule.every, schedule.steps) if schedule is not None else (0, 0, 1)


def _device(ctl: ARDController) -> torch.device:
    param = next(ctl.model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
