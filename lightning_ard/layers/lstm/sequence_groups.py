"""Sequence-group mode (``mode="sequence"``): pattern groups cut the batch; a group of sequences keeps its pattern
at every time step, as locked / variational dropout does.

Groups are contiguous in the batch (in the sorted order of packed input, each group with its own batch sizes);
each group runs through every layer on its own sequences and state rows, then outputs and states go back to their
rows. How one group runs is the caller's choice: :func:`plain_group` (full hidden width) or the structured one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

from lightning_ard.layers.lstm.layer import State, layer_state, run_layer
from lightning_ard.layers.lstm.layout import SequenceLayout
from lightning_ard.layers.lstm.merge import SharedWeights
from lightning_ard.patterns.groups import group_bounds

if TYPE_CHECKING:
    from lightning_ard.layers.lstm.module import ARDLSTM

Output = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class GroupRunner(Protocol):
    """Runs every layer of one group ``g`` of sequences: ``x`` its input, ``sizes`` its batch sizes (packed),
    ``state`` its rows of ``(h0, c0)``, ``tokens`` its token count; returns ``(output, h, c)``."""

    def __call__(
        self, lstm: ARDLSTM, g: int, x: torch.Tensor, sizes: torch.Tensor | None, state: State, tokens: int,
        shared: SharedWeights,
    ) -> Output: ...  # fmt: skip


def sequence_forward(
    lstm: ARDLSTM,
    x: torch.Tensor,
    batch_sizes: torch.Tensor | None,
    hx: State,
    batch: int,
    sorted_indices: torch.Tensor | None,
    run_group: GroupRunner,
) -> Output:
    """The ``batch`` sequences' groups through ``run_group``; outputs and states back in the batch's order."""
    bounds = group_bounds(batch, lstm.ard_groups)
    lstm.ard_layout = SequenceLayout.of(batch, bounds, batch_sizes, sorted_indices)
    if batch_sizes is not None:
        inputs, sizes, perm = _split_packed(x, batch_sizes, bounds)
    else:
        inputs = [x[b0:b1] if lstm.batch_first else x[:, b0:b1] for b0, b1 in bounds]
        sizes, perm = [None] * len(bounds), None
    group_rows = lstm.ard_record.group_rows = [int(xg.numel() // max(xg.shape[-1], 1)) for xg in inputs]
    outs, hs, cs = [], [], []
    shared = SharedWeights()
    for g, (b0, b1) in enumerate(bounds):
        if b1 == b0:
            continue
        state = (hx[0][:, b0:b1], hx[1][:, b0:b1])
        out, h, c = run_group(lstm, g, inputs[g], sizes[g], state, group_rows[g], shared)
        outs.append(out)
        hs.append(h)
        cs.append(c)
    if perm is not None:
        y = torch.cat(outs)
        y = y.new_empty(y.shape).index_copy(0, perm, y)
    else:
        y = torch.cat(outs, 0 if lstm.batch_first else 1)
    return y, torch.cat(hs, 1), torch.cat(cs, 1)


def _split_packed(
    x: torch.Tensor, batch_sizes: torch.Tensor, bounds: list[tuple[int, int]]
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Each group's rows of the packed data ``x`` with the group's own batch sizes, and the permutation of the
    rows that lists them group after group (to put the outputs back)."""
    starts = torch.tensor([0, *batch_sizes.tolist()[:-1]]).cumsum(0)
    sizes, rows = [], []
    for b0, b1 in bounds:
        sizes_g = (batch_sizes - b0).clamp(0, b1 - b0)
        sizes_g = sizes_g[sizes_g > 0]
        cols = torch.arange(b1 - b0)
        rows.append((starts[: len(sizes_g), None] + b0 + cols[None, :])[cols[None, :] < sizes_g[:, None]])
        sizes.append(sizes_g)
    perm = torch.cat(rows).to(x.device)
    return list(x.index_select(0, perm).split([len(r) for r in rows])), sizes, perm


def plain_group(
    lstm: ARDLSTM, g: int, x: torch.Tensor, sizes: torch.Tensor | None, state: State, tokens: int,
    shared: SharedWeights,
) -> Output:  # fmt: skip
    """Every layer of group ``g`` on the group's input pattern of each layer, full hidden width."""
    dirs = 2 if lstm.bidirectional else 1
    hs, cs = [], []
    for layer, slot in enumerate(lstm.ard_patterns):
        pattern = slot[g] if slot is not None else None
        x, h, c = run_layer(
            lstm, layer, x, layer_state(state, layer, dirs), pattern, shared,
            batch_sizes=sizes, batch_first=lstm.batch_first, tokens=tokens,
        )  # fmt: skip
        hs.append(h)
        cs.append(c)
    return x, torch.cat(hs), torch.cat(cs)
