"""Hypothesis helpers shared by the layer and group tests (`from tests.row_families import row_family`)."""

from hypothesis import strategies as st

from lightning_ard.patterns import BlockRow, PeriodicRow, RandomSubsetRow, RowFamily


def row_family(kind: str, width: int, draw) -> RowFamily:
    """A row family of ``kind`` ("periodic", "block" or "random") over ``width`` units with drawn parameters."""
    if kind == "periodic":
        dp = draw(st.integers(1, width))
        return PeriodicRow(width, dp, draw(st.integers(1, dp)))
    keep = draw(st.integers(1, width))
    return BlockRow(width, keep) if kind == "block" else RandomSubsetRow(width, keep)
