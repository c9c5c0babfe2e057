"""Row (neuron) pattern families: which of a layer's N units are kept for one training step.

A family is a frozen description (width, period, ...) that draws one :class:`RowPattern` per step from a
``torch.Generator``. Every family keeps each unit with the same probability over draws, and scales the kept
units by the reciprocal of that probability, so the scaled output is unbiased (docs/method.md, "Statistical
equivalence"). Families also give the exact statistics the distribution search needs: the distribution of the
number of kept units per step, and the probability that two units at a given distance are kept together.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from lightning_ard._validate import check_in_range, check_positive_int

T = TypeVar("T")


class DeviceCached:
    """The one per-device cache of a pattern: every tensor derived from a pattern for a device (its kept indices,
    the kernels' tables, position maps) is built once by :meth:`cached` and stored in the pattern's ``_on_device``
    dict, so it lives and dies with the pattern (families cache their patterns per offset). Kernels read them
    through :mod:`lightning_ard.kernels.kept`; patterns stay free of kernel imports."""

    _on_device: dict

    def cached(self, name: str, device: torch.device | str | None, build: Callable[[], T]) -> T:
        """The value ``build()`` for ``(name, device)``, built on first use and then reused."""
        key = (name, device if device is None or isinstance(device, torch.device) else torch.device(device))
        value = self._on_device.get(key)
        if value is None:
            value = self._on_device[key] = build()
        return value


@dataclass(frozen=True, eq=False)
class RowPattern(DeviceCached):
    """One step's kept units of an N-unit layer.

    Attributes:
        width: N, the number of units of the layer.
        kept: sorted int64 indices of the kept units (on the CPU).
        scale: factor applied to kept activations (reciprocal of the family's keep probability).
        stride: ``(start, step)`` when ``kept == range(start, width, step)``; lets backends use strided views
            instead of gathers. ``None`` otherwise.
        key: identifies the kept set within its family (e.g. ``("periodic", dp, k, offset)``), so that pattern
            groups drawing the same pattern share one weight gather and one GEMM; ``None`` = not known to repeat.
        span: ``(start, stop)`` when ``kept == range(start, stop)`` (a block that does not wrap): backends then
            take a slice, a view of the weight, instead of gathering. ``None`` otherwise.
    """

    width: int
    kept: torch.Tensor
    scale: float
    stride: tuple[int, int] | None = None
    key: tuple | None = None
    span: tuple[int, int] | None = None
    _on_device: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_kept(self) -> int:
        """Number of kept units this step."""
        return int(self.kept.numel())

    @property
    def keep_fraction(self) -> float:
        """Fraction of units kept this step (work that remains in the products this pattern shrinks)."""
        return self.num_kept / self.width

    @property
    def merge_key(self) -> object:
        """Equal for two patterns with the same kept units and scale, so pattern groups that drew them share one
        weight gather and one product; a pattern without a :attr:`key` only equals itself."""
        return (self.key, self.scale) if self.key is not None else id(self)

    @property
    def ranges(self) -> tuple[tuple[int, int], ...] | None:
        """The kept units as sorted contiguous ``(start, stop)`` ranges when there are at most two (a block, or a
        block that wraps around the end): products then run on weight views. ``None`` otherwise (gather)."""
        if self.stride is not None:
            start, step = self.stride
            return ((start, self.width),) if step == 1 else None
        if self.span is not None:
            return (self.span,)
        ranges = self.cached("ranges", None, lambda: (self._ranges_of_kept(),))  # a 1-tuple: None is cached too
        return ranges[0]

    def _ranges_of_kept(self) -> tuple[tuple[int, int], ...] | None:
        kept = self.kept
        if kept.numel() == 0:
            return None
        breaks = (kept[1:] - kept[:-1] != 1).nonzero().flatten()
        if breaks.numel() > 1:
            return None
        if breaks.numel() == 0:
            return ((int(kept[0]), int(kept[-1]) + 1),)
        cut = int(breaks[0]) + 1
        return ((int(kept[0]), int(kept[cut - 1]) + 1), (int(kept[cut]), int(kept[-1]) + 1))

    def selector(self, device: torch.device | str) -> torch.Tensor | slice | None:
        """The cheapest way to pick the kept units: ``None`` (all kept), a ``slice`` (strided, or a contiguous
        span), or :meth:`index`."""
        if self.stride is None:
            return slice(*self.span) if self.span is not None else self.index(device)
        start, step = self.stride
        return None if (start, step) == (0, 1) else slice(start, None, step)

    def index(self, device: torch.device | str) -> torch.Tensor:
        """The kept indices on ``device`` (copied once per pattern and device, then cached)."""
        return self.cached("index", device, lambda: self.kept.to(device, non_blocking=True))

    def mask(self, dtype: torch.dtype = torch.float32, scaled: bool = True) -> torch.Tensor:
        """The equivalent dense mask over all N units (scaled by ``scale`` when ``scaled``); for tests and oracles."""
        m = torch.zeros(self.width, dtype=dtype)
        m[self.kept] = self.scale if scaled else 1.0
        return m


class RowFamily(ABC):
    """A family of row patterns over ``width`` units, with a fixed expected drop rate."""

    width: int

    @property
    @abstractmethod
    def keep_probability(self) -> float:
        """Probability that a given unit is kept in one draw (the same for every unit)."""

    @property
    def rate(self) -> float:
        """Expected drop rate of one unit."""
        return 1.0 - self.keep_probability

    @property
    def scale(self) -> float:
        """Factor applied to kept activations: 1 / keep probability."""
        return 1.0 / self.keep_probability

    @abstractmethod
    def sample(self, generator: torch.Generator | None = None) -> RowPattern:
        """Draw this step's pattern."""

    def sample_many(self, n: int, generator: torch.Generator | None = None) -> list[RowPattern]:
        """``n`` independent draws (pattern groups); families with few distinct patterns return cached objects."""
        return [self.sample(generator) for _ in range(n)]

    def sample_stratified(self, n: int, generator: torch.Generator | None = None) -> list[RowPattern]:
        """``n`` draws that share one random base and split the family's offsets into ``n`` equal strata, in
        random order: every unit is kept in (almost) exactly ``n`` x keep-probability of them. Families without
        an offset to stratify draw independently."""
        return self.sample_many(n, generator)

    @abstractmethod
    def kept_count_pmf(self) -> torch.Tensor:
        """Exact distribution (float64, length width + 1) of the number of kept units in one draw."""

    @abstractmethod
    def co_keep(self, distance: torch.Tensor) -> torch.Tensor:
        """P(unit i and unit i + d both kept), float64, for each distance d in ``distance`` (1 <= d < width).

        For the periodic family this is exact for every i; for the block family it is the cyclic value.
        """


@functools.lru_cache(maxsize=4096)
def _cached_periodic(family: "PeriodicRow", offset: int) -> RowPattern:
    return family._build(offset)


@functools.lru_cache(maxsize=4096)
def _cached_block(family: "BlockRow", start: int) -> RowPattern:
    return family._build(start)


def _randint(high: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(high, (1,), generator=generator).item())


def stratified_offsets(n: int, period: int, generator: torch.Generator | None = None) -> list[int]:
    """``n`` offsets in ``[0, period)`` evenly spaced from one uniform base, in a uniformly random order: each is
    marginally uniform, and together they cover the period in equal strata."""
    base = _randint(period, generator)
    order = torch.randperm(n, generator=generator).tolist()
    return [(base + (g * period) // n) % period for g in order]


@dataclass(frozen=True)
class PeriodicRow(RowFamily):
    """The paper's regular row pattern: unit i is kept iff ``((i - b) mod dp) < k`` for a uniform offset b.

    Args:
        width: number of units N (need not be a multiple of ``dp``).
        dp: period, 1 <= dp <= width.
        k: units kept per period, 1 <= k <= dp (the paper uses k = 1).
    """

    width: int
    dp: int
    k: int = 1

    def __post_init__(self) -> None:
        check_positive_int("width", self.width)
        check_in_range("dp", self.dp, 1, self.width)
        check_in_range("k", self.k, 1, self.dp)

    @property
    def keep_probability(self) -> float:
        return self.k / self.dp

    @property
    def scale(self) -> float:
        return self.dp / self.k

    def pattern(self, offset: int) -> RowPattern:
        """The pattern for a given offset b in [0, dp) (one cached object per offset, so its device indices are
        built once)."""
        check_in_range("offset", offset, 0, self.dp - 1)
        return _cached_periodic(self, offset)

    def _build(self, offset: int) -> RowPattern:
        if self.k == 1:
            kept = torch.arange(offset, self.width, self.dp)
            return RowPattern(self.width, kept, self.scale, (offset, self.dp), ("periodic", self.dp, 1, offset))
        i = torch.arange(self.width)
        kept = i[(i - offset).remainder(self.dp) < self.k]
        stride = (0, 1) if self.k == self.dp else None
        key = ("all",) if self.k == self.dp else ("periodic", self.dp, self.k, offset)
        return RowPattern(self.width, kept, self.scale, stride, key)

    def sample(self, generator: torch.Generator | None = None) -> RowPattern:
        return self.pattern(_randint(self.dp, generator))

    def sample_many(self, n: int, generator: torch.Generator | None = None) -> list[RowPattern]:
        return [self.pattern(b) for b in torch.randint(self.dp, (n,), generator=generator).tolist()]

    def sample_stratified(self, n: int, generator: torch.Generator | None = None) -> list[RowPattern]:
        return [self.pattern(b) for b in stratified_offsets(n, self.dp, generator)]

    def kept_count_pmf(self) -> torch.Tensor:
        q, rmd = divmod(self.width, self.dp)
        b = torch.arange(self.dp)[:, None]
        r = torch.arange(self.k)[None, :]
        counts = self.k * q + ((r + b).remainder(self.dp) < rmd).sum(dim=1)
        return torch.bincount(counts, minlength=self.width + 1).to(torch.float64) / self.dp

    def co_keep(self, distance: torch.Tensor) -> torch.Tensor:
        r = torch.arange(self.k)[None, :]
        both = ((r + distance.long()[:, None]).remainder(self.dp) < self.k).sum(dim=1)
        return both.to(torch.float64) / self.dp


@dataclass(frozen=True)
class FixedCountRow(RowFamily):
    """Row families that keep exactly ``keep`` of ``width`` units in every draw (what the block and the random
    subset families share: validation, keep probability, scale and the kept-count distribution).

    Args:
        width: number of units N.
        keep: number of kept units K, 1 <= K <= N.
    """

    width: int
    keep: int

    def __post_init__(self) -> None:
        check_positive_int("width", self.width)
        check_in_range("keep", self.keep, 1, self.width)

    @property
    def keep_probability(self) -> float:
        return self.keep / self.width

    @property
    def scale(self) -> float:
        return self.width / self.keep

    def kept_count_pmf(self) -> torch.Tensor:
        pmf = torch.zeros(self.width + 1, dtype=torch.float64)
        pmf[self.keep] = 1.0
        return pmf


@dataclass(frozen=True)
class BlockRow(FixedCountRow):
    """A contiguous (cyclic) block of ``keep`` units starting at a uniform unit; SliceOut-like, best locality.

    Args:
        width: number of units N.
        keep: number of kept units K, 1 <= K <= N.
    """

    def pattern(self, start: int) -> RowPattern:
        """The block that starts at unit ``start`` (wrapping around the end; cached per start)."""
        check_in_range("start", start, 0, self.width - 1)
        return _cached_block(self, start)

    def _build(self, start: int) -> RowPattern:
        key = ("block", self.keep, start)
        if self.keep == self.width:
            return RowPattern(self.width, torch.arange(self.width), self.scale, (0, 1), ("all",))
        if start + self.keep <= self.width:
            kept = torch.arange(start, start + self.keep)
            return RowPattern(self.width, kept, self.scale, None, key, (start, start + self.keep))
        kept = torch.cat([torch.arange(0, start + self.keep - self.width), torch.arange(start, self.width)])
        return RowPattern(self.width, kept, self.scale, None, key)

    def sample(self, generator: torch.Generator | None = None) -> RowPattern:
        return self.pattern(_randint(self.width, generator))

    def sample_many(self, n: int, generator: torch.Generator | None = None) -> list[RowPattern]:
        return [self.pattern(s) for s in torch.randint(self.width, (n,), generator=generator).tolist()]

    def sample_stratified(self, n: int, generator: torch.Generator | None = None) -> list[RowPattern]:
        return [self.pattern(s) for s in stratified_offsets(n, self.width, generator)]

    def co_keep(self, distance: torch.Tensor) -> torch.Tensor:
        d = distance.to(torch.float64)
        both = (self.keep - d).clamp(min=0) + (self.keep - (self.width - d)).clamp(min=0)
        return both / self.width


@dataclass(frozen=True)
class RandomSubsetRow(FixedCountRow):
    """A uniformly random subset of exactly ``keep`` units: maximum mask diversity, gathered by index.

    Args:
        width: number of units N.
        keep: number of kept units K, 1 <= K <= N.
    """

    def sample(self, generator: torch.Generator | None = None) -> RowPattern:
        kept = torch.randperm(self.width, generator=generator)[: self.keep].sort().values
        if self.keep == self.width:
            return RowPattern(self.width, kept, self.scale, (0, 1), ("all",))
        return RowPattern(self.width, kept, self.scale, None)

    def sample_stratified(self, n: int, generator: torch.Generator | None = None) -> list[RowPattern]:
        """Windows of ``keep`` consecutive positions of one random permutation, at ``n`` evenly spaced starts."""
        if self.keep == self.width:
            return [self.sample(generator) for _ in range(n)]
        perm = torch.randperm(self.width, generator=generator)
        window = torch.arange(self.keep)
        return [
            RowPattern(self.width, perm[(start + window) % self.width].sort().values, self.scale, None)
            for start in stratified_offsets(n, self.width, generator)
        ]

    def co_keep(self, distance: torch.Tensor) -> torch.Tensor:
        n, k = self.width, self.keep
        value = k * (k - 1) / (n * (n - 1)) if n > 1 else float(k == n)
        return torch.full(distance.shape, value, dtype=torch.float64)


def binomial_pmf(n: int, keep_probability: float) -> torch.Tensor:
    """Binomial(n, q) pmf (float64, length n + 1): standard dropout's distribution of the kept count."""
    q = torch.tensor(min(max(keep_probability, 0.0), 1.0), dtype=torch.float64)
    pmf = torch.distributions.Binomial(n, probs=q).log_prob(torch.arange(n + 1, dtype=torch.float64)).exp()
    return pmf / pmf.sum()  # log-gamma rounding leaves ~1e-10 at large n
