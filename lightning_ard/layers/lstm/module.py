"""The ARD LSTM module: swaps in and out of an ``nn.LSTM``, takes each step's patterns and runs the forward of
the mode they ask for (time chunks, sequence groups, or sequence groups with recurrent structured dropout)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from lightning_ard.layers._swap import revert_class, swap_class
from lightning_ard.layers.lstm.layer import State, lstm_layer_input_size
from lightning_ard.layers.lstm.layout import SequenceLayout
from lightning_ard.layers.lstm.one_recurrence import one_recurrence_forward
from lightning_ard.layers.lstm.sequence_groups import plain_group, sequence_forward
from lightning_ard.layers.lstm.structured import check_hidden, structured_group
from lightning_ard.layers.lstm.time_chunks import time_forward
from lightning_ard.layers.record import StepRecord
from lightning_ard.patterns import RowPattern
from lightning_ard.patterns.groups import RowSlot, as_groups, common_groups

if TYPE_CHECKING:
    from lightning_ard.layers.lstm.follower import SequenceFollower

LSTM_MODES = ("time", "sequence")
"""What pattern groups cut in an ARD LSTM: time steps (chunks of the sequence) or sequences (groups of the batch)."""

_ATTRIBUTES = (
    "ard_patterns", "ard_hidden", "ard_groups", "ard_mode", "ard_record", "ard_layout", "ard_followers",
    "ard_one_recurrence", "ard_element_p",
)  # fmt: skip


class ARDLSTM(nn.LSTM):
    """An ``nn.LSTM`` that, in training with patterns set, runs each layer on the kept units of its input.

    ``set_patterns(patterns, mode, hidden)`` takes one entry per layer: a :class:`RowPattern` over that layer's
    input width, ``None`` (above layer 0: the module's own dropout), or G patterns, one per group. Groups cut the
    time axis (``mode="time"``) or the batch (``mode="sequence"``); ``hidden`` (sequence mode, unidirectional)
    adds one hidden-unit pattern per layer and group: recurrent structured dropout. ``ard_one_recurrence`` (opt-in,
    sequence mode without hidden patterns) runs the groups' compact input projections into one recurrence over the
    whole batch instead of one fused call per group: the same function, measured slower on the CPU (docs/notes/
    lstm.md). In eval mode, or with no pattern set, it is exactly ``nn.LSTM``. ``proj_size > 0`` is not supported.
    """

    ard_patterns: list[tuple[RowPattern, ...] | None]
    ard_hidden: list[tuple[RowPattern, ...]] | None
    ard_groups: int
    ard_mode: str
    ard_record: StepRecord
    ard_layout: SequenceLayout | None
    ard_followers: list[SequenceFollower]
    ard_one_recurrence: bool
    ard_element_p: list[float]

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, record: StepRecord | None = None, one_recurrence: bool = False) -> ARDLSTM:
        """Convert ``lstm`` in place (same object, same Parameters) and return it; its forwards write their shapes
        into ``record`` (a fresh one by default); ``one_recurrence`` sets ``ard_one_recurrence``."""
        if lstm.proj_size > 0:
            raise ValueError(f"ARDLSTM does not support proj_size > 0, got proj_size={lstm.proj_size}")
        swap_class(lstm, nn.LSTM, cls)
        layer: ARDLSTM = lstm  # type: ignore[assignment]
        layer.ard_record = record if record is not None else StepRecord()
        layer.ard_layout, layer.ard_followers, layer.ard_one_recurrence = None, [], one_recurrence
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
        self,
        patterns: Sequence[RowSlot],
        mode: str = "time",
        hidden: Sequence[RowSlot] | None = None,
        element_p: Sequence[float] | None = None,
    ) -> None:
        """Set this step's input pattern(s) per layer, what groups cut (``mode``), in sequence mode the
        hidden-unit patterns per layer (checked against the layer widths), and per layer the rate of element-wise
        dropout on the kept input columns (``element_p``; ``None``: none)."""
        if mode not in LSTM_MODES:
            raise ValueError(f"mode must be one of {list(LSTM_MODES)}, got {mode!r}")
        if len(patterns) != self.num_layers:
            raise ValueError(f"patterns must have one entry per layer ({self.num_layers}), got {len(patterns)}")
        rates = [0.0] * self.num_layers if element_p is None else [float(q) for q in element_p]
        if len(rates) != self.num_layers or not all(0.0 <= q < 1.0 for q in rates):
            raise ValueError(
                f"element_p must have one rate in [0, 1) per layer ({self.num_layers}), got {list(element_p or ())}"
            )
        if hidden is not None and any(rates):
            raise ValueError("element_p applies to input patterns only; pass element_p=None with hidden patterns")
        slots = [as_groups(p, f"pattern for layer {i}") for i, p in enumerate(patterns)]
        named = {f"layer {i}": slot for i, slot in enumerate(slots)}
        hid = None if hidden is None else check_hidden(self, hidden, slots, mode)
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
        self.ard_element_p = rates

    def clear_patterns(self) -> None:
        """Remove the patterns (and the followers' patterns): the module behaves as ``nn.LSTM`` again."""
        self.ard_patterns, self.ard_hidden, self.ard_groups, self.ard_mode = [None] * self.num_layers, None, 1, "time"
        self.ard_element_p = [0.0] * self.num_layers
        for follower in self.ard_followers:
            follower.in_patterns = follower.out_patterns = None

    def token_groups(self, shape: Sequence[int]) -> list[int] | None:
        """Group of each row-block of a tensor of ``shape`` that holds the last forward's tokens or sequences
        (:meth:`SequenceLayout.token_groups`); ``None`` without a sequence-mode batch or when the shape does not
        match it."""
        if self.ard_layout is None:
            return None
        return self.ard_layout.token_groups(shape, self.batch_first)

    def ard_settings(self) -> dict[str, object]:
        """This step's pattern settings, as :meth:`set_patterns` takes them (to set them on a copy)."""
        return {
            "patterns": list(self.ard_patterns), "mode": self.ard_mode, "hidden": self.ard_hidden,
            "element_p": list(self.ard_element_p),
        }  # fmt: skip

    @torch.compiler.disable  # per-step patterns are Python data: run eagerly, compile the rest
    def forward(self, input, hx=None):  # type: ignore[no-untyped-def, override]
        if not self.training or (self.ard_hidden is None and all(p is None for p in self.ard_patterns)):
            return super().forward(input, hx)
        packed = isinstance(input, PackedSequence)
        if packed:
            self._check_packed()
            x, batch_sizes, sorted_indices, unsorted_indices = input
            batch, batched = int(batch_sizes[0]), True
        else:
            x, batch_sizes, sorted_indices, unsorted_indices = self._batched(input), None, None, None
            batch, batched = x.size(0 if self.batch_first else 1), input.dim() == 3
        hx = self._initial_state(hx, x, batch, sorted_indices, batched)
        record = self.ard_record
        record.rows = x.numel() // max(x.shape[-1], 1)  # tokens (T·B), read by FLOP accounting
        record.grad_input, record.batch = x.requires_grad, batch
        record.work = [[] for _ in range(self.num_layers)]
        if self.ard_mode == "sequence" and self.ard_hidden is None and self.ard_one_recurrence:
            x, h, c = one_recurrence_forward(self, x, batch_sizes, hx, batch, sorted_indices)
        elif self.ard_mode == "sequence":
            run_group = plain_group if self.ard_hidden is None else structured_group
            x, h, c = sequence_forward(self, x, batch_sizes, hx, batch, sorted_indices, run_group)
        else:
            x, h, c = time_forward(self, x, batch_sizes, hx, grouped=self.ard_groups > 1)
        hidden = self.permute_hidden((h, c), unsorted_indices)
        if packed:
            return PackedSequence(x, batch_sizes, sorted_indices, unsorted_indices), hidden
        if not batched:
            x = x.squeeze(0 if self.batch_first else 1)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1))
        return x, hidden

    def _check_packed(self) -> None:
        """Time chunks of a bidirectional LSTM cannot run on packed sequences: say which settings can."""
        if self.ard_groups > 1 and self.ard_mode == "time" and self.bidirectional:
            raise ValueError(
                f"ARDLSTM: {self.ard_groups} pattern groups are not supported for a bidirectional LSTM on "
                "packed sequences; pass padded input, or use groups=1 (ARD settings: lstm_groups=1, or "
                "lstm_mode='sequence', which cuts the batch and runs packed bidirectional input)"
            )

    def _batched(self, input: torch.Tensor) -> torch.Tensor:
        """Padded ``input`` with its batch axis (an unbatched input gets a batch of one)."""
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        return input if input.dim() == 3 else input.unsqueeze(0 if self.batch_first else 1)

    def _initial_state(
        self, hx: State | None, x: torch.Tensor, batch: int, sorted_indices: torch.Tensor | None, batched: bool
    ) -> State:
        """``(h0, c0)`` with a batch axis, in the sorted order of packed input (zeros when not given)."""
        if hx is None:
            dirs = 2 if self.bidirectional else 1
            zeros = torch.zeros(self.num_layers * dirs, batch, self.hidden_size, dtype=x.dtype, device=x.device)
            return zeros, zeros
        if not batched:
            hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        return self.permute_hidden(hx, sorted_indices)
