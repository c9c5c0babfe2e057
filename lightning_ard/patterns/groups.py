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
"""Pattern groups per step under ``groups="auto"`` (the default) at p = 0.5 up to :data:`AUTO_BATCH` samples per
step, and the fewest at any rate. Measured (docs/results.md, "Safe defaults"): with one pattern per mini-batch a
kept unit's gradient carries the noise of one mask, of relative size sqrt(p / ((1-p) G)) for G groups, and SGD
with momentum diverged at G = 1; at p = 0.5, batch 128, 2 groups lost 1.1 points, 4 groups 0.15-0.27, 8 none.
Stratified draws (the default) remove most of it (4 groups: +0.17 points with SGD, +0.29 with Adam, +0.37 with
AdamW, +1.01 at batch 32), but 2 groups are not safe at p = 0.5 nor at p = 0.3 (-0.40 with SGD, -0.30 with Adam),
so the count stays. The price of groups is set by the rows per group (GEMM size), not by their number."""

AUTO_BATCH = 256
"""Samples per step up to which :data:`AUTO_GROUPS` serve p = 0.5; larger batches get more groups, growing with
the square root of the batch (8 at 1024). Measured with SGD, momentum 0.9, lr 0.1, p = 0.5, 6 seeds
(docs/results.md, "Safe defaults"): batch 512 lost 0.41 points with 4 groups, 0.20 with 6 (the rule's count),
0.15 with 8; batch 1024 lost 0.12 with 8 groups (the rule's count), 0.38 with 6 and 1.06 with 4. Adam kept
accuracy with the rule (+0.21 / -0.05 points at 512 / 1024). Groups in proportion to the batch (16 at 1024) would
cost speed the accuracy does not ask for."""


def auto_groups(p: float, samples: int | None = None) -> int:
    """Groups per step under ``groups="auto"`` for a site of rate ``p`` in steps of ``samples`` samples (None:
    unknown, as up to :data:`AUTO_BATCH`): the smallest G >= :data:`AUTO_GROUPS` that keeps p / ((1-p) G) at its
    value for p = 0.5 with 4 sqrt(samples / 256) groups, at least 4 (4 up to p = 0.5, 6 at 0.6, 10 at 0.7, 16 at
    0.8; at 1024 samples 4 at p = 0.3, 8 at 0.5, 19 at 0.7). The rate's factor is measured too: 4 groups at
    p = 0.7 lost 9 points, 10 groups none."""
    reference = max(1.0, math.sqrt((samples or 0) / AUTO_BATCH)) * AUTO_GROUPS
    return max(AUTO_GROUPS, math.ceil(reference * p / (1.0 - p) - 1e-9))


AUTO_LSTM_GROUPS = 2
"""Time chunks per step at (unidirectional) LSTM sites under ``groups="auto"`` with no ``lstm_groups``: each LSTM
layer runs as 2 fused calls, chunk 1 carrying its state into chunk 2, with 2 stratified patterns, while the Linear
site after the LSTM (the decoder) takes :func:`auto_groups`. Measured on the KJV corpus (docs/results.md, "LSTM
on a PTB-size corpus"): at p = 0.5 test perplexity 78.1 against nn.Dropout's 79.7 (3 seeds; +0.3 % at p = 0.3,
-3.6 % at 0.7), 1.15-1.32x on the paper's 2 x 650 step on a Xeon, 1.31-1.41x on an AMD EPYC, 1.20x on a
faster Xeon (one pattern per step: +20 %, 1.33-1.45x on the Xeon)."""

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
