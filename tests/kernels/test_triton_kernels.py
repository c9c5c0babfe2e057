"""Triton kernels on the CPU interpreter, against the PyTorch ops (the oracle) and a dense masked computation.

How the interpreter is switched on, robustly. ``@triton.jit`` chooses between a compiled and an interpreted
kernel when the decorator runs, reading ``TRITON_INTERPRET`` at that moment; that happens for Triton's own
standard library (``tl.cdiv``, ``tl.sum`` are ``@triton.jit`` functions) when ``triton`` is first imported, and
for our kernels when ``lightning_ard.kernels.triton.row`` / ``triton_tile`` are imported. So the flag works only
if it is set before the *first* ``import triton`` of the process, which a test module cannot promise: another
module may import triton first (e.g. a test of ``get_backend("triton", "cpu")``), and a flag set at import here
would leak into every module collected after this one. Reloading our modules is not enough (the interpreter then
fails inside ``tl.cdiv``).

Hence: the tests that need the interpreter are marked ``@interpreted``. When this process already interprets
(``TRITON_INTERPRET=1`` was set before triton's import: :data:`IN_PROCESS`), they run here. Otherwise the first
of them starts one child ``pytest`` on this file with ``TRITON_INTERPRET=1`` in its environment from the start,
and every ``@interpreted`` test of the parent reports its own outcome from the child's JUnit XML (a failure shows
the child's traceback). Nothing leaks into the parent process, and the result does not depend on test order.

Every output a kernel must write completely is allocated filled with NaN (``triton_common.POISON_OUTPUTS``, or
NaN tensors passed straight to the launchers), so an element a kernel forgets to write fails the comparison.

A last test compiles every kernel variant the backend launches for an sm_90 GPU with Triton's offline compiler
(PTX and cubin, no GPU needed): the interpreter accepts some programs the compiler rejects.
"""

from __future__ import annotations

import importlib
import sys
import types
import zlib

import pytest

from tests.kernels.interpreter import InterpreterTests, assert_close, compile_for_sm90, compile_offline_in_child  # noqa: E402 (before triton)

_CHILD = InterpreterTests(__file__)
interpreted = _CHILD.interpreted

pytest.importorskip("triton")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lightning_ard.kernels import (  # noqa: E402
    TorchBackend,
    get_backend,
    torch_ops,  # noqa: E402
)
from lightning_ard.patterns import BlockRow, PeriodicRow, PeriodicTile, RandomSubsetRow, TilePattern  # noqa: E402

_MODULES = (
    "lightning_ard.kernels.triton.common",
    "lightning_ard.kernels.triton.row",
    "lightning_ard.kernels.triton.tile",
    "lightning_ard.kernels.triton.backend",
)


@pytest.fixture(scope="module")
def kernels():
    """The Triton modules with interpreted kernels (reloaded if an earlier import compiled them), NaN-poisoned."""
    from triton.runtime.interpreter import InterpretedFunction

    mods = {}
    for name in _MODULES:
        mod = sys.modules.get(name)
        mods["triton_" + name.rsplit(".", 1)[1]] = importlib.import_module(name) if mod is None else mod
    k = types.SimpleNamespace(**mods)
    if not isinstance(k.triton_row._gather_gemm_kernel, InterpretedFunction):
        reloaded = {"triton_" + n.rsplit(".", 1)[1]: importlib.reload(sys.modules[n]) for n in _MODULES}
        k = types.SimpleNamespace(**reloaded)
    assert k.triton_common.INTERPRET
    assert isinstance(k.triton_row._gather_gemm_kernel, InterpretedFunction)
    assert isinstance(k.triton_tile._tile_grad_weight_kernel, InterpretedFunction)
    k.triton_common.POISON_OUTPUTS = True
    yield k
    k.triton_common.POISON_OUTPUTS = False


@pytest.fixture(scope="module")
def child_results(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """This file's interpreter tests, run once in a TRITON_INTERPRET=1 child pytest; outcome per test name."""
    return _CHILD.run_child(tmp_path_factory)


# --- helpers -----------------------------------------------------------------------------------------------------


def row_pattern(kind: str, width: int, gen: torch.Generator):
    """A row pattern of the given kind over ``width`` units (None = no pattern on that side)."""
    if kind == "none":
        return None
    if kind == "all":
        return PeriodicRow(width, 1).pattern(0)
    if kind == "single":
        return RandomSubsetRow(width, 1).sample(gen)
    if kind == "periodic":
        return PeriodicRow(width, 3).sample(gen)
    if kind == "periodic_k2":
        return PeriodicRow(width, 5, 2).sample(gen)
    if kind == "block":
        return BlockRow(width, width // 2 + 1).pattern(width - 3)  # wraps around the end
    if kind == "random":
        return RandomSubsetRow(width, max(1, 2 * width // 5)).sample(gen)
    raise ValueError(kind)


def dense_row_reference(x_full, weight, bias, in_pattern, out_pattern, gy):
    """Dense masked computation: y = (x ⊙ m_in) Wᵀ + b, restricted to kept outputs; grads by dense autograd."""
    x_full = x_full.detach().double().requires_grad_(True)
    w = weight.detach().double().requires_grad_(True)
    b = bias.detach().double().requires_grad_(True) if bias is not None else None
    m_in = (
        in_pattern.mask(torch.float64) if in_pattern is not None else torch.ones(weight.shape[1], dtype=torch.float64)
    )
    y = F.linear(x_full * m_in, w, b)
    if out_pattern is not None:
        y = y[..., out_pattern.kept]
    (y * gy.double()).sum().backward()
    return y.detach(), x_full.grad, w.grad, (b.grad if b is not None else None)


def run_linear(fn, x, weight, bias, gy):
    """Forward + backward through ``fn``; returns y and the gradients of x, weight and bias (cloned)."""
    x = x.detach().clone().requires_grad_(True)
    w = weight.detach().clone().requires_grad_(True)
    b = bias.detach().clone().requires_grad_(True) if bias is not None else None
    y = fn(x, w, b)
    (y.float() * gy).sum().backward()
    return y.detach(), x.grad, w.grad, (b.grad if b is not None else None)


def assert_matches(got, oracle, dense, dtype: torch.dtype) -> None:
    """(y, grad_x, grad_W, grad_b) of the Triton backend have ``dtype`` and match those of the torch path (the
    oracle) and of the dense masked computation, to 1e-5 in float32 and 3e-2 in 16-bit types; None where the
    oracle has none."""
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    for name, g, o, d in zip(("y", "grad_x", "grad_W", "grad_b"), got, oracle, dense, strict=True):
        if o is None:
            assert g is None and d is None, name
            continue
        assert g.dtype == o.dtype == dtype, f"{name}: dtype {g.dtype} != {o.dtype}"
        assert_close(g, o, tol, f"{name} vs torch path")
        assert_close(g, d, tol, f"{name} vs dense masked")


# --- row patterns: compact gather GEMM through the backend --------------------------------------------------------

ROW_CASES = [
    # (lead shape, in_features, out_features, in kind, out kind, x_compact, bias)
    ((37,), 53, 45, "periodic", "periodic_k2", False, True),
    ((37,), 53, 45, "periodic", "periodic", True, True),
    ((20,), 70, 33, "random", "none", False, True),
    ((20,), 70, 33, "random", "none", True, False),
    ((45,), 19, 66, "none", "random", False, True),
    ((16,), 64, 64, "all", "all", False, True),
    ((17,), 31, 29, "single", "single", False, True),
    ((17,), 31, 29, "single", "single", True, True),
    ((3, 7), 40, 50, "block", "periodic", False, True),
    ((1,), 23, 17, "periodic_k2", "block", True, False),
]


def check_row_case(kernels, case: tuple, seed: int, dtype: torch.dtype = torch.float32) -> None:
    """Triton backend vs the torch path and vs the dense masked computation, forward and all gradients."""
    lead, k_in, n_out, in_kind, out_kind, x_compact, has_bias = case
    gen = torch.Generator().manual_seed(seed)
    in_p, out_p = row_pattern(in_kind, k_in, gen), row_pattern(out_kind, n_out, gen)
    x_full = torch.randn(*lead, k_in, generator=gen).to(dtype)
    weight = (torch.randn(n_out, k_in, generator=gen) / k_in**0.5).to(dtype)
    bias = torch.randn(n_out, generator=gen).to(dtype) if has_bias else None
    compact = x_compact and in_p is not None
    x = x_full[..., in_p.kept] if compact else x_full
    n_y = out_p.num_kept if out_p is not None else n_out
    gy = torch.randn(*lead, n_y, generator=gen)

    triton_backend = kernels.triton_backend.TritonBackend()
    got = run_linear(lambda a, w, b: triton_backend.row_linear(a, w, b, in_p, out_p, compact), x, weight, bias, gy)
    oracle = run_linear(lambda a, w, b: TorchBackend().row_linear(a, w, b, in_p, out_p, compact), x, weight, bias, gy)
    dense = list(dense_row_reference(x_full, weight, bias, in_p, out_p, gy))
    if compact:
        dense[1] = dense[1][..., in_p.kept]
    assert_matches(got, oracle, dense, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("case", ROW_CASES, ids=lambda c: f"{c[3]}-{c[4]}-{'compact' if c[5] else 'full'}")
@interpreted
def test_row_linear_float32(kernels, case):
    check_row_case(kernels, case, zlib.crc32(repr(case).encode()))


@pytest.mark.slow
@pytest.mark.parametrize("draw", range(6))
@interpreted
def test_row_linear_random_shapes(kernels, draw):
    """Random sizes in [1, 70] (rows) and [5, 70] (units), random pattern kinds on each side, compact or not."""
    rng = torch.Generator().manual_seed(1000 + draw)
    kinds = ("none", "all", "single", "periodic", "periodic_k2", "block", "random")

    def pick(n: int, low: int = 5, high: int = 70) -> list[int]:
        return torch.randint(low, high + 1, (n,), generator=rng).tolist()

    m, k_in, n_out = pick(1, 1)[0], *pick(2)
    in_kind, out_kind = (kinds[i] for i in torch.randint(len(kinds), (2,), generator=rng).tolist())
    compact, has_bias = (bool(b) for b in torch.randint(2, (2,), generator=rng).tolist())
    check_row_case(kernels, ((m,), k_in, n_out, in_kind, out_kind, compact, has_bias), 2000 + draw)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", [ROW_CASES[0], ROW_CASES[3]], ids=["periodic-full", "random-compact"])
@interpreted
def test_row_linear_half(kernels, dtype, case):
    check_row_case(kernels, case, 7, dtype)


@pytest.mark.slow
@interpreted
def test_row_linear_autocast(kernels):
    """Under CPU autocast (bfloat16) float32 parameters are read as they are and cast in registers; the output is
    bfloat16 and the gradients have the parameters' dtype, as on the PyTorch path."""
    gen = torch.Generator().manual_seed(3)
    in_p, out_p = PeriodicRow(40, 2).pattern(1), PeriodicRow(36, 3).pattern(2)
    x, weight, bias = torch.randn(21, 40, generator=gen), torch.randn(36, 40, generator=gen) / 6, torch.randn(36)
    gy = torch.randn(21, out_p.num_kept, generator=gen)
    triton_backend = kernels.triton_backend.TritonBackend()

    def under_autocast(backend):
        def fn(a, w, b):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return backend.row_linear(a, w, b, in_p, out_p, False)

        return fn

    got = run_linear(under_autocast(triton_backend), x, weight, bias, gy)
    oracle = run_linear(under_autocast(TorchBackend()), x, weight, bias, gy)
    assert got[0].dtype == torch.bfloat16
    for name, g, o in zip(("y", "grad_x", "grad_W", "grad_b"), got, oracle, strict=True):
        assert g.dtype == o.dtype, f"{name}: {g.dtype} != {o.dtype}"
        assert_close(g, o, 3e-2, f"{name} autocast vs torch path")


@pytest.mark.slow
@interpreted
def test_row_gradient_accumulates(kernels):
    """A second backward adds into weight.grad / bias.grad, as for any autograd leaf."""
    gen = torch.Generator().manual_seed(5)
    in_p, out_p = PeriodicRow(30, 3).pattern(0), RandomSubsetRow(26, 9).sample(gen)
    weight = torch.randn(26, 30, generator=gen).requires_grad_(True)
    bias = torch.randn(26, generator=gen).requires_grad_(True)
    x = torch.randn(18, 30, generator=gen)
    triton_backend = kernels.triton_backend.TritonBackend()
    triton_backend.row_linear(x, weight, bias, in_p, out_p, False).sum().backward()
    first_w, first_b = weight.grad.clone(), bias.grad.clone()
    triton_backend.row_linear(x, weight, bias, in_p, out_p, False).sum().backward()
    assert_close(weight.grad, 2 * first_w, 1e-6, "accumulated grad_W")
    assert_close(bias.grad, 2 * first_b, 1e-6, "accumulated grad_b")
    outside = torch.ones(26, 30, dtype=torch.bool)
    outside[out_p.kept[:, None], in_p.kept[None, :]] = False
    assert (weight.grad[outside] == 0).all()


# --- kernel-level launchers: writes confined to the kept block, accumulation ------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("x_compact", [False, True])
@interpreted
def test_row_grad_weight_writes_only_kept_block(kernels, x_compact):
    row, common = kernels.triton_row, kernels.triton_common
    gen = torch.Generator().manual_seed(11)
    n, k, m = 41, 35, 27
    out_idx = RandomSubsetRow(n, 17).sample(gen).kept
    in_idx = PeriodicRow(k, 4).pattern(3).kept
    g = torch.randn(m, out_idx.numel(), generator=gen)
    x_full = torch.randn(m, k, generator=gen)
    x = x_full[:, in_idx] if x_compact else x_full
    precision = common.precision_for(torch.float32, torch.device("cpu"))
    expected_block = 1.5 * g.t() @ x_full[:, in_idx]
    block = (out_idx[:, None], in_idx[None, :])

    poisoned = torch.full((n, k), float("nan"))
    row.row_grad_weight(g, x, poisoned, in_idx, out_idx, 1.5, x_compact, precision)
    assert_close(poisoned[block], expected_block, 1e-5, "kept block")
    outside = torch.ones(n, k, dtype=torch.bool)
    outside[block] = False
    assert torch.isnan(poisoned[outside]).all(), "grad_W written outside the kept block"

    old = torch.randn(n, k, generator=gen)
    acc = old.clone()
    row.row_grad_weight(g, x, acc, in_idx, out_idx, 1.5, x_compact, precision, accumulate=True)
    expected = old.clone()
    expected[block] += expected_block
    assert_close(acc, expected, 1e-5, "accumulated grad_W")


@pytest.mark.slow
@interpreted
def test_row_grad_input_scatter_and_bias(kernels):
    """Scattered grad_x writes zeros at dropped columns (NaN-poisoned output); grad_b touches kept units only."""
    row, common = kernels.triton_row, kernels.triton_common
    gen = torch.Generator().manual_seed(13)
    n, k, m = 30, 45, 19
    in_idx, out_idx = RandomSubsetRow(k, 20).sample(gen).kept, PeriodicRow(n, 2).pattern(1).kept
    weight, g = torch.randn(n, k, generator=gen), torch.randn(m, out_idx.numel(), generator=gen)
    precision = common.precision_for(torch.float32, torch.device("cpu"))
    expected = torch.zeros(m, k)
    expected[:, in_idx] = 2.0 * g @ weight[out_idx][:, in_idx]
    for dropped in (None, row.complement(in_idx, k)):
        out = torch.full((m, k), float("nan"))
        row.row_grad_input(g, weight, in_idx, out_idx, 2.0, out, precision, dropped)
        assert_close(out, expected, 1e-5, "scattered grad_x")

    bias_grad = torch.full((n,), float("nan"))
    row.column_sum(g, bias_grad, out_idx)
    assert_close(bias_grad[out_idx], g.sum(0), 1e-5, "grad_b kept")
    assert torch.isnan(bias_grad[row.complement(out_idx, n)]).all(), "grad_b written at dropped units"
    row.column_sum(g, bias_grad.nan_to_num_(0.5), out_idx, accumulate=True)
    assert_close(bias_grad[out_idx], 2 * g.sum(0), 1e-5, "accumulated grad_b")
    assert (bias_grad[row.complement(out_idx, n)] == 0.5).all()


@pytest.mark.slow
@interpreted
def test_gather_gemm_rejects_bad_shapes(kernels):
    row, common = kernels.triton_row, kernels.triton_common
    precision = common.precision_for(torch.float32, torch.device("cpu"))
    a, b = torch.randn(4, 6), torch.randn(5, 6)
    with pytest.raises(ValueError, match="reduction sizes differ"):
        row.gather_gemm(a, b, torch.empty(4, 5), precision, b_red_idx=torch.arange(3))
    with pytest.raises(ValueError, match="columns"):
        row.gather_gemm(a, b, torch.empty(4, 7), precision)
    with pytest.raises(ValueError, match="int32/int64"):
        row.gather_gemm(a, b, torch.empty(4, 2), precision, b_row_idx=torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="float64"):
        common.precision_for(torch.float64, torch.device("cpu"))
    huge = types.SimpleNamespace(shape=(2**16, 2**16), stride=lambda: (2**16, 1), numel=lambda: 2**32)
    with pytest.raises(ValueError, match="2\\*\\*31"):
        common.check_offsets(x=huge)


# --- tile patterns: tile-skipping GEMM through the backend -------------------------------------------------------


def single_tile_pattern(n: int, k: int, tile: tuple[int, int], row: int, col: int) -> TilePattern:
    """Only tile (row, col) kept: every other tile row / column keeps nothing (zero-work programs)."""
    grid = (-(-n // tile[0]), -(-k // tile[1]))
    kept = torch.zeros(grid, dtype=torch.bool)
    kept[row, col] = True
    return TilePattern(n, k, tile, kept, float(grid[0] * grid[1]))


TILE_CASES = [
    # (lead, out_features N, in_features K, tile, pattern spec, bias)
    ((37,), 70, 53, (16, 32), ("periodic", 2, 1, 1), True),
    ((20,), 45, 61, (24, 20), ("periodic", 3, 1, 2), True),  # tile sides not multiples of 16: masked blocks
    ((33,), 64, 64, (32, 32), ("periodic", 1, 1, 0), True),  # all tiles kept
    ((19,), 50, 66, (16, 16), ("periodic", 5, 2, 3), False),
    ((2, 9), 40, 47, (16, 16), ("single", 1, 2), True),  # one tile kept, empty tile rows and columns
]


def make_tile_pattern(n: int, k: int, tile: tuple[int, int], spec: tuple) -> TilePattern:
    if spec[0] == "single":
        return single_tile_pattern(n, k, tile, spec[1], spec[2])
    _, dp, keep, offset = spec
    return PeriodicTile(n, k, dp, keep, tile).pattern(offset)


def check_tile_case(kernels, case: tuple, seed: int, dtype: torch.dtype = torch.float32) -> None:
    """Triton backend vs the torch path and vs the dense masked computation, forward and all gradients."""
    lead, n, k, tile, spec, has_bias = case
    gen = torch.Generator().manual_seed(seed)
    pattern = make_tile_pattern(n, k, tile, spec)
    x = torch.randn(*lead, k, generator=gen).to(dtype)
    weight = (torch.randn(n, k, generator=gen) / k**0.5).to(dtype)
    bias = torch.randn(n, generator=gen).to(dtype) if has_bias else None
    gy = torch.randn(*lead, n, generator=gen)

    triton_backend = kernels.triton_backend.TritonBackend()
    got = run_linear(lambda a, w, b: triton_backend.tile_linear(a, w, b, pattern), x, weight, bias, gy)
    oracle = run_linear(lambda a, w, b: TorchBackend().tile_linear(a, w, b, pattern), x, weight, bias, gy)
    mask = pattern.element_mask(torch.float64)
    dense_bias = bias.double() if bias is not None else None
    dense = run_linear(lambda a, w, b: F.linear(a, w * mask, b), x.double(), weight.double(), dense_bias, gy.double())
    assert_matches(got, oracle, dense, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("case", TILE_CASES, ids=lambda c: f"{c[3][0]}x{c[3][1]}-{c[4][0]}{c[4][1]}")
@interpreted
def test_tile_linear_float32(kernels, case):
    check_tile_case(kernels, case, zlib.crc32(repr(case).encode()))


@pytest.mark.slow
@pytest.mark.parametrize("draw", range(4))
@interpreted
def test_tile_linear_random_shapes(kernels, draw):
    """Random weight sizes in [16, 70], tile sides from {16, 32, 20, 24}, random period and kept count."""
    rng = torch.Generator().manual_seed(3000 + draw)
    m, n, k = torch.randint(1, 71, (1,), generator=rng).item(), *torch.randint(16, 71, (2,), generator=rng).tolist()
    sides = (16, 32, 20, 24)
    tile = tuple(sides[i] for i in torch.randint(len(sides), (2,), generator=rng).tolist())
    grid_cols = -(-k // tile[1])
    dp = int(torch.randint(1, grid_cols + 1, (1,), generator=rng))
    keep = int(torch.randint(1, dp + 1, (1,), generator=rng))
    offset = int(torch.randint(dp, (1,), generator=rng))
    case = ((m,), n, k, tile, ("periodic", dp, keep, offset), bool(draw % 2))
    check_tile_case(kernels, case, 4000 + draw)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@interpreted
def test_tile_linear_half(kernels, dtype):
    check_tile_case(kernels, ((21,), 48, 50, (16, 16), ("periodic", 2, 1, 1), True), 17, dtype)


@pytest.mark.slow
@interpreted
def test_tile_linear_autocast_and_accumulation(kernels):
    gen = torch.Generator().manual_seed(19)
    pattern = PeriodicTile(40, 36, 2, 1, (16, 16)).pattern(0)
    x = torch.randn(2, 11, 36, generator=gen)
    weight = (torch.randn(40, 36, generator=gen) / 6).requires_grad_(True)
    bias = torch.randn(40, generator=gen).requires_grad_(True)
    triton_backend = kernels.triton_backend.TritonBackend()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = triton_backend.tile_linear(x, weight, bias, pattern)
        ref = torch_ops.tile_linear(x, weight.detach(), bias.detach(), pattern.kept_tiles, pattern.tile, pattern.scale)
    assert y.dtype == torch.bfloat16 == ref.dtype
    assert_close(y, ref, 3e-2, "autocast y")
    y.float().sum().backward()
    assert weight.grad.dtype == torch.float32
    first_w, first_b = weight.grad.clone(), bias.grad.clone()
    triton_backend.tile_linear(x, weight, bias, pattern).sum().backward()
    assert_close(weight.grad, 2 * first_w, 3e-2, "accumulated tile grad_W")
    assert_close(bias.grad, 2 * first_b, 1e-6, "accumulated tile grad_b")
    dropped = ~pattern.element_mask(torch.float32, scaled=False).bool()
    assert (weight.grad[dropped] == 0).all()


@pytest.mark.slow
@interpreted
def test_tile_grad_weight_writes_only_kept_tiles(kernels):
    tile_mod, common = kernels.triton_tile, kernels.triton_common
    gen = torch.Generator().manual_seed(23)
    n, k, m, tile = 50, 45, 26, (16, 32)
    pattern = PeriodicTile(n, k, 2, 1, tile).pattern(1)
    tables = tile_mod.tile_tables(pattern, "cpu")
    g, x = torch.randn(m, n, generator=gen), torch.randn(m, k, generator=gen)
    precision = common.precision_for(torch.float32, torch.device("cpu"))
    kept = pattern.element_mask(torch.float32, scaled=False).bool()
    expected = 2.0 * g.t() @ x

    poisoned = torch.full((n, k), float("nan"))
    tile_mod.tile_grad_weight(g, x, poisoned, tables, tile, 2.0, precision)
    assert_close(poisoned[kept], expected[kept], 1e-5, "kept tiles")
    assert torch.isnan(poisoned[~kept]).all(), "grad_W written on a dropped tile"

    old = torch.randn(n, k, generator=gen)
    acc = old.clone()
    tile_mod.tile_grad_weight(g, x, acc, tables, tile, 2.0, precision, accumulate=True)
    assert_close(acc, old + expected * kept, 1e-5, "accumulated tile grad_W")


@pytest.mark.slow
@interpreted
def test_tile_tables_and_blocks(kernels):
    tile_mod = kernels.triton_tile
    pattern = PeriodicTile(70, 90, 3, 1, (16, 16)).pattern(2)
    tables = tile_mod.tile_tables(pattern, "cpu")
    assert tables is tile_mod.tile_tables(pattern, "cpu")  # cached per pattern
    assert torch.equal(tables.cols, pattern.kept_columns())
    for c in range(pattern.grid[1]):
        rows = tables.rows[c, : tables.row_counts[c]].long()
        assert torch.equal(rows, pattern.kept_tiles[:, c].nonzero().flatten())
        assert (tables.rows[c, tables.row_counts[c] :] == -1).all()
    assert tile_mod.tile_block(64, 128) == 64 and tile_mod.tile_block(256, 128) == 128
    assert tile_mod.tile_block(48, 64) == 16 and tile_mod.tile_block(24, 64) == 32 and tile_mod.tile_block(8, 64) == 16
    with pytest.raises(ValueError, match="grid"):
        tile_mod.tile_forward(
            torch.randn(3, 100), torch.randn(70, 100), None, tables, (16, 16), 1.0,
            kernels.triton_common.precision_for(torch.float32, torch.device("cpu")), torch.empty(3, 70),
        )  # fmt: skip


# --- through the ARD layer -----------------------------------------------------------------------------------------


@pytest.mark.slow
@interpreted
def test_ard_linear_layers_with_triton_backend(kernels):
    """A producer -> producer+consumer -> consumer chain of ARDLinear layers on the Triton backend gives the same
    outputs and parameter gradients as the same chain on the PyTorch backend."""
    from lightning_ard.layers import ARDLinear

    gen = torch.Generator().manual_seed(29)
    p1, p2 = PeriodicRow(40, 3).sample(gen), RandomSubsetRow(36, 15).sample(gen)
    x, target = torch.randn(2, 9, 24, generator=gen), torch.randn(2, 9, 7, generator=gen)
    results = []
    for backend in ("triton", "torch"):
        torch.manual_seed(0)
        layers = [ARDLinear.from_linear(torch.nn.Linear(a, b), backend) for a, b in ((24, 40), (40, 36), (36, 7))]
        layers[0].set_patterns(out_pattern=p1)
        layers[1].set_patterns(in_pattern=p1, out_pattern=p2)
        layers[2].set_patterns(in_pattern=p2)
        h = torch.relu(layers[0](x))
        h = torch.relu(layers[1](h))
        y = layers[2](h)
        F.mse_loss(y, target).backward()
        results.append([y.detach()] + [p.grad for layer in layers for p in layer.parameters()])
    for got, ref in zip(*results, strict=True):
        assert_close(got, ref, 1e-5, "layer chain")


@pytest.mark.slow
@interpreted
def test_grouped_layers_with_triton_backend(kernels):
    """Pattern groups on the Triton backend (the per-group loop of ``Backend``): a producer -> consumer pair with
    3 row groups over 14 rows (one group holding two equal patterns) and a 2-group tile layer equal the PyTorch
    backend's single pass, outputs and parameter gradients."""
    from lightning_ard.layers import ARDLinear

    gen = torch.Generator().manual_seed(31)
    fam = PeriodicRow(40, 4, 2)
    pats = [fam.pattern(1), fam.pattern(3), fam.pattern(1)]
    tiles = [PeriodicTile(9, 40, 3, 1, (4, 8)).sample(gen) for _ in range(2)]
    x, target = torch.randn(2, 7, 24, generator=gen), torch.randn(2, 7, 9, generator=gen)
    results = []
    for backend in ("triton", "torch"):
        torch.manual_seed(0)
        layers = [ARDLinear.from_linear(torch.nn.Linear(a, b), backend) for a, b in ((24, 40), (40, 40), (40, 9))]
        layers[0].set_patterns(out_pattern=pats)
        layers[1].set_patterns(in_pattern=pats)
        layers[2].set_patterns(tile_pattern=tiles)
        y = layers[2](torch.relu(layers[1](torch.relu(layers[0](x)))))
        F.mse_loss(y, target).backward()
        results.append([y.detach()] + [p.grad for layer in layers for p in layer.parameters()])
    for got, ref in zip(*results, strict=True):
        assert_close(got, ref, 1e-5, "grouped layers")


# --- backend selection -------------------------------------------------------------------------------------------


def test_backend_selection_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        get_backend("triton", "cpu")
    assert isinstance(get_backend("auto", "cpu"), TorchBackend)
    assert get_backend("torch", "cpu").name == "torch"


@pytest.mark.slow
@interpreted
def test_backend_selection_with_interpreter(kernels, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    backend = get_backend("triton", "cpu")
    assert backend.name == "triton" and type(backend).__name__ == "TritonBackend"
    assert isinstance(get_backend("auto", "cpu"), TorchBackend)  # auto never picks the interpreter


@pytest.mark.slow
@interpreted
def test_backend_refuses_cpu_tensors_when_compiled(kernels, monkeypatch):
    monkeypatch.setattr(kernels.triton_backend, "INTERPRET", False)
    with pytest.raises(ValueError, match="CUDA"):
        kernels.triton_backend.TritonBackend().row_linear(torch.randn(2, 3), torch.randn(4, 3), None, None, None, False)


@pytest.mark.slow
@interpreted
def test_backend_float64_falls_back_to_torch(kernels):
    x, w = torch.randn(5, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    pattern = PeriodicRow(8, 2).pattern(0)
    with pytest.warns(UserWarning, match="float64"):
        y = kernels.triton_backend.TritonBackend().row_linear(x, w, None, pattern, None, False)
    assert torch.allclose(y, 2.0 * x[:, pattern.kept] @ w[:, pattern.kept].t())


# --- the compiled path: every launched variant compiles for an sm_90 GPU -----------------------------------------


def _compile_all_variants() -> None:
    """Compile (PTX + cubin, offline) each kernel variant the backend launches, with each kernel's first and last
    autotuning configuration. Run in a fresh interpreter without TRITON_INTERPRET (see the test below)."""
    import triton.language as tl

    from lightning_ard.kernels.triton import row as triton_row
    from lightning_ard.kernels.triton import tile as triton_tile

    compile_one = compile_for_sm90

    ints = {n: "i32" for n in "M N R K n_zero max_kept tune_m tune_n tune_r tune_k".split()}
    ints.update({n: "i32" for n in triton_row._gather_gemm_kernel.arg_names if n.startswith("stride")})
    ints.update({n: "i32" for n in triton_tile._tile_grad_weight_kernel.fn.arg_names if n.startswith("stride")})
    ints.update({n: "i32" for n in triton_tile._tile_product_kernel.arg_names if n.startswith("stride")})
    ints["scale"] = "fp32"
    f32 = dict(DOT_DTYPE=tl.float32, INPUT_PRECISION="tf32", UPCAST=False)
    bf16 = dict(DOT_DTYPE=tl.bfloat16, INPUT_PRECISION="ieee", UPCAST=False)
    flags = dict(A_RED_IDX=False, B_ROW_IDX=False, B_RED_IDX=False, C_ROW_IDX=False, C_COL_IDX=False)
    kernels = triton_row.PRODUCT_KERNELS
    gemm_variants = [  # (pointer types, flags): forward, grad_x (scatter / compact), grad_W (store / accumulate)
        ({"a_ptr": "*fp32", "b_ptr": "*fp32", "c_ptr": "*fp32", "bias_ptr": "*fp32", "a_red_idx_ptr": "*i32",
          "b_row_idx_ptr": "*i32", "b_red_idx_ptr": "*i32"},
         dict(flags, A_RED_IDX=True, B_ROW_IDX=True, B_RED_IDX=True, HAS_BIAS=True, ACCUMULATE=False,
              ZERO_FILL=False, **f32)),
        ({"a_ptr": "*bf16", "b_ptr": "*fp32", "c_ptr": "*bf16", "b_row_idx_ptr": "*i32", "b_red_idx_ptr": "*i32"},
         dict(flags, B_ROW_IDX=True, B_RED_IDX=True, HAS_BIAS=False, ACCUMULATE=False, ZERO_FILL=False, **bf16)),
        ({"a_ptr": "*fp32", "b_ptr": "*fp32", "c_ptr": "*fp32", "b_row_idx_ptr": "*i32", "b_red_idx_ptr": "*i32",
          "c_col_idx_ptr": "*i32", "zero_idx_ptr": "*i32"},
         dict(flags, B_ROW_IDX=True, B_RED_IDX=True, C_COL_IDX=True, HAS_BIAS=False, ACCUMULATE=False,
              ZERO_FILL=True, **f32)),
        ({"a_ptr": "*bf16", "b_ptr": "*fp32", "c_ptr": "*fp32", "b_row_idx_ptr": "*i32", "c_row_idx_ptr": "*i32",
          "c_col_idx_ptr": "*i32"},
         dict(flags, B_ROW_IDX=True, C_ROW_IDX=True, C_COL_IDX=True, HAS_BIAS=False, ACCUMULATE=True,
              ZERO_FILL=False, **bf16)),
    ]  # fmt: skip
    for (types_, consts), product in zip(gemm_variants, ("forward", "forward", "grad_x", "grad_w"), strict=True):
        gemm = kernels[product]
        for config in (gemm.configs[0], gemm.configs[-1]):
            for int64 in (False, True):  # 64-bit offsets for operands past 2**31 elements
                compile_one(gemm, dict(ints, **types_), dict(consts, INT64=int64), config)
    for has_idx in (False, True):
        types_ = dict(ints, g_ptr="*fp32", out_ptr="*fp32", idx_ptr="*i32" if has_idx else None, stride_gm="i32")
        types_["stride_gn"] = "i32"
        for int64 in (False, True):
            consts = dict(HAS_IDX=has_idx, ACCUMULATE=False, INT64=int64, BLOCK_M=128, BLOCK_N=32)
            compile_one(triton_row._column_sum_kernel, types_, consts, None)

    _compile_tile_variants(ints, f32, bf16)
    print("compiled all variants")


def _compile_tile_variants(ints: dict, f32: dict, bf16: dict) -> None:
    """The tile kernels' part of :func:`_compile_all_variants` (both precisions, first and last configuration)."""
    from lightning_ard.kernels.triton import tile as triton_tile

    geometry = dict(TILE_N=64, TILE_K=64, CHUNKS_N=1, CHUNKS_K=1, BLOCK_N=64, BLOCK_K=64)
    for precision, dt in ((f32, "*fp32"), (bf16, "*bf16")):
        common = dict(geometry, **precision)
        dx = {"a_ptr": dt, "w_ptr": dt, "c_ptr": dt, "table_ptr": "*i32", "counts_ptr": "*i32"}
        fwd = dict(dx, bias_ptr=dt)
        dw = {"g_ptr": dt, "x_ptr": dt, "dw_ptr": dt, "cols_ptr": "*i32", "counts_ptr": "*i32"}
        for kernel, types_, consts in (
            (triton_tile._tile_forward_kernel, fwd, dict(common, HAS_BIAS=True)),
            (triton_tile._tile_grad_input_kernel, dx, dict(common, HAS_BIAS=False)),
            (triton_tile._tile_grad_weight_kernel, dw, dict(common, ACCUMULATE=False)),
        ):
            for config in (kernel.configs[0], kernel.configs[-1]):
                compile_for_sm90(kernel, dict(ints, **types_), consts, config)


@pytest.mark.slow
def test_kernels_compile_for_cuda():
    """The compiler (not the interpreter) accepts every launched kernel variant: PTX + cubin for sm_90, offline."""
    compile_offline_in_child("tests.kernels.test_triton_kernels", "_compile_all_variants")
