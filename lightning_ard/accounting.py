"""Per-layer FLOP accounting of a training step (forward and backward matrix products), dense vs executed.

Counts follow ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add, matrix products only):
a Linear over M rows costs 2·M·out·in for the forward, the same for the weight gradient, and the same again for
the input gradient when the input requires one. ARD changes only ``out`` and ``in`` (row patterns) or the kept
share of the weight (tile patterns).
"""

from __future__ import annotations


def linear_step_flops(rows: int, out_features: int, in_features: int, grad_input: bool) -> int:
    """FLOPs of forward + backward of a Linear over ``rows`` rows (kept widths for an ARD layer)."""
    return 2 * rows * out_features * in_features * (3 if grad_input else 2)


def lstm_layer_step_flops(tokens: int, input_width: int, hidden: int, directions: int, grad_input: bool) -> int:
    """FLOPs of forward + backward of one LSTM layer over ``tokens`` = T·B inputs.

    Input projection 4H×input (forward, weight gradient, input gradient when needed) plus the recurrent 4H×H
    products (forward, weight gradient, hidden-state gradient), per direction.
    """
    gates = 4 * hidden
    projection = 2 * tokens * gates * input_width * (3 if grad_input else 2)
    recurrent = 2 * tokens * gates * hidden * 3
    return directions * (projection + recurrent)
