"""lightning_ard: Approximate Random Dropout for PyTorch Lightning."""

from lightning_ard.callback import ApproximateDropout
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

__all__ = [
    "ARDConfig",
    "ARDController",
    "ApproximateDropout",
    "BlockRow",
    "PatternDistribution",
    "PatternSampler",
    "PeriodicRow",
    "PeriodicTile",
    "RandomSubsetRow",
    "RowPattern",
    "TilePattern",
]
__version__ = "0.1.0"
