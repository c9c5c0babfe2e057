"""The three-arm study in the sweep report: no dropout, nn.Dropout and ARD, the gain kept and validation curves."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from lightning_ard.app.regularization import gain_kept, lower_is_better, mean_curve
from lightning_ard.app.report import main as report_main

LSTM_MODEL = (
    "model:\n  _target_: lightning_ard.app.models.LSTMLanguageModel\n  hidden_size: 256\n  num_layers: 2\n"
    "  dropout: ${ard.p}\n"
)


def lstm_run(run_dir: Path, ard: str, p: float, test_ppl: float, val: list[float]) -> None:
    """A finished run of the LSTM LM with its validation curve in TensorBoard."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(LSTM_MODEL + f"ard:\n  {ard}\n  p: {p}\n")
    (run_dir / "metrics.json").write_text(json.dumps({"test/ppl": test_ppl, "time/step_ms_median": 10.0}))
    with SummaryWriter(str(run_dir / "tensorboard")) as writer:
        for step, value in enumerate(val):
            writer.add_scalar("val/ppl", value, step)


def test_gain_kept_and_direction() -> None:
    assert gain_kept(300.0, 200.0, 220.0) == pytest.approx(0.8)
    assert gain_kept(0.80, 0.90, 0.88, lower_better=False) == pytest.approx(0.8)  # accuracy: the same share
    assert gain_kept(200.0, 200.0, 210.0) is None  # dropout gains nothing: no share
    assert gain_kept(168.0, 171.0, 172.0) is None  # no dropout ends best: no share either
    assert gain_kept(0.90, 0.88, 0.87, lower_better=False) is None
    assert lower_is_better("test/ppl") and lower_is_better("val/loss") and not lower_is_better("test/acc")
    assert mean_curve([[1.0, 2.0, 3.0], [3.0, 4.0]]) == [2.0, 3.0]


def test_report_shows_the_three_arms(tmp_path: Path) -> None:
    lstm_run(tmp_path / "0", "enabled: false\n  pattern: dropout", 0.0, 300.0, [250.0, 240.0, 260.0, 290.0])
    lstm_run(tmp_path / "1", "enabled: false\n  pattern: dropout", 0.0, 310.0, [252.0, 238.0, 262.0, 300.0])
    lstm_run(tmp_path / "2", "enabled: false\n  pattern: dropout", 0.5, 200.0, [280.0, 230.0, 210.0, 200.0])
    lstm_run(tmp_path / "3", "pattern: random\n  lstm_groups: 5", 0.5, 221.0, [290.0, 240.0, 225.0, 221.0])
    lstm_run(tmp_path / "4", "pattern: random\n  lstm_groups: 4\n  lstm_mode: sequence", 0.5, 205.0, [205.0])
    assert report_main([str(tmp_path)]) == 0
    with (tmp_path / "report_summary.csv").open() as f:
        rows = {r["family"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"none", "dropout", "random lstm 5", "random lstm 4 seq"}
    assert float(rows["none"]["mean"]) == pytest.approx(305.0)
    assert float(rows["none"]["val_best"]) == pytest.approx(239.0) and float(rows["none"]["val_last"]) == 295.0
    assert float(rows["random lstm 5"]["kept"]) == pytest.approx((305 - 221) / (305 - 200))
    assert float(rows["dropout"]["kept"]) == pytest.approx(1.0)
    assert rows["none"]["kept"] == ""
    summary = (tmp_path / "report_summary.md").read_text()
    assert "| best / last val | dropout's gain kept |" in summary
    line = next(x for x in summary.splitlines() if "| random lstm 5 |" in x)
    assert "| 221.00 / 221.00 | 80% |" in line
    assert (tmp_path / "report_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_a_no_dropout_arm_has_no_gain_column(tmp_path: Path) -> None:
    lstm_run(tmp_path / "0", "enabled: false\n  pattern: dropout", 0.5, 200.0, [200.0, 210.0])
    lstm_run(tmp_path / "1", "pattern: random", 0.5, 206.0, [215.0, 206.0])
    assert report_main([str(tmp_path)]) == 0
    summary = (tmp_path / "report_summary.md").read_text()
    assert "gain kept" not in summary and "| 200.00 / 210.00 |" in summary
