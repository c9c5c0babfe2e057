"""A probability distribution over candidate pattern families: what the search returns and the sampler draws from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import torch

from lightning_ard.patterns.row import RowFamily, RowPattern
from lightning_ard.patterns.tile import PeriodicTile, TilePattern

Family = Union[RowFamily, PeriodicTile]
Pattern = Union[RowPattern, TilePattern]


@dataclass(frozen=True, eq=False)
class PatternDistribution:
    """Candidates with probabilities; one step draws a candidate, then that candidate's own offset.

    Attributes:
        candidates: the pattern families (all of one kind: row families over one width, or tile families over
            one weight shape).
        probabilities: float64 tensor, one per candidate, summing to 1.
        target_rate: the dropout rate p the distribution was built for.
        diagnostics: what the search measured (kept-count distance to Binomial, co-keep deviation, ...).
    """

    candidates: tuple[Family, ...]
    probabilities: torch.Tensor
    target_rate: float
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.candidates) == 0:
            raise ValueError("candidates must not be empty")
        probs = torch.as_tensor(self.probabilities, dtype=torch.float64).flatten().clone()  # own copy: shared, cached
        if probs.numel() != len(self.candidates):
            raise ValueError(
                f"probabilities must have one entry per candidate ({len(self.candidates)}), got {probs.numel()}"
            )
        if (probs < 0).any() or abs(float(probs.sum()) - 1.0) > 1e-6:
            raise ValueError(f"probabilities must be >= 0 and sum to 1, got {probs.tolist()}")
        if abs(float(probs.sum()) - 1.0) > 1e-12:  # normalized once: a saved plan reloads bitwise the same
            probs = probs / probs.sum()
        widths = {c.width for c in self.candidates}
        if len(widths) != 1:
            raise ValueError(f"all candidates must have the same width, got widths {sorted(widths)}")
        object.__setattr__(self, "probabilities", probs)
        object.__setattr__(self, "_cdf", probs.cumsum(0))

    @property
    def width(self) -> int:
        """Units of the layer (tiles of the grid for tile families)."""
        return self.candidates[0].width

    @property
    def expected_rate(self) -> float:
        """Σ π_s · rate_s: the drop probability of every unit over steps."""
        rates = torch.tensor([c.rate for c in self.candidates], dtype=torch.float64)
        return float((self.probabilities * rates).sum())

    @property
    def expected_keep_fraction(self) -> float:
        """1 - expected_rate."""
        return 1.0 - self.expected_rate

    def sample(self, generator: torch.Generator | None = None) -> Pattern:
        """Draw one step's pattern: a candidate by its probability, then its offset, both from ``generator``."""
        return self._candidate(generator).sample(generator)

    def sample_many(self, n: int, generator: torch.Generator | None = None) -> list[Pattern]:
        """``n`` independent draws (one per pattern group), drawn candidate by candidate in one batch each."""
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        choice = torch.searchsorted(self._cdf, u, right=True).clamp(max=len(self.candidates) - 1)  # type: ignore[attr-defined]
        out: list[Pattern | None] = [None] * n
        for i in choice.unique().tolist():
            where = (choice == i).nonzero().flatten().tolist()
            for pos, pattern in zip(where, self.candidates[i].sample_many(len(where), generator), strict=True):
                out[pos] = pattern
        return out  # type: ignore[return-value]

    def sample_group(self, n: int, generator: torch.Generator | None = None, stratified: bool = False) -> list[Pattern]:
        """``n`` patterns of one candidate drawn for the step: the pattern groups of a step then keep the same number
        of units, so their compact activations stack into one ``(rows, K)`` tensor. Each unit is still kept with the
        candidate's probability in every group, and the candidate (hence the kept count) follows the distribution
        from step to step. Offsets are independent, or with ``stratified`` in equal strata of one random base
        (:meth:`RowFamily.sample_stratified`): every unit is then kept by (almost) the same number of groups, so a
        step's gradient of a unit no longer depends on how many groups happened to keep it."""
        family = self._candidate(generator)
        draw = family.sample_stratified if stratified else family.sample_many
        return list(draw(n, generator))

    def _candidate(self, generator: torch.Generator | None) -> Family:
        u = torch.rand((), generator=generator, dtype=torch.float64)
        i = min(int(torch.searchsorted(self._cdf, u, right=True)), len(self.candidates) - 1)  # type: ignore[attr-defined]
        return self.candidates[i]

    def support(self) -> list[tuple[Family, float]]:
        """Candidates with non-zero probability, with their probability."""
        return [(c, float(p)) for c, p in zip(self.candidates, self.probabilities) if p > 0]

    @classmethod
    def single(cls, family: Family, target_rate: float | None = None) -> "PatternDistribution":
        """A distribution that always uses one family (its own rate when no target is given)."""
        return cls((family,), torch.ones(1, dtype=torch.float64), family.rate if target_rate is None else target_rate)
