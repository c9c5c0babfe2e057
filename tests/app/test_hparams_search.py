"""hparams_search=ard_optuna: an Optuna sweep over ARD settings composes, and two trials run end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module

from lightning_ard import ApproximateDropout

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")


def test_optuna_search_space_names_real_ard_settings(tmp_path: Path) -> None:
    """Every searched key is an ard setting the callback accepts, and the direction follows optimized_mode."""
    with initialize_config_module("lightning_ard.conf", version_base="1.3"):
        cfg = compose("config", overrides=["hparams_search=ard_optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert sweeper.direction == "maximize" and cfg.optimized_metric == "val/acc"
    for key, space in sweeper.params.items():
        group, _, name = key.partition(".")
        assert group == "ard" and name in cfg.ard, key
        first = space.split("(", 1)[1].split(",")[0].strip()
        value = yaml.safe_load(first)
        ApproximateDropout(**{name: value})  # a value of the search space is a valid setting


@pytest.mark.slow
def test_two_optuna_trials_run_and_report_the_best(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "lightning_ard.app.train", "-m", "hparams_search=ard_optuna"]
    cmd += ["hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2", "trainer.fast_dev_run=true"]
    cmd += ["test=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"ard.pattern", "ard.groups", "ard.p"}
    assert 0.0 <= best["best_value"] <= 1.0
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0", "1"]
