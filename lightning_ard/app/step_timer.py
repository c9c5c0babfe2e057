"""Wall-clock time of every training step, logged so that baseline and ARD runs are compared on equal terms.

The clock starts in ``on_train_batch_start`` and stops in ``on_train_batch_end``: it covers what one optimization
step costs (callback work at batch start such as drawing ARD patterns, forward, backward, optimizer step), and not
data loading, validation or checkpointing. On an accelerator the device is synchronized before reading the clock,
because kernels run asynchronously. Put this callback first in the Trainer's list so its start hook runs before
every other callback's.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import lightning as L

from lightning_ard.profiling import synchronize


class StepTimer(L.Callback):
    """Logs ``time/step_ms`` per training step and ``time/step_ms_median`` per epoch.

    Args:
        warmup_steps: steps at the start of the fit left out of the median (allocator and kernel warm-up);
            used anyway when an epoch has no other step.
    """

    def __init__(self, warmup_steps: int = 5) -> None:
        super().__init__()
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative integer, got {warmup_steps!r}")
        self.warmup_steps = warmup_steps
        self._start: float | None = None
        self._steps_seen = 0
        self._epoch_ms: list[float] = []
        self._epoch_warmup_ms: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_ms, self._epoch_warmup_ms = [], []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        synchronize(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._start is None:
            return
        synchronize(pl_module.device)
        ms = (time.perf_counter() - self._start) * 1e3
        self._start = None
        self._steps_seen += 1
        (self._epoch_warmup_ms if self._steps_seen <= self.warmup_steps else self._epoch_ms).append(ms)
        pl_module.log("time/step_ms", ms, on_step=True, on_epoch=False, batch_size=1)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        times = self._epoch_ms or self._epoch_warmup_ms
        if times:
            pl_module.log("time/step_ms_median", statistics.median(times), on_step=False, on_epoch=True, batch_size=1)

    @property
    def median_ms(self) -> float | None:
        """Median step time of the last epoch (``None`` before the first step)."""
        times = self._epoch_ms or self._epoch_warmup_ms
        return statistics.median(times) if times else None
