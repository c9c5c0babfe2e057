"""Pattern groups: several independent patterns in one forward pass, each serving a contiguous share of the rows.

One pattern per mini-batch gives every sample of a step the same mask, so a step sees one mask where
``nn.Dropout`` sees one per sample. With ``groups = G`` the step's rows are cut into G contiguous chunks of
(almost) equal size and chunk g uses pattern g: each chunk is still one compact matrix product, so the FLOP saving
is unchanged while the step sees G masks.

What a "row" is depends on the layer:

* Linear: the rows of the input flattened to 2-D (``x.reshape(-1, in_features)``): samples for ``(B, F)`` input,
  tokens for sequences. A contiguous group then holds consecutive samples; consecutive tokens of one sequence for
  batch-first ``(B, T, F)`` input; the same time steps of all sequences for sequence-first ``(T, B, F)`` input.
* LSTM: time steps (the recurrence carries its state from one chunk to the next), so the batch of each recurrent
  call stays whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar, Union

from lightning_ard.patterns.row import RowPattern
from lightning_ard.patterns.tile import TilePattern

P = TypeVar("P")

AUTO_GROUPS = 4
"""Pattern groups per step under ``groups="auto"`` at p = 0.5 up to :data:`AUTO_BATCH` samples per step, and the
fewest at any rate: fewer groups lost accuracy (measurements: docs/notes/kernels.md)."""

AUTO_BATCH = 256
"""Samples per step up to which :data:`AUTO_GROUPS` serve p = 0.5; larger batches get more groups, growing with
the square root of the batch (8 at 1024): the count accuracy needed (docs/notes/kernels.md)."""


def auto_groups(p: float, samples: int | None = None) -> int:
    """Groups per step under ``groups="auto"`` for a site of rate ``p`` in steps of ``samples`` samples (None:
    unknown, as up to :data:`AUTO_BATCH`): the smallest G >= :data:`AUTO_GROUPS` that keeps p / ((1-p) G) at its
    value for p = 0.5 with 4 sqrt(samples / 256) groups (4 up to p = 0.5, 6 at 0.6, 10 at 0.7, 16 at 0.8; at 1024
    samples 4 at p = 0.3, 8 at 0.5, 19 at 0.7). Why this rule: docs/notes/kernels.md."""
    reference = max(1.0, math.sqrt((samples or 0) / AUTO_BATCH)) * AUTO_GROUPS
    return max(AUTO_GROUPS, math.ceil(reference * p / (1.0 - p) - 1e-9))


MAX_GROUPS = 1 << 20
"""Largest accepted ``groups``: more groups than rows are empty (free), but each costs a draw per step."""


def resolve_groups(groups: int | str, p: float = 0.5, samples: int | None = None) -> int:
    """Patterns per step for a ``groups`` setting at rate ``p`` and ``samples`` per step: the number itself, or
    :func:`auto_groups` for ``"auto"``."""
    return auto_groups(p, samples) if groups == "auto" else int(groups)


RowSlot = Union[RowPattern, Sequence[RowPattern], None]
"""What a layer's row-pattern slot takes: nothing, one pattern, or one pattern per group."""
TileSlot = Union[TilePattern, Sequence[TilePattern], None]
"""What a layer's tile-pattern slot takes: nothing, one pattern, or one pattern per group."""


def group_bounds(n: int, groups: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each of ``groups`` contiguous chunks of ``range(n)``; sizes differ by at most one and
    the first ``n % groups`` chunks are the longer ones (``torch.tensor_split``'s rule). Chunks may be empty when
    ``n < groups``."""
    if groups < 1:
        raise ValueError(f"groups must be an integer >= 1, got {groups!r}")
    size, extra = divmod(n, groups)
    bounds, start = [], 0
    for g in range(groups):
        end = start + size + (1 if g < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def as_groups(value: P | Sequence[P] | None, name: str) -> tuple[P, ...] | None:
    """Normalize a pattern slot: ``None``, one pattern (one group) or a non-empty sequence (one per group)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            raise ValueError(f"{name} must be a pattern or a non-empty sequence of patterns (one per group), got []")
        return tuple(value)
    return (value,)  # type: ignore[return-value]


def common_groups(slots: dict[str, tuple | None]) -> int:
    """The number of groups shared by the non-empty pattern slots (1 when all are empty); raises on a mismatch."""
    lengths = {name: len(v) for name, v in slots.items() if v is not None}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"every pattern slot must have the same number of groups, got {lengths}")
    return next(iter(lengths.values()), 1)


def describe(family: str, groups: int = 1, pool: int | None = None, lstm_groups: int | None = None) -> str:
    """Label of a family with its pattern-group settings, as the benchmark and the report print it
    (``"row"``, ``"row x700 groups pool 8 lstm 5"``)."""
    label = family if groups == 1 else f"{family} x{groups} groups"
    if pool is not None and groups > 1:
        label += f" pool {pool}"
    return label + (f" lstm {lstm_groups}" if lstm_groups is not None else "")


def pattern_key(*patterns: RowPattern | None) -> tuple[object, ...]:
    """The merge key of a combination of patterns (``None`` for an absent one): groups with equal keys compute the
    same weight slices, so adjacent ones run as one product (Linear backends) or one fused call (LSTM)."""
    return tuple(p.merge_key if p is not None else None for p in patterns)
