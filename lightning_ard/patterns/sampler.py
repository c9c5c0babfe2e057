"""Per-step pattern draws from a seeded generator whose state can be saved and restored (resume = same draws)."""

from __future__ import annotations

from typing import Any

import torch

from lightning_ard._validate import check_seed
from lightning_ard.patterns.distribution import Pattern, PatternDistribution


class PatternSampler:
    """Draws one pattern per named site per step, in a fixed site order, from its own ``torch.Generator``.

    Args:
        distributions: site name -> distribution. Draw order is the order of this mapping.
        seed: seed of the generator.
    """

    def __init__(self, distributions: dict[str, PatternDistribution], seed: int = 0) -> None:
        check_seed("seed", seed)
        self.distributions = dict(distributions)
        self.seed = seed
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)
        self.steps = 0

    def draw(self) -> dict[str, Pattern]:
        """This step's pattern for every site."""
        self.steps += 1
        return {name: dist.sample(self.generator) for name, dist in self.distributions.items()}

    def draw_groups(
        self, groups: int | dict[str, int], pool: int | None = None, stratified: bool = False
    ) -> dict[str, tuple[Pattern, ...]]:
        """This step's ``groups`` patterns for every site (or ``groups[site]`` per site; see
        :mod:`lightning_ard.patterns.groups`).

        A step's groups share one candidate of the site's distribution (so one kept count). Their offsets are
        drawn independently, or, with ``stratified``, in equal strata of one random base (every unit kept by almost
        the same number of groups; :meth:`PatternDistribution.sample_group`). With ``pool`` set, each site draws
        only ``pool`` distinct patterns and every group takes one of them uniformly at random: as many masks per
        row as with independent draws, but at most ``pool`` compact GEMMs (and weight gathers) per layer.
        """
        self.steps += 1
        out: dict[str, tuple[Pattern, ...]] = {}
        for name, dist in self.distributions.items():
            n = groups[name] if isinstance(groups, dict) else groups
            if pool is None or pool >= n:
                out[name] = tuple(dist.sample_group(n, self.generator, stratified))
                continue
            drawn = dist.sample_group(pool, self.generator, stratified)
            out[name] = tuple(drawn[i] for i in torch.randint(pool, (n,), generator=self.generator).tolist())
        return out

    def state_dict(self) -> dict[str, Any]:
        """Seed, number of draws and generator state (enough to continue the same sequence)."""
        return {"seed": self.seed, "steps": self.steps, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.seed = int(state["seed"])
        self.steps = int(state["steps"])
        self.generator.set_state(state["generator"])
