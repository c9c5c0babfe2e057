"""What a search reports about its result: the measures of :mod:`objective` for the found weights and a baseline.

Keys (plain Python values, so the dictionary can be logged or written as JSON as is):

- ``method``, ``family``: how the result was found.
- ``expected_rate``: sum_s pi_s rate_s, the drop probability of every unit over steps; ``rate_error``: minus p.
- ``kept_count_w1``: W1(kept-count pmf of the mixture, Binomial(N, 1 - p)) / N (see :mod:`objective`).
- ``baseline_w1``: the same for the two-candidate bracketing mixture (:mod:`baseline`); the search's gain.
- ``cokeep_rms``: pair-weighted RMS deviation of the co-keep probability from (1 - p)^2.
- ``loss``: the objective's loss at the result (same weights for both methods, so they compare).
- ``steps``: optimizer steps (sgd) or bisection steps (exact).
- ``units``: N; ``binomial_std``: sqrt(N p (1 - p)); ``candidates``: how many candidates were searched;
  ``support``: how many have non-zero probability (the result keeps only those).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lightning_ard.search.baseline import bracketing_weights
from lightning_ard.search.objective import Objective


def diagnose(objective: Objective, pi: torch.Tensor, method: str, steps: int) -> dict[str, Any]:
    """The diagnostics dictionary of weights ``pi`` (over all candidates of ``objective``)."""
    cands = objective.candidates
    p = objective.p
    with torch.no_grad():
        expected = float(pi @ cands.rates)
        baseline = bracketing_weights(cands.rates, min(max(p, float(cands.rates.min())), float(cands.rates.max())))
        return {
            "method": method,
            "family": cands.family,
            "expected_rate": expected,
            "rate_error": expected - p,
            "kept_count_w1": float(objective.kept_count_w1(pi)),
            "baseline_w1": float(objective.kept_count_w1(baseline)),
            "cokeep_rms": float(objective.cokeep_rms(pi)),
            "loss": float(objective.loss(pi)),
            "steps": int(steps),
            "units": cands.units,
            "binomial_std": math.sqrt(cands.units * p * (1.0 - p)),
            "candidates": len(cands.families),
            "support": int((pi > 0).sum()),
        }
