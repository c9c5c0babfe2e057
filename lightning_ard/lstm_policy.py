"""Which LSTM sites ARD serves, and how: the LSTM part of building a plan.

Under ``groups="auto"`` (no ``lstm_groups``, no structured dropout) the sites that feed an LSTM take the setting the
LSTM study qualified (:data:`AUTO_LSTM`: one random pattern per step dropping 0.6 of the rate, element-wise dropout for
the rest; docs/results.md, "LSTM language model: accuracy where dropout pays", measured at batch 20 and 64) up to the
rate and the batch it was measured at (:data:`AUTO_LSTM_MAX_P`, :data:`AUTO_LSTM_MAX_BATCH`); above them they run as
nn.Dropout with the reason (the rate is known when the plan is built, the batch after the first step).
``lstm_groups=N`` serves them as asked. Linear sites (the decoder) keep their own defaults.
In sequence mode, Linear sites that read an LSTM's output follow its sequence groups. With ``lstm_recurrent_p``, the
sites on an LSTM's hidden units take that rate and the layers with no such site get a hidden-unit distribution of their
own (``<lstm>.h<layer>``). Every draw tied to an LSTM shares one group count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from torch import nn

from lightning_ard.config import ARDConfig
from lightning_ard.families import unit_family
from lightning_ard.patterns import PatternDistribution
from lightning_ard.patterns.groups import resolve_groups
from lightning_ard.sites import Site, SiteKind, Skipped, find_lstm_followers


@dataclass
class LSTMPolicy:
    """The LSTM decisions of a plan.

    Attributes:
        sites: the sites left served (LSTM sites ``groups="auto"`` leaves as nn.Dropout removed), rates set.
        skipped: the sites removed, with the reason.
        followers: Linear site -> the LSTM whose sequence groups it follows (sequence mode).
        hidden: ``<lstm>.h<layer>`` -> hidden-unit distribution (structured dropout, layers with no site).
        tied: site or hidden name -> its LSTM's group count.
        element_p: LSTM site -> rate of element-wise dropout on its pattern's kept units (``lstm_pattern_share``;
            the site's rate is then the pattern's share).
    """

    sites: list[Site]
    skipped: list[Skipped] = field(default_factory=list)
    followers: dict[str, str] = field(default_factory=dict)
    hidden: dict[str, PatternDistribution] = field(default_factory=dict)
    tied: dict[str, int] = field(default_factory=dict)
    element_p: dict[str, float] = field(default_factory=dict)


AUTO_LSTM = {"lstm_groups": 1, "lstm_pattern": "random", "lstm_pattern_share": 0.6}
"""What ``groups="auto"`` serves at the sites that feed an LSTM (``lstm_pattern`` and ``lstm_pattern_share`` are
defaults: one the user gave wins). One pattern per step has nothing to cut, so ``lstm_mode`` resolves to
``"time"`` (no Linear follows the LSTM's sequence groups)."""
AUTO_LSTM_MAX_P = 0.5
"""The highest rate at which the LSTM study measured :data:`AUTO_LSTM` (sites above it stay nn.Dropout)."""
AUTO_LSTM_MAX_BATCH = 64
"""The largest batch (sequences an LSTM reads in a step) at which the LSTM study measured :data:`AUTO_LSTM`: one
pattern of a step is shared by every sequence of the batch, so a larger batch is a setting not yet qualified (the
sites of an LSTM reading more fall back to nn.Dropout after the first step, :func:`auto_lstm_batch_reason`)."""


def auto_lstm(config: ARDConfig) -> bool:
    """LSTM sites take the automatic setting: ``groups="auto"``, no ``lstm_groups``, no structured dropout."""
    return config.groups == "auto" and config.lstm_groups is None and config.lstm_recurrent_p is None


def with_auto_lstm(config: ARDConfig) -> ARDConfig:
    """``config`` with :data:`AUTO_LSTM` filled in where the LSTM sites take the automatic setting (an
    ``lstm_pattern`` or ``lstm_pattern_share`` the user gave is kept); otherwise ``config`` itself."""
    if not auto_lstm(config):
        return config
    given = {"lstm_pattern": config.lstm_pattern, "lstm_pattern_share": config.lstm_pattern_share}
    settings = {k: v if given.get(k) is None else given[k] for k, v in AUTO_LSTM.items()}
    return replace(config, lstm_mode="time", **settings)


def lstm_policy(
    model: nn.Module, sites: list[Site], config: ARDConfig, eligible_follower: Callable[[Site], bool]
) -> LSTMPolicy:
    """The LSTM decisions for ``sites`` of ``model`` (not changed) under ``config`` as the user gave it (the
    automatic LSTM setting is resolved here); ``eligible_follower``: whether a Linear site may follow an LSTM's
    sequence groups (a consumer only, with a row family)."""
    policy = _leave_auto_sites(sites, config)
    config = with_auto_lstm(config)
    lstm_paths = {s.consumer for s in policy.sites if s.kind.feeds_lstm}
    if config.lstm_mode == "sequence" and lstm_paths:
        policy.followers = find_lstm_followers(model, policy.sites, lstm_paths, eligible_follower)
    if config.lstm_recurrent_p is not None:
        _structured(model, policy, lstm_paths, config)
    if config.lstm_pattern_share is not None:
        _split_rates(policy, config.lstm_pattern_share)
    policy.tied = _tied_groups(model, policy, lstm_paths, config)
    return policy


AUTO_LSTM_REASON = (
    f"LSTM sites above p = {AUTO_LSTM_MAX_P} stay nn.Dropout under groups='auto': the LSTM study qualified its "
    f"setting up to p = {AUTO_LSTM_MAX_P} (docs/results.md); set lstm_groups=N to serve them"
)
"""Why ``groups="auto"`` leaves a site that feeds an LSTM as nn.Dropout."""


def auto_lstm_batch_reason(path: str, batch: int) -> str:
    """Why a site that feeds the LSTM ``path``, which read ``batch`` sequences a step, runs as nn.Dropout under
    ``groups="auto"``."""
    spelled = ", ".join(f"{k}={v!r}" for k, v in AUTO_LSTM.items())
    return (
        f"LSTM {path!r} reads {batch} sequences a step; the LSTM study qualified the automatic setting up to batch "
        f"{AUTO_LSTM_MAX_BATCH} (docs/results.md); set {spelled} to serve it at this batch"
    )


def _leave_auto_sites(sites: list[Site], config: ARDConfig) -> LSTMPolicy:
    """Remove the LSTM sites ``groups="auto"`` does not serve (rates above :data:`AUTO_LSTM_MAX_P`), with every
    other use of their dropout modules (a dropout module is served whole or not)."""
    if not auto_lstm(config):
        return LSTMPolicy(list(sites))
    left = [s for s in sites if s.kind.feeds_lstm and s.p > AUTO_LSTM_MAX_P]
    plain = {s.dropout for s in left if s.dropout is not None}
    shared = [s for s in sites if not s.kind.feeds_lstm and s.dropout in plain]
    skipped = [Skipped(s.name, AUTO_LSTM_REASON) for s in left]
    skipped += [Skipped(s.name, f"another use of {s.dropout} stays nn.Dropout (an LSTM site)") for s in shared]
    return LSTMPolicy([s for s in sites if s not in left and s not in shared], skipped)


def _structured(model: nn.Module, policy: LSTMPolicy, lstm_paths: set[str], config: ARDConfig) -> None:
    """Recurrent structured dropout: the sites on the LSTMs' hidden units (inter-layer, and the Linear site after
    the LSTM) take ``lstm_recurrent_p``; layers with no such site get their own hidden-unit distribution."""
    from lightning_ard.search import search_distribution

    q = config.lstm_recurrent_p
    rated: set[str] = set()
    for path in sorted(lstm_paths):
        lstm = model.get_submodule(path)
        if lstm.bidirectional:
            raise ValueError(
                f"lstm_recurrent_p={q} supports unidirectional LSTMs only, got bidirectional {path!r}; set "
                "lstm_recurrent_p=None (sequence groups serve bidirectional LSTMs)"
            )
        follows = [s for s in policy.sites if policy.followers.get(s.name) == path]
        inter = {s.consumer_layer for s in policy.sites if s.consumer == path and s.kind == SiteKind.LSTM_INTER}
        rated |= {s.name for s in follows}
        rated |= {s.name for s in policy.sites if s.consumer == path and s.kind == SiteKind.LSTM_INTER}
        family = unit_family(config.pattern)
        for layer in range(lstm.num_layers):
            if layer + 1 in inter or (layer == lstm.num_layers - 1 and follows):
                continue
            try:
                dist = search_distribution(q, lstm.hidden_size, family, **config.search)
            except ValueError as err:
                raise ValueError(f"LSTM {path!r} hidden units (lstm_recurrent_p={q}): {err}") from err
            policy.hidden[f"{path}.h{layer}"] = dist
    policy.sites = [replace(s, p=q) if s.name in rated else s for s in policy.sites]  # type: ignore[arg-type]


def split_rate(p: float, share: float) -> tuple[float, float]:
    """``(pattern rate, element-wise rate)`` of a site of rate ``p`` whose pattern drops ``share`` of it: the
    pattern drops ``share * p`` of the units and element-wise dropout the rest, so a unit is kept with probability
    ``(1 - share * p) * (1 - element rate) = 1 - p``."""
    pattern_p = share * p
    return pattern_p, 1.0 - (1.0 - p) / (1.0 - pattern_p)


def _split_rates(policy: LSTMPolicy, share: float) -> None:
    """The sites that feed an LSTM take the pattern's share of their rate; the rest becomes their element rate."""
    sites = []
    for s in policy.sites:
        if s.kind.feeds_lstm and s.p > 0.0:
            pattern_p, element_p = split_rate(s.p, share)
            s = replace(s, p=pattern_p)
            if element_p > 0.0:
                policy.element_p[s.name] = element_p
        sites.append(s)
    policy.sites = sites


def _tied_groups(model: nn.Module, policy: LSTMPolicy, lstm_paths: set[str], config: ARDConfig) -> dict[str, int]:
    """One group count per LSTM for every draw tied to it: its sites, its followers' sites, its hidden units."""
    out: dict[str, int] = {}
    for path in sorted(lstm_paths):
        names = [s.name for s in policy.sites if s.consumer == path and s.kind.feeds_lstm]
        names += [name for name, owner in policy.followers.items() if owner == path]
        layers = model.get_submodule(path).num_layers
        names += [h for h in (f"{path}.h{layer}" for layer in range(layers)) if h in policy.hidden]
        if config.lstm_groups is not None:
            groups = config.lstm_groups
        else:
            rates = {s.name: s.p for s in policy.sites}
            groups = max(resolve_groups(config.groups, rates[n]) for n in names if n in rates)
        out.update({name: groups for name in names})
    return out
