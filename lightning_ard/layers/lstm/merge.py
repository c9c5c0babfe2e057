"""Merging the pattern groups of an ARD LSTM that drew the same pattern (equal ``merge_key``).

Groups (time chunks or groups of sequences) whose patterns keep the same units with the same scale share one gather
of their weight slices (:class:`SharedWeights`), and adjacent time chunks that drew one pattern run as one fused call
(:func:`merge_runs`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lightning_ard.patterns import RowPattern
from lightning_ard.patterns.groups import pattern_key  # noqa: F401 - the LSTM modes key their merges by it


class SharedWeights:
    """Weight slices gathered once per forward for each distinct key and shared by every group that drew it."""

    def __init__(self) -> None:
        self._weights: dict[object, list[torch.Tensor]] = {}

    def get(self, key: object, build: Callable[[], list[torch.Tensor]]) -> list[torch.Tensor]:
        """The slices stored under ``key``, built by ``build()`` the first time the key is asked for."""
        weights = self._weights.get(key)
        if weights is None:
            weights = self._weights[key] = build()
        return weights


@dataclass(frozen=True)
class Run:
    """Adjacent spans ``[start, stop)`` of an axis that all drew ``pattern``: one fused call."""

    start: int
    stop: int
    pattern: RowPattern


def merge_runs(bounds: Sequence[tuple[int, int]], patterns: Sequence[RowPattern]) -> list[Run]:
    """The non-empty spans ``bounds[g]`` (pattern ``patterns[g]``) in order, adjacent ones with equal merge keys
    joined into one run; equal patterns that are not adjacent stay separate runs (their calls share a gather)."""
    runs: list[Run] = []
    for (start, stop), pattern in zip(bounds, patterns, strict=True):
        if stop == start:
            continue
        if runs and runs[-1].stop == start and runs[-1].pattern.merge_key == pattern.merge_key:
            runs[-1] = Run(runs[-1].start, stop, runs[-1].pattern)
        else:
            runs.append(Run(start, stop, pattern))
    return runs
