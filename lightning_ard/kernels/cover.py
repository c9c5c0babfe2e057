"""Cover plan of a full-size gradient written block by block: which blocks may overwrite, which parts need zeros.

A grouped layer's weight gradient is the sum of one block per pattern group (its kept output units by its kept
input units). Zeroing the whole gradient and adding every block costs a pass over the full weight and an
accumulating product (read and write) per block. Instead, a set of mutually disjoint blocks is written with
``beta = 0`` (they overwrite whatever is there), only the rest of the matrix is zeroed, and the remaining blocks
add onto the result. With stratified groups (``group_draws="stratified"``) the blocks of one side often tile the
matrix, and then nothing is zeroed at all.
"""

from __future__ import annotations

Rect = tuple[int, int, int, int]
"""``(row_start, row_stop, col_start, col_stop)`` of a block, half-open."""


def _area(r: Rect) -> int:
    return max(r[1] - r[0], 0) * max(r[3] - r[2], 0)


def _disjoint(a: Rect, b: Rect) -> bool:
    return a[1] <= b[0] or b[1] <= a[0] or a[3] <= b[2] or b[3] <= a[2]


def plan_cover(rects: list[Rect], n_rows: int, n_cols: int) -> tuple[list[bool], list[Rect]]:
    """Which of ``rects`` overwrite (largest first, each disjoint from those chosen before it), and the blocks of
    ``[0, n_rows) x [0, n_cols)`` that none of them covers (to be zeroed before any block is written).

    Write the overwriting blocks first, then add the others: every element then holds the sum of the blocks that
    cover it, and zero where none does. Empty rects never overwrite. The zero blocks are merged across rows with the
    same gaps, so their number stays small.
    """
    chosen: list[Rect] = []
    first = [False] * len(rects)
    for k in sorted(range(len(rects)), key=lambda k: -_area(rects[k])):
        if _area(rects[k]) and all(_disjoint(rects[k], c) for c in chosen):
            chosen.append(rects[k])
            first[k] = True
    breaks = sorted({0, n_rows, *(r for c in chosen for r in c[:2])})
    fills: list[Rect] = []
    open_gaps: dict[tuple[int, int], int] = {}  # column gap -> row where its zero block started
    for a, b in zip(breaks[:-1], breaks[1:]):
        spans = sorted((c[2], c[3]) for c in chosen if c[0] <= a and b <= c[1])
        gaps, at = [], 0
        for c0, c1 in spans:
            if c0 > at:
                gaps.append((at, c0))
            at = max(at, c1)
        if at < n_cols:
            gaps.append((at, n_cols))
        for gap in list(open_gaps):
            if gap not in gaps:
                fills.append((open_gaps.pop(gap), a, *gap))
        for gap in gaps:
            open_gaps.setdefault(gap, a)
    fills += [(start, n_rows, *gap) for gap, start in open_gaps.items()]
    return first, fills
