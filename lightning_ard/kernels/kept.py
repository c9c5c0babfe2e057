"""Kept units of one side of a weight (its rows or its columns) on one device: the one form every backend reads.

A :class:`~lightning_ard.patterns.RowPattern` describes its kept units once (a slice when they are strided or one
contiguous span, at most two ``(start, stop)`` ranges, or an index vector); :class:`Kept` is that description on a
device, with everything a backend derives from it: the PyTorch ops take :attr:`Kept.selector` (a view when it can)
or :attr:`Kept.selection` (ranges), the gathered and grouped backends :attr:`Kept.span`, :attr:`Kept.index` and
:meth:`Kept.pos`, the Triton kernels :attr:`Kept.index32` and :attr:`Kept.dropped32`.

Why the cache lives on the pattern: every device tensor derived from a pattern is stored in that pattern's own
cache (:meth:`~lightning_ard.patterns.row.DeviceCached.cached`), so it is built once per pattern and device, dies
with the pattern, and is shared by every backend and by the LSTM layer (which reads ``pattern.index(device)``);
patterns may not import kernels, so the kernels' derived forms are built here and handed to that cache. A
:class:`Kept` itself is a light view made per call and never cached, so that cache holds nothing that refers back
to its pattern (a pattern drawn for one step is freed, device tensors included, as soon as the step lets it go).
"""

from __future__ import annotations

from typing import Union

import torch

from lightning_ard.kernels.indices import check_kept
from lightning_ard.patterns import RowPattern

Index = Union[torch.Tensor, slice, None]
"""Kept units as the PyTorch ops take them: ``None`` (every unit), a ``slice`` (a view) or an int64 index."""

Ranges = tuple[tuple[int, int], ...]
"""Sorted contiguous ``(start, stop)`` ranges of kept units."""

Selection = Union[Ranges, Index]
"""Kept units as the per-group PyTorch path takes them: ranges (weight views) when it can, else an :data:`Index`."""


class Kept:
    """The kept units of one side of a weight on one device: a light view of a pattern, made per call.

    Attributes:
        width: number of units of the side.
        count: number of kept units.
        device: where the derived tensors live.
        span: ``(start, stop)`` when the kept units are one contiguous range (``(0, width)``: all kept).
        pattern: the row pattern (None: every unit kept, no pattern); held, so an autograd Function that saves a
            ``Kept`` for its backward keeps the pattern (and its cached tensors) alive until then.
    """

    __slots__ = ("count", "device", "pattern", "span", "width")

    def __init__(
        self, width: int, count: int, device: torch.device, span: tuple[int, int] | None, pattern: RowPattern | None
    ) -> None:
        self.width, self.count, self.device, self.span, self.pattern = width, count, device, span, pattern

    def __repr__(self) -> str:
        return f"Kept(width={self.width}, count={self.count}, device={self.device}, span={self.span})"

    @property
    def full(self) -> bool:
        """Every unit kept."""
        return self.count == self.width

    @property
    def selector(self) -> Index:
        """``None`` (all kept), a ``slice`` (strided, or a contiguous span) or the int64 :attr:`index`."""
        return None if self.full else self.pattern.selector(self.device)  # type: ignore[union-attr]

    @property
    def selection(self) -> Selection:
        """``None`` (all kept), sorted ``(start, stop)`` ranges when there are at most two, else :attr:`selector`."""
        if self.full:
            return None
        ranges = self.pattern.ranges  # type: ignore[union-attr]
        return ranges if ranges is not None else self.selector

    @property
    def index(self) -> torch.Tensor:
        """int64 kept indices on the device."""
        if self.pattern is None:
            return self._derived("arange", lambda: torch.arange(self.width, device=self.device))
        return self.pattern.index(self.device)

    @property
    def index32(self) -> torch.Tensor | None:
        """int32 kept indices on the device, what the Triton kernels read (half the bytes, 32-bit address
        arithmetic); ``None`` when every unit is kept (no gather at all)."""
        if self.full:
            return None
        return self._derived("index32", lambda: self.pattern.kept.to(torch.int32).to(self.device, non_blocking=True))

    @property
    def dropped32(self) -> torch.Tensor:
        """int32 sorted dropped units on the device (built on the CPU: no device sync)."""
        return self._derived("dropped32", lambda: self.dropped_cpu().to(torch.int32).to(self.device, non_blocking=True))

    def dropped_cpu(self) -> torch.Tensor:
        """int64 sorted dropped units, on the CPU."""
        if self.pattern is None:
            return torch.zeros(0, dtype=torch.int64)
        return self.pattern.cached("dropped", None, lambda: complement(self.pattern.kept, self.width))

    def pos(self) -> torch.Tensor:
        """int64 ``(width,)`` position of each unit among the kept ones, ``count`` where dropped (the zero slot of a
        one-pass scatter), on the device."""

        def build() -> torch.Tensor:
            cpu = torch.full((self.width,), self.count, dtype=torch.int64)
            if self.span is not None:
                cpu[self.span[0] : self.span[1]] = torch.arange(self.count)
            else:
                cpu[self.pattern.kept] = torch.arange(self.count)  # type: ignore[union-attr]
            return cpu.to(self.device)

        return self._derived("pos", build)

    def take(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """``t`` restricted to the kept units along ``dim``: a view for a span, a gather for an index."""
        if self.span is not None:
            return t.narrow(dim, self.span[0], self.span[1] - self.span[0])
        return t.index_select(dim, self.index)

    def _derived(self, name: str, build):  # type: ignore[no-untyped-def]
        """``build()`` cached on the pattern for this device (built every time without a pattern: no cache)."""
        if self.pattern is None:
            return build()
        return self.pattern.cached(name, self.device, build)


def complement(idx: torch.Tensor, width: int) -> torch.Tensor:
    """Sorted int64 indices in [0, width) that are not in ``idx`` (on idx's device)."""
    keep = torch.zeros(width, dtype=torch.bool, device=idx.device)
    keep[idx] = True
    return (~keep).nonzero().flatten()


def all_kept(width: int, device: torch.device | str = "cpu") -> Kept:
    """Every one of ``width`` units kept (a side without a pattern)."""
    return Kept(width, width, torch.device(device), (0, width), None)


def kept_units(pattern: RowPattern | None, width: int, device: torch.device | str, where: str = "row pattern") -> Kept:
    """The :class:`Kept` of ``pattern`` over a side of ``width`` units on ``device`` (:func:`all_kept` for None,
    every unit kept).

    The kept indices are checked once per pattern to be sorted, distinct and in range
    (:func:`~lightning_ard.kernels.indices.check_kept`: a duplicate would race in a gradient's scattered stores).
    """
    if pattern is None:
        return all_kept(width, device)
    if pattern.width != width:
        raise ValueError(
            f"{where} width {pattern.width} does not match the layer width {width}: draw the pattern for this layer"
        )
    count, span = pattern.cached("count_span", None, lambda: _count_span(pattern, where))
    return Kept(width, count, device if isinstance(device, torch.device) else torch.device(device), span, pattern)


def _count_span(pattern: RowPattern, where: str) -> tuple[int, tuple[int, int] | None]:
    """Kept count and contiguous span of a pattern, after :func:`~lightning_ard.kernels.indices.check_kept`."""
    check_kept(pattern.kept, pattern.width, where)
    count = pattern.num_kept
    if count == pattern.width:
        return count, (0, pattern.width)
    ranges = pattern.ranges
    return count, ranges[0] if ranges is not None and len(ranges) == 1 else None
