"""Sequence groups with one recurrence (``mode="sequence"`` without hidden patterns).

A group's input pattern changes only its input projection ``x_t · W_ih[:, kept]ᵀ``; the recurrence ``h_{t-1} ·
W_hhᵀ`` is the same full-width product for every group. So each layer computes every group's input gates on its kept
columns (groups that drew the same pattern in one product), puts them in the batch's row order, and runs one
recurrence per direction over the whole batch (:mod:`.recurrence`). Same function and FLOPs as one fused call per
group; opt-in (``ARDLSTM.ard_one_recurrence``) because on the CPU it measured slower (docs/notes/lstm.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lightning_ard.kernels.torch_ops import take
from lightning_ard.layers.lstm.layer import State, direction_suffixes, lstm_layer_input_size
from lightning_ard.layers.lstm.layout import SequenceLayout
from lightning_ard.layers.lstm.recurrence import Steps, recurrence
from lightning_ard.patterns import RowPattern
from lightning_ard.patterns.groups import group_bounds

if TYPE_CHECKING:
    from lightning_ard.layers.lstm.module import ARDLSTM

Output = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def one_recurrence_forward(
    lstm: ARDLSTM, x: torch.Tensor, batch_sizes: torch.Tensor | None, hx: State, batch: int,
    sorted_indices: torch.Tensor | None,
) -> Output:  # fmt: skip
    """Every layer over the batch's groups of sequences; ``(output, h, c)`` in nn.LSTM's layout (``hx`` and packed
    data in the sorted order of packed input)."""
    bounds = group_bounds(batch, lstm.ard_groups)
    lstm.ard_layout = SequenceLayout.of(batch, bounds, batch_sizes, sorted_indices)
    rows, steps, positions = _time_major_rows(lstm, x, batch_sizes)
    pos_group = torch.tensor([g for g, (b0, b1) in enumerate(bounds) for _ in range(b1 - b0)], dtype=torch.long)
    row_group = pos_group[positions]
    counts = torch.bincount(row_group, minlength=len(bounds)).tolist()
    lstm.ard_record.group_rows = counts
    dirs = 2 if lstm.bidirectional else 1
    hs, cs = [], []
    for layer, slot in enumerate(lstm.ard_patterns):
        gates = _input_gates(lstm, layer, rows, slot, row_group, counts)
        outs = []
        for d, suffix in enumerate(direction_suffixes(lstm)):
            k, w_hh = layer * dirs + d, getattr(lstm, f"weight_hh_l{layer}{suffix}")
            gates_d = gates[:, d * 4 * lstm.hidden_size : (d + 1) * 4 * lstm.hidden_size]
            out, h, c = recurrence(gates_d, hx[0][k], hx[1][k], w_hh, steps, reverse=d == 1)
            outs.append(out)
            hs.append(h)
            cs.append(c)
        rows = outs[0] if dirs == 1 else torch.cat(outs, 1)
    if batch_sizes is None:
        rows = rows.view(len(steps), batch, -1)
        rows = rows.transpose(0, 1) if lstm.batch_first else rows
    return rows, torch.stack(hs), torch.stack(cs)


def _time_major_rows(
    lstm: ARDLSTM, x: torch.Tensor, batch_sizes: torch.Tensor | None
) -> tuple[torch.Tensor, Steps, torch.Tensor]:
    """The input as time-major packed rows, each step's ``(offset, size)``, and each row's position in the batch
    (its sequence, in the sorted order of packed input)."""
    if batch_sizes is None:
        x = x.transpose(0, 1) if lstm.batch_first else x
        steps_n, batch = x.shape[0], x.shape[1]
        rows = x.reshape(steps_n * batch, x.shape[-1])
        return rows, [(t * batch, batch) for t in range(steps_n)], torch.arange(steps_n * batch) % batch
    sizes = batch_sizes.tolist()
    offsets = [0, *torch.tensor(sizes).cumsum(0).tolist()]
    positions = torch.cat([torch.arange(n) for n in sizes])
    return x, list(zip(offsets[:-1], sizes, strict=True)), positions


def _input_gates(
    lstm: ARDLSTM, layer: int, x: torch.Tensor, slot: tuple[RowPattern, ...] | None, row_group: torch.Tensor,
    counts: list[int],
) -> torch.Tensor:  # fmt: skip
    """Gate pre-activations (rows × directions·4H, both biases in) of ``layer`` for every row of ``x``: each group
    on its pattern's kept columns, scaled (groups with one pattern in one product); without a pattern the whole
    input (above layer 0 after the module's own dropout). Each group's work goes to the layer's record."""
    suffixes = direction_suffixes(lstm)
    w_ih = torch.cat([getattr(lstm, f"weight_ih_l{layer}{s}") for s in suffixes])
    bias = None
    if lstm.bias:
        biases = [getattr(lstm, f"bias_ih_l{layer}{s}") + getattr(lstm, f"bias_hh_l{layer}{s}") for s in suffixes]
        bias = torch.cat(biases)
    width = lstm_layer_input_size(lstm, layer)
    kept = [p.num_kept for p in slot] if slot is not None else [width] * len(counts)
    lstm.ard_record.work[layer] = [(n, k, lstm.hidden_size) for n, k in zip(counts, kept, strict=True) if n]
    if slot is None:
        if layer > 0 and lstm.dropout > 0:
            x = F.dropout(x, lstm.dropout, training=True)
        return _projection(x, w_ih, bias, None)
    by_key: dict[object, tuple[RowPattern, list[int]]] = {}
    for g, pattern in enumerate(slot):
        if counts[g]:
            by_key.setdefault(pattern.merge_key, (pattern, []))[1].append(g)
    element_p = lstm.ard_element_p[layer]
    if len(by_key) == 1:
        return _projection(x, w_ih, bias, next(iter(by_key.values()))[0], element_p)
    pieces, indices = [], []
    for pattern, groups in by_key.values():
        idx = torch.isin(row_group, torch.tensor(groups)).nonzero().squeeze(1).to(x.device)
        pieces.append(_projection(x.index_select(0, idx), w_ih, bias, pattern, element_p))
        indices.append(idx)
    projected = torch.cat(pieces)
    return projected.new_empty(projected.shape).index_copy(0, torch.cat(indices), projected)


def _projection(
    x: torch.Tensor, w_ih: torch.Tensor, bias: torch.Tensor | None, pattern: RowPattern | None,
    element_p: float = 0.0,
) -> torch.Tensor:  # fmt: skip
    """``x[:, kept] · w_ih[:, kept]ᵀ · scale + bias`` (every column without a pattern); ``element_p``: element-wise
    dropout on the kept columns."""
    scale = 1.0
    if pattern is not None:
        selector = pattern.selector(x.device)
        x, w_ih, scale = take(x, -1, selector), take(w_ih, 1, selector), pattern.scale
        if element_p > 0.0:
            x = F.dropout(x, element_p, training=True)
    if bias is None:
        return torch.mm(x, w_ih.t()) * scale if scale != 1.0 else torch.mm(x, w_ih.t())
    return torch.addmm(bias, x, w_ih.t(), alpha=scale)
