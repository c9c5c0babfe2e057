"""Prototype, not the product: crossed (factorial) pattern groups, patched into PatternSampler.

With G = 2 x G/2 groups, even sites (in draw order) take 2 stratified patterns (group g the (g // (G/2))-th) and odd
sites G/2 (group g the (g % (G/2))-th), so at p = 0.5 every weight of a hidden-to-hidden layer is kept by exactly
G/4 groups and the blocks of its gradient tile the matrix. Usage (docs/results.md, "Crossed groups and
low-discrepancy bases"):
python docs/results/defaults/epyc-2core-set3/proto_crossed.py lightning_ard.app.train -m <overrides>;
the speed: python docs/results/defaults/epyc-2core-set3/proto_crossed_speed.py <case> [groups] [rounds].
"""

import runpy
import sys

from lightning_ard.patterns.sampler import PatternSampler


def draw_groups(self, groups, pool=None, stratified=False):
    self.steps += 1
    out = {}
    for pos, (name, dist) in enumerate(self.distributions.items()):
        n = groups[name] if isinstance(groups, dict) else groups
        if n % 2 or n < 4:
            out[name] = tuple(dist.sample_group(n, self.generator, True))
            continue
        ma, mb = 2, n // 2
        if pos % 2 == 0:
            d = dist.sample_group(ma, self.generator, True)
            out[name] = tuple(d[g // mb] for g in range(n))
        else:
            d = dist.sample_group(mb, self.generator, True)
            out[name] = tuple(d[g % mb] for g in range(n))
    return out


if __name__ == "__main__":
    PatternSampler.draw_groups = draw_groups
    mod = sys.argv.pop(1)
    sys.argv[0] = mod
    runpy.run_module(mod, run_name="__main__", alter_sys=True)
