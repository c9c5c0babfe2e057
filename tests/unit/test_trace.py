"""The torch.fx helpers of detection: op tables, the tracer's leaves, traced roots, messages, attributes kept."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ard.layers import ARDLinear
from lightning_ard.sites import BlockProof, register_site_rule, unregister_site_rule
from lightning_ard.sites.trace import ELEMENTWISE, HOMOGENEOUS, RESHAPES, attributes_kept, message, trace, traced_roots


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.drop = nn.Linear(4, 4), nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(torch.relu(self.fc(x)).reshape(-1, 4).contiguous())


class Branches(nn.Module):
    """Its forward does not trace; ``left`` does, ``right`` holds nothing asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = Block(), nn.Linear(4, 4)

    def forward(self, x):
        return self.left(x) if x.sum() > 0 else self.right(x)


def _ops(traced) -> list:
    return [node.target for node in traced.graph.nodes if node.op in ("call_module", "call_function", "call_method")]


def test_op_tables() -> None:
    assert RESHAPES.methods <= HOMOGENEOUS.methods and RESHAPES.functions <= HOMOGENEOUS.functions
    assert set(RESHAPES.modules) <= set(HOMOGENEOUS.modules)
    assert HOMOGENEOUS.holds(nn.ReLU()) and HOMOGENEOUS.holds(torch.flatten) and not HOMOGENEOUS.holds(nn.GELU())
    assert ELEMENTWISE.holds(F.gelu) and not ELEMENTWISE.holds(torch.flatten)
    assert not HOMOGENEOUS.holds([])  # an unhashable op is none of them
    traced, _ = trace(Block())
    nodes = {str(node.target): node for node in traced.graph.nodes}
    assert HOMOGENEOUS.matches(nodes[str(torch.relu)], traced) and not RESHAPES.matches(nodes[str(torch.relu)], traced)
    assert RESHAPES.matches(nodes["reshape"], traced) and RESHAPES.matches(nodes["contiguous"], traced)
    assert not HOMOGENEOUS.matches(nodes["fc"], traced) and traced.get_submodule("fc") is traced.root.fc


def test_leaves_dropouts_ard_layers_and_rule_blocks() -> None:
    model = nn.Sequential(Block(), nn.Linear(4, 4))
    model[1] = ARDLinear.from_linear(model[1])
    traced, error = trace(model)
    assert not error and _ops(traced) == ["0.fc", torch.relu, "reshape", "contiguous", "0.drop", "1"]
    register_site_rule(Block, lambda block: BlockProof(calls={"fc": 1}))
    try:
        assert _ops(trace(model)[0]) == ["0", "1"]  # detection takes the rule's word for the block
        assert _ops(trace(model, rule_leaves=False)[0])[0] == "0.fc"
    finally:
        unregister_site_rule(Block)


def test_traced_roots_are_the_largest_traceable_modules_holding_a_path() -> None:
    model = Branches()
    assert trace(model)[1].startswith("TraceError: symbolically traced variables cannot be used as inputs")
    assert [(prefix, traced.root) for prefix, traced in traced_roots(model, {"left.fc"})] == [("left", model.left)]
    assert traced_roots(model, set()) == []
    assert [prefix for prefix, _ in traced_roots(Block(), {"fc"})] == [""]


def test_message_is_one_short_line() -> None:
    assert message(ValueError("first\nsecond")) == "ValueError: first"
    assert message(KeyError()) == "KeyError"
    long = message(RuntimeError("x" * 500), limit=50)
    assert len(long) == 50 and long.endswith("...")


def test_attributes_kept_puts_back_attributes_and_registrations() -> None:
    model = Block()
    params, modules = model._parameters, model._modules
    with attributes_kept(model):
        model.cache = torch.ones(1)
        model.fc.register_parameter("extra", nn.Parameter(torch.ones(1)))
        model.fc = nn.Linear(2, 2)
        model.register_buffer("seen", torch.zeros(()))
        model.drop.training = False
    assert not hasattr(model, "cache") and "seen" not in model._buffers and model.fc.in_features == 4
    assert "extra" not in model.fc._parameters and model.drop.training
    assert model._parameters is params and model._modules is modules  # the same dicts, their old contents
