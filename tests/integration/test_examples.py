"""The example scripts run end to end (tiny settings) and print their comparison tables."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FASHION = Path("/usr/share/datasets/fashion-mnist")

pytestmark = pytest.mark.slow


def _run(script: str, *args: str) -> tuple[str, str]:
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, proc.stderr


def test_lstm_example_with_pattern_groups() -> None:
    out, _ = _run("lstm_language_model.py", "--limit-train-batches", "2", "--hidden", "16", "--groups", "1,3")
    rows = [line.split() for line in out.splitlines() if line.startswith(("nn.Dropout", "ARD row"))]
    assert rows[0][0] == "nn.Dropout" and rows[2][:3] == ["ARD", "row", "x3"] and len(rows) == 3
    for r in rows:  # val ppl, test ppl, step ms, "ms", speedup
        assert 1.0 < float(r[-5]) < 1e5 and 1.0 < float(r[-4]) < 1e5 and float(r[-1].rstrip("x")) > 0


def test_add_callback_example() -> None:
    out, _ = _run("add_callback_to_existing_trainer.py", "--steps", "24")
    assert out.count("speedup") == 2 and out.count("\nnn.Dropout ") == 2
    assert out.count("ApproximateDropout sites:") == 2  # the plan's decisions after each ARD fit
    assert "small model: ARD " in out and "what the never-slower rule measured and decided" in out
    assert "main model (512-2048-2048-10, batch 256)" in out


@pytest.mark.skipif(not FASHION.is_dir(), reason="needs `apt-get install dataset-fashion-mnist` (CI installs it)")
def test_mlp_example_on_fashion_mnist() -> None:
    out, _ = _run("mlp_fashion_mnist.py", "--widths", "256", "--limit-train-batches", "5", "--patterns", "row", "tile")
    assert "row" in out and "tile" in out and "speedup" in out
