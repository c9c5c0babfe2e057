"""The one call of PyTorch's fused LSTM op (``torch._VF.lstm``) in the ARD LSTM, always for a single layer."""

from __future__ import annotations

import torch
from torch import _VF


def fused_layer(
    x: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor],
    weights: list[torch.Tensor],
    *,
    batch_sizes: torch.Tensor | None = None,
    has_biases: bool = True,
    bidirectional: bool = False,
    batch_first: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer of ``_VF.lstm``, the single-layer form of what ``nn.LSTM.forward`` calls: ``x`` padded, or the
    rows of packed data with their ``batch_sizes``; ``weights`` per direction in nn.LSTM's order. Returns
    ``(output, h, c)``. One layer per call because the next layer's input pattern is applied between calls."""
    num_layers = 1
    dropout = 0.0  # the layer's input dropout (pattern or F.dropout) was applied before the call
    train = True  # only the training path gets here (eval mode runs nn.LSTM's own forward)
    if batch_sizes is not None:
        return _VF.lstm(x, batch_sizes, state, weights, has_biases, num_layers, dropout, train, bidirectional)
    return _VF.lstm(x, state, weights, has_biases, num_layers, dropout, train, bidirectional, batch_first)
