"""Checks on kept-index vectors that come from outside the pattern families.

The families build sorted, distinct kept indices by construction, but :class:`~lightning_ard.patterns.RowPattern`
is a public dataclass and the launchers take raw index tensors: a duplicate index would make the scattered stores
of a gradient race (two programs writing one element) and silently give a wrong result. Two levels:

* :func:`check_kept`: always on, for a pattern's CPU ``kept`` vector, run once per pattern when a backend builds
  its device index (cached with it), so it costs nothing per step and never synchronizes a device;
* :func:`check_device_index`: for raw device index tensors handed to a launcher, only when
  ``LIGHTNING_ARD_CHECK_INDICES=1`` (it needs a sort and a device-to-host copy per call).
"""

from __future__ import annotations

import os

import torch


def debug_indices() -> bool:
    """Whether raw device index tensors are checked at every launch (``LIGHTNING_ARD_CHECK_INDICES=1``)."""
    return os.environ.get("LIGHTNING_ARD_CHECK_INDICES", "0") == "1"


def check_kept(kept: torch.Tensor, width: int, where: str = "pattern") -> None:
    """Raise unless ``kept`` is a 1-D integer vector of strictly increasing indices in ``[0, width)``."""
    if kept.dim() != 1 or kept.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{where}: kept must be a 1-D int32/int64 tensor, got {kept.dtype} {tuple(kept.shape)}")
    if kept.numel() == 0:
        return
    kept = kept.cpu()
    if int(kept[0]) < 0 or int(kept[-1]) >= width:
        raise ValueError(f"{where}: kept indices must lie in [0, {width}), got {int(kept.min())}..{int(kept.max())}")
    if kept.numel() > 1 and not bool((kept[1:] > kept[:-1]).all()):
        raise ValueError(
            f"{where}: kept indices must be sorted and distinct (a duplicate would race in the gradient's "
            f"scattered stores), got {kept.tolist()[:16]}{'...' if kept.numel() > 16 else ''}"
        )


def check_device_index(name: str, idx: torch.Tensor | None, bound: int) -> None:
    """Under :func:`debug_indices`: raise if ``idx`` has duplicates or entries outside ``[0, bound)`` (syncs)."""
    if idx is None or idx.numel() == 0 or not debug_indices():
        return
    values = idx.detach().to("cpu", torch.int64)
    if int(values.min()) < 0 or int(values.max()) >= bound:
        raise ValueError(f"{name} has entries outside [0, {bound}): {int(values.min())}..{int(values.max())}")
    if torch.unique(values).numel() != values.numel():
        raise ValueError(f"{name} has duplicate entries: the scattered stores would race; pass distinct indices")
