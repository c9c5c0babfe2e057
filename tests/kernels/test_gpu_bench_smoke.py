"""The prepared GPU benchmark runs end to end at tiny shapes (``--smoke``; the Triton CPU interpreter where there is
no GPU), so it cannot rot: every section and backend (and every pattern-group path) has rows, every correctness
check passed, and the JSON and Markdown it streams are complete; it needs neither Hydra nor Lightning, and refuses
to run full size without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.kernels.interpreter import ROOT

pytest.importorskip("triton")
import torch  # noqa: E402

BENCH = ROOT / "lightning_ard" / "bench" / "gpu_kernels.py"


def test_smoke_run_writes_complete_results(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    out = tmp_path / "gpu" / "bench"
    proc = subprocess.run([sys.executable, str(BENCH), "--smoke", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    meta, rows = result["meta"], result["rows"]
    assert meta["smoke"] is True and meta["app_modules_loaded"] == [] and meta["tuning"] == "short"
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    backends = {"torch", "gathered", "triton"}
    products = {(r["product"], r["backend"]) for r in rows if r["section"] == "products"}
    assert products == {(p, b) for p in ("forward", "grad_x", "grad_w") for b in backends}
    assert {r["backend"] for r in rows if r["section"] == "tiles"} == backends
    grouped = [r for r in rows if r["section"] == "grouped"]
    assert {r["backend"] for r in grouped} == {"torch (per group)", "grouped_mm", "triton"}
    assert all(r["groups"] == 4 and r["ratio"] == pytest.approx(r["cublas_ms"] / r["ms"]) for r in grouped)
    assert not any("fell back" in r.get("note", "") for r in grouped)  # really one torch._grouped_mm per product
    mlp = [r for r in rows if r["section"] == "mlp"]
    mlp_backends = backends | ({"grouped_mm"} if hasattr(torch, "_grouped_mm") else set())
    assert {(r["backend"], r["groups"]) for r in mlp} == {(b, g) for b in mlp_backends for g in (1, 2)}
    for r in rows:
        assert r["err"] <= 3e-2 and r["ms"] > 0, r
    for r in mlp:
        assert (
            r["flop_ratio"] > 1 and r["limit_speedup"] > 0 and r["speedup"] == pytest.approx(r["dropout_ms"] / r["ms"])
        )
    md = out.with_suffix(".md").read_text()
    assert "SMOKE RUN" in md and md.count("| triton |") >= 3 + 1 + 2
    assert "vs cuBLAS" in md and "nn.Dropout" in md and "Pattern groups" in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed where there is no GPU")
def test_full_run_refuses_without_a_gpu(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(BENCH), "--out", str(tmp_path / "x")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "nothing was measured" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_a_failing_row_is_marked_and_the_next_rows_still_run(tmp_path):
    from lightning_ard.bench import gpu_kernels

    args = gpu_kernels.parse_args(["--smoke", "--out", str(tmp_path / "b")])
    bench = gpu_kernels.Bench(args, time.perf_counter())
    bench.row("products", {"backend": "triton"}, lambda: 1 / 0)
    bench.row("products", {"backend": "gathered"}, lambda: {"ms": 1.0, "err": 0.0, "ok": True})
    bench.args.budget_s = -1.0
    bench.row("products", {"backend": "torch"}, lambda: {"ms": 1.0, "err": 0.0, "ok": True})
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]  # streamed: on disk after every row
    assert [r["ok"] for r in rows] == [False, True, False]
    assert rows[0]["note"].startswith("ZeroDivisionError") and "budget" in rows[2]["note"]
    assert "| NO |" in (tmp_path / "b.md").read_text()
