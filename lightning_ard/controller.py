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
from lightning_ard.layers.lstm import SequenceFollower, lstm_layer_input_size, unscaled
from lightning_ard.patterns import PatternDistribution, PatternSampler, RowPattern, TilePattern
from lightning_ard.patterns.groups import AUTO_LSTM_GROUPS, resolve_groups
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
    """Which site (or none) sets each layer's input pattern of an ARD LSTM each step; with recurrent structured
    dropout, which distribution sets each layer's hidden-unit pattern (an inter-layer site, the Linear site after
    the LSTM, or the LSTM's own ``<path>.h<layer>``)."""

    module: ARDLSTM
    layer_sites: list[str | None] = field(default_factory=list)
    hidden_sources: list[str] | None = None
    followers: dict[str, SequenceFollower] = field(default_factory=dict)  # Linear path -> its follower


def _qualify(prefix: str, target: str) -> str:
    return f"{prefix}.{target}" if prefix else target


def _traced_lstm_roots(model: nn.Module, lstm_paths: set[str]) -> list[tuple[str, Any]]:
    """``(prefix, GraphModule)`` of the model traced by ``torch.fx``, or else of its largest traceable submodules
    that hold one of ``lstm_paths`` (breadth first); torch.nn modules (LSTM, Dropout, Linear) stay leaves."""
    from torch import fx

    roots, pending = [], [("", model)]
    while pending:
        prefix, module = pending.pop(0)
        if not any(p == prefix or p.startswith(f"{prefix}.") or not prefix for p in lstm_paths):
            continue
        try:
            roots.append((prefix, fx.GraphModule(module, fx.Tracer().trace(module))))
            continue
        except Exception:  # noqa: BLE001 - any trace failure means "look at the children"
            pass
        pending += [(_qualify(prefix, name), child) for name, child in module.named_children()]
    return roots


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
        self._lstm_site_groups: dict[str, int] = {}  # draws tied to an LSTM (time chunks, sequence groups)
        self.samples: int | None = None  # samples per step that groups="auto" follows (None: not seen yet)
        self._plans: dict[str, _LinearPlan | _LSTMPlan] = {}
        self._lstm_followers: dict[str, str] = {}  # Linear site -> the LSTM whose sequence groups it follows
        self._hidden_distributions: dict[str, PatternDistribution] = {}  # <lstm>.h<layer> (structured, no site)
        self._modes: dict[str, bool] = {}  # module path -> training, at the last step's start
        self._plain_dropouts: set[str] = set()  # dropouts running as nn.Dropout in the last step
        self._mode_warnings: set[tuple[str, tuple[tuple[str, bool], ...]]] = set()
        self.fallen_back: set[str] = set()  # sites served as the plain modules for the rest of the fit
        self._modules: dict[str, nn.Module] = {}

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
            self.surgery = surgery
            self._plan()
            self.sampler = PatternSampler(self.distributions, self.seed)
        except BaseException:
            surgery.restore()
            self.surgery = self.sampler = None
            raise
        return self

    @property
    def linear_groups(self) -> int:
        """Pattern groups per step at Linear sites (``config.groups`` resolved: ``"auto"`` is the safe count for the
        sites' rate and the batch :meth:`follow_batch` saw; the largest over sites when their rates differ)."""
        rates = [s.p for s in self.report.sites if s.kind.feeds_linear] or [0.5]
        return max(resolve_groups(self.config.groups, p, self.samples) for p in rates)

    def follow_batch(self, samples: int | None) -> dict[str, int]:
        """Let ``groups="auto"`` follow a step of ``samples`` samples (the first training batch's size): Linear
        sites get :func:`~lightning_ard.patterns.groups.auto_groups` for it from the next draw on (LSTM-tied draws
        keep their count). Returns the sites whose count changed, with the new count; a no-op for a fixed
        ``groups``."""
        if self.config.groups != "auto" or samples is None or samples == self.samples:
            return {}
        before = {site.name: self.site_groups(site.name) for site in self.report.sites}
        self.samples = samples
        if self.surgery is not None:
            self._resolve_site_groups()
        return {name: self.site_groups(name) for name, g in before.items() if self.site_groups(name) != g}

    def site_groups(self, site: str) -> int:
        """Patterns per step that ``site`` draws (1: the paper's one pattern per mini-batch)."""
        return 1 if self._site_groups is None else self._site_groups[site]

    def _leave_lstm_sites(self, report: SiteReport) -> None:
        """Under ``groups="auto"`` with no ``lstm_groups``, unidirectional LSTM sites in time mode are served with
        :data:`~lightning_ard.patterns.groups.AUTO_LSTM_GROUPS` time chunks (the measured accurate and fast
        setting); the others stay nn.Dropout, with the reason: sequence mode and structured dropout have no
        measured safe default, and time chunks do not run on packed bidirectional input (unknown at fit start).
        Served LSTM sites are prepared for ``lstm_mode`` and ``lstm_recurrent_p`` (:meth:`_prepare_lstm_sites`)."""
        if self._auto_lstm:
            reasons = {s.name: self._auto_lstm_reason(s) for s in report.sites if s.kind.feeds_lstm}
            lstm = [s for s in report.sites if reasons.get(s.name) is not None]
            plain = {s.dropout for s in lstm if s.dropout is not None}  # a dropout module is served whole or not
            shared = [s for s in report.sites if not s.kind.feeds_lstm and s.dropout in plain]
            report.sites = [s for s in report.sites if s not in lstm and s not in shared]
            report.skipped += [Skipped(s.name, reasons[s.name]) for s in lstm]  # type: ignore[arg-type]
            report.skipped += [
                Skipped(s.name, f"another use of {s.dropout} stays nn.Dropout (an LSTM site)") for s in shared
            ]
        self._prepare_lstm_sites(report)

    @property
    def _auto_lstm(self) -> bool:
        """LSTM sites take the automatic setting: ``groups="auto"``, no ``lstm_groups``, no structured dropout."""
        c = self.config
        return c.groups == "auto" and c.lstm_groups is None and c.lstm_recurrent_p is None

    def _auto_lstm_reason(self, site: Site) -> str | None:
        """Why ``groups="auto"`` leaves an LSTM site as nn.Dropout (None: it serves it with time chunks)."""
        if self.config.lstm_mode != "time":
            return (
                "LSTM sites in lstm_mode='sequence' stay nn.Dropout under groups='auto' (no measured safe default); "
                "set lstm_groups=N to serve them"
            )
        if getattr(self.model.get_submodule(site.consumer), "bidirectional", False):
            return (
                "bidirectional LSTM sites stay nn.Dropout under groups='auto' (time chunks do not run on packed "
                "bidirectional input); set lstm_groups=N (or lstm_mode='sequence') to serve them"
            )
        return None

    def _prepare_lstm_sites(self, report: SiteReport) -> None:
        """Before any swap: in sequence mode, find the Linear sites that read an LSTM's output (they follow its
        sequence groups); with ``lstm_recurrent_p``, check the LSTMs, give the sites on their hidden units (inter-
        layer, and the Linear site after the LSTM) that rate, and search the hidden-unit distributions that have no
        site."""
        c = self.config
        lstm_paths = {s.consumer for s in report.sites if s.kind.feeds_lstm}
        self._lstm_followers = self._find_lstm_followers(report, lstm_paths) if c.lstm_mode == "sequence" else {}
        self._hidden_distributions = {}
        q = c.lstm_recurrent_p
        if q is None:
            return
        from lightning_ard.search import search_distribution

        for path in sorted(lstm_paths):
            lstm = self.model.get_submodule(path)
            if lstm.bidirectional:
                raise ValueError(
                    f"lstm_recurrent_p={q} supports unidirectional LSTMs only, got bidirectional {path!r}; set "
                    "lstm_recurrent_p=None (sequence groups serve bidirectional LSTMs)"
                )
            follows = [s for s in report.sites if self._lstm_followers.get(s.name) == path]
            inter = {s.consumer_layer: s for s in report.sites if s.consumer == path and s.kind == SiteKind.LSTM_INTER}
            for site in [*follows, *inter.values()]:
                site.p = q  # these sites drop the LSTM's hidden units: the structured dropout's rate
            last = lstm.num_layers - 1
            for layer in range(lstm.num_layers):
                if layer + 1 in inter or (layer == last and follows):
                    continue
                family = "row" if c.pattern == "tile" else c.pattern  # LSTM units take row patterns
                try:
                    dist = search_distribution(q, lstm.hidden_size, family, **c.search)
                except ValueError as err:
                    raise ValueError(f"LSTM {path!r} hidden units (lstm_recurrent_p={q}): {err}") from err
                self._hidden_distributions[f"{path}.h{layer}"] = dist

    def _find_lstm_followers(self, report: SiteReport, lstm_paths: set[str]) -> dict[str, str]:
        """Linear sites whose dropout reads an ARD-served LSTM's output (``out`` of ``out, h = lstm(x)``, through
        ``.data``, ``pad_packed_sequence``, reshapes and ``.contiguous()``), by tracing: site name -> LSTM path."""
        import operator

        import torch
        from torch.nn.utils.rnn import pad_packed_sequence

        passthrough_methods = {"contiguous", "reshape", "view", "flatten"}
        passthrough_functions = {torch.reshape, torch.flatten}
        by_dropout: dict[str, list[Site]] = {}
        producers = {site.producer for site in report.sites}
        for site in report.sites:
            eligible = site.producer is None and site.consumer not in producers and self.family_for(site) != "tile"
            if site.kind.feeds_linear and eligible and site.dropout is not None:
                by_dropout.setdefault(site.dropout, []).append(site)
        found: dict[str, str] = {}
        for prefix, gm in _traced_lstm_roots(self.model, lstm_paths):
            for node in gm.graph.nodes:
                if node.op != "call_module" or _qualify(prefix, node.target) not in lstm_paths:
                    continue
                lstm_path = _qualify(prefix, node.target)
                pending = [u for u in node.users if u.target is operator.getitem and u.args[1] == 0]
                while pending:
                    cur = pending.pop()
                    for user in cur.users:
                        if user.op == "call_module":
                            for site in by_dropout.get(_qualify(prefix, user.target), []):
                                found[site.name] = lstm_path
                        elif (
                            (user.op == "call_method" and user.target in passthrough_methods)
                            or (user.op == "call_function" and user.target in passthrough_functions)
                            or (user.op == "call_function" and user.target is getattr and user.args[1] == "data")
                        ) and user.args[0] is cur:
                            pending.append(user)
                        elif user.op == "call_function" and user.target is pad_packed_sequence:
                            pending += [u for u in user.users if u.target is operator.getitem and u.args[1] == 0]
        return found

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
        self._lstm_site_groups = self._plan_lstms(lstms, linears)
        self._resolve_site_groups()

    def _resolve_site_groups(self) -> None:
        """Patterns per step of every draw (``None``: all 1, the paper's one pattern and the plain draw)."""
        c, tied = self.config, self._lstm_site_groups
        self._site_groups = {
            site.name: tied.get(site.name, resolve_groups(c.groups, site.p, self.samples)) for site in self.report.sites
        }
        self._site_groups.update({name: tied[name] for name in self._hidden_distributions})
        if all(g == 1 for g in self._site_groups.values()):
            self._site_groups = None

    def _plan_lstms(self, lstms: dict[str, _LSTMPlan], linears: dict[str, _LinearPlan]) -> dict[str, int]:
        """Sequence followers and hidden-unit sources of every LSTM plan; returns one group count per LSTM for
        every draw tied to it (its sites, its followers' sites, its hidden-unit distributions)."""
        c = self.config
        self.distributions.update(self._hidden_distributions)
        by_name = {site.name: site for site in self.report.sites}
        out: dict[str, int] = {}
        for path, plan in lstms.items():
            follow = [name for name, owner in self._lstm_followers.items() if owner == path and name in by_name]
            for lin_path, lplan in linears.items():
                if lplan.in_site in follow:
                    plan.followers[lin_path] = SequenceFollower(plan.module, lplan.module)
            hidden = [f"{path}.h{layer}" for layer in range(plan.module.num_layers)]
            if c.lstm_recurrent_p is not None:
                sources = [*plan.layer_sites[1:], follow[0] if follow else None]  # the site on layer l's units
                plan.hidden_sources = [name if name is not None else hidden[i] for i, name in enumerate(sources)]
            names = [s for s in plan.layer_sites if s is not None] + follow
            if c.lstm_groups is not None:
                groups = c.lstm_groups
            elif self._auto_lstm:  # only time-mode sites are left served (_leave_lstm_sites)
                groups = AUTO_LSTM_GROUPS
            else:
                groups = max(resolve_groups(c.groups, by_name[n].p) for n in names)
            out.update({name: groups for name in names + [h for h in hidden if h in self._hidden_distributions]})
        return out

    def step(self) -> dict[str, RowPattern | TilePattern | tuple[RowPattern | TilePattern, ...]]:
        """Draw this step's pattern for every site (``config.groups`` per site when > 1) and set it on the layers;
        returns site -> pattern (or tuple of patterns, one per group)."""
        if self.surgery is None or self.sampler is None:
            return {}
        if self._site_groups is None:
            pats: dict = self.sampler.draw()
        else:
            pats = self.sampler.draw_groups(
                self._site_groups, self.config.pool, stratified=self.config.group_draws == "stratified"
            )
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
            self._set_lstm_patterns(lplan, pats, served)
        for path, drop in self.surgery.dropouts.items():
            drop.ard_calls = 0
            drop.ard_enabled = path not in self._plain_dropouts
        return pats

    def _set_lstm_patterns(self, plan: _LSTMPlan, pats: dict, served: set[str]) -> None:
        """This step's patterns on an LSTM and on the Linears that follow its sequence groups. Recurrent structured
        dropout needs every hidden-unit source served; otherwise the step runs the plain sequence groups."""
        c = self.config
        inputs = [pats[s] if s in served else None for s in plan.layer_sites]
        sources = plan.hidden_sources
        if sources is not None and all(s in served or s in self._hidden_distributions for s in sources):
            hidden = [pats[s] for s in sources]
            plan.module.set_patterns([inputs[0]] + [None] * (len(inputs) - 1), mode=c.lstm_mode, hidden=hidden)
            last = hidden[-1] if isinstance(hidden[-1], tuple) else (hidden[-1],)
            for follower in plan.followers.values():  # they read the LSTM's already scaled output
                follower.set_patterns(in_pattern=tuple(unscaled(p) for p in last))
            return
        plan.module.set_patterns(inputs, mode=c.lstm_mode)
        sites = {path: self._plans[path].in_site for path in plan.followers}
        for path, follower in plan.followers.items():
            follower.set_patterns(in_pattern=pats[sites[path]] if sites[path] in served else None)

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
        return {path: self._module(path).training for path in paths if path is not None}

    def _module(self, path: str) -> nn.Module:
        """The module at ``path`` (looked up once: the mode checks run every step)."""
        module = self._modules.get(path)
        if module is None:
            module = self._modules[path] = self.model.get_submodule(path)
        return module

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
        expected keep fraction; for an LSTM, the layer whose input the site is, and with recurrent structured
        dropout the layer whose hidden units it drops)."""
        keep = {name: dist.expected_keep_fraction for name, dist in self.distributions.items()}
        layers: list[tuple[float, float]] = []
        for path in (site.consumer, site.producer):
            plan = self._plans.get(path) if path is not None else None
            if isinstance(plan, _LinearPlan):
                kept = 1.0
                for name in (plan.in_site, plan.out_site, plan.tile_site):
                    kept *= keep[name] if name is not None else 1.0
                layers.append((plan.module.in_features * plan.module.out_features, kept))
        for lplan in self._lstms:
            touched = {site.consumer_layer} if lplan is self._plans.get(site.consumer) else set()
            touched |= {i for i, name in enumerate(lplan.hidden_sources or ()) if name == site.name}
            layers += [self._lstm_layer_kept(lplan, layer, keep) for layer in sorted(touched)]
        return accounting.expected_saving(layers)

    @staticmethod
    def _lstm_layer_kept(plan: _LSTMPlan, layer: int, keep: dict[str, float]) -> tuple[float, float]:
        """(dense products, expected kept share) of one LSTM layer: 4H x (input + H), the input columns at their
        site's keep fraction and, under structured dropout, the gate rows and recurrent columns at the hidden one.
        Works on the restored ``nn.LSTM`` too (after fit)."""
        lstm, sources = plan.module, plan.hidden_sources
        width, hidden = lstm_layer_input_size(lstm, layer), lstm.hidden_size
        unit = keep[sources[layer]] if sources else 1.0
        if sources and layer > 0:
            k_in = keep[sources[layer - 1]]
        else:
            k_in = keep[plan.layer_sites[layer]] if plan.layer_sites[layer] is not None else 1.0
        size = 4 * hidden * (width + hidden)
        return size, 4 * hidden * (width * k_in * unit + hidden * unit * unit) / size

    def clear(self) -> None:
        """Keep the ARD layers but remove patterns: the model acts as the plain one."""
        if self.surgery is not None:
            self.surgery.clear()

    def restore(self) -> None:
        """Give the plain modules back (same Parameters, trained values)."""
        if self.surgery is not None:
            self.surgery.restore()
            self.surgery = None
