"""Write plan of a full-size gradient written block by block: each element overwritten once, added to after that.

A grouped layer's weight gradient is the sum of one block per pattern group (its kept output units by its kept
input units). Zeroing the whole gradient and adding every block costs a pass over the full weight and an
accumulating product (read and write) per block. Instead, every block is cut into parts: the first block to reach
an element (largest blocks first) overwrites it (``beta = 0``), later blocks add onto it, and only the elements no
block reaches are zeroed. With stratified groups (``group_draws="stratified"``) the blocks of a step cover the
matrix (each unit is kept by about the same number of groups), so almost nothing is zeroed, whatever the kept
count of the step; the price is a few more, smaller products where blocks overlap.
"""

from __future__ import annotations

Rect = tuple[int, int, int, int]
"""``(row_start, row_stop, col_start, col_stop)`` of a block, half-open."""

Write = tuple[int, Rect, bool]
"""One product of the plan: ``(block index, the part of the matrix it writes, whether it adds)``."""


def _area(r: Rect) -> int:
    return max(r[1] - r[0], 0) * max(r[3] - r[2], 0)


def _split(c0: int, c1: int, written: list[tuple[int, int]]) -> list[tuple[int, int, bool]]:
    """``[c0, c1)`` cut at the edges of ``written`` (sorted disjoint intervals): ``(start, stop, already written)``."""
    parts, at = [], c0
    for w0, w1 in written:
        if w1 <= at or w0 >= c1:
            continue
        if w0 > at:
            parts.append((at, w0, False))
        parts.append((max(at, w0), min(c1, w1), True))
        at = min(c1, w1)
    if at < c1:
        parts.append((at, c1, False))
    return parts


def _union(written: list[tuple[int, int]], c0: int, c1: int) -> list[tuple[int, int]]:
    """Sorted disjoint intervals of ``written`` with ``[c0, c1)`` added (touching intervals merged)."""
    out: list[tuple[int, int]] = []
    for w0, w1 in sorted([*written, (c0, c1)]):
        if out and w0 <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], w1))
        else:
            out.append((w0, w1))
    return out


def plan_writes(rects: list[Rect], n_rows: int, n_cols: int) -> tuple[list[Write], list[Rect]]:
    """The parts each of ``rects`` writes, and the blocks of ``[0, n_rows) x [0, n_cols)`` no rect reaches.

    Blocks are taken largest first; within each stretch of rows that the same blocks span, a block overwrites the
    columns no earlier block wrote and adds onto the others. Parts that continue over consecutive stretches are
    merged, so a block that overlaps nothing stays one product. Run the zero blocks and every overwriting part
    first (they are disjoint), then the adding parts: every element then holds the sum of the blocks that cover it,
    and zero where none does. The writes are returned in that order (overwriting parts first).
    """
    order = [k for k in sorted(range(len(rects)), key=lambda k: -_area(rects[k])) if _area(rects[k])]
    breaks = sorted({0, n_rows, *(r for k in order for r in rects[k][:2])})
    writes: list[Write] = []
    fills: list[Rect] = []
    open_parts: dict[tuple[int, int, int, bool], int] = {}  # (block, c0, c1, adds) -> row where the part started
    open_gaps: dict[tuple[int, int], int] = {}  # column gap -> row where its zero block started
    for a, b in zip(breaks[:-1], breaks[1:]):
        written: list[tuple[int, int]] = []
        parts: set[tuple[int, int, int, bool]] = set()
        for k in order:
            r0, r1, c0, c1 = rects[k]
            if r0 <= a and b <= r1:
                parts.update((k, s0, s1, adds) for s0, s1, adds in _split(c0, c1, written))
                written = _union(written, c0, c1)
        gaps = {(s0, s1) for s0, s1, adds in _split(0, n_cols, written) if not adds}
        for key in [key for key in open_parts if key not in parts]:
            writes.append((key[0], (open_parts.pop(key), a, key[1], key[2]), key[3]))
        for gap in [gap for gap in open_gaps if gap not in gaps]:
            fills.append((open_gaps.pop(gap), a, *gap))
        for key in sorted(parts):
            open_parts.setdefault(key, a)
        for gap in sorted(gaps):
            open_gaps.setdefault(gap, a)
    writes += [(key[0], (start, n_rows, key[1], key[2]), key[3]) for key, start in open_parts.items()]
    fills += [(start, n_rows, *gap) for gap, start in open_gaps.items()]
    writes.sort(key=lambda w: w[2])  # stable: overwriting parts first
    return writes, fills
