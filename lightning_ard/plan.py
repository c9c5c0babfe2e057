"""ARDPlan: every decision ARD takes about a model, as frozen data that can be printed, saved and replayed.

A plan says, for every dropout site, how it is served (kind, family, rate, pattern groups, the searched pattern
distribution) or why it is not, which backend each ARD Linear uses, and whether the plain model trains instead.
:func:`lightning_ard.planning.build_plan` makes one from a model and an :class:`~lightning_ard.ARDConfig`; the
controller executes it; a measurement (calibration, never-slower, backend choice) never edits a plan, it makes a
new one (:meth:`ARDPlan.fall_back`, :meth:`ARDPlan.with_backends`, :meth:`ARDPlan.give_up`).
:class:`PlanRecord` keeps the plans of a fit with the step each took effect, which is what a checkpoint stores and
``ApproximateDropout(plan=...)`` replays.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from lightning_ard.patterns import BlockRow, PatternDistribution, PeriodicRow, PeriodicTile, RandomSubsetRow
from lightning_ard.sites import Site, SiteKind

PLAIN, ARD = "plain", "ard"
"""Modes of a timed step: a reference step of the plain model, or an ARD step."""
FORMAT = 1
"""Version of the saved plan format (a file of another version is refused, naming both)."""

_FAMILY_CLASSES = {cls.__name__: cls for cls in (PeriodicRow, BlockRow, RandomSubsetRow, PeriodicTile)}


def distribution_to_dict(dist: PatternDistribution) -> dict[str, Any]:
    """A distribution as plain data: each candidate's class and fields, the probabilities, the target rate."""
    candidates = [{"type": type(c).__name__, **dataclasses.asdict(c)} for c in dist.candidates]
    return {"target_rate": dist.target_rate, "candidates": candidates, "probabilities": dist.probabilities.tolist()}


def distribution_from_dict(data: Mapping[str, Any]) -> PatternDistribution:
    """Inverse of :func:`distribution_to_dict` (bitwise the same probabilities: JSON keeps a float's repr)."""
    candidates = []
    for spec in data["candidates"]:
        fields = dict(spec)
        cls = _FAMILY_CLASSES.get(fields.pop("type"))
        if cls is None:
            raise ValueError(f"unknown pattern family {spec['type']!r} in a plan; known: {sorted(_FAMILY_CLASSES)}")
        if "tile" in fields:
            fields["tile"] = tuple(fields["tile"])
        candidates.append(cls(**fields))
    return PatternDistribution(tuple(candidates), data["probabilities"], float(data["target_rate"]))


@dataclass(frozen=True)
class SitePlan:
    """How one site is served.

    Attributes:
        site: the detected site (name, kind, rate, width, module paths).
        family: pattern family it draws (``row``, ``block``, ``random``, ``tile``).
        groups: patterns per step (after ``"auto"`` and the bound by the step's rows).
        distribution: the searched pattern distribution.
        requested_groups: the count asked for, when the bound by rows lowered it (else ``None``).
        tied: the group count belongs to an LSTM (time chunks, sequence groups), not to ``groups``.
        follows: the LSTM whose sequence groups this Linear site follows (sequence mode), if any.
        element_p: rate of element-wise dropout on the pattern's kept units (an LSTM site under
            ``lstm_pattern_share``; the site's rate is then the pattern's share of the configured rate).
        fallback: why the site runs as nn.Dropout (``None``: ARD serves it).
    """

    site: Site
    family: str
    groups: int
    distribution: PatternDistribution
    requested_groups: int | None = None
    tied: bool = False
    follows: str | None = None
    element_p: float = 0.0
    fallback: str | None = None

    @property
    def name(self) -> str:
        """The site's name."""
        return self.site.name

    @property
    def served(self) -> bool:
        """Whether ARD serves the site."""
        return self.fallback is None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        return {
            "site": {**dataclasses.asdict(self.site), "kind": str(self.site.kind)},
            "family": self.family,
            "groups": self.groups,
            "requested_groups": self.requested_groups,
            "tied": self.tied,
            "follows": self.follows,
            "element_p": self.element_p,
            "fallback": self.fallback,
            "distribution": distribution_to_dict(self.distribution),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SitePlan:
        """Inverse of :meth:`to_dict`."""
        site = Site(**{**data["site"], "kind": SiteKind(data["site"]["kind"])})
        fields = {k: data[k] for k in ("family", "groups", "requested_groups", "tied", "follows", "fallback")}
        element_p = float(data.get("element_p", 0.0))  # absent from plans saved before the element rate existed
        return cls(site=site, distribution=distribution_from_dict(data["distribution"]), element_p=element_p, **fields)


@dataclass(frozen=True)
class HiddenPlan:
    """A hidden-unit distribution of recurrent structured dropout that no site owns (``<lstm>.h<layer>``)."""

    name: str
    groups: int
    distribution: PatternDistribution

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        return {"name": self.name, "groups": self.groups, "distribution": distribution_to_dict(self.distribution)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HiddenPlan:
        """Inverse of :meth:`to_dict`."""
        return cls(data["name"], int(data["groups"]), distribution_from_dict(data["distribution"]))


@dataclass(frozen=True)
class ARDPlan:
    """Everything decided about a model's ARD, frozen; changed only by making a new plan.

    Attributes:
        config: the settings it was built from (``ARDConfig`` fields as plain data).
        sites: one :class:`SitePlan` per detected site, in detection order.
        skipped: ``(name, reason)`` of every dropout left as it is.
        hidden: hidden-unit distributions of recurrent structured dropout.
        backends: ``(layer path, backend)`` of every ARD Linear (``"auto"`` until a measurement chose).
        samples: the samples per step that ``groups="auto"`` and the bound by rows followed (``None``: not seen).
        plain: why the plain model trains instead of ARD (``None``: ARD runs).
    """

    config: dict[str, Any]
    sites: tuple[SitePlan, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()
    hidden: tuple[HiddenPlan, ...] = ()
    backends: tuple[tuple[str, str], ...] = ()
    samples: int | None = None
    plain: str | None = None

    # ------------------------------------------------------------------ views
    def site(self, name: str) -> SitePlan:
        """The plan of site ``name``."""
        for sp in self.sites:
            if sp.name == name:
                return sp
        raise KeyError(f"no site {name!r} in the plan; sites: {[sp.name for sp in self.sites]}")

    @property
    def served(self) -> tuple[SitePlan, ...]:
        """The sites ARD serves (none once the plain model trains)."""
        return () if self.plain is not None else tuple(sp for sp in self.sites if sp.served)

    @property
    def fallen_back(self) -> dict[str, str]:
        """Site -> why it runs as nn.Dropout."""
        return {sp.name: sp.fallback for sp in self.sites if sp.fallback is not None}

    @property
    def backend_of(self) -> dict[str, str]:
        """ARD Linear path -> its backend."""
        return dict(self.backends)

    # ------------------------------------------------------------------ new plans
    def fall_back(self, names: Iterable[str], reasons: Mapping[str, str] | str) -> ARDPlan:
        """A plan in which the sites ``names`` (and every site sharing a dropout module with one of them: a dropout
        module runs plainly for all its uses) run as nn.Dropout, each with its reason."""
        names = set(names)
        dropouts = {sp.site.dropout for sp in self.sites if sp.name in names and sp.site.dropout is not None}
        sites = []
        for sp in self.sites:
            if sp.served and (sp.name in names or sp.site.dropout in dropouts):
                why = reasons if isinstance(reasons, str) else reasons.get(sp.name)
                sp = replace(sp, fallback=why or f"shares its dropout {sp.site.dropout} with a site that fell back")
            sites.append(sp)
        return replace(self, sites=tuple(sites))

    def give_up(self, reason: str) -> ARDPlan:
        """A plan in which the plain model trains (no ARD layer left), for ``reason``."""
        return replace(self, plain=reason)

    def with_backends(self, backends: Mapping[str, str]) -> ARDPlan:
        """A plan with these layers' backends replaced."""
        merged = {**self.backend_of, **backends}
        return replace(self, backends=tuple(sorted(merged.items())))

    def with_groups(self, groups: Mapping[str, int], requested: Mapping[str, int], samples: int | None) -> ARDPlan:
        """A plan with new group counts (site or hidden name -> count; ``requested``: the count asked for where a
        bound lowered it) for a step of ``samples`` samples."""
        sites = tuple(
            replace(sp, groups=groups.get(sp.name, sp.groups), requested_groups=requested.get(sp.name))
            for sp in self.sites
        )
        hidden = tuple(replace(h, groups=groups.get(h.name, h.groups)) for h in self.hidden)
        return replace(self, sites=sites, hidden=hidden, samples=samples)

    # ------------------------------------------------------------------ data
    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        return {
            "config": self.config,
            "sites": [sp.to_dict() for sp in self.sites],
            "skipped": [list(s) for s in self.skipped],
            "hidden": [h.to_dict() for h in self.hidden],
            "backends": dict(self.backends),
            "samples": self.samples,
            "plain": self.plain,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ARDPlan:
        """Inverse of :meth:`to_dict`."""
        return cls(
            config=dict(data["config"]),
            sites=tuple(SitePlan.from_dict(s) for s in data["sites"]),
            skipped=tuple((str(n), str(r)) for n, r in data["skipped"]),
            hidden=tuple(HiddenPlan.from_dict(h) for h in data["hidden"]),
            backends=tuple(sorted(data["backends"].items())),
            samples=data["samples"],
            plain=data["plain"],
        )

    def __eq__(self, other: object) -> bool:
        """Equal decisions (distributions compared by their data; they are tensors, so not by dataclass equality)."""
        return other is self or (isinstance(other, ARDPlan) and self.to_dict() == other.to_dict())

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))


@dataclass(frozen=True)
class Schedule:
    """When reference steps (the plain model, timed against ARD steps) run: a window of ``2 * steps`` steps
    (plain and ARD in turn) from step ``start``, again every ``every`` steps (0: once); none while the plain model
    trains. Steps count every training batch of the fit, across resumes."""

    start: int
    every: int
    steps: int

    def mode(self, step: int) -> str | None:
        """``"plain"`` or ``"ard"`` when ``step`` is in a window, None otherwise."""
        offset = step - self.start
        if offset < 0:
            return None
        within = offset % self.every if self.every else offset
        if within >= 2 * self.steps:
            return None
        return PLAIN if within % 2 == 0 else ARD


@dataclass
class PlanRecord:
    """The plans of one fit, each with the step (0-based training batch) from which it is in force, and the
    schedule of reference steps: what a checkpoint holds and a plan file replays.

    Attributes:
        plans: ``(from_step, plan)`` in step order; the first is in force from step 0.
        schedule: the reference steps (``None``: no reference step runs).
    """

    plans: list[tuple[int, ARDPlan]] = field(default_factory=list)
    schedule: Schedule | None = None
    revision: int = field(default=0, compare=False)  # counts the changes :meth:`add` made (not saved)

    def at(self, step: int) -> ARDPlan:
        """The plan in force at ``step``."""
        if not self.plans:
            raise ValueError("the plan record is empty")
        current = self.plans[0][1]
        for start, plan in self.plans:
            if start <= step:
                current = plan
        return current

    @property
    def last(self) -> ARDPlan:
        """The plan in force at the end of the record."""
        return self.plans[-1][1]

    def add(self, step: int, plan: ARDPlan) -> None:
        """Record that ``plan`` is in force from ``step`` on (a no-op when it equals the plan in force then)."""
        if self.plans and self.at(step) == plan:
            return
        self.plans = [(s, p) for s, p in self.plans if s < step] + [(step, plan)]
        self.revision += 1

    def mode(self, step: int) -> str | None:
        """Whether ``step`` is a reference step (``"plain"``), a timed ARD step (``"ard"``) or neither (None)."""
        if self.schedule is None or self.at(step).plain is not None or not self.at(step).served:
            return None
        return self.schedule.mode(step)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        return {
            "format": FORMAT,
            "schedule": dataclasses.asdict(self.schedule) if self.schedule is not None else None,
            "plans": [{"from_step": s, **p.to_dict()} for s, p in self.plans],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlanRecord:
        """Inverse of :meth:`to_dict`; refuses another format version."""
        if data.get("format") != FORMAT:
            raise ValueError(f"plan format {data.get('format')!r} is not supported (this version reads {FORMAT})")
        schedule = Schedule(**data["schedule"]) if data.get("schedule") is not None else None
        plans = [(int(p["from_step"]), ARDPlan.from_dict(p)) for p in data["plans"]]
        return cls(plans, schedule)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the record as indented JSON (a person can read it; :meth:`load` gives it back)."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PlanRecord:
        """Read a record :meth:`save` wrote."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))
