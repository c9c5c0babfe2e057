"""build_plan: the pure function from a model and an ARDConfig to the ARDPlan that serves it.

Detection (:func:`~lightning_ard.sites.find_sites`), the LSTM policy (:mod:`lightning_ard.lstm_policy`), the family
rules (:mod:`lightning_ard.families`) and the search, in that order; the model is read, never changed. The group
counts of the plan follow ``samples`` (``groups="auto"`` grows with the batch) and are bounded by the rows a step
has: more groups than rows cannot differ from one group per row (:func:`bound_groups`). The automatic LSTM setting
is bounded by the batch the LSTM study measured it at (:func:`bound_lstm_batch`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

from lightning_ard.config import ARDConfig
from lightning_ard.families import rule_for
from lightning_ard.lstm_policy import (
    AUTO_LSTM_MAX_BATCH,
    auto_lstm,
    auto_lstm_batch_reason,
    lstm_policy,
    with_auto_lstm,
)
from lightning_ard.patterns.groups import resolve_groups
from lightning_ard.plan import ARDPlan, HiddenPlan, SitePlan
from lightning_ard.sites import Site, find_sites


def config_data(config: ARDConfig) -> dict[str, Any]:
    """An ARDConfig as plain data (tuples as lists), as a plan stores it."""
    fields = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}


def config_of(plan: ARDPlan) -> ARDConfig:
    """The ARDConfig a plan was built from."""
    data = dict(plan.config)
    if isinstance(data.get("tile"), list):
        data["tile"] = tuple(data["tile"])
    return ARDConfig(**data)


def build_plan(model: nn.Module, config: ARDConfig) -> ARDPlan:
    """The plan that serves ``model``'s dropout sites under ``config`` (the model is not changed).

    Raises:
        ValueError: from the search, naming the site, when a site's rate has no pattern distribution (a tile site
            under ``tile="auto"`` is skipped with the reason instead).
    """
    report = find_sites(model, config.p, config.include, config.exclude, config.sites)
    producers = {site.producer for site in report.sites}

    def eligible(site: Site) -> bool:  # may follow an LSTM's sequence groups
        rule = rule_for(config.pattern, site, config.lstm_pattern)
        return site.producer is None and site.consumer not in producers and not rule.tiles

    policy = lstm_policy(model, list(report.sites), config, eligible)
    stored, config = config, with_auto_lstm(config)  # the rules read the automatic LSTM setting, the plan the given
    skipped = [(s.name, s.reason) for s in [*report.skipped, *policy.skipped]]
    sites = [rule_for(config.pattern, s, config.lstm_pattern).shape_site(s) for s in policy.sites]
    plans: list[SitePlan] = []
    unserved: dict[str | None, str] = {}  # dropout module -> why a site of it has no tile pattern
    for site in sites:
        rule = rule_for(config.pattern, site, config.lstm_pattern)
        try:
            dist = rule.search(site, model, config.tile, config.search)
        except ValueError as err:
            if not rule.tiles or config.tile != "auto":
                raise
            unserved[site.dropout or site.name] = f"no tile pattern serves it: {err}"
            continue
        groups = policy.tied.get(site.name, resolve_groups(config.groups, site.p))
        follows = policy.followers.get(site.name)
        element_p = policy.element_p.get(site.name, 0.0)
        tied = site.name in policy.tied
        plans.append(SitePlan(site, rule.name, groups, dist, tied=tied, follows=follows, element_p=element_p))
    for site in sites:  # a dropout module is served whole or not
        why = unserved.get(site.dropout or site.name)
        if why is not None:
            skipped.append((site.name, why))
    plans = [sp for sp in plans if (sp.site.dropout or sp.name) not in unserved]
    hidden = tuple(HiddenPlan(name, policy.tied[name], dist) for name, dist in policy.hidden.items())
    layers = sorted({p for sp in plans if sp.site.kind.feeds_linear for p in (sp.site.consumer, sp.site.producer) if p})
    return ARDPlan(
        config=config_data(stored),
        sites=tuple(plans),
        skipped=tuple(skipped),
        hidden=hidden,
        backends=tuple((path, config.backend) for path in layers),
    )


def bound_groups(plan: ARDPlan, samples: int | None, rows: Mapping[str, int] | None = None) -> ARDPlan:
    """The plan with every group count resolved for a step of ``samples`` samples (``groups="auto"`` grows with
    the batch) and bounded by the rows the step has: ``rows[name]`` where measured (rows of a Linear's input,
    time steps or sequences of an LSTM), else ``samples``. A lowered count keeps the requested one beside it."""
    config = config_of(plan)
    groups: dict[str, int] = {}
    requested: dict[str, int] = {}
    for sp in plan.sites:
        want = sp.requested_groups or sp.groups
        if not sp.tied:
            want = resolve_groups(config.groups, sp.site.p, samples)
        groups[sp.name] = _bounded(sp.name, want, samples, rows, requested)
    for h in plan.hidden:
        groups[h.name] = _bounded(h.name, h.groups, samples, rows, requested)
    return plan.with_groups(groups, requested, samples)


def _bounded(name: str, want: int, samples: int | None, rows: Mapping[str, int] | None, requested: dict) -> int:
    limit = (rows or {}).get(name, samples)
    if limit is None or want <= max(limit, 1):
        return want
    requested[name] = want
    return max(limit, 1)


def bound_lstm_batch(plan: ARDPlan, batches: Mapping[str, int | None]) -> ARDPlan:
    """The plan with the sites that feed an LSTM on the automatic setting run as nn.Dropout where that LSTM read
    more sequences in a step (``batches``: LSTM path -> sequences, ``None`` when not measured) than
    :data:`~lightning_ard.lstm_policy.AUTO_LSTM_MAX_BATCH`, each with the reason; a site sharing their dropout
    module falls back with them. Unchanged when the user set the LSTM sites' setting."""
    if not auto_lstm(config_of(plan)):
        return plan
    reasons = {}
    for sp in plan.served:
        batch = batches.get(sp.site.consumer) if sp.site.kind.feeds_lstm else None
        if batch is not None and batch > AUTO_LSTM_MAX_BATCH:
            reasons[sp.name] = auto_lstm_batch_reason(sp.site.consumer, batch)
    return plan.fall_back(reasons, reasons) if reasons else plan
