"""Test helper: take the gradients autograd left on tensors (a copy each, or None) and clear them for the next pass."""

from __future__ import annotations

import torch


def take_grads(*tensors: torch.Tensor) -> list[torch.Tensor | None]:
    """Copies of ``t.grad`` for every tensor (None where there is none); the ``.grad`` fields are reset to None."""
    out = [t.grad.clone() if t.grad is not None else None for t in tensors]
    for t in tensors:
        t.grad = None
    return out
