"""Argument checks shared by every constructor: each error names the argument, its value and what is allowed."""

from __future__ import annotations

import numbers
from collections.abc import Sequence


def _is_int(value: object) -> bool:
    """An integer of any kind (Python, NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_rate(name: str, value: float) -> float:
    """A dropout rate: a real number in [0, 1) (Python or NumPy scalars; returned as a float)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


def check_share(name: str, value: float) -> float:
    """A share: a real number in (0, 1] (Python or NumPy scalars; returned as a float)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name} must be in (0, 1] or None, got {value!r}")
    return float(value)


def check_positive_int(name: str, value: int, minimum: int = 1) -> int:
    """An integer >= minimum (widths, periods, counts)."""
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_in_range(name: str, value: int, low: int, high: int, hint: str = "") -> int:
    """An integer in [low, high] (``hint`` names other accepted values in the message)."""
    if not _is_int(value) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}]{hint}, got {value!r}")
    return int(value)


def check_choice(name: str, value: object, allowed: Sequence[object]) -> object:
    """One of a fixed set of values."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


def check_tile(name: str, value: Sequence[int]) -> tuple[int, int]:
    """A tile shape: two positive integers (rows of the weight, columns of the weight)."""
    try:
        rows, cols = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of positive integers (rows, cols), got {value!r}") from None
    for v in (rows, cols):
        if not _is_int(v) or v < 1:
            raise ValueError(f"{name} must be a pair of positive integers (rows, cols), got {value!r}")
    return int(rows), int(cols)


SEED_MAX = 2**63 - 1 - 2**40
"""Largest accepted seed: torch generators take signed 64-bit seeds, and the callback adds a per-rank offset."""


def check_seed(name: str, value: int | None, allow_none: bool = False) -> int | None:
    """A generator seed: an integer in [0, SEED_MAX] (``None`` too when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if not _is_int(value) or not 0 <= value <= SEED_MAX:
        what = "an integer in [0, 2**63 - 2**40 - 1]" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)
