"""StepRecord: what an ARD layer's last training forward ran, for whoever measures the step.

FLOP accounting, the calibration of a layer's speed, the backend choice and the bound of pattern groups by a step's
rows all need the shapes a layer just ran. A layer writes them into the record it was given when it was converted;
the records belong to the swap (:class:`~lightning_ard.sites.swap.Surgery`, one per converted layer), so the
controller keeps them, and a layer used on its own gets a fresh one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

Work = tuple[int, int, int]
"""One fused LSTM call of a layer: (tokens, input units it read, hidden units it ran)."""


@dataclass
class StepRecord:
    """Shapes of a layer's last training forward.

    Attributes:
        rows: rows of its input flattened to 2-D (samples, or tokens of a sequence batch; T·B for an LSTM).
        group_rows: rows of each pattern group (LSTM: of each time chunk or sequence group).
        grad_input: whether the input required a gradient (the backward then computes one).
        input: a Linear's input ``(shape, dtype, compute dtype, requires_grad)``, what a backend measurement replays.
        work: an LSTM's fused calls per layer.
        batch: an LSTM's sequences (the batch), ``None`` before its first forward.
    """

    rows: int = 0
    group_rows: list[int] = field(default_factory=list)
    grad_input: bool = False
    input: tuple[tuple[int, ...], torch.dtype, torch.dtype, bool] | None = None
    work: list[list[Work]] = field(default_factory=list)
    batch: int | None = None
