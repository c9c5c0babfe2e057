"""Cover plan of a blockwise-written gradient: overwriting blocks are disjoint, and with the zeroed blocks they
partition the matrix exactly."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_ard.kernels.cover import plan_cover


@st.composite
def _rects(draw):
    n_rows, n_cols = draw(st.integers(1, 30)), draw(st.integers(1, 30))
    rects = []
    for _ in range(draw(st.integers(0, 9))):
        r0, c0 = draw(st.integers(0, n_rows)), draw(st.integers(0, n_cols))
        rects.append((r0, draw(st.integers(r0, n_rows)), c0, draw(st.integers(c0, n_cols))))
    return rects, n_rows, n_cols


@given(case=_rects())
@settings(max_examples=300, deadline=None)
def test_overwriting_and_zeroed_blocks_partition_the_matrix(case) -> None:
    rects, n_rows, n_cols = case
    first, fills = plan_cover(rects, n_rows, n_cols)
    count = torch.zeros(n_rows, n_cols, dtype=torch.int64)
    for (r0, r1, c0, c1), overwrite in zip(rects, first, strict=True):
        if overwrite:
            assert r1 > r0 and c1 > c0
            count[r0:r1, c0:c1] += 1
    for r0, r1, c0, c1 in fills:
        assert r1 > r0 and c1 > c0, "no empty zero block"
        count[r0:r1, c0:c1] += 1
    assert bool((count == 1).all()), "every element written exactly once before the adding blocks"
    # replaying the plan gives the sum of all blocks
    values = [torch.randn(r1 - r0, c1 - c0, dtype=torch.float64) for r0, r1, c0, c1 in rects]
    got = torch.full((n_rows, n_cols), float("nan"), dtype=torch.float64)
    for r0, r1, c0, c1 in fills:
        got[r0:r1, c0:c1] = 0
    for k in sorted(range(len(rects)), key=lambda k: not first[k]):
        r0, r1, c0, c1 = rects[k]
        if first[k]:
            got[r0:r1, c0:c1] = values[k]
        else:
            got[r0:r1, c0:c1] += values[k]
    want = torch.zeros(n_rows, n_cols, dtype=torch.float64)
    for (r0, r1, c0, c1), v in zip(rects, values, strict=True):
        want[r0:r1, c0:c1] += v
    torch.testing.assert_close(got, want)


def test_blocks_that_tile_the_matrix_need_no_zeros() -> None:
    # two complementary row halves (stratified groups at p = 0.5 of a producer): nothing to zero
    first, fills = plan_cover([(0, 4, 0, 6), (4, 8, 0, 6), (2, 6, 0, 6)], 8, 6)
    assert first == [True, True, False] and fills == []
    first, fills = plan_cover([], 3, 2)
    assert first == [] and fills == [(0, 3, 0, 2)]
