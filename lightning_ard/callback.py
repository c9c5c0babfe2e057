"""The ApproximateDropout callback: one line in a Trainer turns a model's dropout sites into ARD.

Hooks, one job each; the decisions are an :class:`~lightning_ard.plan.ARDPlan` (the controller executes it, the
:class:`~lightning_ard.speed_guard.SpeedGuard` measures and records new plans):

* ``on_fit_start``: check a resumed checkpoint's settings, build the plan (or take the checkpoint's record, or the
  one given to replay), swap the modules in place, print the site table (a view of the plan). Swapping here (not
  in ``setup``) sees layers built in ``configure_model`` and runs after a checkpoint restore; it is safe for the
  optimizer and DDP because the swap changes the class of the same module objects, which keep the same Parameter
  objects (DDP's reducer and the optimizer hold those).
* ``on_train_batch_start``: the plan in force, then this step's patterns (every micro-batch under gradient
  accumulation), or a reference step of the plain model in a timing window.
* ``on_train_batch_end``: check every swapped dropout ran as often as it has sites, account FLOPs, let the guard
  decide (first step: group bound, backends, calibration; end of a window: never slower), log ``ard/…``, and
  write the plan record to the log directory when it changed.
* ``on_fit_end`` / ``on_exception``: log the last step's figures, give back the original modules.
* on CUDA, the peak memory of every step above its start (:class:`~lightning_ard.memory.StepPeak`), logged as
  ``ard/step_peak_mib`` on logged ARD steps and ``ard/step_peak_mib_plain`` on a window's reference steps. Not on
  the CPU: its reader is a profiler around the step, which would slow the steps a window times and clash with a
  user's own profiler.
* ``state_dict`` / ``load_state_dict``: the plan record, the step count, the open window, the pattern generator,
  the global generator (reference steps and nn.Dropout sites draw from it) and the settings, so that a resumed fit
  trains exactly as the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.data import _extract_batch_size
from torch.nn.utils.rnn import PackedSequence
from typing_extensions import override

from lightning_ard import accounting, memory, step_speedup
from lightning_ard.config import ARDConfig
from lightning_ard.controller import ARDController
from lightning_ard.patterns.groups import AUTO_BATCH
from lightning_ard.plan import PLAIN, ARDPlan, PlanRecord, Schedule
from lightning_ard.plan_table import plan_table
from lightning_ard.planning import config_of
from lightning_ard.speed_guard import SpeedGuard

RANK_SEED_STRIDE = 1_000_003
"""Seed offset per global rank, so that DDP ranks draw different patterns."""
PLAN_FILE = "ard_plan.json"
"""Name of the plan record the callback writes to the run's log directory."""


def batch_samples(batch: Any) -> int | None:
    """Samples in a training batch, as Lightning infers a batch size (the first dimension of the first tensor,
    depth first through collections and dataclasses), except that a ``PackedSequence`` counts its sequences, not
    its tokens; ``None`` when the batch holds no tensor."""
    sized = apply_to_collection(batch, PackedSequence, lambda p: p.batch_sizes.new_empty(int(p.batch_sizes[0])))
    return next((n for n in _extract_batch_size(sized) if n is not None), None)


def _rng_state() -> dict[str, Any]:
    """The global generators' states (CPU, and CUDA when it is in use)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _load_record(plan: ARDPlan | PlanRecord | str | os.PathLike[str]) -> PlanRecord:
    """A record to replay: a saved file, a record, or one plan in force from the first step."""
    if isinstance(plan, PlanRecord):
        return plan
    if isinstance(plan, ARDPlan):
        return PlanRecord([(0, plan)] if plan.samples is not None else [], None)
    if isinstance(plan, (str, os.PathLike)):
        if not Path(plan).is_file():
            raise ValueError(f"plan must be an ARDPlan, a PlanRecord or the path of a saved plan file, got {plan!r} "
                             "(no such file)")  # fmt: skip
        return PlanRecord.load(plan)
    raise ValueError(f"plan must be an ARDPlan, a PlanRecord or the path of a saved plan file, got {plan!r}")


class ApproximateDropout(pl.Callback):
    """Replace the model's dropout with Approximate Random Dropout during ``fit``.

    Args:
        config: the ARD settings (:class:`~lightning_ard.ARDConfig`); or pass its fields as keyword arguments
            (``ApproximateDropout(pattern="block", p=0.5, groups=4)``), not both.
        plan: replay a plan instead of deciding: the path of a plan file a fit wrote (``ard_plan.json`` in its log
            directory), a :class:`~lightning_ard.plan.PlanRecord` or an :class:`~lightning_ard.plan.ARDPlan`. The fit
            then serves exactly what the plan says, from the steps it says, with the same reference steps, and
            measures nothing unless ``measure_speedup=True`` (which then only logs). Not with settings.
        measure_speedup: measure speed in the fit: after the first step, time every site's layers dense vs ARD at
            the real shapes (logged as ``ard/<site>/speedup_measured``), and time the real step both ways in short
            windows of interleaved reference (nn.Dropout) and ARD steps (logged as ``ard/step_speedup``,
            ``ard/step_ms_plain``, ``ard/step_ms_ard``). Default: True, False when replaying a plan.
        never_slower: after that calibration, a site whose layers are not faster with ARD goes back to nn.Dropout
            for the rest of the fit, and a window whose ARD steps are not faster gives the plain model back, each
            with one line saying so (needs ``measure_speedup``).
        measure_every: steps between two timing windows (the first starts at step
            :data:`~lightning_ard.step_speedup.START`); 0 for one window only.
        restore_on_fit_end: give the plain modules back at fit end (False keeps ARD layers, patterns cleared).
        verbose: print the site table at fit start.
        allow_settings_change: resuming from a checkpoint saved with other ARD settings (``p``, ``pattern``,
            ``groups``, ``seed``, ...) raises, naming both values; True resumes with the new settings (a new plan and
            a fresh pattern stream from the new seed) after a warning that names them.
        **settings: any :class:`~lightning_ard.ARDConfig` field: ``pattern``, ``p``, ``search``, ``include``,
            ``exclude``, ``sites``, ``backend``, ``tile``, ``groups``, ``pool``, ``group_draws``, ``lstm_pattern``,
            ``lstm_groups``, ``lstm_mode``, ``lstm_recurrent_p``, ``lstm_pattern_share``, ``seed``.
    """

    def __init__(
        self,
        config: ARDConfig | None = None,
        *,
        plan: ARDPlan | PlanRecord | str | os.PathLike[str] | None = None,
        measure_speedup: bool | None = None,
        never_slower: bool = True,
        measure_every: int = step_speedup.EVERY,
        restore_on_fit_end: bool = True,
        verbose: bool = True,
        allow_settings_change: bool = False,
        **settings: Any,
    ) -> None:
        if config is not None and not isinstance(config, ARDConfig):
            raise ValueError(f"config must be an ARDConfig or None, got {config!r}")
        if (config is not None or plan is not None) and settings:
            given = "config" if config is not None else "plan"
            raise ValueError(f"pass either {given} or keyword settings, not both (got {sorted(settings)})")
        if config is not None and plan is not None:
            raise ValueError("pass either config or plan, not both: a plan holds the config it was built from")
        unknown = sorted(set(settings) - set(ARDConfig.names()))
        if unknown:
            raise ValueError(f"unknown ApproximateDropout arguments {unknown}; allowed: {list(ARDConfig.names())}")
        self.replay: PlanRecord | None = _load_record(plan) if plan is not None else None
        if self.replay is not None:
            first = self.replay.plans[0][1] if self.replay.plans else plan
            self.config = config_of(first)  # type: ignore[arg-type]
            self._replay_plan = first
        else:
            self.config = config if config is not None else ARDConfig(**settings)
        self.measure_speedup = measure_speedup if measure_speedup is not None else self.replay is None
        self.never_slower = never_slower
        self.measure_every = step_speedup.StepSpeedMeter(every=measure_every).every  # validated
        self.restore_on_fit_end = restore_on_fit_end
        self.verbose = verbose
        self.allow_settings_change = allow_settings_change

        self.controller: ARDController | None = None
        self.guard: SpeedGuard | None = None
        self._pending_state: dict[str, Any] | None = None
        self._reset_fit_state()

    def _reset_fit_state(self) -> None:
        """Per-fit figures start from zero in every fit (a resumed fit restores them from the checkpoint)."""
        self.tflops_saved_total = 0.0
        self._other_flops = accounting.OtherFlops()
        self._last_step: tuple[accounting.LayerFlops, int] | None = None  # the last ARD step's FLOPs and number
        self._logged_step = -1
        self._saved_key: tuple[int, int] | None = None  # the record state last written to the plan file
        self._log_dir: str | None = None
        self._in_step = False  # between a batch start that ran the guard and its batch end
        self._step_peak = memory.StepPeak()  # the step's peak memory where the device reports it (CUDA)

    @property
    def seed(self) -> int | None:
        """The configured pattern seed (``None``: Lightning's global seed, or 0)."""
        return self.config.seed

    @property
    def active(self) -> bool:
        """Whether ARD layers are in the model now."""
        return self.controller is not None and self.controller.active

    @property
    def plan(self) -> ARDPlan | None:
        """The plan in force (``None`` before the first fit)."""
        if self.guard is not None:
            return self.guard.plan
        return self.controller.plan if self.controller is not None else None

    @property
    def record(self) -> PlanRecord | None:
        """The plans of the fit with the step each took effect (what the plan file holds)."""
        return self.guard.record if self.guard is not None else None

    @property
    def speedups(self) -> dict[str, float]:
        """Site -> measured dense / ARD time of its layers (empty before calibration)."""
        return self.guard.speedups if self.guard is not None else {}

    @property
    def gave_up(self) -> str | None:
        """Why the plain model trains (never slower), if it does."""
        return self.plan.plain if self.plan is not None else None

    @property
    def backends(self) -> dict[str, str]:
        """ARD Linear path -> the backend a measurement chose (``backend="auto"``)."""
        plan = self.plan
        return {} if plan is None else {k: v for k, v in plan.backend_of.items() if v != "auto"}

    # ------------------------------------------------------------------ fit start / end
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_fit_state()
        self._log_dir = trainer.log_dir if trainer.loggers else None  # no logger: no run directory to write to
        seed = self._base_seed()
        resumed = self._check_resumed_settings(seed)  # raises before the model is touched
        state = self._pending_state if resumed else None
        self._pending_state = None
        guarded = state is not None and "guard" in state  # False: the checkpoint's fit served no site
        record = PlanRecord.from_dict(state["guard"]["record"]) if guarded else self.replay
        step = int(state["guard"]["step"]) if guarded else 0
        rank_seed = seed + RANK_SEED_STRIDE * trainer.global_rank
        plan = record.at(step) if record is not None and record.plans else (self._replay_plan if self.replay else None)
        if plan is not None:
            self.controller = ARDController(pl_module, plan=plan, seed=rank_seed)
        else:
            self.controller = ARDController(pl_module, self.config, seed=rank_seed)
        try:
            self.controller.apply()
        except ValueError as err:
            raise ValueError(f"ApproximateDropout: {err}") from err
        if not self.controller.plan.sites:
            skipped = self.controller.report.skipped
            reasons = "; ".join(f"{s.name}: {s.reason}" for s in skipped) or "the model has no nn.Dropout"
            rank_zero_warn(f"ApproximateDropout found no dropout site it can serve, training is unchanged ({reasons})")
            if state is not None:  # the nn.Dropout masks continue where the checkpoint left them
                _set_rng_state(state["rng"])
            return
        self.guard = self._make_guard(trainer, record)
        if guarded:
            self._restore(state)
        if self.verbose:
            rank_zero_info(self.site_table())

    def _make_guard(self, trainer: pl.Trainer, record: PlanRecord | None) -> SpeedGuard:
        schedule = None
        if self.replay is not None:
            schedule = self.replay.schedule
        elif self.measure_speedup:
            schedule = Schedule(step_speedup.START, self.measure_every, step_speedup.STEPS)
        if record is None:
            record = PlanRecord([], schedule)
        return SpeedGuard(
            self.controller,  # type: ignore[arg-type]
            trainer.optimizers,
            never_slower=self.never_slower and self.measure_speedup,
            record=record,
            replay=self.replay is not None,
            broadcast=lambda obj: trainer.strategy.broadcast(obj, src=0),
            notify=rank_zero_warn,
        )

    def _restore(self, state: dict[str, Any]) -> None:
        """A resumed fit continues the checkpoint's record, step count, window, pattern stream and global RNG."""
        self.guard.load_state_dict(state["guard"])  # type: ignore[union-attr]
        self.controller.load_state_dict(state["controller"])  # type: ignore[union-attr]
        self.tflops_saved_total = float(state.get("tflops_saved_total", 0.0))
        if "rng" in state:
            _set_rng_state(state["rng"])

    def _base_seed(self) -> int:
        """The pattern seed of this fit before the per-rank offset (``seed``, else Lightning's global seed, else 0)."""
        return self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _settings(self, seed: int) -> dict[str, Any]:
        """What a checkpoint stores to recognize a resume with other settings (the backend only changes speed)."""
        fields = dataclasses.asdict(self.config)
        fields.pop("backend")
        fields["seed"] = seed
        return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}

    def _check_resumed_settings(self, seed: int) -> bool:
        """Compare the checkpoint's settings with this fit's; raise (or warn, with ``allow_settings_change``) on a
        difference. Returns whether the checkpoint's record and pattern stream continue (same settings)."""
        if not self._pending_state:
            return False
        if "guard" not in self._pending_state and self._pending_state.get("served") is not False:  # older format
            rank_zero_warn(
                "ApproximateDropout: the checkpoint's ARD state holds no plan record (an older format); this fit "
                "builds a new plan and starts a fresh pattern stream"
            )
            return False
        saved = self._pending_state.get("settings", {})
        now = self._settings(seed)
        changed = {k: (saved.get(k), now[k]) for k in now if saved.get(k) != now[k]}
        if not changed:
            return True
        listed = ", ".join(f"{k}: checkpoint {old!r}, now {new!r}" for k, (old, new) in changed.items())
        if not self.allow_settings_change:
            self._pending_state = None
            raise ValueError(
                f"ApproximateDropout: resuming a checkpoint saved with other ARD settings ({listed}); resume with the "
                "checkpoint's settings, or pass allow_settings_change=True to continue with the new ones"
            )
        rank_zero_warn(
            f"ApproximateDropout: resuming with other ARD settings than the checkpoint's ({listed}); the new settings "
            "apply from here, with a new plan and a fresh pattern stream from the new seed"
        )
        return False

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.active:
            self._log_last_step(trainer)
        self._write_record(trainer)
        self._teardown(restore=self.restore_on_fit_end)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._teardown(restore=True)

    def _teardown(self, restore: bool) -> None:
        self._other_flops.close()
        if self.controller is not None:
            self.controller.restore() if restore else self.controller.clear()

    def _write_record(self, trainer: pl.Trainer) -> None:
        """The plan record as ``ard_plan.json`` in the log directory (rank zero, when it changed; a fit without a
        logger has no run directory: its record stays in :attr:`record` and in the checkpoints)."""
        record = self.record
        if record is None or not trainer.is_global_zero or self._log_dir is None:
            return
        key = self._record_key()
        if key == self._saved_key:
            return
        os.makedirs(self._log_dir, exist_ok=True)
        record.save(Path(self._log_dir) / PLAN_FILE)
        self._saved_key = key

    def _record_key(self) -> tuple[int, int] | None:
        """Identifies the record's state cheaply: which record, and how many changes it has had."""
        record = self.record
        return None if record is None or not record.plans else (id(record), record.revision)

    # ------------------------------------------------------------------ per step
    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        guard, self._in_step = self.guard, False
        if guard is None or not self.active:
            return
        self._in_step = True
        first = not guard.record.plans
        before = self.controller.plan  # type: ignore[union-attr]
        guard.begin(batch_samples(batch) if first else None)
        if not self.active:  # a replayed plan gives the plain model back from this step
            self._in_step = False
            return
        if first:
            self._said_groups(before, guard.plan)
        if guard.mode != PLAIN and self.active and self._other_flops.pending:
            self._other_flops.start()
        self._step_peak.begin(pl_module.device)

    @staticmethod
    def _said_groups(before: ARDPlan, after: ARDPlan) -> None:
        """``groups="auto"``: one line when the first batch changed the site table's group counts."""
        changed = {sp.name: sp.groups for sp, old in zip(after.sites, before.sites) if sp.groups != old.groups}
        if changed and after.samples is not None:
            counts = ", ".join(f"{name}: {g}" for name, g in changed.items())
            rank_zero_info(
                f"ApproximateDropout: groups='auto' follows the batch of {after.samples} samples: pattern groups per "
                f"step {counts} (above {AUTO_BATCH} samples they grow with the square root of the batch)"
            )

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        guard = self.guard
        if guard is None or not self._in_step:
            return
        self._in_step = False
        guard.stop()
        peak = self._step_peak.end()
        reference = guard.mode == PLAIN
        layer_flops = None if reference else self._account()
        guard.end()
        if self._record_key() != self._saved_key:  # a decision was recorded: the file follows
            self._write_record(trainer)
        if not self.active:  # never slower gave the plain model back
            self._log(trainer, {"ard/flops_saved": 0.0, "ard/tflops_saved_total": self.tflops_saved_total,
                                **self._step_time_metrics()})  # fmt: skip
            return
        if layer_flops is None:
            if peak is not None:
                self._log(trainer, {"ard/step_peak_mib_plain": peak / memory.MIB}, pl_module)
            return  # a reference step of the plain model: nothing of ARD ran
        self._last_step = (layer_flops, guard.step_index)
        if guard.step_index == 1 or guard.step_index % max(trainer.log_every_n_steps, 1) == 0:
            step_peak = {} if peak is None else {"ard/step_peak_mib": peak / memory.MIB}
            self._log(trainer, {**self._metrics(layer_flops), **step_peak}, pl_module)
            self._logged_step = guard.step_index

    def _account(self) -> accounting.LayerFlops:
        """Check the step's dropout calls and count its FLOPs (the rest of the model's once, at the first step)."""
        ctl: ARDController = self.controller  # type: ignore[assignment]
        try:
            ctl.check_calls()
        except RuntimeError as err:
            raise RuntimeError(f"ApproximateDropout: {err}") from err
        layer_flops = ctl.layer_flops()
        ard_modules = {**ctl.surgery.linears, **ctl.surgery.lstms}  # type: ignore[union-attr]
        self._other_flops.stop(sum(e for _, e in layer_flops.values()), ard_modules)
        self.tflops_saved_total += sum(d - e for d, e in layer_flops.values()) / 1e12
        return layer_flops

    def _metrics(self, layer_flops: accounting.LayerFlops) -> dict[str, float]:
        ctl: ARDController = self.controller  # type: ignore[assignment]
        metrics: dict[str, float] = {}
        for site in ctl.report.sites:
            d, e = accounting.site_flops(layer_flops, site)
            served = site.name not in ctl.fallen_back
            metrics[f"ard/{site.name}/keep_fraction"] = ctl.keep_fraction(site.name) if served else 1.0
            metrics[f"ard/{site.name}/flops_saved"] = (1 - e / d) if d and served else 0.0
            if site.name in self.speedups:
                metrics[f"ard/{site.name}/speedup_measured"] = self.speedups[site.name]
        saved = sum(d - e for d, e in layer_flops.values())
        total_dense = sum(d for d, _ in layer_flops.values()) + (self._other_flops.value or 0)
        metrics["ard/flops_saved"] = saved / total_dense if total_dense else 0.0
        metrics["ard/tflops_saved_total"] = self.tflops_saved_total
        return {**metrics, **self._step_time_metrics()}

    def _step_time_metrics(self) -> dict[str, float]:
        """The last timing window's medians and their ratio (empty before the first window ends)."""
        step_ms = self.guard.step_ms if self.guard is not None else None
        if step_ms is None:
            return {}
        plain, ard = step_ms
        return {"ard/step_ms_plain": plain, "ard/step_ms_ard": ard, "ard/step_speedup": plain / ard}

    def _log_last_step(self, trainer: pl.Trainer) -> None:
        """At fit end: the last ARD step's values to the loggers and ``trainer.callback_metrics`` when the logging
        cadence skipped it (a 6-step fit must not leave step 1's values behind)."""
        if self._last_step is None or self._last_step[1] == self._logged_step:
            return
        self._log(trainer, self._metrics(self._last_step[0]))
        self._logged_step = self._last_step[1]

    @staticmethod
    def _log(trainer: pl.Trainer, metrics: dict[str, float], pl_module: pl.LightningModule | None = None) -> None:
        """To the loggers (rank zero, at ``global_step``) and to ``trainer.callback_metrics``, so the values are there
        for other callbacks, after fit, and in runs without a logger (fast_dev_run): through ``log_dict`` inside a
        batch hook (``pl_module`` given), directly elsewhere (fit end, where ``self.log`` is not allowed)."""
        if trainer.loggers and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        if pl_module is not None:
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, logger=False, batch_size=1)
        else:
            trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})

    # ------------------------------------------------------------------ report and state
    def site_table(self) -> str:
        """The site table printed at fit start: a view of the plan in force."""
        ctl = self.controller
        if ctl is None:
            return "ApproximateDropout sites:"
        return plan_table(self.plan or ctl.plan, ctl.expected_site_saving)

    @override
    def state_dict(self) -> dict[str, Any]:
        if self.controller is None:
            return {}
        if self.guard is None:  # no site served: a resumed fit still needs the nn.Dropout masks' generator
            return {"served": False, "rng": _rng_state(), "settings": self._settings(self._base_seed())}
        return {
            "guard": self.guard.state_dict(),
            "controller": self.controller.state_dict(),
            "rng": _rng_state(),
            "tflops_saved_total": self.tflops_saved_total,
            "settings": self._settings(self._base_seed()),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._pending_state = dict(state_dict)
