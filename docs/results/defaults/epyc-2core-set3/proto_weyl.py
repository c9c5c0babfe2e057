"""Prototype, not the product: stratified groups whose base offset moves from step to step
along a Weyl sequence (u0 + t * alpha mod 1, one u0 and alpha per site) instead of a fresh uniform draw, so that the
steps a momentum buffer averages cover the period evenly. Usage (docs/results.md, "Crossed groups and
low-discrepancy bases"):
python docs/results/defaults/epyc-2core-set3/proto_weyl.py lightning_ard.app.train -m <overrides>
"""

import math
import runpy
import sys

import torch

import lightning_ard.patterns.row as row
from lightning_ard.patterns.sampler import PatternSampler

PHI = (math.sqrt(5) - 1) / 2
_state = {}
_cur = [None, 0]


def stratified_offsets(n, period, generator=None):
    key = _cur[0]
    if key not in _state:
        u0 = float(torch.rand((), generator=generator, dtype=torch.float64))
        alpha = (PHI * (len(_state) + 1) + math.sqrt(2) * len(_state)) % 1.0
        _state[key] = (u0, alpha)
    u0, alpha = _state[key]
    base = int(((u0 + _cur[1] * alpha) % 1.0) * period) % period
    order = torch.randperm(n, generator=generator).tolist()
    return [(base + (g * period) // n) % period for g in order]


row.stratified_offsets = stratified_offsets


def draw_groups(self, groups, pool=None, stratified=False):
    self.steps += 1
    out = {}
    for name, dist in self.distributions.items():
        n = groups[name] if isinstance(groups, dict) else groups
        _cur[0], _cur[1] = name, self.steps
        out[name] = tuple(dist.sample_group(n, self.generator, stratified))
    return out


PatternSampler.draw_groups = draw_groups
if __name__ == "__main__":
    mod = sys.argv.pop(1)
    sys.argv[0] = mod
    runpy.run_module(mod, run_name="__main__", alter_sys=True)
