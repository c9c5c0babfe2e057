"""Triton tests in the CPU interpreter from a normal pytest process (shared by the Triton test modules).

``TRITON_INTERPRET=1`` only works when it is set before triton's first import, so a test module marks its
interpreter tests with :meth:`InterpreterTests.interpreted`: in a process that already interprets they run as they
are; otherwise one child pytest (``TRITON_INTERPRET=1``) runs them all once, and each test in this process reports
its child's outcome. Import this module before triton.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def interpreting_in_process() -> bool:
    """True when Triton in this process runs kernels in the interpreter (flag set before its first import)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    if "triton" not in sys.modules:
        return True  # triton is imported after this check, under the flag
    from triton.language import standard
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(standard.cdiv, InterpretedFunction)


IN_PROCESS = interpreting_in_process()


class InterpreterTests:
    """The interpreter tests of one test module, and the child run that executes them."""

    def __init__(self, test_file: str, fixtures: tuple[str, ...] = ("kernels", "monkeypatch")) -> None:
        self.test_file = Path(test_file).resolve()
        self.fixtures = fixtures
        self.names: set[str] = set()

    def interpreted(self, test: Callable[..., Any]) -> Callable[..., Any]:
        """Run ``test`` here if this process interprets, else report the outcome of the same test in the child."""
        self.names.add(test.__name__)
        if IN_PROCESS:
            return test
        params = [p for name, p in inspect.signature(test).parameters.items() if name not in self.fixtures]

        def from_child(request, child_results, **kwargs):  # noqa: ARG001 (parameters are the test's own)
            name = request.node.name
            if name not in child_results:
                pytest.fail(f"{name} did not run in the interpreter child process", pytrace=False)
            status, text = child_results[name]
            if status == "skipped":
                pytest.skip(text)
            if status == "failed":
                pytest.fail(f"failed in the TRITON_INTERPRET=1 child process:\n{text}", pytrace=False)

        extra = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ("request", "child_results")]
        from_child.__signature__ = inspect.Signature(extra + params)  # type: ignore[attr-defined]
        from_child.__name__, from_child.__doc__ = test.__name__, test.__doc__
        return from_child

    def run_child(self, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
        """Run the marked tests in a child pytest with TRITON_INTERPRET=1; (status, text) per test name."""
        report = tmp_path_factory.mktemp(self.test_file.stem) / "junit.xml"
        env = dict(os.environ, TRITON_INTERPRET="1", TRITON_DEFAULT_FP_FUSION="1")
        cmd = [sys.executable, "-m", "pytest", str(self.test_file), "-q", "-p", "no:cacheprovider"]
        cmd += ["-k", " or ".join(sorted(self.names)), f"--junit-xml={report}"]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
        if not report.exists():
            pytest.fail(f"the interpreter child run produced no report:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        results = {}
        for case in ET.parse(report).getroot().iter("testcase"):
            status, text = "passed", ""
            for child in case:
                if child.tag in ("failure", "error"):
                    status, text = "failed", (child.text or child.get("message", ""))
                elif child.tag == "skipped":
                    status, text = "skipped", child.get("message", "")
            results[case.get("name")] = (status, text)
        return results


def assert_close(actual: Any, expected: Any, tol: float, what: str) -> None:
    """Finite (no poisoned element survived) and within ``tol`` of ``expected`` relative to its magnitude."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double(), expected.detach().double()
    assert a.isfinite().all(), f"{what}: {int((~a.isfinite()).sum())} non-finite (unwritten) elements"
    err = float((a - e).abs().max()) if a.numel() else 0.0
    bound = tol * (1.0 + (float(e.abs().max()) if e.numel() else 0.0))
    assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g}"


def compile_for_sm90(kernel: Any, types_: dict, consts: dict, config: Any | None) -> None:
    """Compile one kernel variant offline for sm_90 (PTX and cubin, no GPU): ``types_`` maps arguments to Triton
    types (None = an absent pointer), ``consts`` and the ``config``'s kwargs are the constexprs."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
    consts = dict(consts, **(config.kwargs if config else {}))
    signature, constexprs = {}, {}
    for name in fn.arg_names:
        if name in consts:
            signature[name], constexprs[name] = "constexpr", consts[name]
        elif types_.get(name) is None:
            signature[name], constexprs[name] = "constexpr", None  # an absent (None) pointer
        else:
            signature[name] = types_[name]
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages} if config else {}
    compiled = triton.compile(ASTSource(fn, signature, constexprs=constexprs), target=GPUTarget("cuda", 90, 32),
                              options=options)  # fmt: skip
    assert "cubin" in compiled.asm


def compile_offline_in_child(module: str, function: str) -> None:
    """Run ``module.function()`` (which compiles kernel variants with :func:`compile_for_sm90` and prints
    "compiled all variants") in a child Python without the interpreter; skip when Triton's ptxas is missing."""
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    code = f"import {module} as t; t.{function}()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("Triton's bundled ptxas is not available")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "compiled all variants" in proc.stdout
