"""ARD LSTM: the same ``nn.LSTM`` (same Parameters) whose layers read only the kept units of their inputs.

Input patterns shrink each layer's input projection; the recurrence runs in PyTorch's fused op (``torch._VF.lstm``)
one layer at a time. Design: docs/method.md, section "The LSTM layer".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
import torch.nn.functional as F
from torch import _VF, nn
from torch.nn.utils.rnn import PackedSequence

from lightning_ard.kernels.torch_ops import Index, take
from lightning_ard.layers._swap import revert_class, swap_class
from lightning_ard.patterns import RowPattern
from lightning_ard.patterns.groups import as_groups, common_groups, group_bounds

RowSlot = Union[RowPattern, Sequence[RowPattern], None]


class ARDLSTM(nn.LSTM):
    """An ``nn.LSTM`` that, in training with patterns set, runs each layer on the kept units of its input.

    ``set_patterns(patterns)`` takes one entry per layer: a :class:`RowPattern` over that layer's input width
    (``input_size`` for layer 0, ``hidden_size * directions`` above), or ``None``. A ``None`` above layer 0 falls
    back to the module's own random dropout (``self.dropout``), so a partial set keeps nn.LSTM's semantics.
    An entry may also be a sequence of G patterns (every non-``None`` entry the same G): the time steps are then
    cut into G contiguous chunks, chunk g uses pattern g, and each layer runs chunk after chunk carrying its
    state (:mod:`lightning_ard.patterns.groups`). Grouped patterns do not support bidirectional LSTMs on packed
    sequences. In eval mode, or with no pattern set, it is exactly ``nn.LSTM``. ``proj_size > 0`` is not supported.
    """

    ard_patterns: list[tuple[RowPattern, ...] | None]
    ard_groups: int

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM) -> "ARDLSTM":
        """Convert ``lstm`` in place (same object, same Parameters) and return it."""
        if lstm.proj_size > 0:
            raise ValueError(f"ARDLSTM does not support proj_size > 0, got proj_size={lstm.proj_size}")
        swap_class(lstm, nn.LSTM, cls)
        layer: ARDLSTM = lstm  # type: ignore[assignment]
        layer.ard_rows, layer.ard_group_rows, layer.ard_grad_input = 0, [], False
        layer.clear_patterns()
        return layer

    def to_lstm(self) -> nn.LSTM:
        """Undo :meth:`from_lstm` in place."""
        attributes = ("ard_patterns", "ard_groups", "ard_rows", "ard_group_rows", "ard_grad_input")
        revert_class(self, nn.LSTM, attributes)
        return self

    def layer_input_size(self, layer: int) -> int:
        """Width of layer ``layer``'s input."""
        return self.input_size if layer == 0 else self.hidden_size * (2 if self.bidirectional else 1)

    def set_patterns(self, patterns: Sequence[RowSlot]) -> None:
        """Set this step's input pattern(s) per layer (checked against each layer's input width)."""
        if len(patterns) != self.num_layers:
            raise ValueError(f"patterns must have one entry per layer ({self.num_layers}), got {len(patterns)}")
        slots = [as_groups(p, f"pattern for layer {i}") for i, p in enumerate(patterns)]
        groups = common_groups({f"layer {i}": slot for i, slot in enumerate(slots)})
        for layer, slot in enumerate(slots):
            for pattern in slot or ():
                if pattern.width != self.layer_input_size(layer):
                    raise ValueError(
                        f"pattern for layer {layer} has width {pattern.width}, the layer's input width is "
                        f"{self.layer_input_size(layer)}"
                    )
        self.ard_patterns, self.ard_groups = slots, groups

    def clear_patterns(self) -> None:
        """Remove the patterns: the module behaves as ``nn.LSTM`` again."""
        self.ard_patterns, self.ard_groups = [None] * self.num_layers, 1

    def _direction_weights(self, layer: int, suffix: str, selector: Index) -> list[torch.Tensor]:
        """One direction's ``_VF.lstm`` params of ``layer``: ``weight_ih`` on the kept input columns, the rest whole."""
        w_ih = take(getattr(self, f"weight_ih_l{layer}{suffix}"), 1, selector)
        weights = [w_ih, getattr(self, f"weight_hh_l{layer}{suffix}")]
        if self.bias:
            weights += [getattr(self, f"bias_ih_l{layer}{suffix}"), getattr(self, f"bias_hh_l{layer}{suffix}")]
        return weights

    def _layer_weights(self, layer: int, selector: Index) -> list[torch.Tensor]:
        """Both directions' (or the one direction's) ``_VF.lstm`` params of ``layer``, in nn.LSTM's order."""
        suffixes = ("", "_reverse") if self.bidirectional else ("",)
        return [w for suffix in suffixes for w in self._direction_weights(layer, suffix, selector)]

    @torch.compiler.disable  # per-step patterns are Python data: run eagerly, compile the rest
    def forward(self, input, hx=None):  # type: ignore[no-untyped-def, override]
        if not self.training or all(p is None for p in self.ard_patterns):
            return super().forward(input, hx)
        dirs = 2 if self.bidirectional else 1
        packed = isinstance(input, PackedSequence)
        grouped = self.ard_groups > 1
        batch_sizes = None
        if packed:
            if grouped and self.bidirectional:
                raise ValueError(
                    f"ARDLSTM: {self.ard_groups} pattern groups are not supported for a bidirectional LSTM on "
                    "packed sequences; pass padded input, or use groups=1"
                )
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
        batch_first = self.batch_first and not grouped
        if grouped and not packed and self.batch_first:
            x = x.transpose(0, 1)  # grouped layers cut the time axis: run time-major
        steps = len(batch_sizes) if packed else x.size(0)
        bounds = group_bounds(steps, self.ard_groups)
        if packed:
            offsets = [0, *torch.cumsum(batch_sizes, 0).tolist()]
            self.ard_group_rows = [offsets[t1] - offsets[t0] for t0, t1 in bounds]
        else:
            self.ard_group_rows = [(t1 - t0) * self.ard_rows // max(steps, 1) for t0, t1 in bounds]
        hs, cs = [], []
        for layer, slot in enumerate(self.ard_patterns):
            state = (hx[0][layer * dirs : (layer + 1) * dirs], hx[1][layer * dirs : (layer + 1) * dirs])
            if slot is not None and grouped:
                x, h, c = self._grouped_layer(layer, x, batch_sizes, state, slot, bounds)
                hs.append(h)
                cs.append(c)
                continue
            pattern = slot[0] if slot is not None else None
            if pattern is not None:
                x = take(x, -1, pattern.selector(x.device)) * pattern.scale
            elif layer > 0 and self.dropout > 0:
                x = F.dropout(x, self.dropout, training=True)
            weights = self._layer_weights(layer, pattern.selector(x.device) if pattern is not None else None)
            # _VF.lstm's positional arguments, by name (same order as nn.LSTM.forward passes them):
            has_biases = self.bias
            num_layers = 1  # one layer per call: the next layer's input pattern is applied between calls
            dropout = 0.0  # this layer's input dropout (pattern or F.dropout) was applied above
            train = self.training  # always True here: eval mode returned early
            bidirectional = self.bidirectional
            if packed:
                x, h, c = _VF.lstm(
                    x, batch_sizes, state, weights, has_biases, num_layers, dropout, train, bidirectional
                )
            else:
                x, h, c = _VF.lstm(
                    x, state, weights, has_biases, num_layers, dropout, train, bidirectional, batch_first
                )
            hs.append(h)
            cs.append(c)
        if grouped and not packed and self.batch_first:
            x = x.transpose(0, 1)
        hidden = self.permute_hidden((torch.cat(hs), torch.cat(cs)), unsorted_indices)
        if packed:
            return PackedSequence(x, batch_sizes, sorted_indices, unsorted_indices), hidden
        if not batched:
            x = x.squeeze(0 if self.batch_first else 1)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1))
        return x, hidden

    def _grouped_layer(
        self,
        layer: int,
        x: torch.Tensor,
        batch_sizes: torch.Tensor | None,
        state: tuple[torch.Tensor, torch.Tensor],
        patterns: tuple[RowPattern, ...],
        bounds: list[tuple[int, int]],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One layer over time chunks, chunk g on pattern g's kept inputs; the state flows chunk to chunk (the
        reverse direction runs the chunks, and the steps within each, backwards)."""
        packed = batch_sizes is not None
        offsets = [0, *torch.cumsum(batch_sizes, 0).tolist()] if packed else None
        runs: list[tuple[int, int, RowPattern, object]] = []  # adjacent chunks with one pattern run as one call
        for (t0, t1), pattern in zip(bounds, patterns, strict=True):
            if t1 == t0:
                continue
            key = pattern.merge_key
            if runs and runs[-1][3] == key:
                runs[-1] = (runs[-1][0], t1, runs[-1][2], key)
            else:
                runs.append((t0, t1, pattern, key))
        # _VF.lstm's positional arguments, by name: one layer, one direction per call, no dropout inside the op
        # (the chunk's pattern is applied to its input), time-major input.
        has_biases = self.bias
        num_layers = 1
        dropout = 0.0
        train = self.training  # always True here: only the training path groups
        bidirectional = False  # the reverse direction is its own call on flipped chunks
        batch_first = False
        outputs, hs, cs = [], [], []
        for d, suffix in enumerate(("", "_reverse") if self.bidirectional else ("",)):
            h, c = state[0][d : d + 1], state[1][d : d + 1]
            pieces: list[torch.Tensor | None] = [None] * len(runs)
            order = range(len(runs)) if d == 0 else reversed(range(len(runs)))
            gathered: dict[object, list[torch.Tensor]] = {}  # chunks that drew the same pattern share one gather
            for g in order:
                t0, t1, pattern, key = runs[g]
                selector = pattern.selector(x.device)
                weights = gathered.get(key)
                if weights is None:
                    weights = gathered[key] = self._direction_weights(layer, suffix, selector)
                if packed:
                    sizes = batch_sizes[t0:t1]  # type: ignore[index]
                    active = int(sizes[0])
                    xg = take(x[offsets[t0] : offsets[t1]], -1, selector) * pattern.scale  # type: ignore[index]
                    out, hg, cg = _VF.lstm(
                        xg, sizes, (h[:, :active], c[:, :active]), weights,
                        has_biases, num_layers, dropout, train, bidirectional,
                    )  # fmt: skip
                    h, c = torch.cat([hg, h[:, active:]], 1), torch.cat([cg, c[:, active:]], 1)
                else:
                    xg = take(x[t0:t1], -1, selector) * pattern.scale
                    xg = xg.flip(0) if d == 1 else xg
                    out, h, c = _VF.lstm(
                        xg, (h, c), weights, has_biases, num_layers, dropout, train, bidirectional, batch_first
                    )
                    out = out.flip(0) if d == 1 else out
                pieces[g] = out
            outputs.append(torch.cat([piece for piece in pieces if piece is not None]))
            hs.append(h)
            cs.append(c)
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, -1)
        return out, torch.cat(hs), torch.cat(cs)
