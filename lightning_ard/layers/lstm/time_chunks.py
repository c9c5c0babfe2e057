"""Time-chunk mode (``mode="time"``): pattern groups cut the time axis; every sequence shares a chunk's pattern.

Each layer runs chunk after chunk carrying its state, one fused call per run of adjacent chunks that drew the same
pattern; the reverse direction runs the chunks, and the steps within each, backwards. Grouped layers run time-major.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch

from lightning_ard.layers.lstm.fused import fused_layer
from lightning_ard.layers.lstm.layer import (
    State,
    direction_suffixes,
    direction_weights,
    kept_input,
    layer_state,
    run_layer,
)
from lightning_ard.layers.lstm.merge import Run, SharedWeights, merge_runs, pattern_key
from lightning_ard.patterns.groups import group_bounds

if TYPE_CHECKING:
    from lightning_ard.layers.lstm.module import ARDLSTM


def time_forward(
    lstm: ARDLSTM, x: torch.Tensor, batch_sizes: torch.Tensor | None, hx: State, grouped: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every layer over the whole batch; with groups, over time chunks. Returns ``(output, h, c)``."""
    dirs = 2 if lstm.bidirectional else 1
    time_major = grouped and batch_sizes is None and lstm.batch_first
    lstm.ard_layout = None
    if time_major:
        x = x.transpose(0, 1)  # grouped layers cut the time axis
    steps = len(batch_sizes) if batch_sizes is not None else x.size(0)
    bounds = group_bounds(steps, lstm.ard_groups)
    record = lstm.ard_record
    record.group_rows = _chunk_rows(bounds, batch_sizes, record.rows, steps)
    hs, cs = [], []
    for layer, slot in enumerate(lstm.ard_patterns):
        state = layer_state(hx, layer, dirs)
        if slot is not None and grouped:
            x, h, c = _chunked_layer(lstm, layer, x, batch_sizes, state, merge_runs(bounds, slot))
            record.work[layer] = [
                (rows, p.num_kept, lstm.hidden_size) for rows, p in zip(record.group_rows, slot, strict=True)
            ]
        else:
            pattern = slot[0] if slot is not None else None
            batch_first = lstm.batch_first and not grouped
            x, h, c = run_layer(
                lstm, layer, x, state, pattern, SharedWeights(),
                batch_sizes=batch_sizes, batch_first=batch_first, tokens=record.rows,
            )  # fmt: skip
        hs.append(h)
        cs.append(c)
    if time_major:
        x = x.transpose(0, 1)
    return x, torch.cat(hs), torch.cat(cs)


def _chunk_rows(bounds: list[tuple[int, int]], batch_sizes: torch.Tensor | None, tokens: int, steps: int) -> list[int]:
    """Tokens in each time chunk (packed: the packed rows of its steps)."""
    if batch_sizes is None:
        return [(t1 - t0) * tokens // max(steps, 1) for t0, t1 in bounds]
    offsets = [0, *torch.cumsum(batch_sizes, 0).tolist()]
    return [offsets[t1] - offsets[t0] for t0, t1 in bounds]


def _chunked_layer(
    lstm: ARDLSTM, layer: int, x: torch.Tensor, batch_sizes: torch.Tensor | None, state: State, runs: list[Run]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer over the runs of time chunks, each on its pattern's kept inputs, every direction on its own."""
    outputs, hs, cs = [], [], []
    for d, suffix in enumerate(direction_suffixes(lstm)):
        out, h, c = _direction(lstm, layer, suffix, x, batch_sizes, (state[0][d : d + 1], state[1][d : d + 1]), runs)
        outputs.append(out)
        hs.append(h)
        cs.append(c)
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, -1)
    return out, torch.cat(hs), torch.cat(cs)


def _direction(
    lstm: ARDLSTM,
    layer: int,
    suffix: str,
    x: torch.Tensor,
    batch_sizes: torch.Tensor | None,
    state: State,
    runs: list[Run],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One direction of a chunked layer: the state flows run to run (backwards for the reverse direction, which
    also flips the steps within each run); a packed run runs on the sequences active at its first step."""
    reverse = suffix == "_reverse"
    offsets = [0, *torch.cumsum(batch_sizes, 0).tolist()] if batch_sizes is not None else None
    h, c = state
    pieces: list[torch.Tensor] = [x] * len(runs)  # placeholders, each replaced by its run's output
    shared = SharedWeights()
    element_p = lstm.ard_element_p[layer]
    for g in reversed(range(len(runs))) if reverse else range(len(runs)):
        run = runs[g]
        selector = run.pattern.selector(x.device)
        build = functools.partial(direction_weights, lstm, layer, suffix, selector)
        weights = shared.get(pattern_key(run.pattern), build)
        if offsets is not None:
            sizes = batch_sizes[run.start : run.stop]  # type: ignore[index]
            active = int(sizes[0])
            xg = kept_input(x[offsets[run.start] : offsets[run.stop]], run.pattern, selector, element_p)
            state = (h[:, :active], c[:, :active])
            out, hg, cg = fused_layer(xg, state, weights, batch_sizes=sizes, has_biases=lstm.bias)
            h, c = torch.cat([hg, h[:, active:]], 1), torch.cat([cg, c[:, active:]], 1)
        else:
            xg = kept_input(x[run.start : run.stop], run.pattern, selector, element_p)
            out, h, c = fused_layer(xg.flip(0) if reverse else xg, (h, c), weights, has_biases=lstm.bias)
            out = out.flip(0) if reverse else out
        pieces[g] = out
    return torch.cat(pieces), h, c
