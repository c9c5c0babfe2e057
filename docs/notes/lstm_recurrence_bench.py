"""Forward + backward time of the ARD LSTM's sequence mode on the 2 x 650 language-model shapes, by recurrence.

Run from the repository root, e.g. ``OMP_NUM_THREADS=1 python docs/notes/lstm_recurrence_bench.py``. Prints a
markdown table (median seconds per step over interleaved rounds, and the speed relative to nn.LSTM with nn.Dropout).

Variants: ``nn.Dropout + nn.LSTM`` (the baseline: input dropout, inter-layer ``dropout=p``), ``time, 1 group`` (one
pattern per step), ``sequence, one call per group`` (one fused ``_VF.lstm`` call per group of sequences, the default
sequence mode), and sequence groups with one recurrence over the batch fed by per-group compact input projections,
the recurrence being the hand-written autograd Function with its per-step products on a weight packed once for
oneDNN (``one recurrence``) or on plain GEMMs (``one recurrence, plain GEMM``), a plain autograd loop of ``addmm``
and gate ops (``autograd loop``), or ``_VF.lstm`` reading the gates through an identity input weight (``identity
_VF.lstm``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import _VF, nn

from lightning_ard.layers import ARDLSTM
from lightning_ard.layers.lstm import one_recurrence
from lightning_ard.layers.lstm import recurrence as recurrence_module
from lightning_ard.patterns import BlockRow


def autograd_loop(gates, h0, c0, w_hh, steps, reverse):  # type: ignore[no-untyped-def]
    """The recurrence as a plain autograd loop: ``addmm`` for ``h · W_hhᵀ`` and the gate ops, per step."""
    h, c, outs = h0, c0, {}
    for offset, size in reversed(steps) if reverse else steps:
        a = torch.addmm(gates[offset : offset + size], h[:size], w_hh.t())
        i, f, g, o = a.chunk(4, 1)
        c_new = torch.sigmoid(f) * c[:size] + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        outs[offset] = h_new
        h, c = torch.cat([h_new, h[size:]]), torch.cat([c_new, c[size:]])
    return torch.cat([outs[offset] for offset, _ in steps]), h, c


def identity_vf(gates, h0, c0, w_hh, steps, reverse):  # type: ignore[no-untyped-def]
    """The recurrence in ``_VF.lstm`` with the gates as its input and an identity ``W_ih`` (padded input only)."""
    n_steps, batch = len(steps), steps[0][1]
    eye = torch.eye(gates.shape[1], dtype=gates.dtype, device=gates.device)
    bias = gates.new_zeros(gates.shape[1])
    x = gates.reshape(n_steps, batch, -1)
    x = x.flip(0) if reverse else x
    out, h, c = _VF.lstm(x, (h0[None], c0[None]), [eye, w_hh, bias, bias], True, 1, 0.0, True, False, False)
    out = out.flip(0) if reverse else out
    return out.reshape(n_steps * batch, -1), h[0], c[0]


def make_step(variant: str, batch: int, groups: int, p: float, steps: int, width: int):  # type: ignore[no-untyped-def]
    """A closure that runs one forward + backward of ``variant``; returns it."""
    torch.manual_seed(0)
    lstm = nn.LSTM(width, width, 2, dropout=p)
    drop = nn.Dropout(p)
    x = torch.randn(steps, batch, width, requires_grad=True)
    if variant == "nn.Dropout + nn.LSTM":
        return lambda: lstm(drop(x))[0].sum().backward()
    ard = ARDLSTM.from_lstm(lstm, one_recurrence=variant != "sequence, one call per group")
    keep = round(width * (1 - p))
    n = 1 if variant == "time, 1 group" else groups
    ard.set_patterns(
        [tuple(BlockRow(width, keep).sample() for _ in range(n)) for _ in range(2)],
        mode="time" if n == 1 else "sequence",
    )
    recurrence = {"autograd loop": autograd_loop, "identity _VF.lstm": identity_vf}.get(variant)

    def step() -> None:
        saved = (one_recurrence.recurrence, recurrence_module.PACKED_WEIGHTS)
        one_recurrence.recurrence = recurrence or saved[0]
        recurrence_module.PACKED_WEIGHTS = variant != "one recurrence, plain GEMM"
        try:
            ard(x)[0].sum().backward()
        finally:
            one_recurrence.recurrence, recurrence_module.PACKED_WEIGHTS = saved

    return step


VARIANTS = (
    "nn.Dropout + nn.LSTM", "time, 1 group", "sequence, one call per group", "one recurrence",
    "one recurrence, plain GEMM", "autograd loop", "identity _VF.lstm",
)  # fmt: skip


def main() -> None:
    """Interleave the variants for ``--rounds`` rounds per batch size and print the medians."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, nargs="+", default=[20, 64])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--groups", type=int, default=4)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); 2 x 650, 35 steps, p = 0.5, "
          f"{args.groups} groups; median s per forward + backward (x: speed vs nn.Dropout + nn.LSTM)\n")  # fmt: skip
    print("| variant | " + " | ".join(f"batch {b}" for b in args.batches) + " |")
    print("| --- |" + " --- |" * len(args.batches))
    results: dict[tuple[str, int], float] = {}
    for batch in args.batches:
        steps = {v: make_step(v, batch, args.groups, 0.5, 35, 650) for v in VARIANTS}
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for v in VARIANTS:
            steps[v]()  # warm-up
        for _ in range(args.rounds):
            for v in VARIANTS:
                start = time.perf_counter()
                steps[v]()
                times[v].append(time.perf_counter() - start)
        results.update({(v, batch): statistics.median(t) for v, t in times.items()})
    for v in VARIANTS:
        cells = []
        for b in args.batches:
            t, base = results[(v, b)], results[(VARIANTS[0], b)]
            cells.append(f"{t:.3f} ({base / t:.2f}x)")
        print(f"| {v} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
