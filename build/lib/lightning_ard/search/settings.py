"""The search's tuning knobs: names, defaults and checks, frozen into one hashable value (the cache key).

Every setting is validated here, whatever family or method will use it, so a typo or an out-of-range value
fails at once with an error that names the setting, the value and what is allowed. Settings that do not apply
to the chosen family or method (``spread`` for the row family, ``lr`` for the exact method, ...) are accepted
and unused, so one configuration block can serve every family.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from lightning_ard._validate import check_in_range, check_positive_int


@dataclass(frozen=True)
class SearchSettings:
    """Settings of :func:`lightning_ard.search.search_distribution` (all keyword arguments there).

    Attributes:
        dp_max: largest period of the periodic candidates ("row", "tile"); capped at the width (row) or at the
            number of tile columns (tile).
        ks: units (tiles) kept per period of the periodic candidates; the paper uses (1,); the default
            (1, 2, 3, 4) reaches rates below 0.5 without steps that drop nothing. Sorted, unique.
        spread: half-width, in binomial standard deviations, of the window of kept counts K around N(1 - p)
            from which the "block" and "random" candidates are taken.
        max_candidates: most kept counts K in that window (evenly thinned beyond it).
        lr: initial learning rate of the SGD method (Adam, cosine decay to 0; see ``sgd.py`` for why).
        steps: optimizer steps of the SGD method.
        init_scale: how strongly the SGD start favours candidates near the target (0: uniform start).
        rate_weight: weight of the rate term of the loss (the result is projected onto the exact rate anyway).
        dist_weight: weight of the kept-count distance term.
        cokeep_weight: weight of the co-keep term (0 by default: the paper's loss has no such term).
        seed: seed of the SGD start (a little noise on the logits); the result is a function of the seed.
    """

    dp_max: int = 16
    ks: tuple[int, ...] = (1, 2, 3, 4)
    spread: float = 6.0
    max_candidates: int = 512
    lr: float = 0.3
    steps: int = 300
    init_scale: float = 0.5
    rate_weight: float = 1.0
    dist_weight: float = 1.0
    cokeep_weight: float = 0.0
    seed: int = 0

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """All setting names, in declaration order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_kwargs(cls, settings: Mapping[str, Any]) -> SearchSettings:
        """Validate keyword settings and fill in the defaults; raises ValueError on any bad name or value."""
        unknown = sorted(set(settings) - set(cls.names()))
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; allowed settings are {list(cls.names())}")
        values = dict(settings)
        if "dp_max" in values:
            check_positive_int("dp_max", values["dp_max"])
        if "ks" in values:
            values["ks"] = _check_ks(values["ks"])
        if "max_candidates" in values:
            check_positive_int("max_candidates", values["max_candidates"], minimum=2)
        if "steps" in values:
            check_positive_int("steps", values["steps"], minimum=0)
        if "seed" in values:
            check_in_range("seed", values["seed"], 0, 2**63 - 1)
        for name in ("spread", "lr"):
            if name in values:
                values[name] = _check_real(name, values[name], low=0.0, low_open=True)
        for name in ("init_scale", "rate_weight", "dist_weight", "cokeep_weight"):
            if name in values:
                values[name] = _check_real(name, values[name], low=0.0)
        return cls(**values)


def _check_ks(value: Any) -> tuple[int, ...]:
    """``ks``: one positive integer or a non-empty iterable of them, returned sorted and unique."""
    items: Iterable[Any] = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        ks = tuple(items)
    except TypeError:
        raise ValueError(f"ks must be a positive integer or a sequence of them, got {value!r}") from None
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be a positive integer or a non-empty sequence of them (each >= 1), got {value!r}")
    return tuple(sorted(set(ks)))


def _check_real(name: str, value: Any, low: float, low_open: bool = False) -> float:
    """A finite real number > low (``low_open``) or >= low."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
    if not ok or (float(value) <= low if low_open else float(value) < low):
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)
