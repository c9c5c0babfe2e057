"""Write plan of a blockwise-written gradient: every element is overwritten or zeroed exactly once before any part
adds onto it, each block's parts partition the block, and replaying the plan gives the sum of the blocks."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_ard.kernels.cover import plan_writes


@st.composite
def _rects(draw):
    n_rows, n_cols = draw(st.integers(1, 30)), draw(st.integers(1, 30))
    rects = []
    for _ in range(draw(st.integers(0, 9))):
        r0, c0 = draw(st.integers(0, n_rows)), draw(st.integers(0, n_cols))
        rects.append((r0, draw(st.integers(r0, n_rows)), c0, draw(st.integers(c0, n_cols))))
    return rects, n_rows, n_cols


def _replay(writes, fills, rects, values, n_rows, n_cols) -> torch.Tensor:
    got = torch.full((n_rows, n_cols), float("nan"), dtype=torch.float64)  # NaN: read before written
    for r0, r1, c0, c1 in fills:
        got[r0:r1, c0:c1] = 0
    for k, (r0, r1, c0, c1), adds in writes:
        b_r0, _, b_c0, _ = rects[k]
        part = values[k][r0 - b_r0 : r1 - b_r0, c0 - b_c0 : c1 - b_c0]
        if adds:
            got[r0:r1, c0:c1] += part
        else:
            got[r0:r1, c0:c1] = part
    return got


@given(case=_rects())
@settings(max_examples=300, deadline=None)
def test_plan_writes_every_element_once_then_adds(case) -> None:
    rects, n_rows, n_cols = case
    writes, fills = plan_writes(rects, n_rows, n_cols)
    first = torch.zeros(n_rows, n_cols, dtype=torch.int64)  # overwritten or zeroed
    per_block = [torch.zeros(n_rows, n_cols, dtype=torch.int64) for _ in rects]
    seen_add = False
    for k, (r0, r1, c0, c1), adds in writes:
        assert r1 > r0 and c1 > c0, "no empty product"
        b = rects[k]
        assert b[0] <= r0 and r1 <= b[1] and b[2] <= c0 and c1 <= b[3], "a part lies inside its block"
        assert not (seen_add and not adds), "overwriting parts come before adding ones"
        seen_add |= adds
        per_block[k][r0:r1, c0:c1] += 1
        if not adds:
            first[r0:r1, c0:c1] += 1
    for r0, r1, c0, c1 in fills:
        assert r1 > r0 and c1 > c0, "no empty zero block"
        first[r0:r1, c0:c1] += 1
    assert bool((first == 1).all()), "every element written exactly once before the adding parts"
    for (r0, r1, c0, c1), count in zip(rects, per_block, strict=True):
        want = torch.zeros(n_rows, n_cols, dtype=torch.int64)
        want[r0:r1, c0:c1] = 1
        assert torch.equal(count, want), "a block's parts partition the block"
    values = [torch.randn(r1 - r0, c1 - c0, dtype=torch.float64) for r0, r1, c0, c1 in rects]
    want = torch.zeros(n_rows, n_cols, dtype=torch.float64)
    for (r0, r1, c0, c1), v in zip(rects, values, strict=True):
        want[r0:r1, c0:c1] += v
    torch.testing.assert_close(_replay(writes, fills, rects, values, n_rows, n_cols), want)


def test_blocks_that_cover_the_matrix_need_no_zeros() -> None:
    # producer rows at p = 0.5, 2 groups drawn a kept count above half: the overlap adds, nothing is zeroed
    writes, fills = plan_writes([(0, 5, 0, 6), (4, 8, 0, 6)], 8, 6)
    assert fills == []
    assert writes == [(0, (0, 5, 0, 6), False), (1, (5, 8, 0, 6), False), (1, (4, 5, 0, 6), True)]
    # a block that overlaps nothing stays one product; the uncovered rest is one zero block
    writes, fills = plan_writes([(0, 4, 0, 6)], 8, 6)
    assert writes == [(0, (0, 4, 0, 6), False)] and fills == [(4, 8, 0, 6)]
    writes, fills = plan_writes([], 3, 2)
    assert writes == [] and fills == [(0, 3, 0, 2)]
