"""Pattern-distribution search: exact rate, speed, determinism, sampling, distance gains, cross-checks, validation."""

import json
import math
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_ard.patterns import BlockRow, PeriodicRow, PeriodicTile, RandomSubsetRow, binomial_pmf
from lightning_ard.search import FAMILIES, METHODS, SearchSettings, clear_search_cache, search_distribution
from lightning_ard.search.baseline import bracketing_weights
from lightning_ard.search.candidates import build_candidates
from lightning_ard.search.exact import exact_weights
from lightning_ard.search.objective import Objective
from lightning_ard.search.projection import project_rate

RATES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
DIAGNOSTIC_KEYS = {"method", "expected_rate", "rate_error", "kept_count_w1", "cokeep_rms", "steps", "loss"}


def timed_search(*args, **kwargs):
    """An uncached search and the CPU seconds it took on one thread (process time: a machine loaded by other work
    does not make it fail, as wall time did on 2 shared cores; one thread: no time spent spinning in idle workers)."""
    clear_search_cache()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.process_time()
        dist = search_distribution(*args, **kwargs)
        return dist, time.process_time() - start
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- acceptance


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("width", [64, 1000, 2048])
@pytest.mark.parametrize("p", RATES)
def test_row_rate_exact_and_fast(p: float, width: int, method: str) -> None:
    dist, seconds = timed_search(p, width, "row", method)
    assert abs(dist.expected_rate - p) <= 1e-3
    assert abs(dist.diagnostics["rate_error"]) <= 1e-3
    assert seconds < 1.0, f"search took {seconds:.3f} s"
    assert DIAGNOSTIC_KEYS <= set(dist.diagnostics)
    assert dist.diagnostics["method"] == method
    assert all(isinstance(c, PeriodicRow) and 1 <= c.k <= 4 and c.k <= c.dp <= 16 for c in dist.candidates)
    assert dist.width == width


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ["block", "random"])
@pytest.mark.parametrize("width", [64, 1000, 2048])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_block_and_random_rate_exact_and_fast(p: float, width: int, family: str, method: str) -> None:
    dist, seconds = timed_search(p, width, family, method)
    assert abs(dist.expected_rate - p) <= 1e-3
    assert seconds < 1.0, f"search took {seconds:.3f} s"
    cls = BlockRow if family == "block" else RandomSubsetRow
    assert all(isinstance(c, cls) for c in dist.candidates)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "shape,tile", [((1024, 1024), (64, 64)), ((300, 500), (32, 32)), ((4096, 4096), (64, 64))], ids=str
)
@pytest.mark.parametrize("p", [0.3, 0.5, 0.7])
def test_tile_rate_exact_and_fast(p: float, shape: tuple, tile: tuple, method: str) -> None:
    dist, seconds = timed_search(p, shape[1], "tile", method, shape=shape, tile=tile)
    assert abs(dist.expected_rate - p) <= 1e-3
    assert seconds < 1.0, f"search took {seconds:.3f} s"
    grid = (-(-shape[0] // tile[0]), -(-shape[1] // tile[1]))
    assert dist.width == grid[0] * grid[1]  # the tile search works on the tile grid
    assert all(isinstance(c, PeriodicTile) and c.tile == tile for c in dist.candidates)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_zero_rate_keeps_everything(family: str, method: str) -> None:
    kwargs = {"shape": (100, 300), "tile": (32, 32)} if family == "tile" else {}
    width = 300 if family == "tile" else 100
    dist = search_distribution(0.0, width, family, method, **kwargs)
    assert dist.expected_rate == 0.0
    assert all(c.rate == 0.0 for c in dist.candidates)
    assert dist.sample(torch.Generator().manual_seed(0)).keep_fraction == 1.0


# ---------------------------------------------------------------------------------------------- determinism, cache


@pytest.mark.parametrize("family", ["row", "block"])
def test_deterministic_for_a_seed(family: str) -> None:
    first, _ = timed_search(0.37, 500, family, "sgd", seed=3, ks=(1, 2, 3))
    second, _ = timed_search(0.37, 500, family, "sgd", seed=3, ks=(1, 2, 3))
    assert first is not second
    assert first.candidates == second.candidates
    assert torch.equal(first.probabilities, second.probabilities)
    assert first.diagnostics == second.diagnostics
    other, _ = timed_search(0.37, 500, family, "sgd", seed=4, ks=(1, 2, 3))
    assert abs(other.expected_rate - 0.37) <= 1e-12


def test_cache_returns_the_same_object() -> None:
    clear_search_cache()
    a = search_distribution(0.4, 256, ks=[2, 1])
    b = search_distribution(0.4, 256, "row", "sgd", ks=(1, 2))
    assert a is b
    assert search_distribution(0.4, 256, ks=(1, 2), seed=1) is not a
    clear_search_cache()
    assert search_distribution(0.4, 256, ks=(1, 2)) is not a


def test_diagnostics_are_plain_and_consistent() -> None:
    dist = search_distribution(0.3, 1000, "row", "sgd", ks=(1, 2))
    diag = dist.diagnostics
    json.dumps(diag)  # plain values only
    assert diag["expected_rate"] == pytest.approx(dist.expected_rate, abs=1e-15)
    assert diag["support"] == len(dist.candidates) <= diag["candidates"]
    assert diag["steps"] == SearchSettings().steps
    assert diag["units"] == 1000
    assert 0.0 <= diag["kept_count_w1"] <= 1.0 and 0.0 <= diag["cokeep_rms"] <= 1.0


# ---------------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize(
    "args,kwargs",
    [
        ((0.3, 1000, "row", "sgd"), {"ks": (1, 2, 3)}),
        ((0.65, 64, "row", "exact"), {}),
        ((0.5, 200, "block", "sgd"), {}),
        ((0.2, 200, "random", "exact"), {}),
        ((0.6, 500, "tile", "sgd"), {"shape": (300, 500), "tile": (32, 32)}),
    ],
    ids=lambda v: str(v),
)
def test_sampling_reproduces_expected_rate(args: tuple, kwargs: dict) -> None:
    dist = search_distribution(*args, **kwargs)
    p = dist.expected_rate
    gen = torch.Generator().manual_seed(1)
    draws = 3000
    dropped = torch.empty(draws, dtype=torch.float64)
    first_unit_dropped = 0
    for t in range(draws):
        pat = dist.sample(gen)
        dropped[t] = 1.0 - pat.keep_fraction if hasattr(pat, "kept") else 1.0 - float(pat.kept_tiles.double().mean())
        first = bool(pat.kept_tiles[0, 0]) if hasattr(pat, "kept_tiles") else bool((pat.kept == 0).any())
        first_unit_dropped += not first
    # Exact variance of one draw's drop fraction, from the candidates' kept-count pmfs.
    n = dist.width
    frac = 1.0 - torch.arange(n + 1, dtype=torch.float64) / n
    var = sum(float(w) * float((c.kept_count_pmf() * (frac - p) ** 2).sum()) for c, w in dist.support())
    assert abs(float(dropped.mean()) - p) <= 4 * math.sqrt(var / draws) + 1e-12
    # One unit is dropped with probability p in every draw, independently.
    assert abs(first_unit_dropped / draws - p) <= 4 * math.sqrt(p * (1 - p) / draws)


# ---------------------------------------------------------------------------------------------- quality, cross-checks


@pytest.mark.parametrize("family", ["block", "random"])
@pytest.mark.parametrize("width,p", [(64, 0.3), (1000, 0.5), (2048, 0.8)])
def test_search_beats_bracketing_for_dense_candidates(family: str, width: int, p: float) -> None:
    """With a kept count for every K near N(1 - p), the mixture can match the binomial almost exactly."""
    for method in METHODS:
        diag = search_distribution(p, width, family, method).diagnostics
        assert diag["kept_count_w1"] <= 0.1 * diag["baseline_w1"]


@pytest.mark.parametrize("p", [0.3, 0.45, 0.5, 0.7])
def test_search_beats_bracketing_for_periodic_rows(p: float) -> None:
    """With several k per period the candidates crowd around the target and a mixture spreads like the binomial."""
    diag = search_distribution(p, 64, "row", "sgd", ks=(1, 2, 3, 4)).diagnostics
    assert diag["kept_count_w1"] <= 0.8 * diag["baseline_w1"]


@pytest.mark.parametrize("ks", [(1,), (1, 2, 3, 4)], ids=str)
@pytest.mark.parametrize("width", [64, 1000, 2048])
def test_sgd_close_to_exact(width: int, ks: tuple) -> None:
    """The gradient search ends near the LP optimum, and never much below it (that would mean a wrong LP)."""
    for p in [0.15, 0.45, 0.85]:
        sgd = search_distribution(p, width, "row", "sgd", ks=ks).diagnostics
        exact = search_distribution(p, width, "row", "exact", ks=ks).diagnostics
        sigma_over_n = sgd["binomial_std"] / width
        assert sgd["kept_count_w1"] <= exact["kept_count_w1"] + 0.25 * sigma_over_n
        # The LP treats candidates as point masses at their mean; a k-per-period row is off by at most k units.
        assert exact["kept_count_w1"] <= sgd["kept_count_w1"] + 2 * max(ks) / width
        assert sgd["kept_count_w1"] <= sgd["baseline_w1"] + 0.25 * sigma_over_n


def test_exact_matches_a_generic_lp_solver() -> None:
    scipy_optimize = pytest.importorskip("scipy.optimize")
    import numpy as np

    for family, ks, width, p in [("row", (1,), 64, 0.3), ("row", (1, 2, 3), 100, 0.45), ("block", (1,), 64, 0.37)]:
        obj = Objective(build_candidates(family, p, width, None, (64, 64), SearchSettings(ks=ks)), p)
        x = obj.candidates.means.numpy()
        binom_cdf = obj.binomial.cumsum(0).numpy()
        # W1 of point masses at x against the binomial: integrate |F_mix - F_binom| between breakpoints.
        points = np.unique(np.concatenate([np.arange(width + 1), x]))
        lengths, left = np.diff(points), points[:-1]
        mix_cdf = (x[None, :] <= left[:, None]).astype(float)
        target_cdf = binom_cdf[np.floor(left).astype(int)]
        n, m = x.size, left.size
        res = scipy_optimize.linprog(
            np.concatenate([np.zeros(n), lengths]),
            A_ub=np.block([[mix_cdf, -np.eye(m)], [-mix_cdf, -np.eye(m)]]),
            b_ub=np.concatenate([target_cdf, -target_cdf]),
            A_eq=np.stack([np.concatenate([np.ones(n), np.zeros(m)]), np.concatenate([x, np.zeros(m)])]),
            b_eq=np.array([1.0, width * (1 - p)]),
            bounds=[(0, None)] * (n + m),
        )
        pi, _ = exact_weights(obj)
        ours = float((np.abs(mix_cdf @ pi.numpy() - target_cdf) * lengths).sum())
        assert ours == pytest.approx(res.fun, abs=1e-4)  # weights below 1e-6 are pruned


@pytest.mark.parametrize(
    "family,width,p,ks",
    [
        ("row", 64, 0.3, (1,)),
        ("row", 1000, 0.7, (1, 2, 3)),
        ("block", 500, 0.4, (1,)),
        ("random", 37, 0.9, (1,)),
        ("row", 1, 0.0, (1,)),
        ("tile", 500, 0.6, (1, 2)),
    ],
    ids=str,
)
def test_objective_measures_match_direct_computation(family: str, width: int, p: float, ks: tuple) -> None:
    """The windowed, partly linearized W1 and the co-keep RMS equal their definitions on full-length vectors."""
    shape, tile = ((300, 500), (32, 32)) if family == "tile" else (None, (64, 64))
    cands = build_candidates(family, p, width, shape, tile, SearchSettings(ks=ks))
    obj = Objective(cands, p)
    n_units = cands.units
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        pi = torch.rand(len(cands.families), generator=gen, dtype=torch.float64) ** 4
        pi = pi / pi.sum()
        pmfs = [f.kept_count_pmf() for f in cands.families]
        window = cands.pmfs.shape[1]
        assert all(torch.equal(pmf[cands.offset : cands.offset + window], row) for pmf, row in zip(pmfs, cands.pmfs))
        mix = sum(float(w) * pmf for w, pmf in zip(pi, pmfs))
        binom = binomial_pmf(n_units, 1 - p)
        binom = binom / binom.sum()
        w1 = float((mix.cumsum(0)[:-1] - binom.cumsum(0)[:-1]).abs().sum()) / n_units
        assert float(obj.kept_count_w1(pi)) == pytest.approx(w1, abs=1e-12)
        span = cands.families[0].grid[1] if family == "tile" else n_units
        d = torch.arange(1, span)
        if d.numel():
            both = sum(float(w) * f.co_keep(d) for w, f in zip(pi, cands.families))
            rms = math.sqrt(float(((span - d) * (both - (1 - p) ** 2) ** 2).sum() / (span - d).sum()))
            assert float(obj.cokeep_rms(pi)) == pytest.approx(rms, abs=1e-12)


def test_cokeep_weight_lowers_cokeep_deviation() -> None:
    plain = search_distribution(0.5, 64, "row", "sgd", ks=(1, 2, 3, 4)).diagnostics
    weighted = search_distribution(0.5, 64, "row", "sgd", ks=(1, 2, 3, 4), cokeep_weight=5.0).diagnostics
    assert weighted["cokeep_rms"] < 0.8 * plain["cokeep_rms"]
    assert abs(weighted["rate_error"]) <= 1e-12


def test_random_family_breaks_co_adaptation_like_dropout() -> None:
    """Random subsets with a binomial K keep pairs together with probability (1 - p)^2, as dropout does."""
    diag = search_distribution(0.4, 500, "random", "exact").diagnostics
    assert diag["cokeep_rms"] < 1e-6
    assert search_distribution(0.4, 500, "row", "exact").diagnostics["cokeep_rms"] > 0.1


@given(width=st.integers(1, 300), p=st.floats(0.0, 0.95), dp_max=st.integers(1, 20), method=st.sampled_from(METHODS))
@settings(max_examples=40, deadline=None)
def test_any_reachable_rate_is_hit(width: int, p: float, dp_max: int, method: str) -> None:
    try:
        dist = search_distribution(p, width, "row", method, dp_max=dp_max, ks=(1, 2), steps=50)
    except ValueError as err:
        assert "cannot be reached" in str(err) or "ks must hold" in str(err)
        top = min(dp_max, width)
        assert p > 1 - 1 / top - 1e-12 or top < 2
        return
    assert abs(dist.expected_rate - p) <= 1e-12
    assert float(dist.probabilities.sum()) == pytest.approx(1.0, abs=1e-12)
    assert (dist.probabilities > 0).all()


@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_rate_projection_is_feasible_and_nearest(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 12))
    unit = st.floats(0.0, 1.0)
    rates = torch.tensor(data.draw(st.lists(unit, min_size=n, max_size=n)), dtype=torch.float64)
    pi0 = torch.tensor(data.draw(st.lists(st.floats(-1.0, 1.0), min_size=n, max_size=n)), dtype=torch.float64)
    low, high = float(rates.min()), float(rates.max())
    p = low + (high - low) * data.draw(unit)
    pi = project_rate(pi0, rates, p)
    assert (pi >= 0).all() and float(pi.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(pi @ rates) == pytest.approx(p, abs=1e-12)
    # Any other feasible point is at least as far: a random simplex point pulled to rate p by an extreme vertex.
    s = torch.tensor(data.draw(st.lists(st.floats(0.01, 1.0), min_size=n, max_size=n)), dtype=torch.float64)
    s = s / s.sum()
    r = float(s @ rates)
    vertex = torch.zeros(n, dtype=torch.float64)
    vertex[int(rates.argmin()) if r > p else int(rates.argmax())] = 1.0
    r_vertex = float(vertex @ rates)
    alpha = 0.0 if r == r_vertex else (r - p) / (r - r_vertex)
    q = (1 - alpha) * s + alpha * vertex
    assert float((pi - pi0).norm()) <= float((q - pi0).norm()) + 1e-9


def test_bracketing_weights_hit_p_with_the_nearest_rates() -> None:
    rates = torch.tensor([0.0, 0.5, 2 / 3, 0.75], dtype=torch.float64)
    pi = bracketing_weights(rates, 0.6)
    assert float(pi @ rates) == pytest.approx(0.6)
    assert pi.nonzero().flatten().tolist() == [1, 2]
    assert bracketing_weights(rates, 0.5).tolist() == [0.0, 1.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        ((1.0, 64), {}, r"p must be in \[0, 1\), got 1.0"),
        ((-0.1, 64), {}, r"p must be in \[0, 1\), got -0.1"),
        (("0.5", 64), {}, r"p must be in \[0, 1\), got '0.5'"),
        ((0.5, 0), {}, r"width must be an integer >= 1, got 0"),
        ((0.5, 64.0), {}, r"width must be an integer >= 1, got 64.0"),
        ((0.5, 64, "diagonal"), {}, r"family must be one of \['row', 'block', 'random', 'tile'\], got 'diagonal'"),
        ((0.5, 64, "row", "newton"), {}, r"method must be one of \['sgd', 'exact'\], got 'newton'"),
        ((0.5, 64), {"learning_rate": 0.1}, r"unknown setting\(s\) \['learning_rate'\]; allowed settings are \["),
        ((0.5, 64), {"dp_max": 0}, r"dp_max must be an integer >= 1, got 0"),
        ((0.5, 64), {"ks": (0, 1)}, r"ks must be .* \(each >= 1\), got \(0, 1\)"),
        ((0.5, 64), {"ks": ()}, r"ks must be .*non-empty.*, got \(\)"),
        ((0.5, 64), {"ks": 1.5}, r"ks must be a positive integer or a sequence of them, got 1.5"),
        ((0.5, 64), {"ks": (5, 6), "dp_max": 4}, r"ks must hold integers in \[1, dp_max=4\] .* got ks=\(5, 6\)"),
        ((0.5, 3), {"ks": (4,)}, r"ks must hold integers in \[1, dp_max=3\] \(dp_max capped at width\)"),
        ((0.5, 64), {"lr": 0.0}, r"lr must be a finite number > 0.0, got 0.0"),
        ((0.5, 64), {"steps": -1}, r"steps must be an integer >= 0, got -1"),
        ((0.5, 64), {"spread": -2.0}, r"spread must be a finite number > 0.0, got -2.0"),
        ((0.5, 64), {"max_candidates": 1}, r"max_candidates must be an integer >= 2, got 1"),
        ((0.5, 64), {"rate_weight": -1.0}, r"rate_weight must be a finite number >= 0.0, got -1.0"),
        ((0.5, 64), {"cokeep_weight": math.nan}, r"cokeep_weight must be a finite number >= 0.0, got nan"),
        ((0.5, 64), {"init_scale": True}, r"init_scale must be a finite number >= 0.0, got True"),
        ((0.5, 64), {"seed": -1}, r"seed must be an integer in \[0, 9223372036854775807\], got -1"),
        ((0.5, 64, "tile"), {}, r"shape=\(out_features, in_features\) is required for family='tile', got None"),
        ((0.5, 64, "row"), {"shape": (8, 8)}, r"shape applies only to family='tile', got shape=\(8, 8\)"),
        ((0.5, 64, "tile"), {"shape": (0, 64)}, r"shape must be a pair of positive integers .* got \(0, 64\)"),
        ((0.5, 64, "tile"), {"shape": (8, 8), "tile": (8,)}, r"tile must be a pair of positive integers"),
        ((0.5, 100, "tile"), {"shape": (8, 8)}, r"width must equal in_features = 8 .* with shape=\(8, 8\), got 100"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_bad_arguments_are_named(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        search_distribution(*args, **kwargs)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        (
            (0.9, 64, "row"),
            {"dp_max": 2},
            r"p=0.9 cannot be reached by the 'row' candidates, whose drop rates span \[0, 0.5\]; raise dp_max \(now 2",
        ),
        (
            (0.99, 64, "row"),
            {},
            r"p=0.99 cannot be reached .* span \[0, 0.9375\]; raise dp_max \(now 16, capped at width",
        ),
        ((0.5, 64, "row"), {"ks": (2,), "dp_max": 2}, r"span \[0, 0\]; raise dp_max .* or add other ks \(now \(2,\)\)"),
        ((0.99, 64, "block"), {}, r"p=0.99 cannot be reached by the 'block' candidates.*: raise width"),
        ((0.5, 1, "random"), {}, r"p=0.5 cannot be reached by the 'random' candidates, whose drop rates span \[0, 0\]"),
        (
            (0.5, 64, "tile"),
            {"shape": (64, 64)},
            r"span \[0, 0\]; raise dp_max \(now 16, capped at the 1 tile column\(s\)\).*narrower tiles",
        ),
    ],
    ids=lambda v: str(v)[:40],
)
def test_unreachable_rate_names_range_and_setting(args: tuple, kwargs: dict, match: str) -> None:
    for method in METHODS:
        with pytest.raises(ValueError, match=match):
            search_distribution(*args, method=method, **kwargs)


def test_settings_that_do_not_apply_are_accepted() -> None:
    dist = search_distribution(0.5, 64, "block", "exact", dp_max=4, ks=(1, 2), lr=0.1)
    assert abs(dist.expected_rate - 0.5) <= 1e-12
