"""A Linear that reads an ARD LSTM's output and keeps the LSTM's sequence groups: each token (or sequence) it reads
uses the pattern of its sequence's group."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from lightning_ard.patterns import RowPattern
from lightning_ard.patterns.groups import RowSlot, as_groups

if TYPE_CHECKING:
    from lightning_ard.layers.lstm.module import ARDLSTM


class SequenceFollower:
    """Keeps a Linear's pattern groups on an ARD LSTM's sequence groups.

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
