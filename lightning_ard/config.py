"""ARDConfig: what to rewrite and how, validated once (the callback and the controller both take it)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from lightning_ard._validate import (
    check_choice,
    check_in_range,
    check_positive_int,
    check_rate,
    check_seed,
    check_share,
    check_tile,
)
from lightning_ard.families import TILE
from lightning_ard.kernels.select import BACKEND_NAMES as BACKENDS
from lightning_ard.layers.lstm import LSTM_MODES
from lightning_ard.patterns.groups import MAX_GROUPS
from lightning_ard.search import FAMILIES, SearchSettings

GROUP_DRAWS = ("stratified", "independent")
"""``group_draws`` choices: offsets of a step's pattern groups in equal strata of one base, or independent."""


def _check_strings(name: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a list of strings, got {value!r}")
    return tuple(value)


def check_search(search: dict[str, Any] | None) -> dict[str, Any]:
    """Validate a dict of search settings: known names (``method`` and :class:`SearchSettings` fields), no family."""
    if search is not None and not isinstance(search, dict):
        raise ValueError(f"search must be a dict of search settings, got {search!r}")
    search = dict(search or {})
    if "family" in search:
        raise ValueError("search must not set 'family'; choose the family with pattern=...")
    unknown = set(search) - set(SearchSettings.names()) - {"method"}
    if unknown:
        raise ValueError(f"unknown search settings {sorted(unknown)}; allowed: {['method', *SearchSettings.names()]}")
    return search


@dataclass(frozen=True)
class ARDConfig:
    """How ARD rewrites a model.

    Args:
        pattern: pattern family: ``"row"`` (periodic neuron pattern, the paper's), ``"block"`` (contiguous kept
            block), ``"random"`` (random subset of exactly K units), ``"tile"`` (DropConnect on whole weight tiles
            of the consumer Linear; LSTM sites use ``"row"``).
        p: dropout rate for every site; ``None`` keeps each dropout's own rate.
        search: settings for :func:`lightning_ard.search.search_distribution` (e.g. ``{"method": "exact"}``).
        include: glob patterns over dropout module paths (or site names) to serve; ``None`` serves all.
        exclude: glob patterns over dropout module paths (or site names) to leave alone.
        sites: explicit ``"dropout->consumer"`` module-path pairs for sites detection cannot prove.
        backend: ``"auto"`` (on CUDA each layer takes the fastest of ``"torch"``, ``"gathered"`` and ``"triton"``
            at its real shapes, measured after the first step; PyTorch elsewhere), or one forced: ``"torch"``,
            ``"gathered"`` (kept weight block gathered once, cuBLAS products; docs/gpu.md) or ``"triton"``.
        tile: tile shape (rows, cols) of the weight for ``pattern="tile"``; ``"auto"`` (default) picks it per layer
            from the weight's shape (:func:`~lightning_ard.patterns.tile.auto_tile`) and skips, with the reason, a
            site whose weight no tile pattern can serve at its rate, instead of failing the fit.
        groups: independent patterns per forward pass, each serving a contiguous share of the rows (samples or
            tokens of a Linear's input, time steps of an LSTM; :mod:`lightning_ard.patterns.groups`). ``"auto"``
            (default) takes the measured safe count for the site's rate and the batch at Linear sites
            (:func:`~lightning_ard.patterns.groups.auto_groups`: 4 up to p = 0.5, 10 at p = 0.7, more for batches
            above 256 samples, read from the first training batch); sites that feed an LSTM take, up to p = 0.5,
            one random pattern per step dropping 0.6 of p with element-wise dropout for the rest
            (:data:`~lightning_ard.lstm_policy.AUTO_LSTM`, the setting the LSTM study qualified), and stay
            ``nn.Dropout`` above it unless ``lstm_groups`` is set. 1 is the paper's one pattern per mini-batch:
            fastest, but with SGD + momentum it can break training (docs/results.md).
        pool: distinct patterns per site per step when ``groups > 1``: each group takes one of ``pool`` drawn
            patterns at random, so a layer runs at most ``pool`` compact GEMMs however many groups there are.
            ``None`` draws every group independently.
        group_draws: how a step's groups draw their offsets: ``"stratified"`` (default: one random base, the
            offsets in equal strata of the period, so every unit is kept by almost exactly (1 - p) x groups of
            them; each group's pattern is still marginally the family's) or ``"independent"`` (each group its
            own uniform offset). Stratified groups remove the step-to-step noise of how many groups keep a unit,
            which is what makes few groups unsafe under SGD with momentum (docs/results.md, "Safe defaults").
        lstm_pattern: pattern family at sites whose consumer is an LSTM (``"row"``, ``"block"`` or ``"random"``);
            ``None`` takes ``pattern`` (``"row"`` under ``pattern="tile"``). An LSTM gathers its kept input columns
            whatever the family, so a family that breaks co-adaptation there costs no speed, while the Linear sites
            keep a family with contiguous products.
        lstm_groups: time chunks (patterns per step) for sites whose consumer is an LSTM; ``None`` uses
            ``groups`` (with ``groups="auto"``: the automatic LSTM setting, see ``groups``). Each chunk is one
            fused-LSTM call, whose fixed cost (large on the CPU) is what limits it.
        lstm_mode: what ``lstm_groups`` cut: ``"time"`` (chunks of time steps, each chunk one fused-LSTM call over
            the whole batch) or ``"sequence"`` (groups of sequences that keep one pattern for all their time steps,
            as locked / variational dropout does: one fused call per group and layer; a Linear site that reads the
            LSTM's output groups its tokens by their sequence's group).
        lstm_recurrent_p: rate of recurrent-path structured dropout (opt-in, needs ``lstm_mode="sequence"``; ``None``
            is off): per group of sequences and layer, a dropped hidden unit is absent (gates, recurrent column,
            output), the group runs a smaller LSTM on weight slices, and the inter-layer sites and the Linear site
            after the LSTM drop exactly those units, at this rate. Unidirectional LSTMs only.
        lstm_pattern_share: share of an LSTM site's rate that its pattern drops, in (0, 1]. The pattern drops
            ``share * p`` of the units, so the LSTM's input products shrink by that much, and the kept units take
            element-wise dropout at ``1 - (1 - p) / (1 - share * p)``, fresh per element as nn.Dropout's: every unit
            is still kept with probability ``1 - p``, and the masks differ from token to token. ``None``: 0.6 under
            the automatic LSTM setting (``groups="auto"``, no ``lstm_groups``), else 1 (the pattern drops all of
            p). Not with ``lstm_recurrent_p``.
        seed: seed of the pattern generator; ``None`` takes Lightning's global seed (``seed_everything``) or 0.
            The Lightning callback adds an offset per rank so that DDP ranks draw different patterns.
    """

    pattern: str = "block"
    p: float | None = None
    search: dict[str, Any] = field(default_factory=dict)
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    sites: tuple[str, ...] | None = None
    backend: str = "auto"
    tile: tuple[int, int] | str = "auto"
    groups: int | str = "auto"
    pool: int | None = None
    group_draws: str = "stratified"
    lstm_pattern: str | None = None
    lstm_groups: int | None = None
    lstm_mode: str = "time"
    lstm_recurrent_p: float | None = None
    lstm_pattern_share: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        check_choice("pattern", self.pattern, FAMILIES)
        if self.p is not None:
            object.__setattr__(self, "p", check_rate("p", self.p))  # NumPy scalars become floats
        check_choice("backend", self.backend, BACKENDS)
        check_choice("group_draws", self.group_draws, GROUP_DRAWS)
        for name in ("include", "exclude", "sites"):
            object.__setattr__(self, name, _check_strings(name, getattr(self, name)))
        for pair in self.sites or ():
            dropout, sep, consumer = pair.partition("->")
            if not sep or not dropout.strip() or not consumer.strip():
                raise ValueError(
                    f"sites entries must be 'dropout_path->consumer_path' (the dropout module, '->', the Linear or "
                    f"LSTM that reads it), got {pair!r}; e.g. sites=['net.2->net.3']"
                )
        object.__setattr__(self, "search", check_search(self.search))
        if not (isinstance(self.tile, str) and self.tile == "auto"):
            object.__setattr__(self, "tile", check_tile("tile", self.tile))
        if not (isinstance(self.groups, str) and self.groups == "auto"):
            object.__setattr__(self, "groups", check_in_range("groups", self.groups, 1, MAX_GROUPS, hint=" or 'auto'"))
        for name in ("pool", "lstm_groups"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_positive_int(name, getattr(self, name)))
        self._check_lstm()
        object.__setattr__(self, "seed", check_seed("seed", self.seed, allow_none=True))

    def _check_lstm(self) -> None:
        check_choice("lstm_mode", self.lstm_mode, LSTM_MODES)
        if self.lstm_pattern is not None:
            check_choice("lstm_pattern", self.lstm_pattern, tuple(f for f in FAMILIES if f != TILE))
        share = self.lstm_pattern_share
        if share is not None:
            share = check_share("lstm_pattern_share", share)
            object.__setattr__(self, "lstm_pattern_share", share)
            if self.lstm_recurrent_p is not None:
                raise ValueError(
                    f"lstm_pattern_share={share} does not combine with lstm_recurrent_p={self.lstm_recurrent_p}; "
                    "set one of them to None"
                )
        q = self.lstm_recurrent_p
        if q is None:
            return
        if check_rate("lstm_recurrent_p", q) == 0.0:
            raise ValueError("lstm_recurrent_p must be in (0, 1) or None (off), got 0.0")
        object.__setattr__(self, "lstm_recurrent_p", float(q))
        if self.lstm_mode != "sequence":
            raise ValueError(
                f"lstm_recurrent_p={q} needs lstm_mode='sequence' (one hidden-unit pattern per group of sequences), "
                f"got lstm_mode={self.lstm_mode!r}; set lstm_mode='sequence'"
            )

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every setting's name, in declaration order (what the callback, the controller and the YAML accept)."""
        return tuple(f.name for f in fields(cls))
