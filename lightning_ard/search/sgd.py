"""The paper's method: gradient descent on softmax logits of the mixture weights, then an exact rate projection.

Adam with cosine learning-rate decay from a start centred on the target kept count; the best iterate is pruned and
projected onto the rate constraint (:func:`prune_and_project`), so the expected rate equals p to rounding.
Why these choices, and the measurements behind them: docs/method.md, section "The SGD search: choices and the
measurements behind them".
"""

from __future__ import annotations

import torch

from lightning_ard.search.objective import Objective
from lightning_ard.search.projection import prune_and_project
from lightning_ard.search.settings import SearchSettings


def sgd_weights(objective: Objective, settings: SearchSettings) -> tuple[torch.Tensor, int]:
    """Mixture weights found by gradient descent (float64, sum 1, rate exactly p) and the steps taken."""
    cands = objective.candidates
    target = cands.units * (1.0 - objective.p)
    start = -settings.init_scale * (cands.means - target).abs() / objective.sigma
    gen = torch.Generator().manual_seed(settings.seed)
    noise = 0.01 * torch.randn(start.numel(), generator=gen, dtype=torch.float64)
    logits = (start + noise).requires_grad_()
    best_pi = torch.softmax(logits.detach(), 0)
    steps = settings.steps if start.numel() > 1 else 0  # one candidate: nothing to search
    if steps > 0:
        opt = torch.optim.Adam([logits], lr=settings.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        best = float("inf")
        for _ in range(steps):
            opt.zero_grad()
            pi = torch.softmax(logits, 0)
            loss = objective.loss(pi)
            value = float(loss.detach())
            if value < best:
                best, best_pi = value, pi.detach()
            loss.backward()
            opt.step()
            schedule.step()
    return prune_and_project(best_pi, cands.rates, objective.p), steps
