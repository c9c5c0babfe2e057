"""Exact rate projection: the smallest change of mixture weights that makes the expected drop rate exactly p.

The SGD's rate term is a penalty, so its weights end a little off the target. The projection finds the
Euclidean-nearest point of {pi >= 0, sum pi = 1, sum pi_s rate_s = p}. By the KKT conditions that point is
``simplex_projection(pi0 - lam * rates)`` for one scalar ``lam``, and its expected rate is non-increasing in
``lam`` (projections onto a convex set are monotone), so a bisection on ``lam`` finds it. The bisection ends
with two weight vectors whose rates bracket p; the convex combination of the two that hits p exactly is
returned (the rate is linear in the weights), so the result is exact to rounding, not to a tolerance.
"""

from __future__ import annotations

import torch

# Weights below this are set to zero before the final projection: they are optimizer residue (sgd) or binomial
# tails of no consequence (exact), and dropping them keeps the returned distribution small.
PRUNE = 1e-6


def simplex_projection(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of ``v`` onto the probability simplex (sort-based, exact)."""
    u = v.sort(descending=True).values
    css = u.cumsum(0) - 1.0
    ind = torch.arange(1, v.numel() + 1, dtype=v.dtype)
    rho = int((u - css / ind > 0).nonzero().max())
    tau = css[rho] / (rho + 1)
    return (v - tau).clamp(min=0.0)


def project_rate(pi0: torch.Tensor, rates: torch.Tensor, p: float, iterations: int = 200) -> torch.Tensor:
    """Nearest weights to ``pi0`` with ``pi >= 0``, ``sum pi = 1`` and ``pi @ rates == p`` (float64).

    ``p`` must lie within [min rates, max rates]; the caller checks that (it is the reachability check).
    """
    pi0 = pi0.to(torch.float64)
    rates = rates.to(torch.float64)

    def at(lam: float) -> tuple[torch.Tensor, float]:
        pi = simplex_projection(pi0 - lam * rates)
        return pi, float(pi @ rates) - p

    pi, err = at(0.0)
    if err == 0.0:
        return pi
    # Bracket: g(lam) = rate(lam) - p is non-increasing; find lo with g >= 0 and hi with g <= 0.
    far, far_pi, far_err = 0.0, pi, err
    step = 1.0 if err > 0 else -1.0
    for _ in range(200):
        far = step
        far_pi, far_err = at(far)
        crossed = far_err <= 0 if err > 0 else far_err >= 0
        if crossed:
            break
        step *= 2.0
    if err > 0:
        lo, lo_pi, lo_err, hi, hi_pi, hi_err = 0.0, pi, err, far, far_pi, far_err
    else:
        lo, lo_pi, lo_err, hi, hi_pi, hi_err = far, far_pi, far_err, 0.0, pi, err
    for _ in range(iterations):
        if lo_err == 0.0 or hi_err == 0.0 or hi - lo <= 1e-15 * max(1.0, abs(lo), abs(hi)):
            break
        mid = 0.5 * (lo + hi)
        pi_m, err_m = at(mid)
        if err_m >= 0:
            lo_pi, lo_err, lo = pi_m, err_m, mid
        else:
            hi_pi, hi_err, hi = pi_m, err_m, mid
    if lo_err == 0.0:
        return lo_pi
    if hi_err == 0.0 or lo_err == hi_err:
        return hi_pi
    theta = lo_err / (lo_err - hi_err)
    pi = (1.0 - theta) * lo_pi + theta * hi_pi
    return pi.clamp(min=0.0) / pi.clamp(min=0.0).sum()


def prune_and_project(pi: torch.Tensor, rates: torch.Tensor, p: float, threshold: float = PRUNE) -> torch.Tensor:
    """Zero the weights below ``threshold``, renormalize, then :func:`project_rate` (which may revive some)."""
    kept = torch.where(pi < threshold, torch.zeros_like(pi), pi)
    if float(kept.sum()) > 0:
        pi = kept
    return project_rate(pi / pi.sum(), rates, p)
