"""The ApproximateDropout callback: one line in a Trainer turns a model's dropout sites into ARD.

Hooks, one job each (each delegates: the controller does the work, :mod:`lightning_ard.accounting` counts,
:mod:`lightning_ard.profiling` times):

* ``on_fit_start``: check a resumed checkpoint's settings, detect sites, search a pattern distribution per site,
  swap the modules in place, print the site table. Swapping here (not in ``setup``) sees layers built in
  ``configure_model`` and runs after a checkpoint restore; it is safe for the optimizer and DDP because the swap
  changes the class of the same module objects, which keep the same Parameter objects (DDP's reducer and the
  optimizer hold those).
* ``on_train_batch_start``: at the first batch, let ``groups="auto"`` follow its size (more groups for larger
  batches); draw this step's patterns (every micro-batch under gradient accumulation), or, in a timing window
  (:mod:`lightning_ard.step_speedup`), run the plain modules as the reference step.
* ``on_train_batch_end``: check every swapped dropout ran as often as it has sites, account FLOPs, log ``ard/…``
  (to the loggers and ``trainer.callback_metrics``); after the first step choose each layer's backend
  (``backend="auto"``), calibrate the per-site speedups and send sites that are not faster back to nn.Dropout
  (``never_slower``); at the end of a timing window log ``ard/step_speedup``.
* ``on_fit_end`` / ``on_exception``: log the last step's figures, give back the original modules (same
  Parameters, trained values).
* ``state_dict`` / ``load_state_dict``: the sampler's generator and the settings, so a resumed fit draws the same
  patterns and a resume with other settings is caught.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.data import _extract_batch_size
from torch.nn.utils.rnn import PackedSequence
from typing_extensions import override

from lightning_ard import accounting, profiling, step_speedup
from lightning_ard.config import ARDConfig
from lightning_ard.controller import ARDController
from lightning_ard.patterns.groups import AUTO_BATCH

RANK_SEED_STRIDE = 1_000_003
"""Seed offset per global rank, so that DDP ranks draw different patterns."""


def batch_samples(batch: Any) -> int | None:
    """Samples in a training batch, as Lightning infers a batch size (the first dimension of the first tensor,
    depth first through collections and dataclasses), except that a ``PackedSequence`` counts its sequences, not
    its tokens; ``None`` when the batch holds no tensor."""
    sized = apply_to_collection(batch, PackedSequence, lambda p: p.batch_sizes.new_empty(int(p.batch_sizes[0])))
    return next((n for n in _extract_batch_size(sized) if n is not None), None)


class ApproximateDropout(pl.Callback):
    """Replace the model's dropout with Approximate Random Dropout during ``fit``.

    Args:
        config: the ARD settings (:class:`~lightning_ard.ARDConfig`); or pass its fields as keyword arguments
            (``ApproximateDropout(pattern="block", p=0.5, groups=4)``), not both.
        measure_speedup: measure speed in the fit: after the first step, time every site's layers dense vs ARD at
            the real shapes (forward, backward, optimizer share; logged as ``ard/<site>/speedup_measured``), and
            time the real step both ways in short windows of interleaved nn.Dropout and ARD steps
            (:mod:`lightning_ard.step_speedup`; logged as ``ard/step_speedup``, ``ard/step_ms_plain``,
            ``ard/step_ms_ard``).
        never_slower: after that calibration, a site whose layers are not faster with ARD than dense goes back to
            nn.Dropout for the rest of the fit, with one line saying so (needs ``measure_speedup``).
        measure_every: steps between two timing windows (the first starts at step
            :data:`~lightning_ard.step_speedup.START`); 0 for one window only.
        restore_on_fit_end: give the plain modules back at fit end (False keeps ARD layers, patterns cleared).
        verbose: print the site table at fit start.
        allow_settings_change: resuming from a checkpoint saved with other ARD settings (``p``, ``pattern``,
            ``groups``, ``seed``, ...) raises, naming both values; True resumes with the new settings (and a fresh
            pattern stream from the new seed) after a warning that names them.
        **settings: any :class:`~lightning_ard.ARDConfig` field: ``pattern``, ``p``, ``search``, ``include``,
            ``exclude``, ``sites``, ``backend``, ``tile``, ``groups``, ``pool``, ``group_draws``, ``lstm_groups``,
            ``lstm_mode``, ``lstm_recurrent_p``, ``seed``.
    """

    def __init__(
        self,
        config: ARDConfig | None = None,
        *,
        measure_speedup: bool = True,
        never_slower: bool = True,
        measure_every: int = 500,
        restore_on_fit_end: bool = True,
        verbose: bool = True,
        allow_settings_change: bool = False,
        **settings: Any,
    ) -> None:
        if config is not None and not isinstance(config, ARDConfig):
            raise ValueError(f"config must be an ARDConfig or None, got {config!r}")
        if config is not None and settings:
            raise ValueError(f"pass either config or keyword settings, not both (got {sorted(settings)})")
        unknown = sorted(set(settings) - set(ARDConfig.names()))
        if unknown:
            raise ValueError(f"unknown ApproximateDropout arguments {unknown}; allowed: {list(ARDConfig.names())}")
        self.config = config if config is not None else ARDConfig(**settings)
        self.measure_speedup = measure_speedup
        self.never_slower = never_slower
        self.measure_every = measure_every
        self.restore_on_fit_end = restore_on_fit_end
        self.verbose = verbose
        self.allow_settings_change = allow_settings_change

        self.controller: ARDController | None = None
        self._pending_state: dict[str, Any] | None = None
        self._reset_fit_state()

    def _reset_fit_state(self) -> None:
        """Per-fit figures start from zero in every fit (a resumed fit restores them from the checkpoint)."""
        self.speedups: dict[str, float] = {}
        self.tflops_saved_total = 0.0
        self._other_flops = accounting.OtherFlops()
        self._layer_time: profiling.LayerTimes = {}
        self._step_start = 0.0
        self._steps = 0
        self._meter = step_speedup.StepSpeedMeter(every=self.measure_every)
        self._mode: str | None = None  # this step's timing mode (plain / ard) or None (untimed ARD step)
        self._step_ms: tuple[float, float] | None = None  # (plain, ARD) medians of the last window
        self._last_step: tuple[accounting.LayerFlops, int] | None = None  # the last ARD step's FLOPs and number
        self._logged_step = -1
        self.gave_up: str | None = None  # why never_slower gave the plain model back in this fit, if it did
        self.backends: dict[str, str] = {}  # ARD Linear path -> backend that backend="auto" measured fastest

    @property
    def seed(self) -> int | None:
        """The configured pattern seed (``None``: Lightning's global seed, or 0)."""
        return self.config.seed

    @property
    def active(self) -> bool:
        """Whether ARD layers are in the model now."""
        return self.controller is not None and self.controller.active

    # ------------------------------------------------------------------ fit start / end
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_fit_state()
        seed = self._base_seed()
        restore_sampler = self._check_resumed_settings(seed)  # raises before the model is touched
        self.controller = ARDController(pl_module, self.config, seed=seed + RANK_SEED_STRIDE * trainer.global_rank)
        try:
            self.controller.apply()
        except ValueError as err:
            raise ValueError(f"ApproximateDropout: {err}") from err
        if not self.controller.active:
            skipped = self.controller.report.skipped
            reasons = "; ".join(f"{s.name}: {s.reason}" for s in skipped) or "the model has no nn.Dropout"
            rank_zero_warn(f"ApproximateDropout found no dropout site it can serve, training is unchanged ({reasons})")
            return
        if self._pending_state is not None:
            if restore_sampler:
                self.controller.sampler.load_state_dict(self._pending_state["sampler"])  # type: ignore[union-attr]
            self.tflops_saved_total = float(self._pending_state.get("tflops_saved_total", 0.0))
            self._pending_state = None
        if self.verbose:
            rank_zero_info(self.site_table())

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
        difference. Returns whether the saved pattern stream continues (same settings)."""
        saved = (self._pending_state or {}).get("settings")
        if saved is None:  # a fresh fit, or a checkpoint from before settings were stored
            return True
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
            "apply from here, with a fresh pattern stream from the new seed"
        )
        return False

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.active:
            self._log_last_step(trainer)
        self._teardown(restore=self.restore_on_fit_end)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._teardown(restore=True)

    def _teardown(self, restore: bool) -> None:
        self._other_flops.close()
        if self.controller is not None:
            self.controller.restore() if restore else self.controller.clear()

    # ------------------------------------------------------------------ per step
    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.active:
            return
        ctl: ARDController = self.controller  # type: ignore[assignment]
        if self._steps == 0:
            self._follow_batch(ctl, batch)
        self._mode = self._meter.mode(self._steps) if self.measure_speedup else None
        if self._mode == step_speedup.PLAIN:
            ctl.plain_step()
        else:
            if self._other_flops.pending:
                self._other_flops.start()
            ctl.step()
        if self._mode is not None:
            profiling.synchronize(pl_module.device)
        self._step_start = time.perf_counter()

    @staticmethod
    def _follow_batch(ctl: ARDController, batch: Any) -> None:
        """``groups="auto"``: the first batch's size (the first dimension of its first tensor) sets the Linear
        sites' group count for the fit (:func:`~lightning_ard.patterns.groups.auto_groups`); said in one line when
        it differs from the site table's."""
        samples = batch_samples(batch)
        changed = ctl.follow_batch(samples)
        if changed:
            counts = ", ".join(f"{name}: {g}" for name, g in changed.items())
            rank_zero_info(
                f"ApproximateDropout: groups='auto' follows the batch of {samples} samples: pattern groups per "
                f"step {counts} (above {AUTO_BATCH} samples they grow with the square root of the batch)"
            )

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.active:
            return
        if self._mode is not None:
            profiling.synchronize(pl_module.device)
            if self._meter.record(self._mode, (time.perf_counter() - self._step_start) * 1e3):
                self._step_ms = self._meter.result()
                plain, ard = self._step_ms
                if trainer.strategy.broadcast(self.never_slower and not ard < plain, src=0):  # rank 0 decides
                    self._steps += 1
                    self._give_up(trainer, f"the measured step is not faster ({plain / ard:.2f}x)")
                    return
        self._steps += 1
        if self._mode == step_speedup.PLAIN:
            return  # a reference step of the plain model: nothing of ARD ran
        ctl: ARDController = self.controller  # type: ignore[assignment]
        try:
            ctl.check_calls()
        except RuntimeError as err:
            raise RuntimeError(f"ApproximateDropout: {err}") from err
        layer_flops = ctl.layer_flops()
        first = self._other_flops.stop(
            sum(e for _, e in layer_flops.values()),
            {**ctl.surgery.linears, **ctl.surgery.lstms},  # type: ignore[union-attr]
        )
        if first and ctl.config.backend == "auto":
            self._choose_backends(trainer)
        if first and self.measure_speedup:
            self._calibrate(trainer)
            if not self.active:  # never slower: no site was faster, the plain model is back
                return
        self.tflops_saved_total += sum(d - e for d, e in layer_flops.values()) / 1e12
        self._last_step = (layer_flops, self._steps)
        if self._steps == 1 or self._steps % max(trainer.log_every_n_steps, 1) == 0:
            self._log(trainer, self._metrics(layer_flops), pl_module)
            self._logged_step = self._steps

    def _choose_backends(self, trainer: pl.Trainer) -> None:
        """``backend="auto"``: time every candidate backend of each ARD Linear at this step's real shapes and keep
        the fastest (on a CPU the only candidate is the PyTorch path: nothing is timed); rank 0 decides."""
        from lightning_ard.kernels.select import candidate_backends, fastest_layer_backend

        linears = self.controller.surgery.linears  # type: ignore[union-attr]
        if all(len(candidate_backends(lin.weight.device)) < 2 for lin in linears.values()):
            return
        choices = {path: fastest_layer_backend(lin, profiling.median_time) for path, lin in linears.items()}
        names = trainer.strategy.broadcast({path: c.name for path, c in choices.items()}, src=0)
        for path, name in names.items():
            linears[path].use_backend(name)
            rank_zero_info(f"ApproximateDropout: {path} uses backend {choices[path].describe()}")
        self.backends = dict(names)

    def _calibrate(self, trainer: pl.Trainer) -> None:
        """Time every ARD layer's share of a training step dense vs ARD at this step's shapes, on the real device;
        with ``never_slower``, sites that are not faster go back to nn.Dropout (rank 0 decides for all ranks)."""
        ctl: ARDController = self.controller  # type: ignore[assignment]
        surgery = ctl.surgery
        rates = {site.consumer: site.p for site in ctl.report.sites if site.name not in ctl.fallen_back}
        self._layer_time = profiling.calibrate(
            surgery.linears,
            surgery.lstms,
            rates,
            trainer.optimizers,  # type: ignore[union-attr]
        )
        self.speedups = profiling.site_speedups(self._layer_time, ctl.report.sites)
        if not self.never_slower:
            return
        slower = [name for name, speedup in self.speedups.items() if not speedup > 1.0]
        slower = trainer.strategy.broadcast(slower, src=0)
        for name in ctl.fall_back(slower):
            measured = self.speedups.get(name)
            why = f"measured {measured:.2f}x" if measured is not None else "shares its dropout with a slower site"
            rank_zero_warn(
                f"ApproximateDropout: site {name!r} runs as nn.Dropout for the rest of the fit: ARD is not faster "
                f"there ({why} at this step's shapes; never_slower=False keeps it)"
            )
        if {s.name for s in ctl.report.sites} <= ctl.fallen_back:
            self._give_up(trainer, "no site is faster with ARD")

    def _give_up(self, trainer: pl.Trainer, why: str) -> None:
        """Never slower: give the plain modules back for the rest of the fit (no ARD overhead left), logging the
        last figures with nothing saved from here on."""
        self.controller.restore()  # type: ignore[union-attr]
        self.gave_up = why
        rank_zero_warn(
            f"ApproximateDropout: the model trains with its plain modules for the rest of the fit: {why} "
            "(never_slower=False keeps ARD)"
        )
        metrics = {"ard/flops_saved": 0.0, "ard/tflops_saved_total": self.tflops_saved_total}
        self._log(trainer, {**metrics, **self._step_time_metrics()})

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
        if self._step_ms is None:
            return {}
        plain, ard = self._step_ms
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
        """The site table printed at fit start: site, kind, width, p, family, patterns per step, expected saving."""
        rows = [("site", "kind", "width", "p", "family", "groups", "E[rate]", "E[FLOPs saved in its layers]")]
        ctl = self.controller
        for site in ctl.report.sites if ctl else []:
            dist = ctl.distributions[site.name]
            rows.append(
                (
                    site.name,
                    str(site.kind),
                    str(site.width),
                    f"{site.p:.3g}",
                    ctl.family_for(site),
                    str(ctl.site_groups(site.name)),
                    f"{dist.expected_rate:.4f}",
                    f"{ctl.expected_site_saving(site):.1%}",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["ApproximateDropout sites:"]
        for i, r in enumerate(rows):
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
            if i == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
        for skip in ctl.report.skipped if ctl else []:
            lines.append(f"  skipped {skip.name}: {skip.reason}")
        return "\n".join(lines)

    @override
    def state_dict(self) -> dict[str, Any]:
        if self.controller is None or self.controller.sampler is None:
            return {}
        return {
            "sampler": self.controller.sampler.state_dict(),
            "tflops_saved_total": self.tflops_saved_total,
            "settings": self._settings(self._base_seed()),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._pending_state = dict(state_dict)
