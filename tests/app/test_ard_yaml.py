"""conf/ard/: the YAML lists every ApproximateDropout argument once, and the family files override only what differs."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from lightning_ard import ApproximateDropout, ARDConfig
from tests.conftest import ROOT

ARD = ROOT / "conf" / "ard"
APP_KEYS = {"defaults", "_target_", "_convert_", "enabled"}
SEARCH_GROUP = {"search"}  # filled by the ard/search config group


def _callback_options() -> set[str]:
    """The callback's own keyword-only arguments (its ARD settings are ARDConfig's fields)."""
    params = inspect.signature(ApproximateDropout).parameters.values()
    return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def test_default_yaml_has_every_argument_once_with_the_library_defaults() -> None:
    """default.yaml keys = ARDConfig fields + callback options (+ app keys); values equal the library defaults."""
    node = yaml.safe_load((ARD / "default.yaml").read_text())
    settings = set(ARDConfig.names()) - SEARCH_GROUP
    assert set(node) - APP_KEYS == settings | _callback_options()
    defaults = ARDConfig()
    for name in settings - {"p", "seed"}:  # the app sets p=0.5 and the run's seed
        want = getattr(defaults, name)
        got = tuple(node[name]) if isinstance(node[name], list) else node[name]
        assert got == want, f"default.yaml {name}: {node[name]!r}, ARDConfig default {want!r}"
    for name in _callback_options():
        assert node[name] == inspect.signature(ApproximateDropout).parameters[name].default


@pytest.mark.parametrize("family", ["row", "block", "random", "tile", "dropout"])
def test_family_files_start_from_default_and_override_only_what_differs(family: str) -> None:
    node = yaml.safe_load((ARD / f"{family}.yaml").read_text())
    assert node["defaults"] == ["default", "_self_"]
    assert set(node) - {"defaults"} <= {"pattern", "enabled"}
    assert node["pattern"] == family


def test_callback_takes_exactly_the_config_fields_as_settings() -> None:
    """ApproximateDropout(**{field: ...}) for every ARDConfig field reaches the config (no second list of names)."""
    cb = ApproximateDropout(pattern="block", p=0.3, groups=2, pool=2, lstm_groups=1, seed=4, tile=(8, 8))
    assert cb.config == ARDConfig(pattern="block", p=0.3, groups=2, pool=2, lstm_groups=1, seed=4, tile=(8, 8))
    cfg = ARDConfig(pattern="tile")
    assert ApproximateDropout(cfg).config is cfg
    with pytest.raises(ValueError, match="pass either config or keyword settings"):
        ApproximateDropout(cfg, p=0.5)
    with pytest.raises(ValueError, match=r"config must be an ARDConfig or None, got 'row'"):
        ApproximateDropout("row")  # type: ignore[arg-type]


def test_yaml_files_parse(tmp_path: Path) -> None:
    for path in ARD.rglob("*.yaml"):
        assert yaml.safe_load(path.read_text()) is not None, path
