"""How each pattern family serves a site: the one place where row families and the tile family differ.

A row family (``row``, ``block``, ``random``) drops units: the consumer reads kept columns and a proven producer
computes only kept rows. The tile family drops whole weight tiles of the consumer (DropConnect): the consumer
needs every input unit, so its producer stays whole, and LSTM sites, which have no tile form, take row patterns.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from lightning_ard.patterns import PatternDistribution
from lightning_ard.patterns.tile import auto_tile
from lightning_ard.search import search_distribution
from lightning_ard.sites import Site, SiteKind


@dataclass(frozen=True)
class FamilyRule:
    """One family's rules for one site.

    Attributes:
        name: the family the site draws.
        tiles: patterns are weight tiles of the consumer (the layer's tile slot), not units.
    """

    name: str
    tiles: bool = False

    def shape_site(self, site: Site) -> Site:
        """The site as this family serves it: a tile consumer keeps its producer whole."""
        if self.tiles and site.producer is not None:
            return replace(site, producer=None, kind=SiteKind.CONSUMER)
        return site

    def search(
        self, site: Site, model: nn.Module, tile: tuple[int, int] | str, settings: dict[str, Any]
    ) -> PatternDistribution:
        """The site's pattern distribution at its rate (a ``ValueError`` names the site when none exists)."""
        try:
            if not self.tiles:
                return search_distribution(site.p, site.width, self.name, **settings)
            consumer = model.get_submodule(site.consumer)
            shape = (consumer.out_features, consumer.in_features)
            grid = auto_tile(*shape) if tile == "auto" else tile
            return search_distribution(site.p, site.width, TILE, shape=shape, tile=grid, **settings)
        except ValueError as err:
            raise ValueError(f"site {site.name!r} (p={site.p}, width={site.width}): {err}") from err


TILE = "tile"
"""The family that drops weight tiles; every other family drops units."""


def unit_family(pattern: str) -> str:
    """The family that drops units under ``pattern``: itself, or ``row`` for the tile family (units have no tiles)."""
    return "row" if pattern == TILE else pattern


def rule_of(family: str) -> FamilyRule:
    """The rule of a family a plan names."""
    return FamilyRule(family, tiles=family == TILE)


def rule_for(pattern: str, site: Site, lstm_pattern: str | None = None) -> FamilyRule:
    """The rule of family ``pattern`` at ``site``: tile at Linear sites, row for LSTM sites under ``tile``; an LSTM
    site takes ``lstm_pattern`` when one is given."""
    if site.kind.feeds_linear:
        return rule_of(pattern)
    return rule_of(lstm_pattern or unit_family(pattern))
