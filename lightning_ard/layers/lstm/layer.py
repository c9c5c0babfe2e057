"""One layer of an ARD LSTM on one input pattern: its input width, its state rows, its weights on the kept input
columns, and the whole-layer run that time chunks and sequence groups share."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ard.kernels.torch_ops import Index, take
from lightning_ard.layers.lstm.fused import fused_layer
from lightning_ard.layers.lstm.merge import SharedWeights, pattern_key
from lightning_ard.patterns import RowPattern

if TYPE_CHECKING:
    from lightning_ard.layers.lstm.module import ARDLSTM

State = tuple[torch.Tensor, torch.Tensor]


def lstm_layer_input_size(lstm: nn.LSTM, layer: int) -> int:
    """Width of layer ``layer``'s input of any ``nn.LSTM`` (ARD or restored)."""
    return lstm.input_size if layer == 0 else lstm.hidden_size * (2 if lstm.bidirectional else 1)


def kept_input(x: torch.Tensor, pattern: RowPattern, selector: Index, element_p: float = 0.0) -> torch.Tensor:
    """``x``'s columns kept by ``pattern``, scaled by its scale; with ``element_p`` > 0 also element-wise dropout at
    that rate on the kept columns (the share of a site's rate the pattern does not drop, fresh per element)."""
    kept = take(x, -1, selector)
    if element_p > 0.0:
        kept = F.dropout(kept, element_p, training=True)
    return kept * pattern.scale


def direction_suffixes(lstm: nn.LSTM) -> tuple[str, ...]:
    """The parameter name suffixes of ``lstm``'s directions, in nn.LSTM's order."""
    return ("", "_reverse") if lstm.bidirectional else ("",)


def layer_state(state: State, layer: int, dirs: int) -> State:
    """The ``(h, c)`` rows of ``layer`` (``dirs`` rows per layer)."""
    return state[0][layer * dirs : (layer + 1) * dirs], state[1][layer * dirs : (layer + 1) * dirs]


def direction_weights(lstm: nn.LSTM, layer: int, suffix: str, selector: Index) -> list[torch.Tensor]:
    """One direction's ``_VF.lstm`` params of ``layer``: ``weight_ih`` on the kept input columns, the rest whole."""
    w_ih = take(getattr(lstm, f"weight_ih_l{layer}{suffix}"), 1, selector)
    weights = [w_ih, getattr(lstm, f"weight_hh_l{layer}{suffix}")]
    if lstm.bias:
        weights += [getattr(lstm, f"bias_ih_l{layer}{suffix}"), getattr(lstm, f"bias_hh_l{layer}{suffix}")]
    return weights


def layer_weights(lstm: nn.LSTM, layer: int, selector: Index) -> list[torch.Tensor]:
    """Both directions' (or the one direction's) ``_VF.lstm`` params of ``layer``, in nn.LSTM's order."""
    return [w for suffix in direction_suffixes(lstm) for w in direction_weights(lstm, layer, suffix, selector)]


def run_layer(
    lstm: ARDLSTM,
    layer: int,
    x: torch.Tensor,
    state: State,
    pattern: RowPattern | None,
    shared: SharedWeights,
    *,
    batch_sizes: torch.Tensor | None,
    batch_first: bool,
    tokens: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``layer`` over all of ``x`` in one fused call on ``pattern``'s kept inputs (scaled), or without a pattern on
    the module's own dropout above layer 0; the call's work goes to the layer's record."""
    selector = pattern.selector(x.device) if pattern is not None else None
    if pattern is not None:
        x = kept_input(x, pattern, selector, lstm.ard_element_p[layer])
    elif layer > 0 and lstm.dropout > 0:
        x = F.dropout(x, lstm.dropout, training=True)
    weights = shared.get((layer, *pattern_key(pattern)), lambda: layer_weights(lstm, layer, selector))
    kept = pattern.num_kept if pattern is not None else lstm_layer_input_size(lstm, layer)
    lstm.ard_record.work[layer].append((tokens, kept, lstm.hidden_size))
    return fused_layer(
        x, state, weights,
        batch_sizes=batch_sizes, has_biases=lstm.bias, bidirectional=lstm.bidirectional, batch_first=batch_first,
    )  # fmt: skip
