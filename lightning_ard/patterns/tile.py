"""Tile (synapse, DropConnect) pattern family: whole tiles of a weight matrix are dropped for one step.

The weight ``W`` of shape (out_features, in_features) is cut into tiles of ``tile = (rows, cols)`` (the GEMM's
block shape); tile (r, c) of the grid is kept by a periodic rule along each tile row, shifted by one per tile row.
The rule spreads ``k`` kept tiles evenly over every ``dp`` consecutive tiles (a Bresenham line), so every tile
row keeps the same number of tiles up to one (load balance for the kernels), and every tile is kept with
probability ``k / dp`` over the uniform offset (kept weights are scaled by ``dp / k``: unbiased).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lightning_ard._validate import check_in_range, check_positive_int, check_tile
from lightning_ard.patterns.row import DeviceCached, stratified_offsets

DEFAULT_TILE = (64, 64)
"""Tile shape ``(rows, cols)`` when none is given: a GEMM block shape the kernels handle well."""


def kept_table(kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a bool matrix: (int32 table of the True column indices of each row, padded with -1; int32 counts)."""
    counts = kept.sum(dim=1)
    width = int(counts.max()) if kept.shape[0] else 0
    order = torch.argsort((~kept).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.arange(width)[None, :] < counts[:, None]
    table = torch.where(valid, order, torch.full_like(order, -1))
    return table.to(torch.int32).contiguous(), counts.to(torch.int32)


@dataclass(frozen=True, eq=False)
class TilePattern(DeviceCached):
    """One step's kept tiles of a weight matrix.

    Attributes:
        out_features, in_features: the weight's shape.
        tile: (rows, cols) of one tile; edge tiles may be smaller.
        kept_tiles: bool tensor (grid_rows, grid_cols), True where the tile is kept (on the CPU).
        scale: factor applied to kept weights (dp / k).
    """

    out_features: int
    in_features: int
    tile: tuple[int, int]
    kept_tiles: torch.Tensor
    scale: float
    _on_device: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def grid(self) -> tuple[int, int]:
        """(tile rows, tile columns) of the grid."""
        return tuple(self.kept_tiles.shape)  # type: ignore[return-value]

    def element_mask(self, dtype: torch.dtype = torch.float32, scaled: bool = True) -> torch.Tensor:
        """Dense (out_features, in_features) mask of the weight (scaled by ``scale`` when ``scaled``)."""
        rows, cols = self.tile
        m = self.kept_tiles.repeat_interleave(rows, 0).repeat_interleave(cols, 1)
        m = m[: self.out_features, : self.in_features].to(dtype)
        return m * self.scale if scaled else m

    @property
    def keep_fraction(self) -> float:
        """Fraction of weight elements kept this step (edge tiles counted by their real size)."""
        rows, cols = self.tile
        gr, gc = self.grid
        row_sizes = torch.full((gr,), rows)
        row_sizes[-1] = self.out_features - rows * (gr - 1)
        col_sizes = torch.full((gc,), cols)
        col_sizes[-1] = self.in_features - cols * (gc - 1)
        kept = (self.kept_tiles.to(torch.int64) * row_sizes[:, None] * col_sizes[None, :]).sum()
        return float(kept) / (self.out_features * self.in_features)

    def kept_columns(self) -> torch.Tensor:
        """(grid_rows, max kept per row) int32 column-tile indices of kept tiles, padded with -1; kernels read it."""
        return kept_table(self.kept_tiles)[0]

    def kept_columns_on(self, device: torch.device | str) -> torch.Tensor:
        """:meth:`kept_columns` on ``device``, cached per pattern."""
        return self.cached("kept_columns", device, lambda: self.kept_columns().to(device))


@dataclass(frozen=True)
class PeriodicTile:
    """Periodic, load-balanced tile pattern over the weight's tile grid.

    Tile (r, c) is kept iff ``floor((c + r + b + 1) k / dp) - floor((c + r + b) k / dp) == 1`` for a uniform
    offset b in [0, dp): k tiles of every dp consecutive tiles in a row, the row's phase advancing by one per
    tile row so that the kept tiles form diagonals.

    Args:
        out_features, in_features: shape of the weight.
        dp: period along a tile row, 1 <= dp <= number of tile columns (every tile row keeps at least one tile).
        k: tiles kept per period, 1 <= k <= dp.
        tile: (rows, cols) of a tile, the GEMM block shape.
    """

    out_features: int
    in_features: int
    dp: int
    k: int = 1
    tile: tuple[int, int] = DEFAULT_TILE

    def __post_init__(self) -> None:
        check_positive_int("out_features", self.out_features)
        check_positive_int("in_features", self.in_features)
        object.__setattr__(self, "tile", check_tile("tile", self.tile))
        check_in_range("dp", self.dp, 1, self.grid[1])
        check_in_range("k", self.k, 1, self.dp)

    @property
    def width(self) -> int:
        """Number of tiles in the grid (the 'units' this family drops)."""
        gr, gc = self.grid
        return gr * gc

    @property
    def grid(self) -> tuple[int, int]:
        """(tile rows, tile columns)."""
        rows, cols = self.tile
        return (-(-self.out_features // rows), -(-self.in_features // cols))

    @property
    def keep_probability(self) -> float:
        """Probability that a given tile is kept in one draw."""
        return self.k / self.dp

    @property
    def rate(self) -> float:
        """Expected drop rate of one weight."""
        return 1.0 - self.keep_probability

    @property
    def scale(self) -> float:
        """Factor applied to kept weights: dp / k."""
        return self.dp / self.k

    def _kept(self, phase: torch.Tensor) -> torch.Tensor:
        return (phase + 1) * self.k // self.dp - phase * self.k // self.dp == 1

    def pattern(self, offset: int) -> TilePattern:
        """The pattern for a given offset b in [0, dp)."""
        check_in_range("offset", offset, 0, self.dp - 1)
        gr, gc = self.grid
        phase = torch.arange(gr)[:, None] + torch.arange(gc)[None, :] + offset
        return TilePattern(self.out_features, self.in_features, self.tile, self._kept(phase), self.scale)

    def sample(self, generator: torch.Generator | None = None) -> TilePattern:
        """Draw this step's pattern."""
        return self.pattern(int(torch.randint(self.dp, (1,), generator=generator).item()))

    def sample_many(self, n: int, generator: torch.Generator | None = None) -> list[TilePattern]:
        """``n`` independent draws (pattern groups)."""
        return [self.pattern(b) for b in torch.randint(self.dp, (n,), generator=generator).tolist()]

    def sample_stratified(self, n: int, generator: torch.Generator | None = None) -> list[TilePattern]:
        """``n`` draws whose offsets split the period in equal strata (every tile kept by almost the same number)."""
        return [self.pattern(b) for b in stratified_offsets(n, self.dp, generator)]

    def kept_count_pmf(self) -> torch.Tensor:
        """Exact distribution (float64, length tiles + 1) of the number of kept tiles in one draw."""
        pmf = torch.zeros(self.width + 1, dtype=torch.float64)
        for b in range(self.dp):
            pmf[int(self.pattern(b).kept_tiles.sum())] += 1.0 / self.dp
        return pmf

    def co_keep(self, distance: torch.Tensor) -> torch.Tensor:
        """P(tiles c and c + d of one tile row both kept), float64, for each d in ``distance``."""
        s = torch.arange(self.dp)[None, :]
        d = distance.long()[:, None]
        return (self._kept(s) & self._kept(s + d)).sum(dim=1).to(torch.float64) / self.dp


TILE_SIDES = (64, 32, 16, 8)
"""Tile sides ``tile="auto"`` tries, largest first (a GEMM block shape the kernels handle well)."""
MIN_TILE_COLUMNS, MIN_TILE_ROWS = 16, 8
"""``tile="auto"`` wants this many tile columns (periods up to 16 along a tile row: rates down to 1/16 apart) and
tile rows (the pattern shifts per tile row: more rows, more independent draws)."""


def auto_tile(out_features: int, in_features: int) -> tuple[int, int]:
    """The tile shape ``tile="auto"`` picks for a weight of shape (out_features, in_features).

    Per dimension, the largest side of :data:`TILE_SIDES` that leaves at least :data:`MIN_TILE_COLUMNS` tile
    columns (:data:`MIN_TILE_ROWS` tile rows); a dimension too small for 8-wide tiles gets ``dim // minimum``
    (at least 1), so any layer has a grid fine enough for the search: 64x64 on a 1024x1024 weight, 16x16 on
    128x256 (8 x 16 tiles, where 64x64 gave 8 tiles and kept all of them in 62 % of draws at p = 0.1), 1x3 on
    a 10x56 one.
    """
    check_positive_int("out_features", out_features)
    check_positive_int("in_features", in_features)

    def side(dim: int, minimum: int) -> int:
        return next((t for t in TILE_SIDES if dim >= minimum * t), max(1, dim // minimum))

    return side(out_features, MIN_TILE_ROWS), side(in_features, MIN_TILE_COLUMNS)
