"""ARD Dropout: the dropout module of a site, which hands its work to the neighbouring ARD layers."""

from __future__ import annotations

import torch
from torch import nn

from lightning_ard.layers._swap import revert_class, swap_class


def _in_backward() -> bool:
    """Whether the autograd engine is running a backward pass now (where checkpointing recomputes forwards)."""
    return torch._C._current_graph_task_id() != -1


class ARDDropout(nn.Dropout):
    """An ``nn.Dropout`` whose sites are all served by ARD layers: in training it passes its input through.

    The consumer after it gathers the kept units and applies the scale; a producer before it already computed
    only kept units. Every use of the module must be such a site (the surgery proves it); when ``ard_enabled`` is
    False, or in eval mode, it is exactly ``nn.Dropout``. ``ard_calls`` counts training calls of the forward pass,
    so the callback can check that the module ran as often as it has sites (a use the surgery did not see would
    otherwise lose its dropout silently). A call made while autograd runs the backward pass is activation
    checkpointing recomputing the forward: it is not a second use and is not counted (and since this step's patterns
    are fixed data on the layers, the recomputation uses the same pattern, as nn.Dropout's restored RNG state does).
    """

    ard_enabled: bool
    ard_calls: int

    @classmethod
    def from_dropout(cls, dropout: nn.Dropout) -> "ARDDropout":
        """Convert ``dropout`` in place and return it (disabled until ``ard_enabled`` is set)."""
        swap_class(dropout, nn.Dropout, cls)
        layer: ARDDropout = dropout  # type: ignore[assignment]
        layer.ard_enabled = False
        layer.ard_calls = 0
        return layer

    def to_dropout(self) -> nn.Dropout:
        """Undo :meth:`from_dropout` in place."""
        revert_class(self, nn.Dropout, ("ard_enabled", "ard_calls"))
        return self

    @torch.compiler.disable  # per-step patterns are Python data: run eagerly, compile the rest
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.training and self.ard_enabled:
            if not _in_backward():
                self.ard_calls += 1
            return input
        return super().forward(input)
