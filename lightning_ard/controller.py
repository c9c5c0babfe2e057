"""ARDController: ARD on a plain ``nn.Module`` (no Lightning): detect, swap, draw per step, account, restore.

The Lightning callback drives one of these; a plain PyTorch loop (or the benchmark) can use it directly::

    ctl = ARDController(model, pattern="row").apply()
    for x, y in data:
        ctl.step()                      # this step's patterns
        loss_fn(model(x), y).backward()
        opt.step(); opt.zero_grad()
    ctl.restore()
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lightning_ard import accounting
from lightning_ard._validate import check_seed
from lightning_ard.config import ARDConfig
from lightning_ard.kernels import get_backend
from lightning_ard.layers import ARDLSTM, ARDLinear
from lightning_ard.patterns import PatternDistribution, PatternSampler, RowPattern, TilePattern
from lightning_ard.patterns.groups import resolve_groups
from lightning_ard.patterns.tile import auto_tile
from lightning_ard.sites import Site, SiteKind, SiteReport, Skipped, Surgery, find_sites


@dataclass
class _LinearPlan:
    """Which sites set an ARD Linear's input, output and tile patterns each step."""

    module: ARDLinear
    in_site: str | None = None
    out_site: str | None = None
    tile_site: str | None = None


@dataclass
class _LSTMPlan:
    """Which site (or none) sets each layer's input pattern of an ARD LSTM each step."""

    module: ARDLSTM
    layer_sites: list[str | None] = field(default_factory=list)


class ARDController:
    """Owns ARD for one model: site detection, per-site distributions, the swap, per-step patterns, FLOPs.

    Args:
        model: the model to rewrite (in place, on :meth:`apply`).
        config: what to rewrite and how; ``None`` builds one from ``settings`` (``pattern="tile"``, ...).
        seed: seed of the pattern generator, overriding ``config.seed`` (the Lightning callback passes its seed
            plus a per-rank offset); ``None`` uses ``config.seed``, or 0 when that is ``None`` too.
    """

    def __init__(
        self, model: nn.Module, config: ARDConfig | None = None, *, seed: int | None = None, **settings: Any
    ) -> None:
        if config is None:
            config = ARDConfig(**settings)
        elif settings:
            raise ValueError(f"pass either config or keyword settings, not both (got {sorted(settings)})")
        check_seed("seed", seed, allow_none=True)
        seed = seed if seed is not None else (config.seed if config.seed is not None else 0)
        self.model, self.config, self.seed = model, config, seed
        self.report: SiteReport = SiteReport()
        self.distributions: dict[str, PatternDistribution] = {}
        self.surgery: Surgery | None = None
        self.sampler: PatternSampler | None = None
        self.patterns: dict[str, RowPattern | TilePattern] = {}
        self._linears: list[_LinearPlan] = []
        self._lstms: list[_LSTMPlan] = []
        self._site_groups: dict[str, int] | None = None
        self._plans: dict[str, _LinearPlan | _LSTMPlan] = {}
        self._modes: dict[str, bool] = {}  # module path -> training, at the last step's start
        self._plain_dropouts: set[str] = set()  # dropouts running as nn.Dropout in the last step
        self._mode_warnings: set[tuple[str, tuple[tuple[str, bool], ...]]] = set()
        self.fallen_back: set[str] = set()  # sites served as the plain modules for the rest of the fit

    @property
    def active(self) -> bool:
        """Whether ARD layers are in the model now."""
        return self.surgery is not None

    def apply(self) -> "ARDController":
        """Detect sites, search each site's distribution and swap the modules (no-op when there is no site).

        Transactional: everything that can fail (backend, search) is checked before the first module changes, and
        a failure during the swap undoes every change made, so on error the model is exactly as it was.
        """
        c = self.config
        report = find_sites(self.model, c.p, c.include, c.exclude, c.sites)
        self._leave_lstm_sites(report)
        if not report.sites:
            self.report = report
            return self
        for site in report.sites:
            if self.family_for(site) == "tile" and site.producer is not None:
                # a tile consumer needs all its input units, so the producer keeps computing all of them
                site.producer, site.kind = None, SiteKind.CONSUMER
        for site in report.sites:
            device = next(self.model.get_submodule(site.consumer).parameters()).device
            get_backend(c.backend, device)  # raises for a backend that cannot run there, before any swap
        self.report = report
        self.distributions = self._distributions(report)
        if not report.sites:
            return self
        surgery = Surgery(self.model, report.sites, c.backend)
        try:
            surgery.apply()
        except BaseException:
            surgery.restore()
            raise
        self.surgery = surgery
        self._plan()
        self.sampler = PatternSampler(self.distributions, self.seed)
        return self

    @property
    def linear_groups(self) -> int:
        """Pattern groups per step at Linear sites (``config.groups`` resolved: ``"auto"`` is the safe count for the
        sites' rate; the largest over sites when their rates differ)."""
        rates = [s.p for s in self.report.sites if s.kind.feeds_linear] or [0.5]
        return max(resolve_groups(self.config.groups, p) for p in rates)

    def site_groups(self, site: str) -> int:
        """Patterns per step that ``site`` draws (1: the paper's one pattern per mini-batch)."""
        return 1 if self._site_groups is None else self._site_groups[site]

    def _leave_lstm_sites(self, report: SiteReport) -> None:
        """Under ``groups="auto"`` with no ``lstm_groups``, LSTM sites stay nn.Dropout: no LSTM setting is both
        accurate and fast yet (one pattern per step costs perplexity, time chunks cost speed)."""
        if self.config.groups != "auto" or self.config.lstm_groups is not None:
            return
        lstm = [s for s in report.sites if s.kind.feeds_lstm]
        plain = {s.dropout for s in lstm if s.dropout is not None}  # a dropout module is served whole or not at all
        shared = [s for s in report.sites if not s.kind.feeds_lstm and s.dropout in plain]
        report.sites = [s for s in report.sites if s not in lstm and s not in shared]
        reason = (
            "LSTM sites stay nn.Dropout under groups='auto' (one pattern per step costs perplexity); "
            "set lstm_groups=N to serve them"
        )
        report.skipped += [Skipped(s.name, reason) for s in lstm]
        report.skipped += [
            Skipped(s.name, f"another use of {s.dropout} stays nn.Dropout (an LSTM site)") for s in shared
        ]

    def family_for(self, site: Site) -> str:
        """The family a site uses: the chosen one, except row for LSTM sites under the tile family."""
        if self.config.pattern == "tile" and not site.kind.feeds_linear:
            return "row"
        return self.config.pattern

    def _distributions(self, report: SiteReport) -> dict[str, PatternDistribution]:
        """Every site's searched distribution. Under ``tile="auto"`` a tile site that no pattern can serve is skipped
        with the search's reason (with the other uses of its dropout module) instead of failing the fit."""
        out: dict[str, PatternDistribution] = {}
        for site in list(report.sites):
            try:
                out[site.name] = self._distribution(site)
            except ValueError as err:
                if self.family_for(site) != "tile" or self.config.tile != "auto":
                    raise
                gone = [s for s in report.sites if s is site or (site.dropout and s.dropout == site.dropout)]
                report.sites = [s for s in report.sites if s not in gone]
                report.skipped += [Skipped(s.name, f"no tile pattern serves it: {err}") for s in gone]
        return {name: dist for name, dist in out.items() if any(s.name == name for s in report.sites)}

    def _distribution(self, site: Site) -> PatternDistribution:
        from lightning_ard.search import search_distribution

        family = self.family_for(site)
        try:
            if family == "tile":
                consumer = self.model.get_submodule(site.consumer)
                shape = (consumer.out_features, consumer.in_features)
                tile = auto_tile(*shape) if self.config.tile == "auto" else self.config.tile
                return search_distribution(site.p, site.width, "tile", shape=shape, tile=tile, **self.config.search)
            return search_distribution(site.p, site.width, family, **self.config.search)
        except ValueError as err:
            raise ValueError(f"site {site.name!r} (p={site.p}, width={site.width}): {err}") from err

    def _plan(self) -> None:
        linears: dict[str, _LinearPlan] = {}
        lstms: dict[str, _LSTMPlan] = {}
        for site in self.report.sites:
            module = self.model.get_submodule(site.consumer)
            if isinstance(module, ARDLSTM):
                plan = lstms.setdefault(site.consumer, _LSTMPlan(module, [None] * module.num_layers))
                plan.layer_sites[site.consumer_layer] = site.name
                continue
            lplan = linears.setdefault(site.consumer, _LinearPlan(module))  # type: ignore[arg-type]
            if self.family_for(site) == "tile":
                lplan.tile_site = site.name
                continue
            lplan.in_site = site.name
            if site.producer is not None:
                producer = self.model.get_submodule(site.producer)
                linears.setdefault(site.producer, _LinearPlan(producer)).out_site = site.name  # type: ignore[arg-type]
        self._linears, self._lstms = list(linears.values()), list(lstms.values())
        self._plans: dict[str, _LinearPlan | _LSTMPlan] = {**linears, **lstms}
        c = self.config
        lstm_sites = {s for plan in self._lstms for s in plan.layer_sites if s is not None}
        self._site_groups = {  # patterns per step per site; None = the paper's one pattern (the plain draw)
            site.name: (c.lstm_groups or resolve_groups(c.groups, site.p))
            if site.name in lstm_sites
            else resolve_groups(c.groups, site.p)
            for site in self.report.sites
        }
        if all(g == 1 for g in self._site_groups.values()):
            self._site_groups = None

    def step(self) -> dict[str, RowPattern | TilePattern | tuple[RowPattern | TilePattern, ...]]:
        """Draw this step's pattern for every site (``config.groups`` per site when > 1) and set it on the layers;
        returns site -> pattern (or tuple of patterns, one per group)."""
        if self.surgery is None or self.sampler is None:
            return {}
        if self._site_groups is None:
            pats: dict = self.sampler.draw()
        else:
            pats = self.sampler.draw_groups(self._site_groups, self.config.pool)
        self.patterns = pats
        served = self._served_sites()
        for plan in self._linears:
            if plan.tile_site is not None:
                plan.module.set_patterns(tile_pattern=pats[plan.tile_site] if plan.tile_site in served else None)
            else:
                plan.module.set_patterns(
                    in_pattern=pats[plan.in_site] if plan.in_site in served else None,
                    out_pattern=pats[plan.out_site] if plan.out_site in served else None,
                )
        for lplan in self._lstms:
            lplan.module.set_patterns([pats[s] if s in served else None for s in lplan.layer_sites])
        for path, drop in self.surgery.dropouts.items():
            drop.ard_calls = 0
            drop.ard_enabled = path not in self._plain_dropouts
        return pats

    def plain_step(self) -> None:
        """Run the next step as the plain model (full products, nn.Dropout's random masks): a valid training step,
        used as the timed reference of the measured step speedup. No pattern is drawn (the stream is unchanged)."""
        if self.surgery is None:
            return
        self.surgery.clear()
        self._plain_dropouts, self._modes = set(self.surgery.dropouts), {}

    def fall_back(self, names: Iterable[str]) -> list[str]:
        """Serve the sites ``names`` as the plain modules from the next step on (with every site that shares a
        dropout module with one of them, since a dropout module runs plainly for all its uses); returns the sites
        that fell back, in detection order."""
        names = set(names)
        dropouts = {s.dropout for s in self.report.sites if s.name in names and s.dropout is not None}
        new = [
            s.name
            for s in self.report.sites
            if (s.name in names or s.dropout in dropouts) and s.name not in self.fallen_back
        ]
        self.fallen_back.update(new)
        return new

    def _site_modes(self, site: Site) -> dict[str, bool]:
        """Module path -> ``training`` of every module a site involves (dropout, consumer, producer)."""
        paths = (site.dropout, site.consumer, site.producer)
        return {path: self.model.get_submodule(path).training for path in paths if path is not None}

    def _served_sites(self) -> set[str]:
        """Sites ARD serves this step: all their modules in training mode. A site whose modules disagree (a Linear
        in eval while its dropout trains, or the reverse) runs as the plain modules for the step, with one warning;
        a dropout module runs plainly for all its uses when one of them is not served."""
        modes = {site.name: self._site_modes(site) for site in self.report.sites}
        self._modes = {path: mode for m in modes.values() for path, mode in m.items()}
        plain = {
            site.dropout
            for site in self.report.sites
            if not all(modes[site.name].values()) or site.name in self.fallen_back
        }
        self._plain_dropouts = {d for d in plain if d is not None}
        served = {
            site.name
            for site in self.report.sites
            if all(modes[site.name].values())
            and site.dropout not in self._plain_dropouts
            and site.name not in self.fallen_back
        }
        for site in self.report.sites:
            mixed = len(set(modes[site.name].values())) > 1
            key = (site.name, tuple(sorted(modes[site.name].items())))
            if mixed and key not in self._mode_warnings:
                self._mode_warnings.add(key)
                listed = ", ".join(f"{path} {'train' if m else 'eval'}" for path, m in modes[site.name].items())
                warnings.warn(
                    f"site {site.name!r} runs as plain nn.Dropout/nn.Linear while its modules disagree on "
                    f"train/eval mode ({listed}); ARD serves a site only when all its modules train",
                    stacklevel=3,
                )
        return served

    def keep_fraction(self, site: str) -> float:
        """Kept share of ``site``'s units in the last step (the mean over groups)."""
        pats = self.patterns[site]
        pats = pats if isinstance(pats, tuple) else (pats,)
        return sum(p.keep_fraction for p in pats) / len(pats)

    def check_calls(self) -> None:
        """Raise if a swapped dropout ran a different number of times than it has sites (since :meth:`step`)."""
        if self.surgery is None:
            return
        changed = {path: mode for path, mode in self._modes.items() if self.model.get_submodule(path).training != mode}
        if changed:
            listed = ", ".join(
                f"{path}: {'train' if mode else 'eval'} at the step's start, {'eval' if mode else 'train'} now"
                for path, mode in changed.items()
            )
            raise RuntimeError(
                f"the train/eval mode of ARD modules changed during the training step ({listed}), so the step's "
                "patterns may not match what ran; set modes before the step (e.g. in on_train_batch_start), or "
                "exclude these sites"
            )
        for path, drop in self.surgery.dropouts.items():
            if path in self._plain_dropouts:
                continue  # ran as plain nn.Dropout this step (see _served_sites)
            expected = self.surgery.dropout_uses[path]
            if drop.ard_calls != expected:
                raise RuntimeError(
                    f"dropout {path!r} ran {drop.ard_calls} times in this training step but {expected} site(s) "
                    f"were proven; an unproven use would lose its dropout. Exclude it with exclude=[{path!r}]"
                )

    def layer_flops(self) -> accounting.LayerFlops:
        """(dense, executed) FLOPs of the last step per ARD layer path (forward + backward products), summed over
        the pattern groups."""
        if self.surgery is None:
            return {}
        return accounting.step_flops(self.surgery.linears, self.surgery.lstms)

    def expected_site_saving(self, site: Site) -> float:
        """Expected share of the products of the layers ``site`` touches that ARD removes (every site at its
        expected keep fraction; for an LSTM, the layer whose input the site is)."""
        keep = {name: dist.expected_keep_fraction for name, dist in self.distributions.items()}
        layers: list[tuple[float, float]] = []
        for path in (site.consumer, site.producer):
            plan = self._plans.get(path) if path is not None else None
            if isinstance(plan, _LinearPlan):
                kept = 1.0
                for name in (plan.in_site, plan.out_site, plan.tile_site):
                    kept *= keep[name] if name is not None else 1.0
                layers.append((plan.module.in_features * plan.module.out_features, kept))
            elif isinstance(plan, _LSTMPlan):
                width, hidden = plan.module.layer_input_size(site.consumer_layer), plan.module.hidden_size
                layers.append((width + hidden, (width * keep[site.name] + hidden) / (width + hidden)))
        return accounting.expected_saving(layers)

    def clear(self) -> None:
        """Keep the ARD layers but remove patterns: the model acts as the plain one."""
        if self.surgery is not None:
            self.surgery.clear()

    def restore(self) -> None:
        """Give the plain modules back (same Parameters, trained values)."""
        if self.surgery is not None:
            self.surgery.restore()
            self.surgery = None
