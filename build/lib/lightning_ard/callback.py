"""The ApproximateDropout callback: one line in a Trainer turns a model's dropout sites into ARD.

Hooks, one job each:

* ``on_fit_start``: detect sites, search a pattern distribution per site, swap the modules in place, print the
  site table. Swapping here (not in ``setup``) sees layers built in ``configure_model`` and runs after a
  checkpoint restore; it is safe for the optimizer and DDP because the swap changes the class of the same module
  objects, which keep the same Parameter objects (DDP's reducer and the optimizer hold those).
* ``on_train_batch_start``: draw this step's patterns (every micro-batch under gradient accumulation).
* ``on_train_batch_end``: check every swapped dropout ran as often as it has sites, account FLOPs, log ``ard/…``
  (to the loggers and ``trainer.callback_metrics``); after the first step, calibrate the measured per-site speedups.
* ``on_fit_end`` / ``on_exception``: give back the original modules (same Parameters, trained values).
* ``state_dict`` / ``load_state_dict``: the sampler's generator, so a resumed fit draws the same patterns.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from lightning_ard.config import ARDConfig
from lightning_ard.controller import ARDController
from lightning_ard.layers import ARDLSTM, ARDLinear


class ApproximateDropout(pl.Callback):
    """Replace the model's dropout with Approximate Random Dropout during ``fit``.

    Args:
        pattern: pattern family: ``"row"`` (the paper's periodic neuron pattern), ``"block"`` (contiguous kept
            block), ``"random"`` (random subset of exactly K units), ``"tile"`` (DropConnect on whole weight tiles
            of the consumer Linear; LSTM sites use ``"row"``).
        p: dropout rate for every site; ``None`` keeps each dropout's own rate.
        search: settings for :func:`lightning_ard.search.search_distribution` (e.g. ``{"method": "exact"}``).
        include, exclude: glob patterns over dropout module paths (or site names) to serve / leave alone.
        sites: explicit ``"dropout->consumer"`` module-path pairs for sites detection cannot prove.
        backend: ``"auto"`` (Triton on CUDA, PyTorch elsewhere), ``"torch"`` or ``"triton"``.
        seed: seed of the pattern generator; ``None`` takes Lightning's global seed (``seed_everything``) or 0.
            The rank is added so that DDP ranks draw different patterns.
        tile: tile shape (rows, cols) for ``pattern="tile"``.
        groups: independent patterns per training step, each serving a contiguous share of the batch (samples or
            tokens for a Linear, time steps for an LSTM). More groups = more mask diversity at the same FLOP
            saving; 1 is the paper's one pattern per mini-batch. Under gradient accumulation every micro-batch
            draws its own.
        pool: with ``groups > 1``, draw only ``pool`` distinct patterns per site per step and give each group one
            of them at random: per-row mask diversity at the cost of at most ``pool`` compact GEMMs per layer.
            ``None`` draws every group independently.
        lstm_groups: time chunks per step for sites feeding an LSTM (``None``: ``groups``); each chunk is one
            fused-LSTM call, so on a CPU keep it small and give the Linear sites the many groups.
        measure_speedup: time each site dense vs ARD after the first step and log measured speedups.
        restore_on_fit_end: give the plain modules back at fit end (False keeps ARD layers, patterns cleared).
        verbose: print the site table at fit start.
    """

    def __init__(
        self,
        pattern: str = "row",
        p: float | None = None,
        search: dict[str, Any] | None = None,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        sites: list[str] | None = None,
        backend: str = "auto",
        seed: int | None = None,
        tile: tuple[int, int] = (64, 64),
        groups: int = 1,
        pool: int | None = None,
        lstm_groups: int | None = None,
        measure_speedup: bool = True,
        restore_on_fit_end: bool = True,
        verbose: bool = True,
    ) -> None:
        self.config = ARDConfig(
            pattern, p, search or {}, include, exclude, sites, backend, tile, groups, pool, lstm_groups
        )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        self.seed = seed
        self.measure_speedup = measure_speedup
        self.restore_on_fit_end = restore_on_fit_end
        self.verbose = verbose

        self.controller: ARDController | None = None
        self.speedups: dict[str, float] = {}
        self.tflops_saved_total = 0.0
        self._pending_state: dict[str, Any] | None = None
        self._other_flops: int | None = None
        self._flop_counter: Any = None
        self._step_start = 0.0
        self._steps = 0
        self._layer_time: dict[str, tuple[float, float]] = {}

    # ------------------------------------------------------------------ setup
    @property
    def active(self) -> bool:
        """Whether ARD layers are in the model now."""
        return self.controller is not None and self.controller.active

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        self.controller = ARDController(pl_module, self.config, seed=seed + 1_000_003 * trainer.global_rank)
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
            self.controller.sampler.load_state_dict(self._pending_state["sampler"])  # type: ignore[union-attr]
            self.tflops_saved_total = float(self._pending_state.get("tflops_saved_total", 0.0))
            self._pending_state = None
        if self.verbose:
            rank_zero_info(self.site_table())

    def site_table(self) -> str:
        """The site table printed at fit start: site, kind, width, p, family, expected FLOP saving."""
        rows = [("site", "kind", "width", "p", "family", "E[rate]", "E[FLOPs saved in its layers]")]
        ctl = self.controller
        for site in ctl.report.sites if ctl else []:
            dist = ctl.distributions[site.name]
            saving = ctl.expected_site_saving(site)
            rows.append(
                (
                    site.name,
                    site.kind,
                    str(site.width),
                    f"{site.p:.3g}",
                    ctl.family_for(site),
                    f"{dist.expected_rate:.4f}",
                    f"{saving:.1%}",
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

    # ------------------------------------------------------------------ per step
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.active:
            return
        if self._other_flops is None and self._flop_counter is None:
            from torch.utils.flop_counter import FlopCounterMode

            self._flop_counter = FlopCounterMode(display=False)
            self._flop_counter.__enter__()
        self.controller.step()  # type: ignore[union-attr]
        self._step_start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.active:
            return
        step_time = time.perf_counter() - self._step_start
        try:
            self.controller.check_calls()  # type: ignore[union-attr]
        except RuntimeError as err:
            raise RuntimeError(f"ApproximateDropout: {err}") from err
        layer_flops = self.controller.layer_flops()  # type: ignore[union-attr]
        dense = sum(d for d, _ in layer_flops.values())
        executed = sum(e for _, e in layer_flops.values())
        if self._flop_counter is not None:
            self._flop_counter.__exit__(None, None, None)
            self._other_flops = max(self._flop_counter.get_total_flops() - executed, 0)
            self._flop_counter = None
            if self.measure_speedup:
                self._calibrate(pl_module)
        total_dense = dense + (self._other_flops or 0)
        self.tflops_saved_total += (dense - executed) / 1e12
        self._steps += 1
        if self._steps == 1 or self._steps % max(trainer.log_every_n_steps, 1) == 0:
            metrics = self._metrics(layer_flops, total_dense, step_time)
            if trainer.loggers and trainer.is_global_zero:
                for logger in trainer.loggers:
                    logger.log_metrics(metrics, step=trainer.global_step)
            # also into trainer.callback_metrics (progress bar off, loggers already written above), so the values
            # are there for other callbacks, after fit, and in runs without a logger (fast_dev_run)
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, logger=False, batch_size=1)

    def _metrics(self, layer_flops: dict[str, tuple[int, int]], total_dense: int, step_time: float) -> dict[str, float]:
        metrics: dict[str, float] = {}
        ctl = self.controller
        for site in ctl.report.sites:  # type: ignore[union-attr]
            d, e = ctl.site_flops(layer_flops, site)  # type: ignore[union-attr]
            metrics[f"ard/{site.name}/keep_fraction"] = ctl.keep_fraction(site.name)  # type: ignore[union-attr]
            metrics[f"ard/{site.name}/flops_saved"] = (1 - e / d) if d else 0.0
            if site.name in self.speedups:
                metrics[f"ard/{site.name}/speedup_measured"] = self.speedups[site.name]
        saved = sum(d - e for d, e in layer_flops.values())
        metrics["ard/flops_saved"] = saved / total_dense if total_dense else 0.0
        metrics["ard/tflops_saved_total"] = self.tflops_saved_total
        if self._layer_time:
            # Amdahl on calibrated layer times: the rest of the step (data, optimizer, other layers) is shared
            dense_layers = sum(d for d, _ in self._layer_time.values())
            ard_layers = sum(a for _, a in self._layer_time.values())
            rest = max(step_time - ard_layers, 0.0)
            metrics["ard/speedup_estimate"] = (rest + dense_layers) / (rest + ard_layers)
        return metrics

    # ------------------------------------------------------------------ speed calibration
    def _calibrate(self, model: nn.Module) -> None:
        """Time every ARD layer dense vs ARD (forward + backward) at this step's shapes, on the real device."""
        surgery = self.controller.surgery  # type: ignore[union-attr]
        self._layer_time = {}
        for path, lin in surgery.linears.items():  # type: ignore[union-attr]
            self._layer_time[path] = self._time_linear(lin)
        for path, lstm in surgery.lstms.items():  # type: ignore[union-attr]
            self._layer_time[path] = self._time_lstm(lstm)
        self.speedups = {}
        for site in self.controller.report.sites:  # type: ignore[union-attr]
            layers = [p for p in (site.consumer, site.producer) if p is not None]
            dense = sum(self._layer_time[p][0] for p in layers)
            ard = sum(self._layer_time[p][1] for p in layers)
            self.speedups[site.name] = dense / ard if ard > 0 else float("nan")

    @staticmethod
    def _median_time(fn: Callable[[], None], device: torch.device, reps: int = 5) -> float:
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        times = []
        for i in range(reps + 2):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            if i >= 2:
                times.append(time.perf_counter() - t)
        return statistics.median(times)

    def _time_linear(self, lin: ARDLinear) -> tuple[float, float]:
        device = lin.weight.device
        rows = max(lin.ard_rows, 1)
        w = lin.weight.detach().clone().requires_grad_(True)
        b = lin.bias.detach().clone().requires_grad_(True) if lin.bias is not None else None
        x = torch.randn(rows, lin.in_features, device=device, dtype=w.dtype, requires_grad=lin.ard_grad_input)

        def dense() -> None:
            F.linear(x, w, b).sum().backward()

        def ard() -> None:
            lin.ard_product(x, w, b).sum().backward()

        return self._median_time(dense, device), self._median_time(ard, device)

    def _time_lstm(self, lstm: ARDLSTM) -> tuple[float, float]:
        device = lstm.weight_hh_l0.device
        copy = nn.LSTM(
            lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias, True, lstm.dropout, lstm.bidirectional
        ).to(device)
        tokens = max(lstm.ard_rows, 1)
        batch = max(min(tokens, 32), 1)
        x = torch.randn(batch, max(tokens // batch, 1), lstm.input_size, device=device)
        ard_copy = ARDLSTM.from_lstm(
            nn.LSTM(
                lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias, True, lstm.dropout, lstm.bidirectional
            ).to(device)
        )
        ard_copy.set_patterns(list(lstm.ard_patterns))

        def dense() -> None:
            copy(x)[0].sum().backward()

        def ard() -> None:
            ard_copy(x)[0].sum().backward()

        return self._median_time(dense, device), self._median_time(ard, device)

    # ------------------------------------------------------------------ teardown and state
    def _teardown(self) -> None:
        if self._flop_counter is not None:
            self._flop_counter.__exit__(None, None, None)
            self._flop_counter = None
        if self.controller is None:
            return
        if self.restore_on_fit_end:
            self.controller.restore()
        else:
            self.controller.clear()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._teardown()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._flop_counter is not None:
            self._flop_counter.__exit__(None, None, None)
            self._flop_counter = None
        if self.controller is not None:
            self.controller.restore()

    def state_dict(self) -> dict[str, Any]:
        if self.controller is None or self.controller.sampler is None:
            return {}
        return {"sampler": self.controller.sampler.state_dict(), "tflops_saved_total": self.tflops_saved_total}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._pending_state = dict(state_dict)
