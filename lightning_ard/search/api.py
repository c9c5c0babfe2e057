"""``search_distribution``: from a dropout rate to a distribution over patterns (validated, cached).

Rules *(ours)*:
- ``width`` is the width of the dropout site: the number of features the dropout sees. For the row families the
  patterns run over those N units. For ``family="tile"`` the tile pattern replaces that dropout by DropConnect
  on the weight of the Linear that consumes those features, so ``width`` must equal that weight's
  ``in_features = shape[1]``; the search then works on the weight's tile grid (N = number of tiles, the unit a
  tile pattern drops), and the returned distribution's ``width`` is the tile count, as for :class:`PeriodicTile`.
- The result keeps only the candidates with non-zero probability (``diagnostics["candidates"]`` says how many
  were searched). Its expected rate equals p to rounding: both methods end with an exact projection.
- Results are cached per arguments (LRU, 256 entries); the same object is returned for equal arguments.
  Treat it as read-only.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from lightning_ard._validate import check_choice, check_positive_int, check_rate, check_tile
from lightning_ard.patterns import PatternDistribution
from lightning_ard.patterns.tile import DEFAULT_TILE
from lightning_ard.search.candidates import FAMILIES, build_candidates
from lightning_ard.search.diagnostics import diagnose
from lightning_ard.search.exact import exact_weights
from lightning_ard.search.objective import Objective
from lightning_ard.search.settings import SearchSettings
from lightning_ard.search.sgd import sgd_weights

METHODS = ("sgd", "exact")


def search_distribution(
    p: float,
    width: int,
    family: str = "row",
    method: str = "sgd",
    *,
    shape: tuple[int, int] | None = None,
    tile: tuple[int, int] = DEFAULT_TILE,
    **settings: Any,
) -> PatternDistribution:
    """A distribution over patterns of ``family`` whose expected drop rate is ``p`` and whose per-step kept count is
    as close as the candidates allow to standard dropout's Binomial(N, 1 - p).

    Args:
        p: target drop rate, in [0, 1).
        width: width of the dropout site (row families: the units the patterns run over; "tile": must equal
            ``in_features`` of ``shape``).
        family: "row" (periodic, the paper's), "block", "random" or "tile" (see :mod:`candidates`).
        method: "sgd" (the paper's search) or "exact" (the linear-program cross-check).
        shape: ``(out_features, in_features)`` of the weight; required for "tile", not allowed otherwise.
        tile: tile shape of the "tile" family.
        **settings: see :class:`SearchSettings` (dp_max, ks, spread, max_candidates, lr, steps, init_scale,
            rate_weight, dist_weight, cokeep_weight, seed).

    Raises:
        ValueError: naming the argument, its value and what is allowed, for any bad argument, and when no mixture
            of the candidates reaches ``p`` (naming the reachable range and the setting to change).
    """
    p = check_rate("p", p)
    check_positive_int("width", width)
    check_choice("family", family, FAMILIES)
    check_choice("method", method, METHODS)
    config = SearchSettings.from_kwargs(settings)
    if family == "tile":
        if shape is None:
            raise ValueError("shape=(out_features, in_features) is required for family='tile', got None")
        shape = check_tile("shape", shape)
        tile = check_tile("tile", tile)
        if width != shape[1]:
            raise ValueError(
                f"width must equal in_features = {shape[1]} (the consumer weight's input width) for family='tile' "
                f"with shape={shape}, got {width!r}"
            )
        return _search(p, width, family, method, shape, tile, config)
    if shape is not None:
        raise ValueError(f"shape applies only to family='tile', got shape={shape!r} with family={family!r}")
    return _search(p, width, family, method, None, None, config)


def clear_search_cache() -> None:
    """Forget every cached search result (the next calls compute afresh)."""
    _search.cache_clear()


@lru_cache(maxsize=256)
def _search(
    p: float,
    width: int,
    family: str,
    method: str,
    shape: tuple[int, int] | None,
    tile: tuple[int, int] | None,
    settings: SearchSettings,
) -> PatternDistribution:
    """The uncached search (arguments validated and normalized: this is the cache key)."""
    cands = build_candidates(family, p, width, shape, tile or DEFAULT_TILE, settings)
    cands.check_reaches(p)
    # Within the 1e-12 slack of the reachability check, solve for the nearest reachable rate.
    p_solve = min(max(p, float(cands.rates.min())), float(cands.rates.max()))
    objective = Objective(cands, p_solve, settings.rate_weight, settings.dist_weight, settings.cokeep_weight)
    if method == "sgd":
        pi, steps = sgd_weights(objective, settings)
    else:
        pi, steps = exact_weights(objective)
    if p_solve != p:
        objective = Objective(cands, p, settings.rate_weight, settings.dist_weight, settings.cokeep_weight)
    diagnostics = diagnose(objective, pi, method, steps)
    keep = (pi > 0).nonzero().flatten().tolist()
    probs = pi[keep] / pi[keep].sum()
    return PatternDistribution(tuple(cands.families[i] for i in keep), probs.to(torch.float64), p, diagnostics)
