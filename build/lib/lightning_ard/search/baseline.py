"""The naive reference mixture: the two candidates whose rates bracket p, mixed to hit p exactly.

This is what one would do without a search (a single pattern when one has rate p), so the diagnostics report
its kept-count distance next to the search's: the gain of the search is the difference.
"""

from __future__ import annotations

import torch


def bracketing_weights(rates: torch.Tensor, p: float) -> torch.Tensor:
    """Weights on the nearest candidate rate <= p and the nearest >= p (first of equals), with mean rate p.

    ``p`` must lie within [min rates, max rates] (the caller's reachability check).
    """
    rates = rates.to(torch.float64)
    below = torch.where(rates <= p, rates, torch.full_like(rates, -torch.inf))
    above = torch.where(rates >= p, rates, torch.full_like(rates, torch.inf))
    i, j = int(below.argmax()), int(above.argmin())
    pi = torch.zeros_like(rates)
    if not torch.isfinite(below[i]) or not torch.isfinite(above[j]) or above[j] == below[i]:
        pi[j if torch.isfinite(above[j]) else i] = 1.0
        return pi
    theta = (p - float(below[i])) / float(above[j] - below[i])
    pi[i] = 1.0 - theta
    pi[j] = theta
    return pi
