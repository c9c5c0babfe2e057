"""The search's objective: rate error, kept-count distance to Binomial(N, 1 - p), co-keep deviation, and the loss.

Every measure is a function of the mixture weights ``pi`` (one per candidate) and is differentiable in them; the
loss scales the terms by the binomial's standard deviation so one learning rate fits every width. Definitions,
the loss formula and how W1 is evaluated: docs/method.md, section "The objective in detail".
"""

from __future__ import annotations

import math

import torch

from lightning_ard.patterns import binomial_pmf
from lightning_ard.search.candidates import CandidateSet

# Binomial CDF values this close to 0 or 1 count as 0 or 1 in W1 (error at most 2 * _TAIL per count).
_TAIL = 1e-13


class Objective:
    """The measures and the loss of one search (candidate set, target rate and term weights).

    Args:
        candidates: the candidate set.
        p: the target drop rate.
        rate_weight, dist_weight, cokeep_weight: weights of the loss terms.
    """

    def __init__(
        self,
        candidates: CandidateSet,
        p: float,
        rate_weight: float = 1.0,
        dist_weight: float = 1.0,
        cokeep_weight: float = 0.0,
    ) -> None:
        self.candidates = candidates
        self.p = p
        self.rate_weight = rate_weight
        self.dist_weight = dist_weight
        self.cokeep_weight = cokeep_weight
        n_units = candidates.units
        pmf = binomial_pmf(n_units, 1.0 - p)
        self.binomial = pmf / pmf.sum()  # binomial_pmf's lgamma rounding leaves its sum off 1 by up to ~1e-10
        self.sigma = max(math.sqrt(n_units * p * (1.0 - p)), 1.0)
        # W1 * N split by column into constant, linear and absolute-value parts, so each step only touches the
        # columns near the binomial (derivation: docs/method.md, section "The objective in detail").
        binom_cdf = _accurate_cdf(self.binomial)
        first, cols = candidates.offset, min(candidates.pmfs.shape[1], n_units - candidates.offset)
        cdfs = candidates.pmfs.cumsum(dim=1)[:, :cols]
        window = binom_cdf[first : first + cols]
        varies = (cdfs.max(dim=0).values - cdfs.min(dim=0).values) > 0
        low, high = varies & (window <= _TAIL), varies & (window >= 1.0 - _TAIL)
        middle = varies & ~low & ~high
        self._cdfs = cdfs[:, middle].contiguous()
        self._binom_cdf = window[middle].contiguous()
        self._linear = cdfs[:, low].sum(dim=1) - cdfs[:, high].sum(dim=1)
        const = (cdfs[0, ~varies] - window[~varies]).abs().sum() - window[low].sum() + window[high].sum()
        const += binom_cdf[:first].sum() + (1.0 - binom_cdf[first + cols : n_units]).sum()
        self._w1_const = float(const)
        self._cokeep_target = (1.0 - p) ** 2

    def rate_error(self, pi: torch.Tensor) -> torch.Tensor:
        """Expected drop rate of the mixture minus p."""
        return pi @ self.candidates.rates - self.p

    def kept_count_w1(self, pi: torch.Tensor) -> torch.Tensor:
        """W1(mixture kept-count pmf, Binomial(N, 1 - p)) / N, for weights summing to 1."""
        moved = (pi @ self._cdfs - self._binom_cdf).abs().sum() + pi @ self._linear + self._w1_const
        return moved / self.candidates.units

    def cokeep_rms(self, pi: torch.Tensor) -> torch.Tensor:
        """Pair-weighted RMS of P(both kept at distance d) - (1 - p)^2 (0 when there are no pairs)."""
        weights = self.candidates.cokeep_weights
        if weights.numel() == 0:
            return pi.sum() * 0.0
        dev = pi @ self.candidates.cokeep - self._cokeep_target
        # sqrt has an infinite slope at 0; the tiny floor keeps the gradient finite at an exact match.
        return ((weights * dev * dev).sum() + 1e-30).sqrt()

    def loss(self, pi: torch.Tensor) -> torch.Tensor:
        """The weighted loss (formula: docs/method.md, section "The objective in detail")."""
        n_units = self.candidates.units
        total = self.rate_weight * (n_units * self.rate_error(pi) / self.sigma) ** 2
        total = total + self.dist_weight * n_units * self.kept_count_w1(pi) / self.sigma
        if self.cokeep_weight > 0:
            total = total + self.cokeep_weight * self.cokeep_rms(pi) / self._cokeep_target
        return total


def _accurate_cdf(pmf: torch.Tensor) -> torch.Tensor:
    """CDF of ``pmf`` with both tails accurate: a forward sum below the median, 1 - a backward sum above it."""
    forward = pmf.cumsum(0)
    survival = pmf.flip(0).cumsum(0).flip(0) - pmf  # P(X > j)
    return torch.where(forward < 0.5, forward, 1.0 - survival)
