"""A step never runs more pattern groups than it has rows: ``groups=10**6`` at batch 32 costs what 32 groups cost."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_ard import ApproximateDropout
from tests.integration.test_callback import MLP, _data, _trainer


class _CountProducts(pl.Callback):
    """Counts the matrix products (forward and backward) of every training step."""

    class _Mode(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += func.__name__.split(".")[0] in {"mm", "addmm", "bmm", "_grouped_mm"}
            return func(*args, **(kwargs or {}))

    def __init__(self) -> None:
        self.counts: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._mode = self._Mode().__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._mode.__exit__(None, None, None)
        self.counts.append(self._mode.count)


def _fit(tmp_path, groups: int) -> tuple[list[int], ApproximateDropout]:
    pl.seed_everything(0)
    count = _CountProducts()
    cb = ApproximateDropout(pattern="block", groups=groups, measure_speedup=False, verbose=False)
    _trainer(tmp_path, None, max_steps=3, callbacks=[cb, count]).fit(MLP(), _data(n=96, batch=32))
    return count.counts, cb


def test_a_million_groups_at_batch_32_cost_what_32_groups_cost(tmp_path) -> None:
    with pytest.warns(UserWarning, match=r"lowered \(net.2: 1000000 -> 32, net.5: 1000000 -> 32\)") as caught:
        huge, cb = _fit(tmp_path / "huge", 10**6)
    assert sum("lowered" in str(w.message) for w in caught) == 1  # said once
    per_row, _ = _fit(tmp_path / "per_row", 32)
    assert huge == per_row and len(huge) == 3
    assert [(sp.groups, sp.requested_groups) for sp in cb.plan.sites] == [(32, 10**6), (32, 10**6)]
