"""lightning_ard: Approximate Random Dropout for PyTorch Lightning.

``ApproximateDropout`` (the Lightning callback) is imported on first use, so that ``import lightning_ard`` for the
plain-PyTorch parts (``ARDController``, ``SpeedGuard``, ``ARDPlan``, ``ARDConfig``, the patterns) does not load
Lightning and what it pulls in.
"""

from typing import TYPE_CHECKING, Any

from lightning_ard.config import ARDConfig
from lightning_ard.controller import ARDController
from lightning_ard.patterns import (
    BlockRow,
    PatternDistribution,
    PatternSampler,
    PeriodicRow,
    PeriodicTile,
    RandomSubsetRow,
    RowPattern,
    TilePattern,
)
from lightning_ard.plan import ARDPlan, PlanRecord
from lightning_ard.speed_guard import SpeedGuard

if TYPE_CHECKING:
    from lightning_ard.callback import ApproximateDropout

__all__ = [
    "ARDConfig",
    "ARDController",
    "ARDPlan",
    "ApproximateDropout",
    "BlockRow",
    "PatternDistribution",
    "PatternSampler",
    "PeriodicRow",
    "PeriodicTile",
    "PlanRecord",
    "RandomSubsetRow",
    "RowPattern",
    "SpeedGuard",
    "TilePattern",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "ApproximateDropout":
        from lightning_ard.callback import ApproximateDropout

        return ApproximateDropout
    raise AttributeError(f"module 'lightning_ard' has no attribute {name!r}")
