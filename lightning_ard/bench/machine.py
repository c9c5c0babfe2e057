"""The machine line of a measurement: processor (or GPU) name, cores, torch threads and torch version.

Absolute times only compare on the same machine, so every generated table says where it was measured. The CPU's
name and core count come from ``lscpu`` (``Model name``, ``Core(s) per socket`` x ``Socket(s)``), falling back to
``/proc/cpuinfo`` and ``os.cpu_count()`` where ``lscpu`` is missing; the GPU's from ``torch.cuda.get_device_name``.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess

import torch


def _lscpu() -> dict[str, str]:
    """``lscpu``'s fields (empty when the command is missing or fails)."""
    if shutil.which("lscpu") is None:
        return {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _cpuinfo_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name_and_cores() -> tuple[str, int]:
    """The CPU's model name and its physical core count (logical CPUs where the count is not reported)."""
    info = _lscpu()
    name = info.get("Model name") or _cpuinfo_model() or platform.processor() or platform.machine()
    try:
        cores = int(info["Core(s) per socket"]) * int(info.get("Socket(s)", "1"))
    except (KeyError, ValueError):
        cores = os.cpu_count() or 1
    return name, cores


def machine_line(device: torch.device | str = "cpu") -> str:
    """One line naming where a measurement ran, e.g. ``AMD EPYC, 2 cores, 2 torch threads, torch 2.13.0+cpu``; on
    CUDA the GPU's name first."""
    device = torch.device(device)
    name, cores = cpu_name_and_cores()
    cpu = f"{name}, {cores} {'core' if cores == 1 else 'cores'}, {torch.get_num_threads()} torch threads"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (host: {cpu}), torch {torch.__version__}"
    return f"{cpu}, torch {torch.__version__}"
