"""ARDController: executes an :class:`~lightning_ard.plan.ARDPlan` on a plain ``nn.Module`` (no Lightning).

``apply`` builds the plan (:func:`~lightning_ard.planning.build_plan`) unless one is given and swaps the modules;
``step`` draws the step's patterns and sets them on the layers; ``use`` switches to a new plan (sites that fall
back, backends, group counts, the plain model); ``restore`` gives the plain modules back. Decisions are the plan's:
the controller keeps no other state that changes what the model trains on, except the pattern generator, which
:meth:`state_dict` saves. A plain PyTorch loop (or the benchmark) uses it directly::

    ctl = ARDController(model, pattern="row").apply()
    guard = SpeedGuard(ctl, optimizers=[opt])      # optional: never slower, as in the Lightning callback
    for x, y in data:
        with guard.step():                          # draws this step's patterns (or runs a timed reference step)
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
from lightning_ard.families import rule_of
from lightning_ard.kernels import get_backend
from lightning_ard.layers import ARDLSTM, ARDLinear
from lightning_ard.layers.lstm import SequenceFollower, lstm_layer_input_size, unscaled
from lightning_ard.lstm_policy import with_auto_lstm
from lightning_ard.patterns import PatternDistribution, PatternSampler, RowPattern, TilePattern
from lightning_ard.plan import ARDPlan
from lightning_ard.planning import bound_groups, build_plan, config_of
from lightning_ard.sites import Site, SiteReport, Skipped, Surgery


@dataclass
class _LinearSlots:
    """Which sites set an ARD Linear's input, output and tile patterns each step."""

    module: ARDLinear
    in_site: str | None = None
    out_site: str | None = None
    tile_site: str | None = None


@dataclass
class _LSTMSlots:
    """Which site (or none) sets each layer's input pattern of an ARD LSTM each step; with recurrent structured
    dropout, which draw sets each layer's hidden-unit pattern (an inter-layer site, the Linear site after the LSTM,
    or the LSTM's own ``<path>.h<layer>``); the Linears that follow its sequence groups."""

    module: ARDLSTM
    layer_sites: list[str | None] = field(default_factory=list)
    hidden_sources: list[str] | None = None
    followers: dict[str, SequenceFollower] = field(default_factory=dict)  # Linear path -> its follower


class ARDController:
    """Executes ARD for one model: the swap, per-step patterns, plan changes, FLOPs.

    Args:
        model: the model to rewrite (in place, on :meth:`apply`).
        config: what to rewrite and how; ``None`` builds one from ``settings`` (``pattern="tile"``, ...).
        seed: seed of the pattern generator, overriding ``config.seed`` (the Lightning callback passes its seed
            plus a per-rank offset); ``None`` uses ``config.seed``, or 0 when that is ``None`` too.
        plan: a plan to execute as it is (no detection, no search), e.g. one a fit saved; its config is used.
    """

    def __init__(
        self,
        model: nn.Module,
        config: ARDConfig | None = None,
        *,
        seed: int | None = None,
        plan: ARDPlan | None = None,
        **settings: Any,
    ) -> None:
        if plan is not None and (config is not None or settings):
            raise ValueError("pass either a plan or settings (config or keywords), not both; a plan holds its config")
        if config is None:
            config = config_of(plan) if plan is not None else ARDConfig(**settings)
        elif settings:
            raise ValueError(f"pass either config or keyword settings, not both (got {sorted(settings)})")
        check_seed("seed", seed, allow_none=True)
        seed = seed if seed is not None else (config.seed if config.seed is not None else 0)
        self.model, self.config, self.seed = model, config, seed
        self._lstm_mode = with_auto_lstm(config).lstm_mode  # what LSTM groups cut (the automatic setting: time)
        self._plan: ARDPlan | None = plan
        self.surgery: Surgery | None = None
        self.sampler: PatternSampler | None = None
        self.patterns: dict[str, RowPattern | TilePattern | tuple] = {}
        self._linears: dict[str, _LinearSlots] = {}
        self._lstms: dict[str, _LSTMSlots] = {}
        self._modes: dict[str, bool] = {}  # module path -> training, at the last step's start
        self._plain_dropouts: set[str] = set()  # dropouts running as nn.Dropout in the last step
        self._mode_warnings: set[tuple[str, tuple[tuple[str, bool], ...]]] = set()
        self._modules: dict[str, nn.Module] = {}
        self._groups: dict[str, int] = {}  # draw -> patterns per step, for the plan _groups_of
        self._groups_of: ARDPlan | None = None
        self._rates: dict[str, float] = {}  # site -> element-wise rate, for the plan _rates_of
        self._rates_of: ARDPlan | None = None

    # ------------------------------------------------------------------ the plan
    @property
    def plan(self) -> ARDPlan:
        """The plan in force (built on first use when none was given)."""
        if self._plan is None:
            self._plan = build_plan(self.model, self.config)
        return self._plan

    @property
    def report(self) -> SiteReport:
        """The plan's sites (served or fallen back) and skipped dropouts, as a detection report."""
        if self._plan is None:
            return SiteReport()
        return SiteReport([sp.site for sp in self._plan.sites], [Skipped(n, r) for n, r in self._plan.skipped])

    @property
    def distributions(self) -> dict[str, PatternDistribution]:
        """Every draw's distribution, in draw order: the sites, then hidden-unit distributions."""
        if self._plan is None:
            return {}
        out = {sp.name: sp.distribution for sp in self._plan.sites}
        out.update({h.name: h.distribution for h in self._plan.hidden})
        return out

    @property
    def fallen_back(self) -> set[str]:
        """Sites the plan serves as nn.Dropout."""
        return set(self._plan.fallen_back) if self._plan is not None else set()

    @property
    def active(self) -> bool:
        """Whether ARD layers are in the model now."""
        return self.surgery is not None

    def family_for(self, site: Site) -> str:
        """The family ``site`` draws (row for LSTM sites under the tile family)."""
        return self.plan.site(site.name).family

    def site_groups(self, site: str) -> int:
        """Patterns per step that ``site`` (or a hidden-unit draw) takes (1: the paper's one pattern per step)."""
        for h in self.plan.hidden:
            if h.name == site:
                return h.groups
        return self.plan.site(site).groups

    @property
    def linear_groups(self) -> int:
        """Pattern groups per step at Linear sites not tied to an LSTM (the largest when they differ)."""
        counts = [sp.groups for sp in self.plan.sites if sp.site.kind.feeds_linear and not sp.tied]
        return max(counts, default=max((sp.groups for sp in self.plan.sites), default=1))

    @property
    def samples(self) -> int | None:
        """Samples per step the plan's group counts follow (``None``: not seen yet)."""
        return self.plan.samples

    # ------------------------------------------------------------------ swap
    def apply(self) -> ARDController:
        """Build (or take) the plan and swap the modules of its sites (no-op without a site, or for a plan in which
        the plain model trains).

        Transactional: everything that can fail (search, backend) is checked before the first module changes, and a
        failure during the swap undoes every change made, so on error the model is exactly as it was.
        """
        plan = self.plan
        if not plan.sites or plan.plain is not None:
            return self
        for sp in plan.sites:
            consumer = self.model.get_submodule(sp.site.consumer)
            _check_width(sp.site, consumer)  # a plan made for another model fails here, before any swap
            get_backend(self.config.backend, next(consumer.parameters()).device)  # a backend that cannot run there
        surgery = Surgery(self.model, [sp.site for sp in plan.sites], self.config.backend)
        try:
            surgery.apply()
            self.surgery = surgery
            self._wire()
            self._use_backends(plan)
            self.sampler = PatternSampler(self.distributions, self.seed)
        except BaseException:
            surgery.restore()
            self.surgery = self.sampler = None
            raise
        return self

    def _wire(self) -> None:
        """Which site sets which slot of which layer, from the plan."""
        linears: dict[str, _LinearSlots] = {}
        lstms: dict[str, _LSTMSlots] = {}
        for sp in self.plan.sites:
            site, module = sp.site, self.model.get_submodule(sp.site.consumer)
            if isinstance(module, ARDLSTM):
                slots = lstms.setdefault(site.consumer, _LSTMSlots(module, [None] * module.num_layers))
                slots.layer_sites[site.consumer_layer] = site.name
                continue
            lin = linears.setdefault(site.consumer, _LinearSlots(module))  # type: ignore[arg-type]
            if rule_of(sp.family).tiles:
                lin.tile_site = site.name
                continue
            lin.in_site = site.name
            if site.producer is not None:
                producer = self.model.get_submodule(site.producer)
                linears.setdefault(site.producer, _LinearSlots(producer)).out_site = site.name  # type: ignore[arg-type]
        for path, slots in lstms.items():
            self._wire_lstm(path, slots, linears)
        self._linears, self._lstms = linears, lstms

    def _wire_lstm(self, path: str, slots: _LSTMSlots, linears: dict[str, _LinearSlots]) -> None:
        """An LSTM's sequence followers and, under structured dropout, the draw of each layer's hidden units."""
        follow = [sp.name for sp in self.plan.sites if sp.follows == path]
        for lin_path, lin in linears.items():
            if lin.in_site in follow:
                slots.followers[lin_path] = SequenceFollower(slots.module, lin.module)
        if self.config.lstm_recurrent_p is not None:
            hidden = [f"{path}.h{layer}" for layer in range(slots.module.num_layers)]
            sources = [*slots.layer_sites[1:], follow[0] if follow else None]  # the site on layer l's units
            slots.hidden_sources = [name if name is not None else hidden[i] for i, name in enumerate(sources)]

    def _use_backends(self, plan: ARDPlan) -> None:
        """Give every ARD Linear the plan's backend (when it changed)."""
        assert self.surgery is not None
        for path, name in plan.backend_of.items():
            lin = self.surgery.linears.get(path)
            if lin is not None and lin.ard_backend_name != name:
                lin.use_backend(name)

    def use(self, plan: ARDPlan) -> ARDPlan:
        """Switch to ``plan`` (sites that fall back, backends, group counts; the plain model when it says so) from
        the next step on; returns the plan it replaced. The sites and their distributions must be the same."""
        old = self.plan
        if [sp.name for sp in plan.sites] != [sp.name for sp in old.sites]:
            raise ValueError(
                f"a new plan must serve the same sites as the one in force, got {[sp.name for sp in plan.sites]} "
                f"instead of {[sp.name for sp in old.sites]}; build a new controller for another model"
            )
        self._plan = plan
        if plan.plain is not None:
            self.restore()
        elif self.surgery is not None:
            self._use_backends(plan)
        return old

    def follow_batch(self, samples: int | None, rows: dict[str, int] | None = None) -> dict[str, int]:
        """Resolve the group counts for a step of ``samples`` samples (``groups="auto"`` grows with the batch) and
        bound them by the step's rows (``rows`` where measured, else ``samples``); returns the draws whose count
        changed, with the new count."""
        if samples is None:
            return {}
        before = {name: self.site_groups(name) for name in self.distributions}
        self.use(bound_groups(self.plan, samples, rows))
        return {name: self.site_groups(name) for name, g in before.items() if self.site_groups(name) != g}

    def fall_back(self, names: Iterable[str], reason: str = "fell back") -> list[str]:
        """Serve the sites ``names`` as the plain modules from the next step on (with every site that shares a
        dropout module with one of them); returns the sites that fell back now, in detection order."""
        before = self.fallen_back
        self.use(self.plan.fall_back(names, reason))
        return [sp.name for sp in self.plan.sites if sp.name in self.fallen_back - before]

    # ------------------------------------------------------------------ per step
    def step(self) -> dict[str, Any]:
        """Draw this step's patterns for every draw of the plan (served or not: the stream does not depend on which
        sites are served) and set them on the layers; returns name -> pattern (or tuple, one per group)."""
        if self.surgery is None or self.sampler is None:
            return {}
        groups = self._draw_groups()
        if all(g == 1 for g in groups.values()):
            pats: dict = self.sampler.draw()
        else:
            pats = self.sampler.draw_groups(
                groups, self.config.pool, stratified=self.config.group_draws == "stratified"
            )
        self.patterns = pats
        served = self._served_sites()
        for lin in self._linears.values():
            if lin.tile_site is not None:
                lin.module.set_patterns(tile_pattern=pats[lin.tile_site] if lin.tile_site in served else None)
            else:
                lin.module.set_patterns(
                    in_pattern=pats[lin.in_site] if lin.in_site in served else None,
                    out_pattern=pats[lin.out_site] if lin.out_site in served else None,
                )
        for slots in self._lstms.values():
            self._set_lstm_patterns(slots, pats, served)
        for path, drop in self.surgery.dropouts.items():
            drop.ard_calls = 0
            drop.ard_enabled = path not in self._plain_dropouts
        return pats

    def _draw_groups(self) -> dict[str, int]:
        """Patterns per step of every draw under the plan in force (worked out once per plan)."""
        plan = self.plan
        if self._groups_of is not plan:
            self._groups = {sp.name: sp.groups for sp in plan.sites} | {h.name: h.groups for h in plan.hidden}
            self._groups_of = plan
        return self._groups

    def _draw_rates(self) -> dict[str, float]:
        """Element-wise rate of every site under the plan in force (worked out once per plan)."""
        if self._rates_of is not self.plan:
            self._rates = {sp.name: sp.element_p for sp in self.plan.sites}
            self._rates_of = self.plan
        return self._rates

    def _set_lstm_patterns(self, slots: _LSTMSlots, pats: dict, served: set[str]) -> None:
        """This step's patterns on an LSTM and on the Linears that follow its sequence groups. Recurrent structured
        dropout needs every hidden-unit source served; otherwise the step runs the plain sequence groups."""
        mode, hidden_names = self._lstm_mode, {h.name for h in self.plan.hidden}
        inputs = [pats[s] if s in served else None for s in slots.layer_sites]
        sources = slots.hidden_sources
        if sources is not None and all(s in served or s in hidden_names for s in sources):
            hidden = [pats[s] for s in sources]
            slots.module.set_patterns([inputs[0]] + [None] * (len(inputs) - 1), mode=mode, hidden=hidden)
            last = hidden[-1] if isinstance(hidden[-1], tuple) else (hidden[-1],)
            for follower in slots.followers.values():  # they read the LSTM's already scaled output
                follower.set_patterns(in_pattern=tuple(unscaled(p) for p in last))
            return
        rates = self._draw_rates()
        element_p = [rates[s] if s in served else 0.0 for s in slots.layer_sites]
        slots.module.set_patterns(inputs, mode=mode, element_p=element_p)
        for path, follower in slots.followers.items():
            site = self._linears[path].in_site
            follower.set_patterns(in_pattern=pats[site] if site in served else None)

    def plain_step(self) -> None:
        """Run the next step as the plain model (full products, nn.Dropout's masks): a valid training step, used as
        the timed reference of the measured step speedup. No pattern is drawn (the stream is unchanged)."""
        if self.surgery is None:
            return
        self.surgery.clear()
        self._plain_dropouts, self._modes = set(self.surgery.dropouts), {}

    def _site_modes(self, site: Site) -> dict[str, bool]:
        """Module path -> ``training`` of every module a site involves (dropout, consumer, producer)."""
        return {path: self._module(path).training for path in (site.dropout, site.consumer, site.producer) if path}

    def _module(self, path: str) -> nn.Module:
        """The module at ``path`` (looked up once: the mode checks run every step)."""
        module = self._modules.get(path)
        if module is None:
            module = self._modules[path] = self.model.get_submodule(path)
        return module

    def _served_sites(self) -> set[str]:
        """Sites ARD serves this step: served by the plan, all their modules in training mode. A site whose modules
        disagree runs as the plain modules for the step, with one warning; a dropout module runs plainly for all its
        uses when one of them is not served."""
        sites = [sp.site for sp in self.plan.sites]
        modes = {site.name: self._site_modes(site) for site in sites}
        self._modes = {path: mode for m in modes.values() for path, mode in m.items()}
        unserved = {site.name for site in sites if not all(modes[site.name].values())} | self.fallen_back
        self._plain_dropouts = {s.dropout for s in sites if s.name in unserved and s.dropout is not None}
        for site in sites:
            if len(set(modes[site.name].values())) > 1:
                self._warn_mixed_modes(site, modes[site.name])
        return {s.name for s in sites if s.name not in unserved and s.dropout not in self._plain_dropouts}

    def _warn_mixed_modes(self, site: Site, modes: dict[str, bool]) -> None:
        key = (site.name, tuple(sorted(modes.items())))
        if key in self._mode_warnings:
            return
        self._mode_warnings.add(key)
        listed = ", ".join(f"{path} {'train' if m else 'eval'}" for path, m in modes.items())
        warnings.warn(
            f"site {site.name!r} runs as plain nn.Dropout/nn.Linear while its modules disagree on train/eval mode "
            f"({listed}); ARD serves a site only when all its modules train",
            stacklevel=4,
        )

    def keep_fraction(self, site: str) -> float:
        """Kept share of ``site``'s units in the last step (the mean over groups)."""
        pats = self.patterns[site]
        pats = pats if isinstance(pats, tuple) else (pats,)
        return sum(p.keep_fraction for p in pats) / len(pats)

    def check_calls(self) -> None:
        """Raise if a module's train/eval mode changed during the step, or a swapped dropout ran a different number
        of times than it has sites (since :meth:`step`)."""
        if self.surgery is None:
            return
        changed = {path: mode for path, mode in self._modes.items() if self._module(path).training != mode}
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
            expected = self.surgery.dropout_uses[path]
            if path not in self._plain_dropouts and drop.ard_calls != expected:
                raise RuntimeError(
                    f"dropout {path!r} ran {drop.ard_calls} times in this training step but {expected} site(s) "
                    f"were proven; an unproven use would lose its dropout. Exclude it with exclude=[{path!r}]"
                )

    # ------------------------------------------------------------------ accounting
    def layer_flops(self) -> accounting.LayerFlops:
        """(dense, executed) FLOPs of the last step per ARD layer path (forward + backward products)."""
        if self.surgery is None:
            return {}
        return accounting.step_flops(self.surgery.linears, self.surgery.lstms, self.surgery.records)

    def step_rows(self) -> dict[str, int]:
        """Rows the last step had for every draw, as the group bound counts them: a Linear site's input rows,
        an LSTM site's time steps (time mode) or sequences (sequence mode); draws not measured are left out."""
        if self.surgery is None:
            return {}
        out: dict[str, int] = {}
        for sp in self.plan.sites:
            record = self.surgery.records.get(sp.site.consumer)
            sequences = sp.site.consumer in self.surgery.lstms and self._lstm_mode == "sequence"
            rows = accounting.group_rows(record, sequences) if record is not None else 0
            if rows:
                out[sp.name] = rows
        return out

    def lstm_batches(self) -> dict[str, int | None]:
        """Sequences each ARD LSTM read in the last step (``None`` before its first ARD forward)."""
        if self.surgery is None:
            return {}
        return {path: self.surgery.records[path].batch if path in self.surgery.records else None
                for path in self.surgery.lstms}  # fmt: skip

    def expected_site_saving(self, site: Site) -> float:
        """Expected share of the products of the layers ``site`` touches that ARD removes (every site at its
        expected keep fraction; for an LSTM, the layer whose input the site is, and with recurrent structured
        dropout the layer whose hidden units it drops)."""
        keep = {name: dist.expected_keep_fraction for name, dist in self.distributions.items()}
        layers: list[tuple[float, float]] = []
        for path in (site.consumer, site.producer):
            lin = self._linears.get(path) if path is not None else None
            if lin is not None:
                kept = 1.0
                for name in (lin.in_site, lin.out_site, lin.tile_site):
                    kept *= keep[name] if name is not None else 1.0
                layers.append((lin.module.in_features * lin.module.out_features, kept))
        for slots in self._lstms.values():
            touched = {site.consumer_layer} if slots is self._lstms.get(site.consumer) else set()
            touched |= {i for i, name in enumerate(slots.hidden_sources or ()) if name == site.name}
            layers += [_lstm_layer_kept(slots, layer, keep) for layer in sorted(touched)]
        return accounting.expected_saving(layers)

    # ------------------------------------------------------------------ state and teardown
    def state_dict(self) -> dict[str, Any]:
        """The pattern generator's state (what a resumed run needs to draw the same patterns)."""
        return {"sampler": self.sampler.state_dict()} if self.sampler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        if self.sampler is not None and "sampler" in state:
            self.sampler.load_state_dict(state["sampler"])

    def clear(self) -> None:
        """Keep the ARD layers but remove patterns: the model acts as the plain one."""
        if self.surgery is not None:
            self.surgery.clear()

    def restore(self) -> None:
        """Give the plain modules back (same Parameters, trained values)."""
        if self.surgery is not None:
            self.surgery.restore()
            self.surgery = None


def _check_width(site: Site, consumer: nn.Module) -> None:
    """Raise when ``site``'s width is not what its consumer reads (a plan applied to another model)."""
    if isinstance(consumer, nn.LSTM):
        width = lstm_layer_input_size(consumer, site.consumer_layer)
    else:
        width = getattr(consumer, "in_features", None)
    if width != site.width:
        raise ValueError(
            f"site {site.name!r} has width {site.width} in the plan but {site.consumer!r} reads {width} units; the "
            "plan was made for another model: build a new plan (pass settings instead of plan=)"
        )


def _lstm_layer_kept(slots: _LSTMSlots, layer: int, keep: dict[str, float]) -> tuple[float, float]:
    """(dense products, expected kept share) of one LSTM layer: 4H x (input + H), the input columns at their
    site's keep fraction and, under structured dropout, the gate rows and recurrent columns at the hidden one.
    Works on the restored ``nn.LSTM`` too (after fit)."""
    lstm, sources = slots.module, slots.hidden_sources
    width, hidden = lstm_layer_input_size(lstm, layer), lstm.hidden_size
    unit = keep[sources[layer]] if sources else 1.0
    if sources and layer > 0:
        k_in = keep[sources[layer - 1]]
    else:
        k_in = keep[slots.layer_sites[layer]] if slots.layer_sites[layer] is not None else 1.0
    size = 4 * hidden * (width + hidden)
    return size, 4 * hidden * (width * k_in * unit + hidden * unit * unit) / size
