"""Pattern groups on the CPU: one ``torch._grouped_mm`` per product vs one product per group vs dense + dropout.

One grouped 2048 x 2048 layer step (forward + backward, float32, one thread), the MLP's middle layer: input and
output patterned (periodic, p = 0.5, one candidate per step so every group keeps 1024 units), compact input and
output as the MLP hands them on, and full-width input and output; G = 4 and 8 groups; batch 256 and 1024. Repeats
are interleaved (other processes share the cores); the median is reported. Writes ``grouped_mm_cpu.md`` next to
this file::

    OMP_NUM_THREADS=1 PYTHONPATH=. python docs/results/gpu/grouped_mm_cpu.py
"""

from __future__ import annotations

import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
from torch import nn

from lightning_ard.kernels.gathered import GatheredBackend
from lightning_ard.kernels.grouped_mm import GroupedMMBackend
from lightning_ard.patterns import PeriodicRow

WIDTH, P, REPS = 2048, 0.5, 7
BATCHES, GROUPS = (256, 1024), (4, 8)


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def grouped_step(batch: int, groups: int, mode: str, compact: bool):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(0)
    fam = PeriodicRow(WIDTH, 2, 1)
    ins, outs = fam.sample_many(groups, gen), fam.sample_many(groups, gen)
    k = ins[0].num_kept
    x = torch.randn(batch, k if compact else WIDTH, generator=gen)
    w = torch.randn(WIDTH, WIDTH, generator=gen, requires_grad=True)
    b = torch.zeros(WIDTH, requires_grad=True)
    gy = torch.randn(batch, k if compact else WIDTH, generator=gen)
    backend = GroupedMMBackend() if mode == "grouped_mm" else GatheredBackend()

    def step() -> None:
        w.grad = b.grad = None
        backend.row_linear_groups(x, w, b, ins, outs, compact, compact).backward(gy)

    return step


def dense_step(batch: int):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(0)
    layer, drop = nn.Linear(WIDTH, WIDTH), nn.Dropout(P)
    x, gy = torch.randn(batch, WIDTH, generator=gen), torch.randn(batch, WIDTH, generator=gen)

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        layer(drop(x)).backward(gy)

    return step


def main() -> None:
    torch.set_num_threads(1)
    cases: dict[tuple, object] = {}
    for batch in BATCHES:
        cases[(batch, "-", "dense + dropout", "full")] = dense_step(batch)
        for groups in GROUPS:
            for compact in (True, False):
                layout = "compact" if compact else "full"
                for path, mode in (("per-group (torch_grouped)", "gathered"), ("torch._grouped_mm", "grouped_mm")):
                    cases[(batch, groups, path, layout)] = grouped_step(batch, groups, mode, compact)
    times: dict[tuple, list[float]] = {key: [] for key in cases}
    for fn in cases.values():
        fn()  # warm-up
    for _ in range(REPS):  # interleaved
        for key, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    lines = [
        "# Pattern groups on the CPU: `torch._grouped_mm` vs one product per group vs dense + dropout",
        "",
        f"- CPU: {cpu_name()}, 1 thread (`torch.set_num_threads(1)`; the 2 cores are shared with other processes)",
        f"- torch {torch.__version__}, float32; layer {WIDTH} x {WIDTH}, input and output patterned (periodic, p = {P},"
        f" {WIDTH // 2} kept per group), one forward + backward; median of {REPS} interleaved repeats",
        "- compact: compact input and output per group (what the MLP's middle layer gets); full: full width both",
        "- script: `docs/results/gpu/grouped_mm_cpu.py`",
        "",
        "| batch | groups | path | layout | ms | vs per-group | vs dense + dropout |",
        "|---|---|---|---|---|---|---|",
    ]
    med = {key: statistics.median(v) * 1e3 for key, v in times.items()}
    for key, ms in med.items():
        batch, groups, path, layout = key
        per_group = med.get((batch, groups, "per-group (torch_grouped)", layout))
        dense = med[(batch, "-", "dense + dropout", "full")]
        rel = f"{per_group / ms:.2f}x" if per_group is not None else ""
        lines.append(f"| {batch} | {groups} | {path} | {layout} | {ms:.1f} | {rel} | {dense / ms:.2f}x |")
    text = "\n".join(lines) + "\n"
    Path(__file__).with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
