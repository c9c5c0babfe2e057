"""Pattern families (pure math, no Lightning): row families, the tile family, distributions and the sampler."""

from lightning_ard.patterns.distribution import Family, Pattern, PatternDistribution
from lightning_ard.patterns.row import BlockRow, PeriodicRow, RandomSubsetRow, RowFamily, RowPattern, binomial_pmf
from lightning_ard.patterns.sampler import PatternSampler
from lightning_ard.patterns.tile import PeriodicTile, TilePattern

__all__ = [
    "BlockRow",
    "Family",
    "Pattern",
    "PatternDistribution",
    "PatternSampler",
    "PeriodicRow",
    "PeriodicTile",
    "RandomSubsetRow",
    "RowFamily",
    "RowPattern",
    "TilePattern",
    "binomial_pmf",
]
