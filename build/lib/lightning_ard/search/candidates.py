"""Candidate sets: the pattern families a search mixes, with the exact statistics the objective needs.

A candidate set holds, for every candidate family s, its drop rate, its exact kept-count pmf (over the N units
of the layer, or the N tiles of the weight's grid) and its co-keep probabilities at a set of distances. All
three are linear in the mixture weights, so the search's objective is a cheap function of the weights alone.

Families (``family=`` of the search):
- "row": ``PeriodicRow(width, dp, k)`` for dp = 1..dp_max (capped at width) and k in ``ks`` with k <= dp;
- "block" / "random": ``BlockRow(width, K)`` / ``RandomSubsetRow(width, K)`` for kept counts K in a window of
  ``spread`` binomial standard deviations around N(1 - p) (at most ``max_candidates`` of them);
- "tile": ``PeriodicTile(out, in, dp, k, tile)`` for dp = 1..dp_max (capped at the tile columns), k in ``ks``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lightning_ard.patterns import BlockRow, Family, PeriodicRow, PeriodicTile, RandomSubsetRow
from lightning_ard.search.settings import SearchSettings

FAMILIES = ("row", "block", "random", "tile")

# Co-keep probabilities are averaged over at most this many distances; longer layers use a fixed (seed 0) random
# subset of distances, which keeps the average unbiased and, unlike an evenly spaced subset, does not alias with
# the periods of the periodic families.
MAX_DISTANCES = 1024


@dataclass(frozen=True, eq=False)
class CandidateSet:
    """The candidates of one search and their statistics (float64 tensors, one row per candidate).

    Attributes:
        family: the family name ("row", "block", "random" or "tile").
        families: the candidate pattern families.
        units: N, the number of units (tiles for "tile") whose kept count is compared with Binomial(N, 1 - p).
        rates: drop rate of every candidate, shape (n,).
        pmfs: kept-count pmf of every candidate over the window of counts ``offset .. offset + W - 1`` that holds
            every candidate's support, shape (n, W) (not (n, N + 1): wide layers stay cheap).
        offset: the first kept count of the window.
        cokeep: P(both kept) at the distances of ``cokeep_weights``, shape (n, D).
        cokeep_weights: weight of every distance (N - d, normalized to sum to 1), shape (D,); D may be 0.
        hint: which setting to change when a rate is out of reach.
    """

    family: str
    families: tuple[Family, ...]
    units: int
    rates: torch.Tensor
    pmfs: torch.Tensor
    offset: int
    cokeep: torch.Tensor
    cokeep_weights: torch.Tensor
    hint: str

    @property
    def means(self) -> torch.Tensor:
        """Mean kept count of every candidate, N (1 - rate_s), shape (n,)."""
        return self.units * (1.0 - self.rates)

    def check_reaches(self, p: float) -> None:
        """Raise ValueError when no mixture of the candidates has drop rate ``p``."""
        low, high = float(self.rates.min()), float(self.rates.max())
        if not low - 1e-12 <= p <= high + 1e-12:
            raise ValueError(
                f"p={p!r} cannot be reached by the {self.family!r} candidates, whose drop rates span "
                f"[{low:.6g}, {high:.6g}]; {self.hint}"
            )


def build_candidates(
    family: str,
    p: float,
    width: int,
    shape: tuple[int, int] | None,
    tile: tuple[int, int],
    settings: SearchSettings,
) -> CandidateSet:
    """The candidate set of ``family`` for rate ``p`` (arguments already validated by the caller)."""
    if family == "row":
        dp_max = min(settings.dp_max, width)
        _check_ks_fit(settings.ks, dp_max, "width")
        fams: list[Family] = [PeriodicRow(width, dp, k) for dp in range(1, dp_max + 1) for k in settings.ks if k <= dp]
        hint = f"raise dp_max (now {settings.dp_max}, capped at width={width}) or add other ks (now {settings.ks})"
        return _assemble(family, fams, width, width, hint)
    if family in ("block", "random"):
        cls = BlockRow if family == "block" else RandomSubsetRow
        fams = [cls(width, k) for k in _kept_counts(p, width, settings)]
        hint = f"a {family} pattern keeps at least one unit, so its rate is at most 1 - 1/width: raise width"
        return _assemble(family, fams, width, width, hint)
    assert shape is not None
    out_features, in_features = shape
    grid_cols = -(-in_features // tile[1])
    dp_max = min(settings.dp_max, grid_cols)
    _check_ks_fit(settings.ks, dp_max, f"the {grid_cols} tile column(s)")
    fams = [
        PeriodicTile(out_features, in_features, dp, k, tile)
        for dp in range(1, dp_max + 1)
        for k in settings.ks
        if k <= dp
    ]
    hint = (
        f"raise dp_max (now {settings.dp_max}, capped at the {grid_cols} tile column(s)), add other ks "
        f"(now {settings.ks}), or use narrower tiles (now {tile})"
    )
    return _assemble(family, fams, fams[0].width, grid_cols, hint)


def _check_ks_fit(ks: tuple[int, ...], dp_max: int, cap: str) -> None:
    """Some k must fit in a period (1 <= k <= dp_max); larger ks simply give no candidate (narrow layers)."""
    if min(ks) > dp_max:
        raise ValueError(f"ks must hold integers in [1, dp_max={dp_max}] (dp_max capped at {cap}), got ks={ks}")


def _kept_counts(p: float, width: int, settings: SearchSettings) -> list[int]:
    """Kept counts K of the block/random candidates: a window around N(1 - p), always holding floor and ceil."""
    mean = width * (1.0 - p)
    sigma = math.sqrt(width * p * (1.0 - p))
    low = max(1, math.floor(mean - settings.spread * sigma))
    high = min(width, max(1, math.ceil(mean + settings.spread * sigma)))
    if high - low + 1 <= settings.max_candidates:
        return list(range(low, high + 1))
    grid = torch.linspace(low, high, settings.max_candidates, dtype=torch.float64).round().long()
    counts = {int(k) for k in grid}
    counts |= {min(max(math.floor(mean), 1), width), min(max(math.ceil(mean), 1), width)}
    return sorted(counts)


def _assemble(family: str, fams: list[Family], units: int, span: int, hint: str) -> CandidateSet:
    """Stack the statistics of ``fams``; co-keep distances are 1..span-1 (span: the row length), weighted span - d."""
    rates = torch.tensor([f.rate for f in fams], dtype=torch.float64)
    supports = []
    for f in fams:
        if isinstance(f, (BlockRow, RandomSubsetRow)):
            # These keep exactly ``keep`` units (their kept_count_pmf is that point mass); skipping the length-N
            # pmf keeps hundreds of candidates over wide layers cheap.
            supports.append((f.keep, torch.ones(1, dtype=torch.float64)))
            continue
        pmf = f.kept_count_pmf()
        nonzero = pmf.nonzero().flatten()
        first, last = int(nonzero[0]), int(nonzero[-1])
        supports.append((first, pmf[first : last + 1]))
    offset = min(first for first, _ in supports)
    size = max(first + local.numel() for first, local in supports) - offset
    pmfs = torch.zeros(len(fams), size, dtype=torch.float64)
    for row, (first, local) in enumerate(supports):
        pmfs[row, first - offset : first - offset + local.numel()] = local
    distances = torch.arange(1, span, dtype=torch.int64)
    if distances.numel() > MAX_DISTANCES:
        pick = torch.randperm(distances.numel(), generator=torch.Generator().manual_seed(0))[:MAX_DISTANCES]
        distances = distances[pick.sort().values]
    weights = (span - distances).to(torch.float64)
    weights = weights / weights.sum() if weights.numel() else weights
    if distances.numel():
        cokeep = torch.stack([f.co_keep(distances) for f in fams])
    else:
        cokeep = torch.zeros(len(fams), 0, dtype=torch.float64)
    return CandidateSet(family, tuple(fams), units, rates, pmfs, offset, cokeep, weights, hint)
