"""Profile one grouped training step of the paper's MLP (torch.profiler, CPU): where the time of G pattern groups goes.

    python docs/results/profile_grouped_step.py --groups 4 --pattern block --batch 256 --rows 15

Prints the operator table (self CPU time) of ``--steps`` steps after a warm-up, for nn.Dropout and for ARD.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from lightning_ard import ARDController
from lightning_ard.bench.step import mlp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--pattern", default="block")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--p", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=15, help="rows of the operator table")
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = torch.randn(args.batch, 784), torch.randint(0, 10, (args.batch,))
    for name in ("nn.Dropout", "ARD"):
        model = mlp((784, args.width, args.width, 10), args.p).train()
        ctl = None
        if name == "ARD":
            ctl = ARDController(model, pattern=args.pattern, groups=args.groups, seed=0).apply()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step() -> None:
            if ctl is not None:
                ctl.step()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(3):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                step()
        print(f"== {name}: {args.pattern} groups={args.groups} batch={args.batch} width={args.width} p={args.p}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
