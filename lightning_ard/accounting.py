"""FLOP accounting of a training step, in one place: formulas, per-layer and per-site counts, expected savings,
and the one-off count of the step's other products.

Counts follow ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add, matrix products only):
a Linear over M rows costs 2·M·out·in for the forward, the same for the weight gradient, and the same again for
the input gradient when the input requires one. ARD changes only ``out`` and ``in`` (row patterns) or the kept
share of the weight (tile patterns). The ARD layers write the rows of their last training forward into their
:class:`~lightning_ard.layers.record.StepRecord` (the controller keeps them); the functions here turn those into
FLOPs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from torch import nn
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:
    from lightning_ard.layers import ARDLSTM, ARDLinear
    from lightning_ard.layers.record import StepRecord
    from lightning_ard.sites import Site

LayerFlops = dict[str, tuple[int, int]]
"""Layer path -> (dense, executed) FLOPs of one step."""


def linear_step_flops(rows: int, out_features: int, in_features: int, grad_input: bool) -> int:
    """FLOPs of forward + backward of a Linear over ``rows`` rows (kept widths for an ARD layer)."""
    return 2 * rows * out_features * in_features * (3 if grad_input else 2)


def lstm_layer_step_flops(tokens: int, input_width: int, hidden: int, directions: int, grad_input: bool) -> int:
    """FLOPs of forward + backward of one LSTM layer over ``tokens`` = T·B inputs.

    Input projection 4H×input (forward, weight gradient, input gradient when needed) plus the recurrent 4H×H
    products (forward, weight gradient, hidden-state gradient), per direction. ``hidden`` is the number of units
    that run (the kept units of a structured layer). Counted analytically: ``FlopCounterMode`` does not see the
    fused LSTM op on every device and layout (on the CPU it counts 0 for padded input). The hidden-state gradient is
    counted at every step, also the first (where PyTorch skips it when the initial state needs no gradient).
    """
    gates = 4 * hidden
    projection = 2 * tokens * gates * input_width * (3 if grad_input else 2)
    recurrent = 2 * tokens * gates * hidden * 3
    return directions * (projection + recurrent)


def ard_linear_flops(lin: ARDLinear, record: StepRecord) -> tuple[int, int]:
    """(dense, executed) FLOPs of an ARD Linear's last training step, summed over its pattern groups."""
    grad_in = record.grad_input
    dense = linear_step_flops(record.rows, lin.out_features, lin.in_features, grad_in)
    executed = 0
    for g, rows in enumerate(record.group_rows or [record.rows]):
        if lin.ard_tile_patterns is not None:
            full = linear_step_flops(rows, lin.out_features, lin.in_features, grad_in)
            executed += round(full * lin.ard_tile_patterns[g].keep_fraction)
            continue
        ko = lin.ard_out_patterns[g].num_kept if lin.ard_out_patterns is not None else lin.out_features
        ki = lin.ard_in_patterns[g].num_kept if lin.ard_in_patterns is not None else lin.in_features
        executed += linear_step_flops(rows, ko, ki, grad_in)
    return dense, executed


def ard_lstm_flops(lstm: ARDLSTM, record: StepRecord) -> tuple[int, int]:
    """(dense, executed) FLOPs of an ARD LSTM's last training step, layer by layer and fused call by fused call
    (time chunks or sequence groups: the work each call recorded)."""
    dirs = 2 if lstm.bidirectional else 1
    dense = executed = 0
    for layer in range(lstm.num_layers):
        grad_in = layer > 0 or record.grad_input
        full = lstm_layer_step_flops(record.rows, lstm.layer_input_size(layer), lstm.hidden_size, dirs, grad_in)
        dense += full
        work = record.work[layer] if layer < len(record.work) else []
        executed += sum(lstm_layer_step_flops(t, k_in, k_h, dirs, grad_in) for t, k_in, k_h in work) if work else full
    return dense, executed


def step_flops(
    linears: Mapping[str, ARDLinear], lstms: Mapping[str, ARDLSTM], records: Mapping[str, StepRecord]
) -> LayerFlops:
    """(dense, executed) FLOPs of the last step for every ARD layer, by path, from the layers' records."""
    out = {path: ard_linear_flops(lin, records[path]) for path, lin in linears.items()}
    out.update({path: ard_lstm_flops(lstm, records[path]) for path, lstm in lstms.items()})
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


def _seen_in(mode: FlopCounterMode, modules: Mapping[str, nn.Module]) -> int:
    """FLOPs ``mode`` attributed to ``modules`` (outermost ones only, so nested ARD layers count once).

    ``FlopCounterMode`` names a module ``<RootClass>.<path>`` after the first module called under it; its module
    tracker knows each module's name (``_known_modules``, read defensively), else the path after the root is used.
    """
    counts = {name: sum(per_op.values()) for name, per_op in mode.get_flop_counts().items()}
    known = getattr(getattr(mode, "mod_tracker", None), "_known_modules", None)
    names: list[str] = []
    for path, module in modules.items():
        name = known.get(module) if known is not None else None
        if name is None:
            name = next((k for k in counts if k.partition(".")[2] == path), None)
        if name is not None and name in counts:
            names.append(name)
    outer = [n for n in names if not any(n.startswith(f"{o}.") for o in names if o != n)]
    return sum(counts[n] for n in outer)


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

    def stop(self, ard_executed: int, ard_modules: Mapping[str, nn.Module] | None = None) -> bool:
        """Stop counting and keep the total minus the ARD layers' share; True when this call took the count.

        With ``ard_modules`` (path -> ARD layer), the share removed is what ``FlopCounterMode`` itself saw inside
        those modules, so a fused op it does not see (the LSTM on the CPU) removes nothing from the rest of the
        step; without it, ``ard_executed`` (the analytic count) is removed.
        """
        mode = self._mode
        if mode is None:
            return False
        self.close()
        seen = ard_executed if ard_modules is None else _seen_in(mode, ard_modules)
        self.value = max(mode.get_total_flops() - seen, 0)
        return True

    def close(self) -> None:
        """Leave the counting mode (also on teardown or after an exception, keeping no partial count)."""
        if self._mode is not None:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)


def group_rows(record: StepRecord, sequences: bool = False) -> int:
    """Rows the last training step gave a layer's pattern groups to cut: its input rows (samples, or tokens for
    sequence input; an LSTM's tokens in time mode), or with ``sequences`` an LSTM's sequences (0: not run yet)."""
    return (record.batch or 0) if sequences else int(record.rows)
