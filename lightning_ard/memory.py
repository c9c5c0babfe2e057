"""The peak memory of a training step: the most bytes the step's tensors held at once above what was allocated
before it.

Two readers, one per device kind:

* **CUDA**: the caching allocator's statistics: ``torch.cuda.reset_peak_memory_stats`` before the step,
  ``torch.cuda.max_memory_allocated`` after it, minus ``torch.cuda.memory_allocated`` before it. Cheap (counters
  the allocator keeps on the host as work is queued, no synchronization needed), so the callback reads it at every
  step (:class:`StepPeak`). It resets the device's
  peak statistic, which another reader of ``max_memory_allocated`` in the same process then sees reset.
* **CPU** (and any device without allocator statistics): ``torch.profiler`` with ``profile_memory=True``. The
  profiler records one event per allocation (+bytes) and per free (−bytes) of every tensor torch allocates; in
  time order their running sum is the step's allocation above its start and its maximum is the peak
  (:func:`peak_bytes`). Limit: the profiler knows the size of a block only from an allocation it recorded, so the
  free of a tensor allocated before the call is counted unreliably (often not at all, sometimes with the size of
  an earlier block at the same address); CUDA's statistics count it exactly. Measure steps that free only what
  they allocate, as the benchmark's step does (its ``zero_grad(set_to_none=True)`` comes last): there the CPU
  figure is exact for torch's tensors.

What both count: the bytes of tensor storages torch allocates (activations saved for backward, gradients,
temporaries, optimizer state created in the step). What they do not count: Python objects, memory that a library
allocates outside torch's allocator (e.g. a BLAS library's own workspace), and on CUDA the allocator's cached but
unused blocks (``memory_reserved``); on the CPU, the process's resident size may differ from the figure because
the C allocator keeps or returns pages at its own discretion. The figure is in requested bytes of tensor storage
(CUDA rounds each block up to 512 bytes). The profiler costs time per operator, so the CPU reader is for
untimed measurement steps (the benchmark), not for every step of a fit; and only one profiler can run at a time,
so :func:`peak_bytes` refuses to start inside another one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

MIB = 1024 * 1024


def peak_bytes(fn: Callable[[], object], device: torch.device | str) -> int:
    """Peak bytes allocated on ``device`` while ``fn()`` runs, above the allocation when it starts. CUDA: the
    allocator's statistics; elsewhere: the profiler's memory events (which miss frees of tensors older than the
    call, see the module's notes)."""
    device = torch.device(device)
    if device.type == "cuda":
        peak = StepPeak()
        peak.begin(device)
        fn()
        return peak.end() or 0
    if torch.autograd.profiler._is_profiler_enabled:
        raise RuntimeError(
            "peak_bytes on the CPU runs torch.profiler, but a profiler is already running; measure outside it "
            "(e.g. without Lightning's profiler=...)"
        )
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return _running_peak(prof.profiler.kineto_results.events(), device)  # type: ignore[union-attr]


def _running_peak(events: object, device: torch.device) -> int:
    """The maximum of the running sum of the ``[memory]`` events of ``device``'s kind, in time order."""
    memory = [e for e in events if e.name() == "[memory]" and _same_kind(e.device_type(), device)]  # type: ignore[attr-defined]
    memory.sort(key=lambda e: e.start_ns())  # stable: events of the same instant keep their recorded order
    now = peak = 0
    for event in memory:
        now += event.nbytes()
        peak = max(peak, now)
    return peak


def _same_kind(kind: object, device: torch.device) -> bool:
    return str(kind).rsplit(".", 1)[-1].lower() == device.type


def peak_mib(fn: Callable[[], object], device: torch.device | str) -> float:
    """:func:`peak_bytes` in MiB (2**20 bytes)."""
    return peak_bytes(fn, device) / MIB


class StepPeak:
    """The peak of one step between two hooks (``begin`` before it, ``end`` after it), where the device keeps
    allocator statistics (CUDA); elsewhere ``end`` returns None, since the CPU reader (a profiler around the step)
    would slow the steps that a fit times and clash with a user's own profiler."""

    def __init__(self) -> None:
        self._device: torch.device | None = None
        self._base = 0

    @staticmethod
    def supported(device: torch.device) -> bool:
        """Whether the device reports a step's peak cheaply (CUDA with a device present)."""
        return device.type == "cuda" and torch.cuda.is_available()

    def begin(self, device: torch.device | str) -> None:
        """Before the step: remember the allocation now and reset the device's peak statistic."""
        device = torch.device(device)
        self._device = device if self.supported(device) else None
        if self._device is None:
            return
        self._base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)

    def end(self) -> int | None:
        """After the step: its peak bytes above the allocation at ``begin`` (None where not measured)."""
        device, self._device = self._device, None
        if device is None:
            return None
        return max(torch.cuda.max_memory_allocated(device) - self._base, 0)
