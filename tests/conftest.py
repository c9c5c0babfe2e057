"""Shared test setup: the repository root, and the ``slow`` marker's meaning.

Folders mirror the package: ``unit/`` (patterns, search, layers, sites, config, accounting, controller),
``kernels/`` (PyTorch ops, backends, Triton in its CPU interpreter), ``integration/`` (the callback in Lightning
fits, DDP, examples) and ``app/`` (the Hydra app, data, models, benchmarks, docs). Tests that start subprocesses,
DDP or builds are marked ``slow``: ``pytest -m "not slow"`` is the quick loop.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout's root folder (where ``conf/``, ``docs/`` and ``examples/`` are)."""
    return ROOT
