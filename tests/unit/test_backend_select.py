"""``backend="auto"`` measures: the fastest candidate at the layer's real shapes wins, a slower or failing one never
does, and an ARD Linear can switch its backend after conversion."""

import pytest
import torch
from torch import nn

from lightning_ard.kernels import BACKEND_NAMES, candidate_backends, fastest_backend, fastest_layer_backend, get_backend
from lightning_ard.kernels.gathered import GatheredBackend
from lightning_ard.kernels.torch_backend import TorchBackend
from lightning_ard.layers import ARDLinear
from lightning_ard.patterns import PeriodicRow
from lightning_ard.profiling import median_time


class FakeTimer:
    """Seconds per backend name, read from the backend the timed step ran through (which it records)."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds, self.ran = seconds, []

    def __call__(self, fn, device) -> float:
        self.current = None
        fn()  # really runs forward + backward once
        self.ran.append(self.current)
        return self.seconds[self.current]


def _layer(backend: str = "auto") -> ARDLinear:
    torch.manual_seed(0)
    layer = ARDLinear.from_linear(nn.Linear(24, 30), backend)
    layer.set_patterns(in_pattern=PeriodicRow(24, 3).pattern(1), out_pattern=PeriodicRow(30, 2).pattern(0))
    return layer.train()


def _recording_product(timer: FakeTimer, layer: ARDLinear):
    def product(backend, x, w, b):
        timer.current = backend.name
        return layer.ard_product(x, w, b, backend=backend)

    return product


@pytest.mark.parametrize("slow", ["torch", "gathered"])
def test_a_slower_backend_is_never_chosen(slow) -> None:
    layer = _layer()
    x = torch.randn(5, 8)  # compact input of the consumer's 8 kept units
    layer(x)
    fast = "gathered" if slow == "torch" else "torch"
    for order in (["torch", "gathered"], ["gathered", "torch"]):
        timer = FakeTimer({slow: 2e-3, fast: 1e-3})
        choice = fastest_backend(_recording_product(timer, layer), (5, 8), layer.weight, layer.bias, timer, order)
        assert choice.name == fast and timer.ran == order
        assert choice.seconds == {slow: 2e-3, fast: 1e-3} and not choice.errors
        assert fast in choice.describe() and "ms" in choice.describe()


def test_a_failing_backend_is_never_chosen_and_state_is_untouched() -> None:
    layer = _layer()
    layer(torch.randn(4, 24, requires_grad=True))
    weight_before = layer.weight.detach().clone()

    def product(backend, x, w, b):
        if backend.name == "gathered":
            raise RuntimeError("cannot compile here")
        return layer.ard_product(x, w, b, backend=backend)

    choice = fastest_backend(product, (4, 24), layer.weight, layer.bias, lambda fn, d: (fn(), 5e-3)[1],
                             ["gathered", "torch"])  # fmt: skip
    assert choice.name == "torch" and choice.seconds["gathered"] == float("inf")
    assert "cannot compile here" in choice.errors["gathered"] and "gathered failed" in choice.describe()
    assert layer.weight.grad is None and torch.equal(layer.weight, weight_before)  # stand-ins were timed


def test_layer_measurement_replays_the_real_input_under_autocast() -> None:
    layer = _layer()
    seen = []

    def timer(fn, device):
        fn()
        return 1e-3

    original = layer.ard_product

    def spy(x, w, b, backend=None):
        seen.append((tuple(x.shape), x.dtype, torch.is_autocast_enabled("cpu"), x.requires_grad))
        return original(x, w, b, backend=backend)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(torch.randn(2, 3, 8))
    assert layer.ard_record.input == ((2, 3, 8), torch.float32, torch.bfloat16, False)
    layer.ard_product = spy
    choice = fastest_layer_backend(layer, timer, ["torch", "gathered"])
    assert choice.name == "torch"  # equal times: the first candidate
    assert seen == [((2, 3, 8), torch.float32, True, False)] * 2


def test_layer_measurement_needs_a_training_step_and_real_timer_runs() -> None:
    layer = _layer()
    with pytest.raises(ValueError, match="has not run a training step"):
        fastest_layer_backend(layer, median_time)
    layer(torch.randn(6, 24))
    assert fastest_layer_backend(layer, median_time).name == "torch"  # CPU: the only candidate, not timed
    choice = fastest_layer_backend(layer, median_time, ["torch", "gathered"])  # the project's timer, for real
    assert choice.name in ("torch", "gathered") and all(s > 0 for s in choice.seconds.values())
    with pytest.raises(ValueError, match="candidates must be backend names"):
        fastest_layer_backend(layer, median_time, ["auto"])


def test_candidates_and_names() -> None:
    assert candidate_backends("cpu") == ("torch",)
    assert candidate_backends(torch.device("cuda"))[:2] == ("torch", "gathered")
    assert ("grouped_mm" in candidate_backends(torch.device("cuda"))) == hasattr(torch, "_grouped_mm")
    assert BACKEND_NAMES == ("auto", "torch", "gathered", "grouped_mm", "triton")
    assert isinstance(get_backend("auto", "cpu"), TorchBackend)
    assert isinstance(get_backend("auto", "cuda"), GatheredBackend)  # until measured: cuBLAS by construction
    with pytest.raises(
        ValueError, match=r"backend must be one of \['auto', 'torch', 'gathered', 'grouped_mm', 'triton'\], got 'x'"
    ):
        get_backend("x", "cpu")


def test_use_backend_switches_after_conversion() -> None:
    layer = _layer("torch")
    x = torch.randn(5, 24)
    y_torch = layer(x)
    assert isinstance(layer.backend_for(x.device), TorchBackend)
    layer.use_backend("gathered")
    assert layer.ard_backend_name == "gathered" and isinstance(layer.backend_for(x.device), GatheredBackend)
    torch.testing.assert_close(layer(x), y_torch)
    with pytest.raises(ValueError, match="backend must be one of"):
        layer.use_backend("cublas")
    assert layer.ard_backend_name == "gathered"  # unchanged by the bad call
    plain = layer.to_linear()
    assert type(plain) is nn.Linear and not hasattr(plain, "ard_record")
