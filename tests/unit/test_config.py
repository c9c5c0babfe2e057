"""ARDConfig on its own (no callback, no model): defaults, the exact text of every validation error, frozen-ness,
normalization of list settings to tuples, and the checks on the search settings."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np
import pytest

from lightning_ard._validate import SEED_MAX
from lightning_ard.config import BACKENDS, ARDConfig
from lightning_ard.patterns.groups import AUTO_GROUPS, MAX_GROUPS, auto_groups, resolve_groups
from lightning_ard.search import FAMILIES, SearchSettings


def _raises(message: str, **kwargs: Any) -> None:
    """ARDConfig(**kwargs) raises ValueError with exactly ``message``."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ARDConfig(**kwargs)


def test_defaults() -> None:
    """The defaults: block pattern, each dropout's own rate, automatic backend and tile, the measured safe groups
    with stratified offsets, no seed."""
    config = ARDConfig()
    assert dataclasses.asdict(config) == {
        "pattern": "block",
        "p": None,
        "search": {},
        "include": None,
        "exclude": None,
        "sites": None,
        "backend": "auto",
        "tile": "auto",
        "groups": "auto",
        "pool": None,
        "group_draws": "stratified",
        "lstm_pattern": None,
        "lstm_groups": None,
        "lstm_mode": "time",
        "lstm_recurrent_p": None,
        "lstm_pattern_share": None,
        "seed": None,
    }


def test_names_are_the_fields_in_order() -> None:
    """``names()`` lists every setting in declaration order."""
    assert ARDConfig.names() == tuple(f.name for f in dataclasses.fields(ARDConfig))
    assert ARDConfig.names() == (
        "pattern",
        "p",
        "search",
        "include",
        "exclude",
        "sites",
        "backend",
        "tile",
        "groups",
        "pool",
        "group_draws",
        "lstm_pattern",
        "lstm_groups",
        "lstm_mode",
        "lstm_recurrent_p",
        "lstm_pattern_share",
        "seed",
    )


def test_choices() -> None:
    """Pattern families and backends are the documented ones, each accepted."""
    assert FAMILIES == ("row", "block", "random", "tile")
    assert BACKENDS == ("auto", "torch", "gathered", "grouped_mm", "triton")
    for family in FAMILIES:
        assert ARDConfig(pattern=family).pattern == family
    for backend in BACKENDS:
        assert ARDConfig(backend=backend).backend == backend


@pytest.mark.parametrize("pattern", ["rows", "", None, "ROW"])
def test_pattern_error(pattern: Any) -> None:
    """An unknown pattern family names the value and the allowed families."""
    _raises(f"pattern must be one of ['row', 'block', 'random', 'tile'], got {pattern!r}", pattern=pattern)


@pytest.mark.parametrize("backend", ["cuda", "", None])
def test_backend_error(backend: Any) -> None:
    """An unknown backend names the value and the allowed backends."""
    allowed = "['auto', 'torch', 'gathered', 'grouped_mm', 'triton']"
    _raises(f"backend must be one of {allowed}, got {backend!r}", backend=backend)


@pytest.mark.parametrize("draws", ["strata", "", None])
def test_group_draws_error(draws: Any) -> None:
    """An unknown group_draws names the value and the two ways groups draw their offsets."""
    _raises(f"group_draws must be one of ['stratified', 'independent'], got {draws!r}", group_draws=draws)


@pytest.mark.parametrize("p", [0.0, 0.5, 0.999, 0])
def test_p_accepted(p: float) -> None:
    """Rates in [0, 1) are accepted as given."""
    assert ARDConfig(p=p).p == p


def test_numpy_scalars_accepted() -> None:
    """NumPy scalars (e.g. from a sweep's np.linspace) are real numbers: accepted and stored as Python ones."""
    config = ARDConfig(p=np.float32(0.5), groups=np.int64(4), pool=np.int32(2), seed=np.uint16(7))
    assert (config.p, config.groups, config.pool, config.seed) == (0.5, 4, 2, 7)
    assert all(type(v) in (float, int) for v in (config.p, config.groups, config.pool, config.seed))
    _raises("p must be in [0, 1), got np.float64(1.5)", p=np.float64(1.5))


@pytest.mark.parametrize("pair", ["net.2", "net.2->", "->net.3", "net.2-net.3"])
def test_sites_need_an_arrow(pair: str) -> None:
    """An explicit site without 'dropout->consumer' names the entry and the form."""
    _raises(
        f"sites entries must be 'dropout_path->consumer_path' (the dropout module, '->', the Linear or LSTM that "
        f"reads it), got {pair!r}; e.g. sites=['net.2->net.3']",
        sites=[pair],
    )


@pytest.mark.parametrize("p", [1.0, 1, -0.1, 2.5, True, False, "0.5", float("nan")])
def test_p_error(p: Any) -> None:
    """A rate outside [0, 1), a bool, a string or NaN is refused with the value in the message."""
    _raises(f"p must be in [0, 1), got {p!r}", p=p)


@pytest.mark.parametrize("name", ["include", "exclude", "sites"])
def test_string_lists_become_tuples(name: str) -> None:
    """include, exclude and sites given as lists (or tuples) are stored as tuples; None stays None."""
    values = ["enc.drop->enc.fc", "dec.drop->dec.fc"]
    assert getattr(ARDConfig(**{name: values}), name) == tuple(values)
    assert getattr(ARDConfig(**{name: tuple(values)}), name) == tuple(values)
    assert getattr(ARDConfig(**{name: []}), name) == ()
    assert getattr(ARDConfig(**{name: None}), name) is None
    assert isinstance(getattr(ARDConfig(**{name: values}), name), tuple)


@pytest.mark.parametrize("name", ["include", "exclude", "sites"])
@pytest.mark.parametrize("value", ["enc.*", ["enc.*", 3], [None], [b"enc"]])
def test_string_list_error(name: str, value: Any) -> None:
    """A bare string or a list holding a non-string is refused, naming the setting and the value."""
    _raises(f"{name} must be a list of strings, got {value!r}", **{name: value})


@pytest.mark.parametrize("tile", [(1, 1), (32, 128), [16, 8]])
def test_tile_accepted(tile: Any) -> None:
    """A pair of positive integers is accepted and stored as a tuple."""
    config = ARDConfig(tile=tile)
    assert config.tile == tuple(tile)
    assert isinstance(config.tile, tuple)


@pytest.mark.parametrize("tile", [(64,), (1, 2, 3), 64, None, (0, 64), (64, -1), (True, 2), (2.0, 2), "64"])
def test_tile_error(tile: Any) -> None:
    """Anything but a pair of positive integers is refused with the value in the message."""
    _raises(f"tile must be a pair of positive integers (rows, cols), got {tile!r}", tile=tile)


@pytest.mark.parametrize("name", ["groups", "pool", "lstm_groups"])
def test_counts_accepted(name: str) -> None:
    """groups, pool and lstm_groups take positive integers; pool and lstm_groups also None (groups must be set)."""
    assert getattr(ARDConfig(**{name: 1}), name) == 1
    assert getattr(ARDConfig(**{name: 8}), name) == 8
    if name != "groups":
        assert getattr(ARDConfig(**{name: None}), name) is None


@pytest.mark.parametrize("name", ["pool", "lstm_groups"])
@pytest.mark.parametrize("value", [0, -2, 1.0, True, "2"])
def test_count_error(name: str, value: Any) -> None:
    """A count below 1, a float, a bool or a string is refused, naming the setting and the value."""
    _raises(f"{name} must be an integer >= 1, got {value!r}", **{name: value})


@pytest.mark.parametrize("value", [0, -2, 1.0, True, "2", None, "AUTO", MAX_GROUPS + 1, 10**9])
def test_groups_error(value: Any) -> None:
    """groups is 'auto' or an integer in [1, MAX_GROUPS]; anything else (absurd counts too) is refused."""
    _raises(f"groups must be an integer in [1, {MAX_GROUPS}] or 'auto', got {value!r}", groups=value)


def test_groups_auto_resolves_to_the_safe_count() -> None:
    assert ARDConfig().groups == "auto" and resolve_groups("auto") == AUTO_GROUPS == 4 and resolve_groups(3) == 3
    assert [auto_groups(p) for p in (0.1, 0.3, 0.5, 0.6, 0.7, 0.8)] == [4, 4, 4, 6, 10, 16]
    assert resolve_groups("auto", 0.7) == 10 and resolve_groups(2, 0.7) == 2


def test_groups_auto_follows_the_samples_per_step() -> None:
    """Up to 256 samples the rate's count; above, 4 sqrt(samples / 256) at p = 0.5, the rate's factor on top; a
    fixed count ignores the batch."""
    assert [auto_groups(0.5, n) for n in (None, 32, 256, 257, 512, 600, 1024, 4096)] == [4, 4, 4, 5, 6, 7, 8, 16]
    assert auto_groups(0.3, 1024) == 4 and auto_groups(0.3, 4096) == 7
    assert auto_groups(0.7, 256) == 10 and auto_groups(0.7, 1024) == 19
    assert resolve_groups("auto", 0.5, 1024) == 8 and resolve_groups(3, 0.5, 1024) == 3


@pytest.mark.parametrize("seed", [None, 0, 1234, SEED_MAX])
def test_seed_accepted(seed: int | None) -> None:
    """Seeds in [0, SEED_MAX] and None are accepted."""
    assert ARDConfig(seed=seed).seed == seed


def test_seed_max() -> None:
    """The largest seed leaves room for the callback's per-rank offset inside a signed 64-bit seed."""
    assert SEED_MAX == 2**63 - 1 - 2**40


@pytest.mark.parametrize("seed", [-1, SEED_MAX + 1, 2**63, 1.0, True, "7"])
def test_seed_error(seed: Any) -> None:
    """A seed out of range, a float, a bool or a string is refused with the range in the message."""
    _raises(f"seed must be an integer in [0, 2**63 - 2**40 - 1] or None, got {seed!r}", seed=seed)


def test_frozen() -> None:
    """Every setting is read-only after construction."""
    config = ARDConfig()
    for name in ARDConfig.names():
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(config, name, getattr(config, name))


def test_replace_revalidates() -> None:
    """dataclasses.replace builds a new config through the same checks."""
    config = dataclasses.replace(ARDConfig(), groups=4, include=["a"])
    assert (config.groups, config.include) == (4, ("a",))
    with pytest.raises(ValueError, match=re.escape(f"groups must be an integer in [1, {MAX_GROUPS}] or 'auto', got 0")):
        dataclasses.replace(config, groups=0)


def test_equal_configs_compare_equal() -> None:
    """Two configs built from the same settings (lists or tuples) are equal."""
    assert ARDConfig(include=["a"], tile=[8, 8], search={"steps": 5}) == ARDConfig(
        include=("a",), tile=(8, 8), search={"steps": 5}
    )
    assert ARDConfig(groups=2) != ARDConfig(groups=3)


def test_search_accepts_every_setting_and_method() -> None:
    """search takes ``method`` and every SearchSettings field; None means no settings."""
    settings = {name: getattr(SearchSettings(), name) for name in SearchSettings.names()}
    config = ARDConfig(search={"method": "exact", **settings})
    assert config.search == {"method": "exact", **settings}
    assert ARDConfig(search=None).search == {}
    assert ARDConfig(search={}).search == {}


def test_search_is_copied() -> None:
    """The config keeps its own copy of the search dict: changing the caller's dict afterwards changes nothing."""
    search = {"steps": 10}
    config = ARDConfig(search=search)
    search["steps"] = 99
    search["lr"] = 1.0
    assert config.search == {"steps": 10}


@pytest.mark.parametrize("search", [[("steps", 1)], "exact", 3, ("method",)])
def test_search_not_a_dict_error(search: Any) -> None:
    """search must be a dict; anything else is refused with the value in the message."""
    _raises(f"search must be a dict of search settings, got {search!r}", search=search)


def test_search_family_error() -> None:
    """The family is chosen with ``pattern``, never inside ``search``."""
    _raises("search must not set 'family'; choose the family with pattern=...", search={"family": "row"})
    _raises("search must not set 'family'; choose the family with pattern=...", search={"family": "tile", "steps": 1})


def test_search_unknown_setting_error() -> None:
    """Unknown search settings are listed sorted, with every allowed name (``method`` first)."""
    allowed = ["method", *SearchSettings.names()]
    _raises(f"unknown search settings ['stepz']; allowed: {allowed}", search={"stepz": 3})
    _raises(f"unknown search settings ['a', 'b']; allowed: {allowed}", search={"b": 1, "a": 2, "steps": 1})
    assert allowed == [
        "method",
        "dp_max",
        "ks",
        "spread",
        "max_candidates",
        "lr",
        "steps",
        "init_scale",
        "rate_weight",
        "dist_weight",
        "cokeep_weight",
        "seed",
    ]


def test_tile_auto_is_the_default_and_accepted() -> None:
    assert ARDConfig().tile == "auto" and ARDConfig(tile="auto").tile == "auto"
    _raises("tile must be a pair of positive integers (rows, cols), got 'automatic'", tile="automatic")


def test_lstm_pattern_takes_a_unit_family() -> None:
    """LSTM sites drop units: every row family is accepted, the tile family is refused with the choices."""
    for family in ("row", "block", "random"):
        assert ARDConfig(lstm_pattern=family).lstm_pattern == family
    with pytest.raises(ValueError, match=r"lstm_pattern must be one of \['row', 'block', 'random'\], got 'tile'"):
        ARDConfig(lstm_pattern="tile")
