"""DDP with 2 CPU processes (one pattern per step, and 3 pattern groups): ranks draw different patterns,
replicas stay identical, modules come back."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("groups", [1, 3])
def test_ddp_two_cpu_processes(tmp_path, groups) -> None:
    script = Path(__file__).with_name("ddp_fit.py")
    args = [sys.executable, str(script), str(tmp_path), str(groups)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert len(r0["kept"]) == len(r1["kept"]) == 6
    assert r0["kept"] != r1["kept"]  # each rank draws its own patterns
    torch.testing.assert_close(r0["params"], r1["params"], rtol=0, atol=0)  # gradients all-reduced
    assert r0["types"] == ["Linear", "ReLU", "Dropout", "Linear"]
