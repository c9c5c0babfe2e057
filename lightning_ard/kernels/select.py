"""Backend selection: a name resolved for a device, and the measurement that picks the fastest backend of a layer.

Names: ``"torch"`` (PyTorch ops), ``"gathered"`` (gathered blocks + library GEMMs), ``"grouped_mm"`` (the gathered
backend with ``torch._grouped_mm`` for pattern groups), ``"triton"`` (Triton kernels) and ``"auto"``. ``"auto"``
never assumes a kernel is fast: until a layer is measured it resolves to the PyTorch ops off CUDA and to the
gathered backend on CUDA (library GEMM speed on the compact shape by construction), and :func:`fastest_backend`
times every candidate at the layer's real shapes on its real device and keeps the fastest.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from lightning_ard.kernels.base import Backend
from lightning_ard.kernels.torch_backend import TorchBackend
from lightning_ard.kernels.torch_ops import compute_dtype

BACKEND_NAMES = ("auto", "torch", "gathered", "grouped_mm", "triton")
"""Every accepted ``backend`` name (the one list: :class:`~lightning_ard.config.ARDConfig` validates against it)."""

Timer = Callable[[Callable[[], object], torch.device], float]
"""Seconds of one call of a function on a device, synchronized: :func:`lightning_ard.profiling.median_time`."""


def triton_usable(device: torch.device) -> bool:
    """Triton kernels can run on ``device``: CUDA with triton installed, or any device under TRITON_INTERPRET=1."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def get_backend(name: str, device: torch.device | str) -> Backend:
    """Resolve a backend name for tensors on ``device``.

    ``"auto"``: the PyTorch ops off CUDA, the gathered backend on CUDA (until :func:`fastest_backend` measures);
    any other name forces one. Forcing Triton where it cannot run, or ``grouped_mm`` on a torch without
    ``torch._grouped_mm``, raises.
    """
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {list(BACKEND_NAMES)}, got {name!r}")
    device = torch.device(device)
    if name == "torch" or (name == "auto" and device.type != "cuda"):
        return TorchBackend()
    if name in ("gathered", "auto"):
        from lightning_ard.kernels.gathered import GatheredBackend

        return GatheredBackend()
    if name == "grouped_mm":
        return _grouped_mm_backend()
    if not triton_usable(device):
        raise ValueError(
            f"backend='triton' cannot run on device {device}: Triton needs a CUDA device "
            "(or TRITON_INTERPRET=1 set before import for the CPU interpreter); use backend='torch' or 'auto'"
        )
    try:
        from lightning_ard.kernels.triton.backend import TritonBackend
    except ImportError as err:
        raise ValueError(f"backend='triton' is not available: {err}; use backend='torch' or 'auto'") from err
    return TritonBackend()


def _grouped_mm_backend() -> Backend:
    from lightning_ard.kernels.grouped_mm import AVAILABLE, GroupedMMBackend

    if not AVAILABLE:
        raise ValueError(
            f"backend='grouped_mm' needs torch._grouped_mm, which torch {torch.__version__} lacks; "
            "use backend='gathered' or 'auto'"
        )
    return GroupedMMBackend()


def candidate_backends(device: torch.device | str) -> tuple[str, ...]:
    """The backends worth timing on ``device``: ``("torch",)`` off CUDA (the others only emulate a GPU there);
    ``torch``, ``gathered``, ``grouped_mm`` (when torch has ``torch._grouped_mm``) and, when Triton imports,
    ``triton`` on CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return ("torch",)
    names = ["torch", "gathered"]
    if hasattr(torch, "_grouped_mm"):
        names.append("grouped_mm")
    if triton_usable(device):
        try:
            import lightning_ard.kernels.triton.backend  # noqa: F401
        except ImportError:
            pass
        else:
            names.append("triton")
    return tuple(names)


@dataclass(frozen=True)
class BackendChoice:
    """The outcome of :func:`fastest_backend`.

    Attributes:
        name: the fastest candidate (the first one when it was the only candidate: nothing was timed).
        seconds: median seconds of one forward + backward per timed candidate (``inf`` for one that raised).
        errors: the error text of each candidate that raised.
    """

    name: str
    seconds: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One log line: ``gathered (torch 1.92 ms, gathered 0.61 ms, triton failed)``."""
        parts = [f"{n} failed" if n in self.errors else f"{n} {s * 1e3:.3g} ms" for n, s in self.seconds.items()]
        return f"{self.name} ({', '.join(parts)})" if parts else f"{self.name} (only candidate)"


Product = Callable[[Backend, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
"""``product(backend, x, weight, bias) -> y``: a layer's ARD product through a given backend."""


def fastest_backend(
    product: Product,
    input_shape: Sequence[int],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    timer: Timer,
    candidates: Sequence[str] | None = None,
    input_dtype: torch.dtype | None = None,
    compute: torch.dtype | None = None,
    grad_input: bool = True,
) -> BackendChoice:
    """Time ``product`` (forward + backward) through each candidate backend at the real shapes on the weight's
    device, and return the fastest.

    Stand-ins are used (copies of the parameters, a random input of ``input_shape``), so the layer's own
    gradients and the training state are untouched. ``compute`` different from ``input_dtype`` times under
    autocast to ``compute`` (as training under bf16 autocast does). A candidate that raises is recorded and never
    chosen; ties go to the earlier candidate.

    Args:
        product: the layer's ARD product through a given backend (``ARDLinear.ard_product``).
        input_shape: the shape of the layer's real input (compact width included).
        weight, bias: the layer's parameters (only their shapes, dtypes, device and values are read).
        timer: seconds of one call, synchronized on the device (:func:`lightning_ard.profiling.median_time`);
            injectable for tests.
        candidates: backend names to time; default :func:`candidate_backends` of the device.
        input_dtype: dtype of the real input (default: the weight's).
        compute: compute dtype of the real step (default: ``input_dtype``).
        grad_input: whether the real input needs a gradient (then grad_x is part of the timed backward).
    """
    device = weight.device
    names = _candidate_names(candidates, device)
    if len(names) == 1:
        return BackendChoice(names[0])
    input_dtype = input_dtype or weight.dtype
    compute = compute or input_dtype
    w = weight.detach().clone().requires_grad_(True)
    b = bias.detach().clone().requires_grad_(True) if bias is not None else None
    x = torch.randn(*input_shape, device=device, dtype=input_dtype).requires_grad_(grad_input)
    seconds: dict[str, float] = {}
    errors: dict[str, str] = {}
    for name in names:
        try:
            step = _training_step(product, get_backend(name, device), x, w, b, compute, compute != input_dtype)
            seconds[name] = float(timer(step, device))
        except Exception as err:  # a candidate that cannot run here (compile error, unsupported shape) loses
            seconds[name] = math.inf
            errors[name] = f"{type(err).__name__}: {err}"
    finite = [n for n in names if math.isfinite(seconds[n])]
    if not finite:
        raise RuntimeError(f"no candidate backend could run this layer: {errors}")
    best = min(finite, key=lambda n: seconds[n])  # min keeps the first of equal times
    return BackendChoice(best, seconds, errors)


def _training_step(
    product: Product,
    backend: Backend,
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    compute: torch.dtype,
    autocast: bool,
) -> Callable[[], None]:
    """One forward + backward of ``product`` through ``backend`` on the stand-ins, gradients reset first."""

    def step() -> None:
        w.grad = x.grad = None
        if b is not None:
            b.grad = None
        with torch.autocast(x.device.type, dtype=compute, enabled=autocast):
            y = product(backend, x, w, b)
        y.float().sum().backward()

    return step


def _candidate_names(candidates: Sequence[str] | None, device: torch.device) -> tuple[str, ...]:
    """The backend names to time (default :func:`candidate_backends`), checked: at least one, no ``"auto"``."""
    names = tuple(candidates) if candidates is not None else candidate_backends(device)
    if not names:
        raise ValueError("candidates must name at least one backend, got []")
    for name in names:
        if name not in BACKEND_NAMES or name == "auto":
            raise ValueError(f"candidates must be backend names from {list(BACKEND_NAMES[1:])}, got {name!r}")
    return names


class InputRecord(Protocol):
    """What a layer's step record says of its last input (``lightning_ard.layers.record.StepRecord``)."""

    input: tuple[tuple[int, ...], torch.dtype, torch.dtype, bool] | None


class MeasurableLinear(Protocol):
    """What :func:`fastest_layer_backend` reads of an ARD Linear (``lightning_ard.layers.ARDLinear``)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    ard_record: InputRecord

    def ard_product(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, backend: Backend | None = None
    ) -> torch.Tensor: ...


def fastest_layer_backend(
    layer: MeasurableLinear, timer: Timer, candidates: Sequence[str] | None = None
) -> BackendChoice:
    """:func:`fastest_backend` for an ARD Linear at its last training step's input (shape, dtype, compute dtype,
    whether the input needed a gradient) and patterns. Needs one training forward with patterns set first."""
    if layer.ard_record.input is None:
        raise ValueError("the layer has not run a training step with patterns yet: nothing to measure its shapes on")
    shape, input_dtype, compute, grad_input = layer.ard_record.input

    def product(backend: Backend, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return layer.ard_product(x, w, b, backend=backend)

    return fastest_backend(
        product, shape, layer.weight, layer.bias, timer, candidates, input_dtype, compute, grad_input
    )


def layer_input(x: torch.Tensor) -> tuple[tuple[int, ...], torch.dtype, torch.dtype, bool]:
    """What a layer records of its input for :func:`fastest_layer_backend`: shape, dtype, compute dtype (the
    autocast dtype when autocast is on) and whether it needs a gradient."""
    return tuple(x.shape), x.dtype, compute_dtype(x), bool(x.requires_grad)
