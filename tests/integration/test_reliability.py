"""Reliability around the fit (issue 15): activation checkpointing, mixed train/eval modes, resume settings."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lightning_ard import ApproximateDropout
from lightning_ard.controller import ARDController
from tests.integration.test_callback import MLP, _data, _trainer


class Checkpointed(MLP):
    """The MLP with its first block (Linear -> ReLU -> Dropout -> Linear) under activation checkpointing."""

    def __init__(self, use_reentrant: bool | None) -> None:
        super().__init__(widths=(20, 64, 64, 5))
        self.use_reentrant = use_reentrant

    def forward(self, x):
        if self.use_reentrant is None:
            return self.net(x)
        head, tail = self.net[:4], self.net[4:]
        x = x.requires_grad_() if self.use_reentrant else x  # reentrant mode needs an input that requires grad
        return tail(checkpoint(head, x, use_reentrant=self.use_reentrant))


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_activation_checkpointing_reuses_the_step_pattern(use_reentrant: bool) -> None:
    """Recomputation under checkpointing is not a second use: no call-count error, and loss and gradients equal
    the same step without checkpointing (the recomputed forward used this step's patterns)."""
    torch.manual_seed(0)
    plain = Checkpointed(None)
    ckpt = copy.deepcopy(plain)
    ckpt.use_reentrant = use_reentrant
    x, y = torch.randn(16, 20), torch.randint(0, 5, (16,))
    grads = []
    for model in (plain, ckpt):
        ctl = ARDController(model, pattern="block", groups=4, seed=3).apply()
        assert len(ctl.report.sites) == 2
        for _ in range(2):
            model.zero_grad()
            ctl.step()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            ctl.check_calls()  # the recomputation is not counted as a second call
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
        ctl.restore()
    (loss0, g0), (loss1, g1) = grads
    assert torch.equal(loss0, loss1)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g0, g1, strict=True))


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointed_fit_trains_with_ard(tmp_path, use_reentrant: bool) -> None:
    cb = ApproximateDropout(pattern="row", groups=1, measure_speedup=False, verbose=False)
    trainer = _trainer(tmp_path, cb, max_steps=3)
    trainer.fit(Checkpointed(use_reentrant), _data())
    assert trainer.global_step == 3 and trainer.callback_metrics["ard/flops_saved"] > 0
