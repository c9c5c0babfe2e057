"""Pattern families: shapes, validation, statistics (drop frequency, unbiasedness), sampler resume."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_ard.patterns import (
    BlockRow,
    PatternDistribution,
    PatternSampler,
    PeriodicRow,
    PeriodicTile,
    RandomSubsetRow,
    binomial_pmf,
)


@given(width=st.integers(1, 300), data=st.data())
@settings(max_examples=60, deadline=None)
def test_periodic_row_rule_and_counts(width: int, data: st.DataObject) -> None:
    dp = data.draw(st.integers(1, width))
    k = data.draw(st.integers(1, dp))
    fam = PeriodicRow(width, dp, k)
    pmf = fam.kept_count_pmf()
    for b in range(dp):
        pat = fam.pattern(b)
        i = torch.arange(width)
        assert torch.equal(pat.kept, i[(i - b) % dp < k])
        assert pmf[pat.num_kept] > 0
        if pat.stride is not None:
            assert torch.equal(pat.kept, torch.arange(width)[pat.stride[0] :: pat.stride[1]])
    assert math.isclose(float(pmf.sum()), 1.0)
    assert pat.scale == dp / k


@pytest.mark.parametrize(
    "family",
    [
        PeriodicRow(37, 3),
        PeriodicRow(37, 5, 2),
        BlockRow(37, 12),
        RandomSubsetRow(37, 20),
        PeriodicTile(45, 70, 3, 1, (8, 16)),
    ],
    ids=repr,
)
def test_drop_frequency_within_4_sigma(family) -> None:
    gen = torch.Generator().manual_seed(0)
    steps = 20_000
    kept = torch.zeros(family.width if not isinstance(family, PeriodicTile) else family.grid[0] * family.grid[1])
    for _ in range(steps):
        pat = family.sample(gen)
        if isinstance(family, PeriodicTile):
            kept += pat.kept_tiles.flatten().float()
        else:
            kept[pat.kept] += 1
    p = family.rate
    sigma = math.sqrt(p * (1 - p) / steps)
    assert ((1 - kept / steps) - p).abs().max() <= 4 * sigma


@pytest.mark.parametrize("width,dp,k", [(10, 3, 1), (37, 4, 3), (64, 8, 1), (5, 5, 2)])
def test_average_over_offsets_is_dense_output(width: int, dp: int, k: int) -> None:
    fam = PeriodicRow(width, dp, k)
    torch.manual_seed(0)
    x = torch.randn(6, width, dtype=torch.float64)
    w = torch.randn(9, width, dtype=torch.float64)
    mean = sum((x * fam.pattern(b).mask(torch.float64)) @ w.t() for b in range(dp)) / dp
    assert torch.allclose(mean, x @ w.t(), rtol=0, atol=1e-12)


def test_block_and_tile_unbiased_over_all_offsets() -> None:
    fam = BlockRow(11, 4)
    mean = sum(fam.pattern(s).mask(torch.float64) for s in range(11)) / 11
    assert torch.allclose(mean, torch.ones(11, dtype=torch.float64), atol=1e-12)
    for s in range(11):  # blocks that do not wrap are slices (views of the weight); wrapping ones gather
        pat = fam.pattern(s)
        assert (pat.span == (s, s + 4)) if s + 4 <= 11 else (pat.span is None)
        sel = pat.selector("cpu")
        assert torch.equal(torch.arange(11)[sel], pat.kept)
    assert BlockRow(5, 5).pattern(2).selector("cpu") is None  # everything kept
    tile = PeriodicTile(30, 50, 4, 3, (7, 6))
    mean = sum(tile.pattern(b).element_mask(torch.float64) for b in range(4)) / 4
    assert torch.allclose(mean, torch.ones(30, 50, dtype=torch.float64), atol=1e-12)


@given(out=st.integers(1, 90), inp=st.integers(1, 90), bm=st.integers(1, 16), bk=st.integers(1, 16), data=st.data())
@settings(max_examples=60, deadline=None)
def test_tile_load_balance(out: int, inp: int, bm: int, bk: int, data: st.DataObject) -> None:
    cols = -(-inp // bk)
    dp = data.draw(st.integers(1, cols))
    k = data.draw(st.integers(1, dp))
    fam = PeriodicTile(out, inp, dp, k, (bm, bk))
    pat = fam.sample(torch.Generator().manual_seed(data.draw(st.integers(0, 99))))
    counts = pat.kept_tiles.sum(dim=1)
    assert int(counts.max() - counts.min()) <= 1
    assert int(counts.min()) >= 1
    kc = pat.kept_columns()
    for r in range(pat.grid[0]):
        row = kc[r][kc[r] >= 0].long()
        assert torch.equal(row, pat.kept_tiles[r].nonzero().flatten())


def test_co_keep_matches_enumeration() -> None:
    for fam in (PeriodicRow(20, 4, 2), BlockRow(20, 6)):
        starts = range(fam.dp) if isinstance(fam, PeriodicRow) else range(20)
        masks = torch.stack([fam.pattern(s).mask(torch.float64, scaled=False) for s in starts])
        for d in (1, 2, 3, 5):
            emp = (masks[:, 0] * masks[:, d]).mean()
            assert math.isclose(float(fam.co_keep(torch.tensor([d]))[0]), float(emp), abs_tol=1e-12)


def test_binomial_pmf() -> None:
    pmf = binomial_pmf(10, 0.3)
    assert math.isclose(float(pmf.sum()), 1.0, abs_tol=1e-12)
    assert math.isclose(float(pmf[3]), math.comb(10, 3) * 0.3**3 * 0.7**7, rel_tol=1e-12)


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: PeriodicRow(0, 1), "width must be an integer >= 1, got 0"),
        (lambda: PeriodicRow(10, 0), r"dp must be an integer in \[1, 10\], got 0"),
        (lambda: PeriodicRow(10, 3, 4), r"k must be an integer in \[1, 3\], got 4"),
        (lambda: BlockRow(10, 0), r"keep must be an integer in \[1, 10\]"),
        (lambda: RandomSubsetRow(10, 11), r"keep must be an integer in \[1, 10\]"),
        (lambda: PeriodicTile(10, 10, 2, 1, (0, 4)), "tile must be a pair of positive integers"),
        (lambda: PeriodicTile(10, 10, 5, 1, (4, 4)), r"dp must be an integer in \[1, 3\], got 5"),
        (lambda: PatternDistribution((PeriodicRow(4, 2),), torch.tensor([0.5]), 0.5), "sum to 1"),
        (lambda: PatternDistribution((PeriodicRow(4, 2), PeriodicRow(5, 2)), torch.tensor([0.5, 0.5]), 0.5), "width"),
        (lambda: PatternSampler({}, seed=1.5), "seed must be an integer"),
    ],
)
def test_bad_input(build, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_sampler_resume_reproduces_sequence() -> None:
    dists = {
        "a": PatternDistribution((PeriodicRow(50, 2), PeriodicRow(50, 3)), torch.tensor([0.4, 0.6]), 0.6),
        "b": PatternDistribution.single(RandomSubsetRow(30, 10)),
    }
    full = PatternSampler(dists, seed=7)
    seq = [full.draw() for _ in range(20)]
    first = PatternSampler(dists, seed=7)
    for _ in range(8):
        first.draw()
    state = first.state_dict()
    resumed = PatternSampler(dists, seed=0)
    resumed.load_state_dict(state)
    rest = [resumed.draw() for _ in range(12)]
    for want, got in zip(seq[8:], rest):
        for name in dists:
            assert torch.equal(want[name].kept, got[name].kept)
    assert resumed.steps == 20


def test_distribution_expected_rate_and_sampling() -> None:
    dist = PatternDistribution((PeriodicRow(64, 2), PeriodicRow(64, 4)), torch.tensor([0.25, 0.75]), 0.6875)
    assert math.isclose(dist.expected_rate, 0.25 * 0.5 + 0.75 * 0.75)
    gen = torch.Generator().manual_seed(1)
    kept = torch.stack([dist.sample(gen).mask(scaled=False) for _ in range(4000)]).mean()
    assert abs(float(kept) - dist.expected_keep_fraction) < 0.02


@given(kind=st.sampled_from(["periodic", "block", "random"]), width=st.integers(1, 60), n=st.integers(1, 12),
       data=st.data())  # fmt: skip
@settings(max_examples=150, deadline=None)
def test_stratified_groups_keep_every_unit_equally_often(kind, width, n, data) -> None:
    """n stratified draws keep every unit floor or ceil of n x keep-probability times (independent draws: binomial)."""
    from tests.row_families import row_family

    fam = row_family(kind, width, data.draw)
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    pats = fam.sample_stratified(n, gen)
    assert len(pats) == n and all(p.width == width and p.scale == fam.scale for p in pats)
    counts = torch.stack([p.mask(scaled=False) for p in pats]).sum(0)
    expect = n * fam.keep_probability
    assert math.floor(expect + 1e-9) <= int(counts.min()) and int(counts.max()) <= math.ceil(expect - 1e-9)


@pytest.mark.parametrize("fam", [BlockRow(8, 3), PeriodicRow(8, 4, 1), RandomSubsetRow(8, 3),
                                 PeriodicTile(8, 8, 4, 1, (2, 2))])  # fmt: skip
def test_stratified_groups_are_marginally_the_family(fam) -> None:
    """Each group of a stratified draw keeps every unit (tile) with the family's keep probability."""
    gen = torch.Generator().manual_seed(3)
    draws = [fam.sample_stratified(3, gen) for _ in range(6000)]
    for g in range(3):
        if isinstance(fam, PeriodicTile):
            freq = torch.stack([d[g].kept_tiles.double() for d in draws]).mean(0)
        else:
            freq = torch.stack([d[g].mask(scaled=False) for d in draws]).mean(0)
        assert float((freq - fam.keep_probability).abs().max()) < 0.03


def test_sampler_stratified_groups_share_a_candidate_and_resume() -> None:
    dist = PatternDistribution((BlockRow(64, 30), BlockRow(64, 34)), torch.tensor([0.5, 0.5]), 0.5)
    full = PatternSampler({"a": dist}, seed=5)
    seq = [full.draw_groups(4, stratified=True)["a"] for _ in range(10)]
    for pats in seq:
        assert len({p.num_kept for p in pats}) == 1
        counts = torch.stack([p.mask(scaled=False) for p in pats]).sum(0)
        assert set(counts.tolist()) <= {math.floor(4 * pats[0].keep_fraction), math.ceil(4 * pats[0].keep_fraction)}
    part = PatternSampler({"a": dist}, seed=5)
    for _ in range(4):
        part.draw_groups(4, stratified=True)
    resumed = PatternSampler({"a": dist}, seed=0)
    resumed.load_state_dict(part.state_dict())
    for want in seq[4:]:
        got = resumed.draw_groups(4, stratified=True)["a"]
        assert [p.kept.tolist() for p in got] == [p.kept.tolist() for p in want]
