"""ARD LSTM: the same ``nn.LSTM`` (same Parameters) whose layers read only the kept units of their inputs.

Input patterns shrink each layer's input projection; the recurrence runs in PyTorch's fused op (``torch._VF.lstm``)
one layer at a time. Pattern groups cut the time axis (``mode="time"``: one fused call per time chunk) or the batch
axis (``mode="sequence"``: a group of sequences keeps one pattern for all its time steps, as locked / variational
dropout does: one fused call per group and layer). In sequence mode, hidden-unit patterns (recurrent-path
structured dropout, opt-in) make a dropped unit absent from its group: the group runs a smaller LSTM on weight
slices. Design: docs/method.md, section "The LSTM layer".
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
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

LSTM_MODES = ("time", "sequence")
"""What pattern groups cut in an ARD LSTM: time steps (chunks of the sequence) or sequences (groups of the batch)."""

_ATTRIBUTES = (
    "ard_patterns", "ard_hidden", "ard_groups", "ard_mode", "ard_rows", "ard_group_rows", "ard_grad_input",
    "ard_work", "ard_layout", "ard_followers",
)  # fmt: skip

Work = tuple[int, int, int]
"""One fused call's work in one layer: (tokens, input units read, hidden units run)."""


def lstm_layer_input_size(lstm: nn.LSTM, layer: int) -> int:
    """Width of layer ``layer``'s input of any ``nn.LSTM`` (ARD or restored)."""
    return lstm.input_size if layer == 0 else lstm.hidden_size * (2 if lstm.bidirectional else 1)


@dataclass(frozen=True)
class SequenceLayout:
    """How the last sequence-mode forward grouped its batch (read by :class:`SequenceFollower`).

    Attributes:
        batch: sequences in the batch.
        seq_groups: group of each sequence, in the caller's batch order.
        packed_rows: group of each row of the packed data (packed input), else ``None``.
    """

    batch: int
    seq_groups: tuple[int, ...]
    packed_rows: tuple[int, ...] | None


@functools.lru_cache(maxsize=4096)
def unscaled(pattern: RowPattern) -> RowPattern:
    """``pattern`` with scale 1 (same kept units): how a Linear reads a structured LSTM's already scaled output."""
    return replace(pattern, scale=1.0, _on_device={})


@functools.lru_cache(maxsize=4096)
def _gate_rows(pattern: RowPattern, hidden: int, device: torch.device) -> torch.Tensor:
    """Rows of ``weight_ih``/``weight_hh``/biases that belong to the kept units' four gates (i, f, g, o order)."""
    return (torch.arange(4)[:, None] * hidden + pattern.kept[None, :]).flatten().to(device)


class ARDLSTM(nn.LSTM):
    """An ``nn.LSTM`` that, in training with patterns set, runs each layer on the kept units of its input.

    ``set_patterns(patterns)`` takes one entry per layer: a :class:`RowPattern` over that layer's input width
    (``input_size`` for layer 0, ``hidden_size * directions`` above), or ``None``. A ``None`` above layer 0 falls
    back to the module's own random dropout (``self.dropout``), so a partial set keeps nn.LSTM's semantics.
    An entry may also be a sequence of G patterns (every non-``None`` entry the same G):

    * ``mode="time"``: the time steps are cut into G contiguous chunks, chunk g uses pattern g, and each layer runs
      chunk after chunk carrying its state (:mod:`lightning_ard.patterns.groups`); not for bidirectional LSTMs on
      packed sequences.
    * ``mode="sequence"``: the batch is cut into G contiguous groups of sequences (in sorted order for packed
      input), group g uses pattern g at every time step, and each layer runs one fused call per group on its
      sequences and state rows.

    ``hidden`` (sequence mode, unidirectional): one hidden-unit pattern per layer (and group) over
    ``hidden_size``: a dropped unit is absent from its group (its gates, its column of ``weight_hh``, its output),
    the group runs a smaller LSTM on weight slices, the kept units' recurrent input and output are scaled by the
    pattern's scale, and a dropped unit's ``(h, c)`` is carried unchanged to the returned state. Layer l > 0 then
    reads layer l-1's kept units (its input pattern must be ``None``); the returned output holds the last layer's
    kept units, scaled, and zeros. In eval mode, or with no pattern set, it is exactly ``nn.LSTM``.
    ``proj_size > 0`` is not supported.
    """

    ard_patterns: list[tuple[RowPattern, ...] | None]
    ard_hidden: list[tuple[RowPattern, ...]] | None
    ard_groups: int
    ard_mode: str

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM) -> "ARDLSTM":
        """Convert ``lstm`` in place (same object, same Parameters) and return it."""
        if lstm.proj_size > 0:
            raise ValueError(f"ARDLSTM does not support proj_size > 0, got proj_size={lstm.proj_size}")
        swap_class(lstm, nn.LSTM, cls)
        layer: ARDLSTM = lstm  # type: ignore[assignment]
        layer.ard_rows, layer.ard_group_rows, layer.ard_grad_input = 0, [], False
        layer.ard_work: list[list[Work]] = []
        layer.ard_layout: SequenceLayout | None = None
        layer.ard_followers: list[SequenceFollower] = []
        layer.clear_patterns()
        return layer

    def to_lstm(self) -> nn.LSTM:
        """Undo :meth:`from_lstm` in place (followers' hooks removed)."""
        for follower in list(self.ard_followers):
            follower.remove()
        revert_class(self, nn.LSTM, _ATTRIBUTES)
        return self

    def layer_input_size(self, layer: int) -> int:
        """Width of layer ``layer``'s input."""
        return lstm_layer_input_size(self, layer)

    def set_patterns(
        self, patterns: Sequence[RowSlot], mode: str = "time", hidden: Sequence[RowSlot] | None = None
    ) -> None:
        """Set this step's input pattern(s) per layer, what groups cut (``mode``) and, in sequence mode, the
        hidden-unit patterns per layer (checked against the layer widths)."""
        if mode not in LSTM_MODES:
            raise ValueError(f"mode must be one of {list(LSTM_MODES)}, got {mode!r}")
        if len(patterns) != self.num_layers:
            raise ValueError(f"patterns must have one entry per layer ({self.num_layers}), got {len(patterns)}")
        slots = [as_groups(p, f"pattern for layer {i}") for i, p in enumerate(patterns)]
        named = {f"layer {i}": slot for i, slot in enumerate(slots)}
        hid = None if hidden is None else self._check_hidden(hidden, slots, mode)
        named.update({f"hidden {i}": h for i, h in enumerate(hid or ())})
        groups = common_groups(named)
        for layer, slot in enumerate(slots):
            for pattern in slot or ():
                if pattern.width != self.layer_input_size(layer):
                    raise ValueError(
                        f"pattern for layer {layer} has width {pattern.width}, the layer's input width is "
                        f"{self.layer_input_size(layer)}"
                    )
        self.ard_patterns, self.ard_hidden, self.ard_groups, self.ard_mode = slots, hid, groups, mode

    def _check_hidden(
        self, hidden: Sequence[RowSlot], slots: list[tuple[RowPattern, ...] | None], mode: str
    ) -> list[tuple[RowPattern, ...]]:
        if mode != "sequence":
            raise ValueError(f"hidden patterns need mode='sequence' (one pattern per group of sequences), got {mode!r}")
        if self.bidirectional:
            raise ValueError("hidden patterns (recurrent structured dropout) need a unidirectional LSTM")
        if len(hidden) != self.num_layers:
            raise ValueError(f"hidden must have one entry per layer ({self.num_layers}), got {len(hidden)}")
        hid = [as_groups(h, f"hidden pattern for layer {i}") for i, h in enumerate(hidden)]
        for i, h in enumerate(hid):
            if h is None:
                raise ValueError(f"hidden pattern for layer {i} is None; give every layer a hidden pattern")
            if any(p.width != self.hidden_size for p in h):
                raise ValueError(
                    f"hidden pattern for layer {i} has width {h[0].width}, hidden_size is {self.hidden_size}"
                )
        for i, slot in enumerate(slots[1:], start=1):
            if slot is not None:
                raise ValueError(
                    f"with hidden patterns layer {i} reads layer {i - 1}'s kept units: its input pattern must be None"
                )
        return hid  # type: ignore[return-value]

    def clear_patterns(self) -> None:
        """Remove the patterns (and the followers' patterns): the module behaves as ``nn.LSTM`` again."""
        self.ard_patterns, self.ard_hidden, self.ard_groups, self.ard_mode = [None] * self.num_layers, None, 1, "time"
        for follower in self.ard_followers:
            follower.in_patterns = follower.out_patterns = None

    def token_groups(self, shape: Sequence[int]) -> list[int] | None:
        """Group of each row-block of a tensor of ``shape`` that holds the last forward's tokens or sequences, as
        a Linear's ``group_bounds`` split reads it (one entry per sequence for batch-first rows, per row
        otherwise); ``None`` when the shape does not match the last sequence-mode batch."""
        lay = self.ard_layout
        if lay is None or len(shape) < 2:
            return None
        rows, batch = math.prod(shape[:-1]), lay.batch
        if lay.packed_rows is not None and len(shape) == 2 and rows == len(lay.packed_rows):
            return list(lay.packed_rows)
        if len(shape) == 2 and rows == batch:
            return list(lay.seq_groups)
        if len(shape) >= 3:
            if lay.packed_rows is None:
                batch_first = self.batch_first
                if shape[0 if batch_first else 1] != batch:
                    return None
            elif shape[0] == batch or shape[1] == batch:  # pad_packed_sequence output, either layout
                batch_first = shape[0] == batch
            else:
                return None
        else:
            batch_first = self.batch_first
        if rows % batch:
            return None
        return list(lay.seq_groups) if batch_first else [lay.seq_groups[r % batch] for r in range(rows)]

    def ard_settings(self) -> dict[str, object]:
        """This step's pattern settings, as :meth:`set_patterns` takes them (to set them on a copy)."""
        return {"patterns": list(self.ard_patterns), "mode": self.ard_mode, "hidden": self.ard_hidden}

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

    def _fused(
        self,
        x: torch.Tensor,
        batch_sizes: torch.Tensor | None,
        state: tuple[torch.Tensor, torch.Tensor],
        weights: list[torch.Tensor],
        bidirectional: bool,
        batch_first: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One layer of ``_VF.lstm``: the single-layer form of what ``nn.LSTM.forward`` calls."""
        has_biases = self.bias
        num_layers = 1  # one layer per call: the next layer's input pattern is applied between calls
        dropout = 0.0  # the layer's input dropout (pattern or F.dropout) was applied before the call
        train = True  # only the training path gets here (eval mode returns early)
        if batch_sizes is not None:
            return _VF.lstm(x, batch_sizes, state, weights, has_biases, num_layers, dropout, train, bidirectional)
        return _VF.lstm(x, state, weights, has_biases, num_layers, dropout, train, bidirectional, batch_first)

    @torch.compiler.disable  # per-step patterns are Python data: run eagerly, compile the rest
    def forward(self, input, hx=None):  # type: ignore[no-untyped-def, override]
        if not self.training or (self.ard_hidden is None and all(p is None for p in self.ard_patterns)):
            return super().forward(input, hx)
        dirs = 2 if self.bidirectional else 1
        packed = isinstance(input, PackedSequence)
        sequence = self.ard_mode == "sequence"
        grouped = self.ard_groups > 1 and not sequence  # time chunks
        batch_sizes = None
        if packed:
            if grouped and self.bidirectional:
                raise ValueError(
                    f"ARDLSTM: {self.ard_groups} pattern groups are not supported for a bidirectional LSTM on "
                    "packed sequences; pass padded input, or use groups=1 (ARD settings: lstm_groups=1, or "
                    "lstm_mode='sequence', which cuts the batch and runs packed bidirectional input)"
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
        self.ard_work = [[] for _ in range(self.num_layers)]
        if sequence:
            x, h, c = self._sequence_forward(x, batch_sizes, hx, batch, sorted_indices)
        else:
            x, h, c = self._time_forward(x, batch_sizes, hx, grouped)
        hidden = self.permute_hidden((h, c), unsorted_indices)
        if packed:
            return PackedSequence(x, batch_sizes, sorted_indices, unsorted_indices), hidden
        if not batched:
            x = x.squeeze(0 if self.batch_first else 1)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1))
        return x, hidden

    # ------------------------------------------------------------------------------------ time chunks
    def _time_forward(
        self,
        x: torch.Tensor,
        batch_sizes: torch.Tensor | None,
        hx: tuple[torch.Tensor, torch.Tensor],
        grouped: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every layer over the whole batch; with groups, over time chunks (one call per chunk)."""
        dirs = 2 if self.bidirectional else 1
        packed = batch_sizes is not None
        self.ard_layout = None
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
            width = self.layer_input_size(layer)
            state = (hx[0][layer * dirs : (layer + 1) * dirs], hx[1][layer * dirs : (layer + 1) * dirs])
            if slot is not None and grouped:
                x, h, c = self._grouped_layer(layer, x, batch_sizes, state, slot, bounds)
                self.ard_work[layer] = [
                    (rows, p.num_kept, self.hidden_size) for rows, p in zip(self.ard_group_rows, slot, strict=True)
                ]
                hs.append(h)
                cs.append(c)
                continue
            pattern = slot[0] if slot is not None else None
            if pattern is not None:
                x = take(x, -1, pattern.selector(x.device)) * pattern.scale
            elif layer > 0 and self.dropout > 0:
                x = F.dropout(x, self.dropout, training=True)
            kept = pattern.num_kept if pattern is not None else width
            self.ard_work[layer] = [(self.ard_rows, kept, self.hidden_size)]
            weights = self._layer_weights(layer, pattern.selector(x.device) if pattern is not None else None)
            x, h, c = self._fused(x, batch_sizes, state, weights, self.bidirectional, batch_first)
            hs.append(h)
            cs.append(c)
        if grouped and not packed and self.batch_first:
            x = x.transpose(0, 1)
        return x, torch.cat(hs), torch.cat(cs)

    # ------------------------------------------------------------------------------------ sequence groups
    def _sequence_forward(
        self,
        x: torch.Tensor,
        batch_sizes: torch.Tensor | None,
        hx: tuple[torch.Tensor, torch.Tensor],
        batch: int,
        sorted_indices: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Groups of sequences (contiguous in the sorted order of packed input), each running every layer in one
        fused call on its own sequences and state rows; outputs and states go back to their places."""
        packed = batch_sizes is not None
        bounds = group_bounds(batch, self.ard_groups)
        pos_group = [g for g, (b0, b1) in enumerate(bounds) for _ in range(b1 - b0)]  # sorted position -> group
        if packed:
            order = sorted_indices.tolist() if sorted_indices is not None else list(range(batch))
            seq_groups = [0] * batch
            for pos, original in enumerate(order):
                seq_groups[original] = pos_group[pos]
            sizes = batch_sizes.tolist()
            packed_rows = tuple(g for n in sizes for g in pos_group[:n])
            self.ard_layout = SequenceLayout(batch, tuple(seq_groups), packed_rows)
            starts = torch.tensor([0, *sizes[:-1]]).cumsum(0)
            pieces, inputs = [], []
            for b0, b1 in bounds:
                sizes_g = (batch_sizes - b0).clamp(0, b1 - b0)
                sizes_g = sizes_g[sizes_g > 0]
                cols = torch.arange(b1 - b0)
                rows = (starts[: len(sizes_g), None] + b0 + cols[None, :])[cols[None, :] < sizes_g[:, None]]
                pieces.append((sizes_g, rows))
            perm = torch.cat([rows for _, rows in pieces]).to(x.device)
            inputs = list(x.index_select(0, perm).split([len(rows) for _, rows in pieces]))
        else:
            self.ard_layout = SequenceLayout(batch, tuple(pos_group), None)
            inputs = [x[b0:b1] if self.batch_first else x[:, b0:b1] for b0, b1 in bounds]
        self.ard_group_rows = [int(xg.numel() // max(xg.shape[-1], 1)) for xg in inputs]
        outs, hs, cs = [], [], []
        gathered: dict[object, list[torch.Tensor]] = {}  # groups that drew the same input pattern share one gather
        for g, (b0, b1) in enumerate(bounds):
            if b1 == b0:
                continue
            sizes_g = pieces[g][0] if packed else None
            state = (hx[0][:, b0:b1], hx[1][:, b0:b1])
            run = self._plain_group if self.ard_hidden is None else self._structured_group
            out, h, c = run(g, inputs[g], sizes_g, state, self.ard_group_rows[g], gathered)
            outs.append(out)
            hs.append(h)
            cs.append(c)
        if packed:
            y = torch.cat(outs)
            y = y.new_empty(y.shape).index_copy(0, perm, y)
        else:
            y = torch.cat(outs, 0 if self.batch_first else 1)
        return y, torch.cat(hs, 1), torch.cat(cs, 1)

    def _plain_group(
        self,
        g: int,
        x: torch.Tensor,
        sizes: torch.Tensor | None,
        state: tuple[torch.Tensor, torch.Tensor],
        tokens: int,
        gathered: dict[object, list[torch.Tensor]],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every layer of one group of sequences on its group's input pattern, full hidden width."""
        dirs = 2 if self.bidirectional else 1
        hs, cs = [], []
        for layer, slot in enumerate(self.ard_patterns):
            layer_state = (state[0][layer * dirs : (layer + 1) * dirs], state[1][layer * dirs : (layer + 1) * dirs])
            pattern = slot[g] if slot is not None else None
            selector = pattern.selector(x.device) if pattern is not None else None
            if pattern is not None:
                x = take(x, -1, selector) * pattern.scale
            elif layer > 0 and self.dropout > 0:
                x = F.dropout(x, self.dropout, training=True)
            key = (layer, pattern.merge_key if pattern is not None else None)
            weights = gathered.get(key)
            if weights is None:
                weights = gathered[key] = self._layer_weights(layer, selector)
            kept = pattern.num_kept if pattern is not None else self.layer_input_size(layer)
            self.ard_work[layer].append((tokens, kept, self.hidden_size))
            x, h, c = self._fused(x, sizes, layer_state, weights, self.bidirectional, self.batch_first)
            hs.append(h)
            cs.append(c)
        return x, torch.cat(hs), torch.cat(cs)

    def _structured_group(
        self,
        g: int,
        x: torch.Tensor,
        sizes: torch.Tensor | None,
        state: tuple[torch.Tensor, torch.Tensor],
        tokens: int,
        gathered: dict[object, list[torch.Tensor]],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every layer of one group as a smaller LSTM over its kept hidden units (weight slices: the kept gates'
        rows, the kept units' columns of ``weight_hh`` and of the next layer's ``weight_ih``). Dropped units'
        ``(h, c)`` come back unchanged; the output holds the last layer's kept units, scaled, and zeros."""
        device = x.device
        pattern = self.ard_patterns[0][g] if self.ard_patterns[0] is not None else None
        in_sel: Index = None
        in_scale, in_kept = 1.0, self.input_size
        if pattern is not None:
            in_sel, in_kept = pattern.selector(device), pattern.num_kept
            x = take(x, -1, in_sel) * pattern.scale
        hs, cs = [], []
        for layer in range(self.num_layers):
            unit = self.ard_hidden[layer][g]  # type: ignore[index]
            key = (layer, unit.merge_key, pattern.merge_key if pattern is not None else None)
            weights = gathered.get(key)
            if weights is None:
                weights = gathered[key] = self._unit_weights(layer, unit, in_sel, in_scale)
            kept = unit.index(device)
            h0, c0 = state[0][layer : layer + 1], state[1][layer : layer + 1]
            self.ard_work[layer].append((tokens, in_kept, unit.num_kept))
            x, h, c = self._fused(
                x, sizes, (h0.index_select(2, kept), c0.index_select(2, kept)), weights, False, self.batch_first
            )
            hs.append(h0.index_copy(2, kept, h))  # dropped units: state carried unchanged
            cs.append(c0.index_copy(2, kept, c))
            in_sel, in_scale, in_kept, pattern = unit.selector(device), unit.scale, unit.num_kept, unit
        out = x.new_zeros(*x.shape[:-1], self.hidden_size).index_copy(-1, kept, x * in_scale)
        return out, torch.cat(hs), torch.cat(cs)

    def _unit_weights(self, layer: int, unit: RowPattern, in_sel: Index, in_scale: float) -> list[torch.Tensor]:
        """``_VF.lstm`` params of the smaller LSTM over ``unit``'s kept units: gate rows of the kept units, input
        columns ``in_sel`` (scaled by ``in_scale``: the previous layer's output scale), kept ``weight_hh`` columns
        scaled by the unit pattern's scale (the recurrent input of a dropout layer)."""
        rows = _gate_rows(unit, self.hidden_size, self.weight_hh_l0.device)
        w_ih = take(getattr(self, f"weight_ih_l{layer}"), 1, in_sel).index_select(0, rows)
        w_hh = take(getattr(self, f"weight_hh_l{layer}"), 1, unit.selector(rows.device)).index_select(0, rows)
        weights = [w_ih * in_scale if in_scale != 1.0 else w_ih, w_hh * unit.scale]
        if self.bias:
            weights += [getattr(self, f"bias_{k}_l{layer}").index_select(0, rows) for k in ("ih", "hh")]
        return weights

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


class SequenceFollower:
    """Keeps a Linear's pattern groups on an ARD LSTM's sequence groups: each token (or sequence) the Linear reads
    uses the pattern of its sequence's group.

    For a Linear that reads the LSTM's output (``(B, T, ·)``, ``(T, B, ·)``, flattened, a packed ``.data``, or one
    row per sequence). :meth:`set_patterns` takes the G per-group patterns; a forward pre-hook on the Linear then
    hands it one pattern per sequence (batch-first rows) or per row, so that its contiguous row groups are the
    sequences' groups (groups that share a pattern merge into one product). :meth:`remove` takes the hook away.
    """

    def __init__(self, lstm: ARDLSTM, linear: nn.Module) -> None:
        self.lstm, self.linear = lstm, linear
        self.in_patterns: tuple[RowPattern, ...] | None = None
        self.out_patterns: tuple[RowPattern, ...] | None = None
        self._handle = linear.register_forward_pre_hook(self._expand)
        lstm.ard_followers.append(self)

    def set_patterns(self, in_pattern: RowSlot = None, out_pattern: RowSlot = None) -> None:
        """This step's patterns, one per sequence group (or one for all)."""
        self.in_patterns, self.out_patterns = as_groups(in_pattern, "in_pattern"), as_groups(out_pattern, "out_pattern")
        self.linear.set_patterns(in_pattern=self.in_patterns, out_pattern=self.out_patterns)  # type: ignore[operator]

    def _expand(self, module: nn.Module, args: tuple) -> None:
        groups = max(len(self.in_patterns or ()), len(self.out_patterns or ()))
        if not module.training or groups <= 1:
            return
        shape = tuple(args[0].shape)
        owner = self.lstm.token_groups(shape)
        if owner is None:
            batch = self.lstm.ard_layout.batch if self.lstm.ard_layout is not None else None
            raise ValueError(
                f"a Linear follows the sequence groups of an LSTM (lstm_mode='sequence'), but its input of shape "
                f"{shape} holds neither one row per token nor one per sequence of the LSTM's last batch "
                f"({batch} sequences); use lstm_mode='time', or exclude the site"
            )

        def per_row(pats: tuple[RowPattern, ...] | None) -> tuple[RowPattern, ...] | None:
            return None if pats is None else tuple(pats[g] for g in owner)

        module.set_patterns(in_pattern=per_row(self.in_patterns), out_pattern=per_row(self.out_patterns))  # type: ignore[operator]

    def remove(self) -> None:
        """Remove the hook (the Linear keeps its last patterns until they are set or cleared)."""
        self._handle.remove()
        if self in self.lstm.ard_followers:
            self.lstm.ard_followers.remove(self)
