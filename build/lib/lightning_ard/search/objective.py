"""The search's objective: rate error, kept-count distance to Binomial(N, 1 - p), co-keep deviation, and the loss.

Every measure is a function of the mixture weights ``pi`` (one per candidate) and is differentiable in them.

- **Rate error**: ``sum_s pi_s rate_s - p``; every unit is then dropped with probability ``p + error`` over steps.
- **Kept-count distance** (``kept_count_w1``): the Wasserstein-1 distance between the mixture's pmf of the number
  of kept units in one step and Binomial(N, 1 - p) (what standard dropout gives), divided by N:
  ``sum_j |F_mix(j) - F_binom(j)| / N`` with F the CDFs. It is 0 for equal distributions, at most 1, reads as "how
  far, as a fraction of the layer, the kept count must be moved", and is convex and piecewise linear in ``pi``
  because the mixture CDF is linear in ``pi``.
- **Co-keep deviation** (``cokeep_rms``): with ``P(d) = sum_s pi_s P_s(both units at distance d kept)``, the RMS of
  ``P(d) - (1 - p)^2`` over distances d = 1..N-1 weighted by the number of pairs at that distance, N - d. Standard
  dropout keeps units independently, so its deviation is 0; a periodic pattern, which keeps units at a fixed
  distance together or never, is far from it. (Tiles: distances along one tile row. Rows longer than 1025 use a
  fixed random subset of 1024 distances, see :mod:`candidates`.)

The loss measures the first two terms in units of the binomial's standard deviation sigma = sqrt(N p (1 - p))
(at least 1), so that a single learning rate fits every width:

    loss = rate_weight * (N * rate_error / sigma)^2 + dist_weight * (N * kept_count_w1 / sigma)
           + cokeep_weight * cokeep_rms / (1 - p)^2

which is the paper's ``w_rate (sum pi rate - p)^2 + w_dist D + w_cokeep C`` with width-dependent scales folded in.

W1 is evaluated to within about 1e-12: the binomial pmf is renormalized to sum 1 and its CDF tails are taken as
exactly 0 and 1 beyond 1e-13 (see ``Objective.__init__``), which makes the per-step cost depend on the width of
the binomial (about 15 sigma), not on N.
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
        # W1 * N = sum over j = 0..N-1 of |F_mix(j) - F_binom(j)|, split by column into parts that are cheap per step:
        # - below the candidates' window F_mix = 0, above it F_mix = 1, and where every candidate has the same CDF,
        #   F_mix is that CDF (the weights sum to 1): constants;
        # - where F_binom is within _TAIL of 0 (or 1), |F_mix - F_binom| = F_mix - F_binom (or F_binom - F_mix) up to
        #   2 * _TAIL: linear in the weights;
        # - the rest (about 20 binomial standard deviations wide) keeps the absolute value.
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
        """The weighted loss (see the module docstring)."""
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
