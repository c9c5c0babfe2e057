"""Exact method: the mixture closest to Binomial(N, 1 - p) in W1 among those with drop rate exactly p.

The cross-check of the SGD search: a linear program over the same candidates (each a point mass at its mean kept
count), solved without an LP library by bisection on the multiplier of the rate constraint, then pruned and
re-projected. Derivation and error bound: docs/method.md, section "The exact method: the linear program and how
it is solved".
"""

from __future__ import annotations

import torch

from lightning_ard.search.candidates import CandidateSet
from lightning_ard.search.objective import Objective
from lightning_ard.search.projection import prune_and_project

# Binomial atoms below this mass (relative to the largest) are left out of the transport: at most ~1e-13 of
# the mass, which moves the mean by less than the final rate projection removes.
_ATOM_FLOOR = 1e-16


def exact_weights(objective: Objective, iterations: int = 100) -> tuple[torch.Tensor, int]:
    """The LP's weights (float64, sum 1, rate exactly p) and the number of bisection steps it took."""
    cands: CandidateSet = objective.candidates
    x = cands.means
    binom = objective.binomial
    keep = binom > _ATOM_FLOOR * float(binom.max())
    y = torch.arange(binom.numel(), dtype=torch.float64)[keep]
    mass = binom[keep] / binom[keep].sum()
    target = cands.units * (1.0 - objective.p)
    # Distinct means in increasing order, each standing for its first candidate. For |lam| < 1 the cost
    # |y - x| + lam (x - y) is convex in x with its minimum at x = y, so an atom goes to one of its two
    # neighbouring means; for |lam| >= 1 every atom goes to the largest (lam = -1) or smallest (lam = 1) mean.
    order = torch.sort(x, stable=True).indices
    xs = x[order]
    first = torch.ones_like(xs, dtype=torch.bool)
    first[1:] = xs[1:] != xs[:-1]
    ux, owner = xs[first], order[first]
    slot = torch.searchsorted(ux, y, right=True)
    above = slot.clamp(max=ux.numel() - 1)
    below = (slot - 1).clamp(min=0)

    def weights(slot: torch.Tensor) -> tuple[torch.Tensor, float]:
        pi = torch.zeros(x.numel(), dtype=torch.float64).index_add_(0, owner[slot], mass)
        return pi, float(pi @ x) - target

    def assign(lam: float) -> tuple[torch.Tensor, float]:
        cost_below = (y - ux[below]).abs() + lam * (ux[below] - y)
        cost_above = (ux[above] - y).abs() + lam * (ux[above] - y)
        return weights(torch.where(cost_above < cost_below, above, below))

    lo, hi = -1.0, 1.0
    lo_pi, lo_err = weights(torch.full_like(below, ux.numel() - 1))
    hi_pi, hi_err = weights(torch.zeros_like(below))
    steps = 0
    while steps < iterations and lo_err > 0 > hi_err:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        steps += 1
        pi_m, err_m = assign(mid)
        if err_m >= 0:
            lo, lo_pi, lo_err = mid, pi_m, err_m
        else:
            hi, hi_pi, hi_err = mid, pi_m, err_m
    if lo_err <= 0:
        pi = lo_pi
    elif hi_err >= 0:
        pi = hi_pi
    else:
        theta = lo_err / (lo_err - hi_err)
        pi = (1.0 - theta) * lo_pi + theta * hi_pi
    return prune_and_project(pi, cands.rates, objective.p), steps
