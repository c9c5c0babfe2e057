"""lightning_ard: Approximate Random Dropout for PyTorch Lightning."""

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
