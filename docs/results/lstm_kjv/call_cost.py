"""Fixed cost of one fused LSTM call on the CPU: forward + backward of one ``_VF.lstm`` layer call, batch 20, at
T = 1 and T = 8 time steps, for hidden sizes 325 / 650 / 1300 (input: half the hidden units, as a p = 0.5 pattern
reads them). The T = 1 time is what every extra time chunk adds per layer and step, whatever its length.

    OMP_NUM_THREADS=1 python docs/results/lstm_kjv/call_cost.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import _VF

BATCH = 20


def layer_call(hidden: int) -> Callable[[int], None]:
    """One layer's fused call (one direction, biases, training) on ``steps`` time steps, then its backward."""
    kept = hidden // 2
    w_ih = torch.randn(4 * hidden, kept, requires_grad=True)
    w_hh = torch.randn(4 * hidden, hidden, requires_grad=True)
    b_ih, b_hh = torch.randn(4 * hidden, requires_grad=True), torch.randn(4 * hidden, requires_grad=True)

    def call(steps: int) -> None:
        x, h = torch.randn(steps, BATCH, kept), torch.zeros(1, BATCH, hidden)
        out, _, _ = _VF.lstm(x, (h, h), [w_ih, w_hh, b_ih, b_hh], True, 1, 0.0, True, False, False)
        out.sum().backward()

    return call


def main() -> None:
    torch.manual_seed(0)
    calls = {hidden: layer_call(hidden) for hidden in (325, 650, 1300)}
    cases = [(hidden, steps) for hidden in calls for steps in (1, 8)]
    for hidden, steps in cases:  # warm-up: oneDNN primitives created once per shape
        calls[hidden](steps)
    times: dict[tuple[int, int], list[float]] = {case: [] for case in cases}
    for _ in range(5):  # interleaved rounds
        for hidden, steps in cases:
            start = time.perf_counter()
            for _ in range(3):
                calls[hidden](steps)
            times[(hidden, steps)].append((time.perf_counter() - start) / 3 * 1e3)
    print(f"{torch.__version__}, {torch.get_num_threads()} thread(s), batch {BATCH}")
    print("| hidden | T = 1 (ms) | T = 8 (ms) | per extra step (ms) |\n|---|---|---|---|")
    for hidden in calls:
        one, eight = (statistics.median(times[(hidden, t)]) for t in (1, 8))
        print(f"| {hidden} | {one:.1f} | {eight:.1f} | {(eight - one) / 7:.2f} |")


if __name__ == "__main__":
    main()
