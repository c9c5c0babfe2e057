"""FLOP accounting of a training step, in one place: formulas, per-layer and per-site counts, expected savings,
and the one-off count of the step's other products.

Counts follow ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add, matrix products only):
a Linear over M rows costs 2·M·out·in for the forward, the same for the weight gradient, and the same again for
the input gradient when the input requires one. ARD changes only ``out`` and ``in`` (row patterns) or the kept
share of the weight (tile patterns). The ARD layers record the rows of their last training forward
(``ard_rows``, ``ard_group_rows``, ``ard_grad_input``); the functions here turn those into FLOPs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:
    from lightning_ard.layers import ARDLSTM, ARDLinear
    from lightning_ard.sites import Site

LayerFlops = dict[str, tuple[int, int]]
"""Layer path -> (dense, executed) FLOPs of one step."""


def linear_step_flops(rows: int, out_features: int, in_features: int, grad_input: bool) -> int:
    """FLOPs of forward + backward of a Linear over ``rows`` rows (kept widths for an ARD layer)."""
    return 2 * rows * out_features * in_features * (3 if grad_input else 2)


def lstm_layer_step_flops(tokens: int, input_width: int, hidden: int, directions: int, grad_input: bool) -> int:
    """FLOPs of forward + backward of one LSTM layer over ``tokens`` = T·B inputs.

    Input projection 4H×input (forward, weight gradient, input gradient when needed) plus the recurrent 4H×H
    products (forward, weight gradient, hidden-state gradient), per direction.
    """
    gates = 4 * hidden
    projection = 2 * tokens * gates * input_width * (3 if grad_input else 2)
    recurrent = 2 * tokens * gates * hidden * 3
    return directions * (projection + recurrent)


def ard_linear_flops(lin: ARDLinear) -> tuple[int, int]:
    """(dense, executed) FLOPs of an ARD Linear's last training step, summed over its pattern groups."""
    grad_in = lin.ard_grad_input
    dense = linear_step_flops(lin.ard_rows, lin.out_features, lin.in_features, grad_in)
    executed = 0
    for g, rows in enumerate(lin.ard_group_rows or [lin.ard_rows]):
        if lin.ard_tile_patterns is not None:
            full = linear_step_flops(rows, lin.out_features, lin.in_features, grad_in)
            executed += round(full * lin.ard_tile_patterns[g].keep_fraction)
            continue
        ko = lin.ard_out_patterns[g].num_kept if lin.ard_out_patterns is not None else lin.out_features
        ki = lin.ard_in_patterns[g].num_kept if lin.ard_in_patterns is not None else lin.in_features
        executed += linear_step_flops(rows, ko, ki, grad_in)
    return dense, executed


def ard_lstm_flops(lstm: ARDLSTM) -> tuple[int, int]:
    """(dense, executed) FLOPs of an ARD LSTM's last training step, layer by layer and group by group."""
    dirs = 2 if lstm.bidirectional else 1
    dense = executed = 0
    for layer, slot in enumerate(lstm.ard_patterns):
        width = lstm.layer_input_size(layer)
        grad_in = layer > 0 or lstm.ard_grad_input
        full = lstm_layer_step_flops(lstm.ard_rows, width, lstm.hidden_size, dirs, grad_in)
        dense += full
        if slot is None:
            executed += full
            continue
        group_rows = lstm.ard_group_rows if len(slot) > 1 else [lstm.ard_rows]
        for pat, rows in zip(slot, group_rows, strict=True):
            executed += lstm_layer_step_flops(rows, pat.num_kept, lstm.hidden_size, dirs, grad_in)
    return dense, executed


def step_flops(linears: Mapping[str, ARDLinear], lstms: Mapping[str, ARDLSTM]) -> LayerFlops:
    """(dense, executed) FLOPs of the last step for every ARD layer, by path."""
    out = {path: ard_linear_flops(lin) for path, lin in linears.items()}
    out.update({path: ard_lstm_flops(lstm) for path, lstm in lstms.items()})
    return out


def site_flops(layer_flops: LayerFlops, site: Site) -> tuple[int, int]:
    """(dense, executed) FLOPs of the layers a site touches (its consumer and producer)."""
    layers = [p for p in (site.consumer, site.producer) if p is not None]
    return sum(layer_flops[p][0] for p in layers), sum(layer_flops[p][1] for p in layers)


def expected_saving(layers: Iterable[tuple[float, float]]) -> float:
    """Expected share of work removed over layers given as (dense size, expected kept share of that size)."""
    dense = executed = 0.0
    for size, kept in layers:
        dense, executed = dense + size, executed + size * kept
    return 1.0 - executed / dense if dense else 0.0


class OtherFlops:
    """The FLOPs of a step outside the ARD layers (the rest of the model), counted once with ``FlopCounterMode``.

    ``start()`` before the first step, ``stop(executed)`` after it with the ARD layers' executed FLOPs; the value
    is then fixed for the fit (the rest of the model does not change from step to step).
    """

    def __init__(self) -> None:
        self.value: int | None = None
        self._mode: FlopCounterMode | None = None

    @property
    def pending(self) -> bool:
        """Whether the count has not been taken yet."""
        return self.value is None and self._mode is None

    def start(self) -> None:
        """Start counting every product of the coming step."""
        self._mode = FlopCounterMode(display=False)
        self._mode.__enter__()

    def stop(self, ard_executed: int) -> bool:
        """Stop counting and keep the total minus the ARD layers' share; True when this call took the count."""
        mode = self._mode
        if mode is None:
            return False
        self.close()
        self.value = max(mode.get_total_flops() - ard_executed, 0)
        return True

    def close(self) -> None:
        """Leave the counting mode (also on teardown or after an exception, keeping no partial count)."""
        if self._mode is not None:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)
