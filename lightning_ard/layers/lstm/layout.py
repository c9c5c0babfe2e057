"""Which sequence group each sequence (and each packed row) of the last sequence-mode batch belongs to."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


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

    @classmethod
    def of(
        cls,
        batch: int,
        bounds: Sequence[tuple[int, int]],
        batch_sizes: torch.Tensor | None,
        sorted_indices: torch.Tensor | None,
    ) -> SequenceLayout:
        """The layout of groups ``bounds`` (contiguous in the sorted order of packed input)."""
        pos_group = [g for g, (b0, b1) in enumerate(bounds) for _ in range(b1 - b0)]  # sorted position -> group
        if batch_sizes is None:
            return cls(batch, tuple(pos_group), None)
        order = sorted_indices.tolist() if sorted_indices is not None else list(range(batch))
        seq_groups = [0] * batch
        for pos, original in enumerate(order):
            seq_groups[original] = pos_group[pos]
        packed_rows = tuple(g for n in batch_sizes.tolist() for g in pos_group[:n])
        return cls(batch, tuple(seq_groups), packed_rows)

    def token_groups(self, shape: Sequence[int], batch_first: bool) -> list[int] | None:
        """Group of each row-block of a tensor of ``shape`` holding this batch's tokens or sequences, as a Linear's
        ``group_bounds`` split reads it (one entry per sequence for batch-first rows, per row otherwise); ``None``
        when the shape does not match. ``batch_first`` is the LSTM's own layout (for padded input)."""
        if len(shape) < 2:
            return None
        rows, batch = math.prod(shape[:-1]), self.batch
        if self.packed_rows is not None and len(shape) == 2 and rows == len(self.packed_rows):
            return list(self.packed_rows)
        if len(shape) == 2 and rows == batch:
            return list(self.seq_groups)
        if len(shape) >= 3:
            if self.packed_rows is None:
                if shape[0 if batch_first else 1] != batch:
                    return None
            elif shape[0] == batch or shape[1] == batch:  # pad_packed_sequence output, either layout
                batch_first = shape[0] == batch
            else:
                return None
        if rows % batch:
            return None
        return list(self.seq_groups) if batch_first else [self.seq_groups[r % batch] for r in range(rows)]
