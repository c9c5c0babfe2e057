"""StagedModule: a LightningModule whose train/val/test steps are one ``_step(batch, stage)``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import lightning as L
import torch


class StagedModule(L.LightningModule, ABC):
    """Routes ``training_step``, ``validation_step`` and ``test_step`` to ``_step(batch, stage)``.

    The models compute the same loss and metrics in every stage and differ only in the names they log under, so
    one method per model holds that logic.
    """

    @abstractmethod
    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        """Loss of ``batch`` in ``stage`` ("train", "val" or "test"), logging the stage's metrics."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")
