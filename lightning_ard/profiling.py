"""The one timer of the project, and the per-layer speed calibration the callback logs.

Every wall-clock measurement (the callback's calibration, the step benchmark, the step timer of the app) goes
through :func:`synchronize` and :func:`time_calls`, so kernels queued on an accelerator are always waited for
before the clock is read, whichever device runs them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping
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


def time_linear(lin: ARDLinear) -> tuple[float, float]:
    """(dense, ARD) seconds of forward + backward of an ARD Linear at its last step's shape, on stand-in tensors."""
    device = lin.weight.device
    w = lin.weight.detach().clone().requires_grad_(True)
    b = lin.bias.detach().clone().requires_grad_(True) if lin.bias is not None else None
    rows, grad_x = max(lin.ard_rows, 1), lin.ard_grad_input
    x = torch.randn(rows, lin.in_features, device=device, dtype=w.dtype, requires_grad=grad_x)

    def dense() -> None:
        F.linear(x, w, b).sum().backward()

    def ard() -> None:
        lin.ard_product(x, w, b).sum().backward()

    return median_time(dense, device), median_time(ard, device)


def time_lstm(lstm: ARDLSTM) -> tuple[float, float]:
    """(dense, ARD) seconds of forward + backward of an ARD LSTM with its last step's patterns, on copies."""
    from lightning_ard.layers import ARDLSTM

    device = lstm.weight_hh_l0.device

    def copy() -> nn.LSTM:
        args = (lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias, True, lstm.dropout, lstm.bidirectional)
        return nn.LSTM(*args).to(device)

    tokens = max(lstm.ard_rows, 1)
    batch = max(min(tokens, 32), 1)
    x = torch.randn(batch, max(tokens // batch, 1), lstm.input_size, device=device)
    dense_copy, ard_copy = copy(), ARDLSTM.from_lstm(copy())
    ard_copy.set_patterns(list(lstm.ard_patterns))

    def dense() -> None:
        dense_copy(x)[0].sum().backward()

    def ard() -> None:
        ard_copy(x)[0].sum().backward()

    return median_time(dense, device), median_time(ard, device)


def calibrate(linears: Mapping[str, ARDLinear], lstms: Mapping[str, ARDLSTM]) -> LayerTimes:
    """(dense, ARD) time of every ARD layer at this step's shapes and patterns, on its own device."""
    times = {path: time_linear(lin) for path, lin in linears.items()}
    times.update({path: time_lstm(lstm) for path, lstm in lstms.items()})
    return times


def site_speedups(times: LayerTimes, sites: Iterable[Site]) -> dict[str, float]:
    """Measured dense/ARD time of the layers each site touches (consumer and producer)."""
    out = {}
    for site in sites:
        layers = [p for p in (site.consumer, site.producer) if p is not None]
        dense, ard = sum(times[p][0] for p in layers), sum(times[p][1] for p in layers)
        out[site.name] = dense / ard if ard > 0 else float("nan")
    return out


def speedup_estimate(times: LayerTimes, step_seconds: float) -> float:
    """Amdahl on calibrated layer times: the rest of the step (data, optimizer, other layers) is shared."""
    dense = sum(d for d, _ in times.values())
    ard = sum(a for _, a in times.values())
    rest = max(step_seconds - ard, 0.0)
    return (rest + dense) / (rest + ard)
