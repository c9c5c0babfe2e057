"""Command-line checks shared by the benchmarks: bad arguments stop the command before any timing starts."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from lightning_ard._validate import check_rate


def parse_rates(parser: argparse.ArgumentParser, text: str, flag: str = "--rates") -> list[float]:
    """Comma-separated dropout rates, each in [0, 1); exits with the bad value otherwise."""
    try:
        return [check_rate(flag, float(r)) for r in text.split(",")]
    except ValueError:
        parser.error(f"{flag} must be comma-separated rates in [0, 1), got {text!r}")
    raise AssertionError  # parser.error exits


def check_outputs(parser: argparse.ArgumentParser, paths: Sequence[Path | None]) -> None:
    """Every output file's folder exists (a typo in a path fails now, not after the run); exits otherwise."""
    for path in paths:
        if path is not None and not path.parent.is_dir():
            parser.error(f"the folder of {path} does not exist; create it first (mkdir -p {path.parent})")


def select_cases(parser: argparse.ArgumentParser, names: Sequence[str], prefixes: str | None) -> list[str]:
    """The case names matching comma-separated prefixes (all when None); exits when a prefix matches nothing."""
    if not prefixes:
        return list(names)
    wanted = [x for x in prefixes.split(",") if x]
    unmatched = [x for x in wanted if not any(n.startswith(x) for n in names)]
    if unmatched or not wanted:
        parser.error(f"--cases {prefixes!r}: {unmatched or prefixes!r} match no case; cases: {', '.join(names)}")
    return [n for n in names if any(n.startswith(x) for x in wanted)]
