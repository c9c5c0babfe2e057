"""Prototype, not the product: the step of nn.Dropout, stratified groups, crossed groups (proto_crossed.py) and
the grouped compact limit, interleaved in one process (the medians of ``rounds`` rounds of 5 steps each).

Usage:
OMP_NUM_THREADS=1 python docs/results/defaults/epyc-2core-set3/proto_crossed_speed.py mlp784-2048-2048-10_b256 auto 6
"""

import statistics
import sys
import types
from pathlib import Path

import torch

from lightning_ard.bench.step import GroupedLimit, _Runner, _time, paper_cases
from lightning_ard.controller import ARDController

sys.path.insert(0, str(Path(__file__).parent))
from proto_crossed import draw_groups  # noqa: E402


def main(name: str, groups: str = "auto", rounds: int = 6) -> None:
    torch.set_num_threads(1)
    case = next(c for c in paper_cases() if c.name == name)
    dev, p = torch.device("cpu"), 0.5
    batch = case.batch(dev)
    g_arg: int | str = groups if groups == "auto" else int(groups)

    def ard(crossed: bool) -> tuple[_Runner, int]:
        torch.manual_seed(0)
        model = case.build(p)
        ctl = ARDController(model, pattern="block", seed=0, groups=g_arg).apply()
        ctl.follow_batch(len(batch[0]))
        if crossed:
            ctl.sampler.draw_groups = types.MethodType(draw_groups, ctl.sampler)
        return _Runner(model, batch, ctl), ctl.linear_groups

    torch.manual_seed(0)
    dense = _Runner(case.build(p), batch, None)
    (strat, g), (cross, _) = ard(False), ard(True)
    limit = _Runner(GroupedLimit([case.build_limit(p) for _ in range(g)]), batch, None)
    runners = {"dense": dense, "stratified": strat, "crossed": cross, "grouped limit": limit}
    for r in runners.values():
        _time(r, dev, 3)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for k, r in runners.items():
            times[k] += _time(r, dev, 5)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(name, f"{g} groups", {k: round(v, 1) for k, v in med.items()})
    for k in ("stratified", "crossed", "grouped limit"):
        print(f"  {k}: {med['dense'] / med[k]:.2f}x, {med['grouped limit'] / med[k]:.2f} of the grouped limit")


if __name__ == "__main__":
    main(sys.argv[1], *(sys.argv[2:3]), *(int(a) for a in sys.argv[3:4]))
