"""ARD LSTM: the same ``nn.LSTM`` (same Parameters) whose layers read only the kept units of their inputs.

Input patterns shrink each layer's input projection; the recurrence runs in PyTorch's fused op one layer at a time
(:mod:`.fused`), or, opt-in for sequence groups, as one loop over the whole batch fed by every group's compact input
projection (:mod:`.one_recurrence`, :mod:`.recurrence`). Pattern groups cut the time axis (:mod:`.time_chunks`) or
the batch (:mod:`.sequence_groups`); hidden-unit patterns make a dropped unit absent from its group
(:mod:`.structured`). Groups that drew the same
pattern share work (:mod:`.merge`). Design: docs/method.md, section "The LSTM layer"; layout: docs/notes/lstm.md.
"""

from lightning_ard.layers.lstm.follower import SequenceFollower
from lightning_ard.layers.lstm.layer import lstm_layer_input_size
from lightning_ard.layers.lstm.layout import SequenceLayout
from lightning_ard.layers.lstm.module import ARDLSTM, LSTM_MODES
from lightning_ard.layers.lstm.structured import unscaled
from lightning_ard.layers.record import Work
from lightning_ard.patterns.groups import RowSlot

__all__ = [
    "ARDLSTM", "LSTM_MODES", "RowSlot", "SequenceFollower", "SequenceLayout", "Work", "lstm_layer_input_size",
    "unscaled",
]  # fmt: skip
