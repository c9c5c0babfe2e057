"""The one timer of the project, and the per-layer speed calibration the callback logs.

Every wall-clock measurement (the callback's calibration, the step benchmark, the step timer of the app) goes
through :func:`synchronize` and :func:`time_calls`, so kernels queued on an accelerator are always waited for
before the clock is read, whichever device runs them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from lightning_ard.layers import ARDLSTM, ARDLinear
    from lightning_ard.sites import Site

LayerTimes = dict[str, tuple[float, float]]
"""Layer path -> (dense, ARD) seconds of one forward + backward."""


def synchronize(device: torch.device | str) -> None:
    """Wait for the queued work of ``device`` (no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    elif device.type == "xpu":
        torch.xpu.synchronize(device)


def time_calls(
    fn: Callable[[], object], device: torch.device | str, calls: int, after: Callable[[], object] | None = None
) -> list[float]:
    """Milliseconds of each of ``calls`` calls of ``fn``, the device synchronized around every call;
    ``after`` (untimed) runs after each call."""
    out = []
    for _ in range(calls):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        out.append((time.perf_counter() - start) * 1e3)
        if after is not None:
            after()
    return out


def median_time(fn: Callable[[], object], device: torch.device | str, reps: int = 5, warmup: int = 2) -> float:
    """Median seconds of ``fn`` over ``reps`` calls after ``warmup`` untimed ones."""
    time_calls(fn, device, warmup)
    return statistics.median(time_calls(fn, device, reps)) / 1e3


def _optimizer_like(
    optimizers: Sequence[torch.optim.Optimizer], param: torch.Tensor, stand_ins: list[torch.Tensor]
) -> torch.optim.Optimizer | None:
    """An optimizer of the same class and hyperparameters as the one that updates ``param``, over ``stand_ins``
    (so calibration times the optimizer's share of the layer's step); None when none holds it or it cannot be
    rebuilt."""
    for opt in optimizers:
        for group in opt.param_groups:
            if any(q is param for q in group["params"]):
                hyper = {k: v for k, v in group.items() if k != "params"}
                try:
                    return type(opt)([{"params": stand_ins, **hyper}])
                except Exception:  # an optimizer that cannot be rebuilt from its param group: no share
                    return None
    return None


def _train_step(forward: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer | None) -> Callable[[], None]:
    def step() -> None:
        forward().sum().backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)

    return step


def interleaved_medians(
    fns: Sequence[Callable[[], object]], device: torch.device | str, reps: int = 7, warmup: int = 2
) -> list[float]:
    """Median seconds of each of ``fns``, timed in turn (one call of each per round, ``reps`` rounds after
    ``warmup`` untimed ones): load that comes and goes on a shared machine hits every candidate alike, where
    timing one after the other lets a burst decide which looks faster."""
    for fn in fns:
        time_calls(fn, device, warmup)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, out in zip(fns, times, strict=True):
            out += time_calls(fn, device, 1)
    return [statistics.median(t) / 1e3 for t in times]


def time_linear(
    lin: ARDLinear, dropout_p: float = 0.0, optimizers: Sequence[torch.optim.Optimizer] = ()
) -> tuple[float, float]:
    """(dense, ARD) seconds of a training step's share of an ARD Linear at its last step's shape (its record), on
    stand-ins:
    forward, backward and the optimizer's update of its parameters; the dense side also pays nn.Dropout on its
    input (``dropout_p``), which ARD replaces."""
    device = lin.weight.device
    w = lin.weight.detach().clone().requires_grad_(True)
    b = lin.bias.detach().clone().requires_grad_(True) if lin.bias is not None else None
    params = [w] if b is None else [w, b]
    record = lin.ard_record
    rows, grad_x = max(record.rows, 1), record.grad_input
    width = record.input[0][-1] if record.input is not None else lin.in_features  # compact when fed by a producer
    x = torch.randn(rows, width, device=device, dtype=w.dtype, requires_grad=grad_x)
    x_dense = torch.randn(rows, lin.in_features, device=device, dtype=w.dtype, requires_grad=grad_x)
    opt = _optimizer_like(optimizers, lin.weight, params)
    dense = _train_step(lambda: F.linear(F.dropout(x_dense, dropout_p) if dropout_p else x_dense, w, b), opt)
    ard = _train_step(lambda: lin.ard_product(x, w, b), opt)
    dense_s, ard_s = interleaved_medians([dense, ard], device)
    return dense_s, ard_s


def time_lstm(
    lstm: ARDLSTM, dropout_p: float = 0.0, optimizers: Sequence[torch.optim.Optimizer] = ()
) -> tuple[float, float]:
    """(dense, ARD) seconds of a training step's share of an ARD LSTM with its last step's patterns, on copies
    (forward, backward, the optimizer's update; the dense side pays nn.Dropout on its input)."""
    from lightning_ard.layers import ARDLSTM

    device = lstm.weight_hh_l0.device

    def copy() -> nn.LSTM:
        args = (lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias, True, lstm.dropout, lstm.bidirectional)
        return nn.LSTM(*args).to(device)

    tokens = max(lstm.ard_record.rows, 1)
    batch = lstm.ard_record.batch or max(min(tokens, 32), 1)
    x = torch.randn(batch, max(tokens // batch, 1), lstm.input_size, device=device)
    dense_copy, ard_copy = copy(), ARDLSTM.from_lstm(copy())
    ard_copy.set_patterns(**lstm.ard_settings())
    dense_opt = _optimizer_like(optimizers, lstm.weight_hh_l0, list(dense_copy.parameters()))
    ard_opt = _optimizer_like(optimizers, lstm.weight_hh_l0, list(ard_copy.parameters()))
    dense = _train_step(lambda: dense_copy(F.dropout(x, dropout_p) if dropout_p else x)[0], dense_opt)
    ard = _train_step(lambda: ard_copy(x)[0], ard_opt)
    dense_s, ard_s = interleaved_medians([dense, ard], device)
    return dense_s, ard_s


def calibrate(
    linears: Mapping[str, ARDLinear],
    lstms: Mapping[str, ARDLSTM],
    dropout_p: Mapping[str, float] | None = None,
    optimizers: Sequence[torch.optim.Optimizer] = (),
) -> LayerTimes:
    """(dense, ARD) time of every ARD layer's share of a training step at this step's shapes and patterns, on its
    own device, synchronized; ``dropout_p``: layer path -> rate of the nn.Dropout on its input (dense side)."""
    rates = dropout_p or {}
    times = {path: time_linear(lin, rates.get(path, 0.0), optimizers) for path, lin in linears.items()}
    times.update({path: time_lstm(lstm, rates.get(path, 0.0), optimizers) for path, lstm in lstms.items()})
    return times


def site_speedups(times: LayerTimes, sites: Iterable[Site]) -> dict[str, float]:
    """Measured dense/ARD time of the layers each site touches (consumer and producer)."""
    out = {}
    for site in sites:
        layers = [p for p in (site.consumer, site.producer) if p is not None]
        dense, ard = sum(times[p][0] for p in layers), sum(times[p][1] for p in layers)
        out[site.name] = dense / ard if ard > 0 else float("nan")
    return out


def module_speedups(times: LayerTimes, sites: Iterable[Site]) -> dict[str, float]:
    """Per site, the measured dense/ARD time of the layers of every site that shares its dropout module.

    A dropout module runs ARD or nn.Dropout for all its uses at once, so the never-slower rule judges it on all of
    them together: a module whose output feeds a slower LSTM and a much faster decoder (one ``nn.Dropout`` applied
    twice, as in Lightning's demo LSTM LM) is kept when the sum of its layers' times is lower with ARD."""
    sites = list(sites)
    layers: dict[str, set[str]] = {}
    for site in sites:
        key = site.dropout or site.name
        layers.setdefault(key, set()).update(p for p in (site.consumer, site.producer) if p is not None)
    out = {}
    for site in sites:
        paths = layers[site.dropout or site.name]
        dense, ard = sum(times[p][0] for p in paths), sum(times[p][1] for p in paths)
        out[site.name] = dense / ard if ard > 0 else float("nan")
    return out
