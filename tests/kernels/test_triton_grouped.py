"""The grouped gather GEMM (one launch per product for all pattern groups) on the Triton CPU interpreter.

Checked against the PyTorch grouped path (``TorchBackend().row_linear_groups``, the oracle) and a dense masked
float64 computation: forward, grad_x, grad_W and grad_b, on ragged groups (rows not divisible by G, empty groups),
in-only / out-only / in+out patterns, full-width and compact-per-group layouts, block (wrapping), periodic and
random patterns. Outputs are NaN-poisoned so an element a kernel forgets to write fails the comparison.

The interpreter must be on before triton's first import, so (as in ``test_triton_kernels.py``, whose mechanism is
copied here) the ``@interpreted`` tests run in one child pytest with ``TRITON_INTERPRET=1`` unless this process
already interprets, and each parent test reports its child's outcome.
"""

from __future__ import annotations

import zlib

import pytest

from tests.kernels.interpreter import InterpreterTests, assert_close, compile_for_sm90, compile_offline_in_child  # noqa: E402 (before triton)

_CHILD = InterpreterTests(__file__)
interpreted = _CHILD.interpreted

pytest.importorskip("triton")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lightning_ard.kernels import TorchBackend  # noqa: E402
from lightning_ard.patterns import BlockRow, PeriodicRow, RandomSubsetRow, RowPattern  # noqa: E402
from lightning_ard.patterns.groups import group_bounds  # noqa: E402


@pytest.fixture(scope="module")
def kernels():
    """The grouped module and the backend with interpreted kernels, outputs NaN-poisoned."""
    import importlib

    from triton.runtime.interpreter import InterpretedFunction

    grouped = importlib.import_module("lightning_ard.kernels.triton.grouped")
    backend = importlib.import_module("lightning_ard.kernels.triton.backend")
    row = importlib.import_module("lightning_ard.kernels.triton.row")
    common = importlib.import_module("lightning_ard.kernels.triton.common")
    assert isinstance(grouped._grouped_gemm_kernel, InterpretedFunction)
    common.POISON_OUTPUTS = True
    yield type("Kernels", (), {"grouped": grouped, "backend": backend, "row": row})
    common.POISON_OUTPUTS = False


@pytest.fixture(scope="module")
def child_results(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """This file's interpreter tests, run once in a TRITON_INTERPRET=1 child pytest; outcome per test name."""
    return _CHILD.run_child(tmp_path_factory)


# --- helpers -----------------------------------------------------------------------------------------------------


def group_patterns(kind: str, width: int, groups: int, gen: torch.Generator) -> tuple[RowPattern, ...] | None:
    """One pattern per group (None = no pattern on that side); blocks include one that wraps around the end."""
    if kind == "none":
        return None
    if kind == "block":
        fam = BlockRow(width, width // 2 + 1)
        starts = [width - 3] + torch.randint(width, (groups - 1,), generator=gen).tolist()
        return tuple(fam.pattern(s) for s in starts)
    if kind == "periodic":
        return tuple(PeriodicRow(width, 3).sample_many(groups, gen))
    if kind == "periodic_k2":
        return tuple(PeriodicRow(width, 5, 2).sample_many(groups, gen))
    if kind == "random":
        return tuple(RandomSubsetRow(width, max(1, 2 * width // 5)).sample(gen) for _ in range(groups))
    raise ValueError(kind)


def dense_reference(x, weight, bias, in_pats, out_pats, x_compact, out_compact, gy):
    """Per group in float64: (x_full ⊙ m_in) Wᵀ + b, zeros at dropped outputs (or their kept columns when
    compact); gradients by dense autograd, in the input's layout."""
    x = x.detach().double().requires_grad_(True)
    w = weight.detach().double().requires_grad_(True)
    b = bias.detach().double().requires_grad_(True) if bias is not None else None
    count = len(in_pats or out_pats or ())
    parts = []
    for g, (r0, r1) in enumerate(group_bounds(x.shape[0], count)):
        xg = x[r0:r1]
        if in_pats is not None:
            if x_compact:
                xg = xg.new_zeros(r1 - r0, weight.shape[1]).index_copy(1, in_pats[g].kept, xg)
            xg = xg * in_pats[g].mask(torch.float64)
        yg = F.linear(xg, w, b)
        if out_pats is not None:
            yg = yg[:, out_pats[g].kept] if out_compact else yg * out_pats[g].mask(torch.float64, scaled=False)
        parts.append(yg)
    y = torch.cat(parts)
    (y * gy.double()).sum().backward()
    return y.detach(), x.grad, w.grad, (b.grad if b is not None else None)


def run_linear(fn, x, weight, bias, gy):
    """Forward + backward through ``fn``; returns y and the gradients of x, weight and bias."""
    x = x.detach().clone().requires_grad_(True)
    w = weight.detach().clone().requires_grad_(True)
    b = bias.detach().clone().requires_grad_(True) if bias is not None else None
    y = fn(x, w, b)
    (y.float() * gy).sum().backward()
    return y.detach(), x.grad, w.grad, (b.grad if b is not None else None)


def make_case(case: tuple, seed: int, dtype: torch.dtype):
    """Patterns, x (in its layout), weight, bias and an upstream gradient for one case."""
    rows, groups, n_in, n_out, in_kind, out_kind, x_compact, out_compact, has_bias = case
    gen = torch.Generator().manual_seed(seed)
    in_pats = group_patterns(in_kind, n_in, groups, gen)
    out_pats = group_patterns(out_kind, n_out, groups, gen)
    x_compact, out_compact = x_compact and in_pats is not None, out_compact and out_pats is not None
    x = torch.randn(rows, in_pats[0].num_kept if x_compact else n_in, generator=gen).to(dtype)
    weight = (torch.randn(n_out, n_in, generator=gen) / n_in**0.5).to(dtype)
    bias = torch.randn(n_out, generator=gen).to(dtype) if has_bias else None
    gy = torch.randn(rows, out_pats[0].num_kept if out_compact else n_out, generator=gen)
    return in_pats, out_pats, x_compact, out_compact, x, weight, bias, gy


def check_case(kernels, case: tuple, dtype: torch.dtype = torch.float32) -> None:
    """Triton grouped path vs the torch grouped path and the dense masked computation, forward and gradients."""
    in_pats, out_pats, xc, oc, x, weight, bias, gy = make_case(case, zlib.crc32(repr(case).encode()), dtype)
    triton_backend = kernels.backend.TritonBackend()
    got = run_linear(lambda a, w, b: triton_backend.row_linear_groups(a, w, b, in_pats, out_pats, xc, oc), x, weight,
                     bias, gy)  # fmt: skip
    oracle = run_linear(lambda a, w, b: TorchBackend().row_linear_groups(a, w, b, in_pats, out_pats, xc, oc), x,
                        weight, bias, gy)  # fmt: skip
    dense = dense_reference(x, weight, bias, in_pats, out_pats, xc, oc, gy)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    for name, g, o, d in zip(("y", "grad_x", "grad_W", "grad_b"), got, oracle, dense, strict=True):
        if o is None:
            assert g is None and d is None, name
            continue
        assert g.dtype == o.dtype == dtype, f"{name}: dtype {g.dtype} != {o.dtype}"
        assert_close(g, o, tol, f"{name} vs torch path")
        assert_close(g, d, tol, f"{name} vs dense masked")


# --- cases -------------------------------------------------------------------------------------------------------

CASES = [
    # (rows, groups, in_features, out_features, in kind, out kind, x_compact, out_compact, bias)
    (23, 3, 33, 29, "block", "random", False, False, True),
    (23, 3, 33, 29, "block", "random", True, True, True),
    (40, 5, 45, 20, "periodic", "none", False, False, True),
    (40, 5, 45, 20, "periodic", "none", True, False, False),
    (17, 2, 20, 47, "none", "periodic", False, False, True),
    (17, 2, 20, 45, "none", "periodic", False, True, True),
    (3, 5, 30, 18, "random", "block", False, True, True),  # 3 rows, 5 groups: two empty groups
    (19, 1, 37, 26, "random", "periodic_k2", True, False, True),
    (31, 2, 48, 40, "periodic_k2", "block", False, False, False),
    (26, 3, 21, 34, "block", "block", True, False, True),
    (37, 5, 47, 44, "periodic", "random", False, False, True),
]


def _case_id(c: tuple) -> str:
    layout = ("c" if c[6] else "f") + ("c" if c[7] else "f")
    return f"r{c[0]}g{c[1]}-{c[4]}-{c[5]}-{layout}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@interpreted
def test_grouped_float32(kernels, case):
    check_case(kernels, case)


@pytest.mark.parametrize("case", [CASES[1], CASES[4]], ids=_case_id)
@interpreted
def test_grouped_bfloat16(kernels, case):
    check_case(kernels, case, torch.bfloat16)


@interpreted
def test_one_launch_per_product(kernels, monkeypatch):
    """Forward, grad_x, grad_W and grad_b of 3 groups are one grouped kernel launch each; the per-group kernels of
    row.py are never launched."""
    counts: dict[str, int] = {}

    class Counting:
        def __init__(self, name: str, kernel) -> None:
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                counts[self.name] = counts.get(self.name, 0) + 1
                return self.kernel[grid](*args, **kwargs)

            return launch

    for mod, name in [(kernels.grouped, "_grouped_gemm_kernel"), (kernels.grouped, "_grouped_grad_weight_kernel"),
                      (kernels.grouped, "_grouped_bias_grad_kernel"), (kernels.row, "_gather_gemm_kernel"),
                      (kernels.row, "_column_sum_kernel")]:  # fmt: skip
        monkeypatch.setattr(mod, name, Counting(name, getattr(mod, name)))
    in_pats, out_pats, xc, oc, x, weight, bias, gy = make_case(CASES[0], 1, torch.float32)
    x, weight, bias = (t.requires_grad_(True) for t in (x, weight, bias))
    y = kernels.backend.TritonBackend().row_linear_groups(x, weight, bias, in_pats, out_pats, xc, oc)
    assert counts == {"_grouped_gemm_kernel": 1}
    (y * gy).sum().backward()
    assert counts == {"_grouped_gemm_kernel": 2, "_grouped_grad_weight_kernel": 1, "_grouped_bias_grad_kernel": 1}


@interpreted
def test_compact_needs_equal_kept_counts(kernels):
    """A compact layout with groups keeping different numbers of units is refused (periodic, width % dp != 0)."""
    pats = (PeriodicRow(10, 3).pattern(0), PeriodicRow(10, 3).pattern(1))  # 4 and 3 kept units
    with pytest.raises(ValueError, match="same number of units"):
        kernels.backend.TritonBackend().row_linear_groups(torch.randn(6, 4), torch.randn(5, 10), None, pats, None, True)


@interpreted
def test_grouped_float64_falls_back_to_torch(kernels):
    x, w = torch.randn(7, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    pats = (PeriodicRow(8, 2).pattern(0), PeriodicRow(8, 2).pattern(1))
    with pytest.warns(UserWarning, match="float64"):
        y = kernels.backend.TritonBackend().row_linear_groups(x, w, None, pats, None)
    assert torch.allclose(y, TorchBackend().row_linear_groups(x, w, None, pats, None))


# --- the compiled path: the grouped kernels compile for an sm_90 GPU ---------------------------------------------


def _compile_variants() -> None:
    """Compile (PTX + cubin, offline) the grouped kernels' main variants with their first and last autotuning
    configuration. Run in a fresh interpreter without TRITON_INTERPRET (see the test below)."""
    import triton.language as tl

    from lightning_ard.kernels.triton import grouped

    compile_one = compile_for_sm90

    gemm, dw = grouped._grouped_gemm_kernel, grouped._grouped_grad_weight_kernel
    ints = {n: "i32" for n in ("G", "N_FULL", "N_OUT", "N_IN", "N", "tune_m", "tune_n", "tune_r")}
    for k in (gemm.fn, dw.fn, grouped._grouped_bias_grad_kernel):
        ints.update({n: "i32" for n in k.arg_names if n.startswith("stride")})
    tables = {"idx_ptr": "*i32", "rows_ptr": "*i32", "red_ptr": "*i32", "col_ptr": "*i32", "scale_ptr": "*fp32"}
    f32 = dict(DOT_DTYPE=tl.float32, INPUT_PRECISION="tf32", UPCAST=False)
    bf16 = dict(DOT_DTYPE=tl.bfloat16, INPUT_PRECISION="ieee", UPCAST=False)
    gemm_variants = [  # forward full width with bias (f32), grad_x compact (bf16), no patterns on the columns
        ({"a_ptr": "*fp32", "b_ptr": "*fp32", "c_ptr": "*fp32", "bias_ptr": "*fp32"},
         dict(RED_IDX=True, A_RED_IDX=True, COL_IDX=True, SCATTER=True, HAS_BIAS=True, **f32)),
        ({"a_ptr": "*bf16", "b_ptr": "*fp32", "c_ptr": "*bf16"},
         dict(RED_IDX=True, A_RED_IDX=False, COL_IDX=True, SCATTER=False, HAS_BIAS=False, **bf16)),
        ({"a_ptr": "*fp32", "b_ptr": "*fp32", "c_ptr": "*fp32"},
         dict(RED_IDX=True, A_RED_IDX=True, COL_IDX=False, SCATTER=False, HAS_BIAS=False, **f32)),
    ]  # fmt: skip
    for types_, consts in gemm_variants:
        for config in (gemm.configs[0], gemm.configs[-1]):
            compile_one(gemm, dict(ints, **tables, **types_), consts, config)
    dw_types = {"g_ptr": "*fp32", "x_ptr": "*bf16", "w_ptr": "*fp32", "rows_ptr": "*i32", "pos_out_ptr": "*i32",
                "pos_in_ptr": "*i32", "scale_ptr": "*fp32"}  # fmt: skip
    for config in (dw.configs[0], dw.configs[-1]):
        consts = dict(OUT_POS=True, IN_POS=True, G_COMPACT=True, X_COMPACT=False, **bf16)
        compile_one(dw, dict(ints, **dw_types), consts, config)
    bias_types = {"g_ptr": "*fp32", "out_ptr": "*fp32", "rows_ptr": "*i32", "pos_ptr": "*i32"}
    compile_one(grouped._grouped_bias_grad_kernel, dict(ints, **bias_types),
                dict(OUT_POS=True, G_COMPACT=False, BLOCK_M=64, BLOCK_N=64), None)  # fmt: skip
    print("compiled all variants")


@pytest.mark.slow
def test_grouped_kernels_compile_for_cuda():
    """The compiler (not only the interpreter) accepts the grouped kernels: PTX + cubin for sm_90, offline."""
    compile_offline_in_child("tests.kernels.test_triton_grouped", "_compile_variants")
