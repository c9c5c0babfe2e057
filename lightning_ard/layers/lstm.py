"""ARD LSTM: the same ``nn.LSTM`` (same Parameters) whose layers read only the kept units of their inputs.

Each layer's input pattern removes columns of that layer's ``weight_ih`` (and of the input), so the input
projection shrinks with the keep fraction, while the recurrence still runs in PyTorch's own fused LSTM op
(``torch._VF.lstm``, i.e. cuDNN on a GPU) one layer at a time. Pattern 0 belongs to the dropout site before
the LSTM (embedding dropout); patterns 1.. replace ``nn.LSTM(dropout=p)``'s inter-layer dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import _VF, nn
from torch.nn.utils.rnn import PackedSequence

from lightning_ard.kernels.torch_ops import take
from lightning_ard.layers._swap import revert_class, swap_class
from lightning_ard.patterns import RowPattern


class ARDLSTM(nn.LSTM):
    """An ``nn.LSTM`` that, in training with patterns set, runs each layer on the kept units of its input.

    ``set_patterns(patterns)`` takes one entry per layer: a :class:`RowPattern` over that layer's input width
    (``input_size`` for layer 0, ``hidden_size * directions`` above), or ``None``. A ``None`` above layer 0 falls
    back to the module's own random dropout (``self.dropout``), so a partial set keeps nn.LSTM's semantics.
    In eval mode, or with no pattern set, it is exactly ``nn.LSTM``. ``proj_size > 0`` is not supported.
    """

    ard_patterns: list[RowPattern | None]

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM) -> "ARDLSTM":
        """Convert ``lstm`` in place (same object, same Parameters) and return it."""
        if lstm.proj_size > 0:
            raise ValueError(f"ARDLSTM does not support proj_size > 0, got proj_size={lstm.proj_size}")
        swap_class(lstm, nn.LSTM, cls)
        layer: ARDLSTM = lstm  # type: ignore[assignment]
        layer.ard_rows, layer.ard_grad_input = 0, False
        layer.clear_patterns()
        return layer

    def to_lstm(self) -> nn.LSTM:
        """Undo :meth:`from_lstm` in place."""
        revert_class(self, nn.LSTM, ("ard_patterns", "ard_rows", "ard_grad_input"))
        return self

    def layer_input_size(self, layer: int) -> int:
        """Width of layer ``layer``'s input."""
        return self.input_size if layer == 0 else self.hidden_size * (2 if self.bidirectional else 1)

    def set_patterns(self, patterns: list[RowPattern | None]) -> None:
        """Set this step's input pattern per layer (checked against each layer's input width)."""
        if len(patterns) != self.num_layers:
            raise ValueError(f"patterns must have one entry per layer ({self.num_layers}), got {len(patterns)}")
        for layer, pattern in enumerate(patterns):
            if pattern is not None and pattern.width != self.layer_input_size(layer):
                raise ValueError(
                    f"pattern for layer {layer} has width {pattern.width}, the layer's input width is "
                    f"{self.layer_input_size(layer)}"
                )
        self.ard_patterns = list(patterns)

    def clear_patterns(self) -> None:
        """Remove the patterns: the module behaves as ``nn.LSTM`` again."""
        self.ard_patterns = [None] * self.num_layers

    def _layer_weights(self, layer: int, pattern: RowPattern | None, device: torch.device) -> list[torch.Tensor]:
        weights = []
        for suffix in ("", "_reverse") if self.bidirectional else ("",):
            w_ih = getattr(self, f"weight_ih_l{layer}{suffix}")
            if pattern is not None:
                w_ih = take(w_ih, 1, pattern.selector(device))
            weights += [w_ih, getattr(self, f"weight_hh_l{layer}{suffix}")]
            if self.bias:
                weights += [getattr(self, f"bias_ih_l{layer}{suffix}"), getattr(self, f"bias_hh_l{layer}{suffix}")]
        return weights

    @torch.compiler.disable  # per-step patterns are Python data: run eagerly, compile the rest
    def forward(self, input, hx=None):  # type: ignore[no-untyped-def, override]
        if not self.training or all(p is None for p in self.ard_patterns):
            return super().forward(input, hx)
        dirs = 2 if self.bidirectional else 1
        packed = isinstance(input, PackedSequence)
        if packed:
            x, batch_sizes, sorted_indices, unsorted_indices = input
            batch = int(batch_sizes[0])
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(0 if self.batch_first else 1)
            batch = x.size(0) if self.batch_first else x.size(1)
            sorted_indices = unsorted_indices = None
        if hx is None:
            zeros = torch.zeros(self.num_layers * dirs, batch, self.hidden_size, dtype=x.dtype, device=x.device)
            hx = (zeros, zeros)
        else:
            if not packed and not batched:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            hx = self.permute_hidden(hx, sorted_indices)
        self.ard_rows = x.numel() // max(x.shape[-1], 1)  # tokens (T·B), read by FLOP accounting
        self.ard_grad_input = x.requires_grad
        hs, cs = [], []
        for layer, pattern in enumerate(self.ard_patterns):
            if pattern is not None:
                x = take(x, -1, pattern.selector(x.device)) * pattern.scale
            elif layer > 0 and self.dropout > 0:
                x = F.dropout(x, self.dropout, training=True)
            state = (hx[0][layer * dirs : (layer + 1) * dirs], hx[1][layer * dirs : (layer + 1) * dirs])
            weights = self._layer_weights(layer, pattern, x.device)
            if packed:
                x, h, c = _VF.lstm(x, batch_sizes, state, weights, self.bias, 1, 0.0, True, self.bidirectional)
            else:
                x, h, c = _VF.lstm(x, state, weights, self.bias, 1, 0.0, True, self.bidirectional, self.batch_first)
            hs.append(h)
            cs.append(c)
        hidden = self.permute_hidden((torch.cat(hs), torch.cat(cs)), unsorted_indices)
        if packed:
            return PackedSequence(x, batch_sizes, sorted_indices, unsorted_indices), hidden
        if not batched:
            x = x.squeeze(0 if self.batch_first else 1)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1))
        return x, hidden
