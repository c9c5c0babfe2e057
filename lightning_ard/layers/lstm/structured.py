"""Recurrent-path structured dropout (sequence mode, unidirectional, opt-in): a hidden unit dropped for a group of
sequences is absent from the group's network, so the group runs a smaller LSTM on weight slices.

Layer l > 0 reads layer l-1's kept units (scaled), the kept units' recurrent input is scaled by their pattern's
scale, a dropped unit's ``(h, c)`` comes back unchanged, and the output holds the last layer's kept units, scaled,
and zeros. Why the state is carried: docs/method.md, section "The LSTM layer".
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from lightning_ard.kernels.torch_ops import Index, take
from lightning_ard.layers.lstm.fused import fused_layer
from lightning_ard.layers.lstm.layer import State, layer_state
from lightning_ard.layers.lstm.merge import SharedWeights, pattern_key
from lightning_ard.patterns import RowPattern
from lightning_ard.patterns.groups import RowSlot, as_groups

if TYPE_CHECKING:
    from lightning_ard.layers.lstm.module import ARDLSTM


@functools.lru_cache(maxsize=4096)
def unscaled(pattern: RowPattern) -> RowPattern:
    """``pattern`` with scale 1 (same kept units): how a Linear reads a structured LSTM's already scaled output."""
    return replace(pattern, scale=1.0, _on_device={})


@functools.lru_cache(maxsize=4096)
def gate_rows(pattern: RowPattern, hidden: int, device: torch.device) -> torch.Tensor:
    """Rows of ``weight_ih``/``weight_hh``/biases that belong to the kept units' four gates (i, f, g, o order)."""
    return (torch.arange(4)[:, None] * hidden + pattern.kept[None, :]).flatten().to(device)


def check_hidden(
    lstm: ARDLSTM, hidden: Sequence[RowSlot], slots: list[tuple[RowPattern, ...] | None], mode: str
) -> list[tuple[RowPattern, ...]]:
    """``hidden`` as one tuple of unit patterns per layer, checked against ``lstm``, ``mode`` and the input
    patterns ``slots`` (only layer 0 may have one: the layers above read their predecessor's kept units)."""
    if mode != "sequence":
        raise ValueError(f"hidden patterns need mode='sequence' (one pattern per group of sequences), got {mode!r}")
    if lstm.bidirectional:
        raise ValueError("hidden patterns (recurrent structured dropout) need a unidirectional LSTM")
    if len(hidden) != lstm.num_layers:
        raise ValueError(f"hidden must have one entry per layer ({lstm.num_layers}), got {len(hidden)}")
    hid = [as_groups(h, f"hidden pattern for layer {i}") for i, h in enumerate(hidden)]
    for i, h in enumerate(hid):
        if h is None:
            raise ValueError(f"hidden pattern for layer {i} is None; give every layer a hidden pattern")
        if any(p.width != lstm.hidden_size for p in h):
            raise ValueError(f"hidden pattern for layer {i} has width {h[0].width}, hidden_size is {lstm.hidden_size}")
    for i, slot in enumerate(slots[1:], start=1):
        if slot is not None:
            raise ValueError(
                f"with hidden patterns layer {i} reads layer {i - 1}'s kept units: its input pattern must be None"
            )
    return hid  # type: ignore[return-value]


def structured_group(
    lstm: ARDLSTM, g: int, x: torch.Tensor, sizes: torch.Tensor | None, state: State, tokens: int,
    shared: SharedWeights,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Every layer of group ``g`` as a smaller LSTM over the group's kept hidden units (see the module)."""
    device = x.device
    pattern = lstm.ard_patterns[0][g] if lstm.ard_patterns[0] is not None else None
    in_sel: Index = None
    in_scale, in_kept = 1.0, lstm.input_size
    if pattern is not None:
        in_sel, in_kept = pattern.selector(device), pattern.num_kept
        x = take(x, -1, in_sel) * pattern.scale
    hs, cs = [], []
    for layer in range(lstm.num_layers):
        unit = lstm.ard_hidden[layer][g]  # type: ignore[index]
        build = functools.partial(unit_weights, lstm, layer, unit, in_sel, in_scale)
        weights = shared.get((layer, *pattern_key(unit, pattern)), build)
        kept = unit.index(device)
        h0, c0 = layer_state(state, layer, 1)
        lstm.ard_record.work[layer].append((tokens, in_kept, unit.num_kept))
        small = (h0.index_select(2, kept), c0.index_select(2, kept))
        x, h, c = fused_layer(x, small, weights, batch_sizes=sizes, has_biases=lstm.bias, batch_first=lstm.batch_first)
        hs.append(h0.index_copy(2, kept, h))  # dropped units: state carried unchanged
        cs.append(c0.index_copy(2, kept, c))
        in_sel, in_scale, in_kept, pattern = unit.selector(device), unit.scale, unit.num_kept, unit
    out = x.new_zeros(*x.shape[:-1], lstm.hidden_size).index_copy(-1, kept, x * in_scale)
    return out, torch.cat(hs), torch.cat(cs)


def unit_weights(lstm: ARDLSTM, layer: int, unit: RowPattern, in_sel: Index, in_scale: float) -> list[torch.Tensor]:
    """``_VF.lstm`` params of the smaller LSTM over ``unit``'s kept units: gate rows of the kept units, input
    columns ``in_sel`` (scaled by ``in_scale``: the previous layer's output scale), kept ``weight_hh`` columns
    scaled by the unit pattern's scale (the recurrent input of a dropout layer)."""
    rows = gate_rows(unit, lstm.hidden_size, lstm.weight_hh_l0.device)
    w_ih = take(getattr(lstm, f"weight_ih_l{layer}"), 1, in_sel).index_select(0, rows)
    w_hh = take(getattr(lstm, f"weight_hh_l{layer}"), 1, unit.selector(rows.device)).index_select(0, rows)
    weights = [w_ih * in_scale if in_scale != 1.0 else w_ih, w_hh * unit.scale]
    if lstm.bias:
        weights += [getattr(lstm, f"bias_{k}_l{layer}").index_select(0, rows) for k in ("ih", "hh")]
    return weights
