"""The ``torch.fx`` vocabulary of site detection: one tracer, the op tables a proof may pass through, and the
helpers that name a graph node's module by its path in the model.

Every fx pass over a model (proving sites, finding the Linear sites that read an LSTM's output) uses these, so
the tracer's leaves, the ops that keep a proof valid and the path of a traced node are defined once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from lightning_ard.layers import ARDLSTM, ARDDropout, ARDLinear
from lightning_ard.sites.rules import site_rule_for


@dataclass(frozen=True)
class Ops:
    """A set of graph ops: module types, functions and tensor method names, matched against fx nodes."""

    modules: tuple[type[nn.Module], ...]
    functions: frozenset[Any]
    methods: frozenset[str]

    def __or__(self, other: Ops) -> Ops:
        return Ops(self.modules + other.modules, self.functions | other.functions, self.methods | other.methods)

    def matches(self, node: fx.Node, gm: Traced) -> bool:
        if node.op == "call_module":
            return type(module_at(gm, node)) in self.modules
        if node.op == "call_function":
            return node.target in self.functions
        if node.op == "call_method":
            return node.target in self.methods
        return False

    def holds(self, op: Any) -> bool:
        """Whether ``op`` (a module or a function, as a site rule names it) is one of these ops."""
        if isinstance(op, nn.Module):
            return type(op) in self.modules
        try:
            return op in self.functions
        except TypeError:  # unhashable callable
            return False


# shape ops: the same values, laid out again (a flatten after a dropout keeps every dropped unit at zero).
RESHAPES = Ops(
    (nn.Flatten,),
    frozenset({torch.flatten, torch.reshape}),
    frozenset({"flatten", "view", "reshape", "contiguous"}),
)
# f(s·x) = s·f(x), f(0) = 0: may sit between a dropout and its consumer.
HOMOGENEOUS = RESHAPES | Ops(
    (nn.ReLU, nn.LeakyReLU, nn.Identity),
    frozenset({F.relu, torch.relu, F.leaky_relu}),
    frozenset({"relu"}),
)
# any elementwise op may sit between a producer Linear and the dropout (it runs on the kept units only).
ELEMENTWISE = Ops(
    (
        nn.ReLU,
        nn.LeakyReLU,
        nn.GELU,
        nn.SiLU,
        nn.Tanh,
        nn.Sigmoid,
        nn.ELU,
        nn.Softplus,
        nn.Mish,
        nn.Identity,
        nn.Hardtanh,
        nn.Hardswish,
        nn.SELU,
        nn.CELU,
    ),
    frozenset(
        {
            F.relu,
            torch.relu,
            F.leaky_relu,
            F.gelu,
            F.silu,
            torch.tanh,
            F.tanh,
            torch.sigmoid,
            F.sigmoid,
            F.elu,
            F.softplus,
            F.mish,
            F.hardtanh,
            F.hardswish,
            F.selu,
            F.celu,
        }
    ),
    frozenset({"relu", "tanh", "sigmoid", "contiguous"}),
)
LINEARS = (nn.Linear, ARDLinear)
LSTMS = (nn.LSTM, ARDLSTM)
ARD_LAYERS = (ARDLinear, ARDLSTM, ARDDropout)  # leaves: traced as the modules they replace


@dataclass(frozen=True)
class Traced:
    """A module's forward as a ``torch.fx`` graph, with the module it was traced from.

    No ``fx.GraphModule`` is built: the passes read the graph only, and building one for a graph that calls a
    ``torch.fx.wrap``-ped function registers that function under its dotted name process-wide, after which every
    ``torch.fx`` trace fails with a KeyError.
    """

    root: nn.Module
    graph: fx.Graph

    def get_submodule(self, target: str) -> nn.Module:
        return self.root.get_submodule(target)


class Tracer(fx.Tracer):
    """Keeps every dropout module and every ARD layer a leaf (one call each), and, with ``rule_leaves``, every
    module with a site rule (detection takes the rule's word for it instead of its code)."""

    def __init__(self, rule_leaves: bool = True) -> None:
        super().__init__()
        self.rule_leaves = rule_leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            isinstance(m, _DropoutNd)
            or type(m) in ARD_LAYERS
            or (self.rule_leaves and site_rule_for(m) is not None)
            or super().is_leaf_module(m, module_qualified_name)
        )


def trace(module: nn.Module, rule_leaves: bool = True) -> tuple[Traced | None, str]:
    """(the traced forward, "") or (None, the tracer's message)."""
    try:
        return Traced(module, Tracer(rule_leaves).trace(module)), ""
    except Exception as err:  # noqa: BLE001 - any trace failure means "not provable from this root"
        return None, message(err)


def traced_roots(model: nn.Module, paths: set[str], rule_leaves: bool = True) -> list[tuple[str, Traced]]:
    """``(prefix, graph)`` of the model, or else of its largest traceable submodules that hold one of ``paths``
    (breadth first): a forward that does not trace hides only its own code, not its children's."""
    roots, pending = [], [("", model)]
    while pending:
        prefix, module = pending.pop(0)
        if not any(p == prefix or p.startswith(f"{prefix}.") or not prefix for p in paths):
            continue
        gm, _ = trace(module, rule_leaves)
        if gm is not None:
            roots.append((prefix, gm))
            continue
        pending += [(qualify(prefix, name), child) for name, child in module.named_children()]
    return roots


def message(err: BaseException, limit: int = 200) -> str:
    """``Type: first line`` of an exception, at most ``limit`` characters."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextmanager
def attributes_kept(model: nn.Module) -> Iterator[None]:
    """Put back every module attribute a forward sets while it is traced (a cached mask would become a Proxy), and
    every parameter, buffer, submodule or hook it registers (a lazily built layer would stay in the model)."""
    saved = [(vars(m), _snapshot(vars(m))) for m in model.modules()]
    try:
        yield
    finally:
        for attrs, (then, inner) in saved:
            _put_back(attrs, then)
            for name, contents in inner.items():
                _put_back(then[name], contents)  # the same dict object, with its contents of before


def _snapshot(attrs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[Any, Any]]]:
    """A module's attributes, and the contents of those that are dicts (``_parameters``, ``_modules``, hooks)."""
    return dict(attrs), {name: dict(value) for name, value in attrs.items() if isinstance(value, dict)}


def _put_back(now: dict[Any, Any], then: dict[Any, Any]) -> None:
    """Give ``now`` the entries of ``then`` again, when any differs (compared by identity)."""
    if len(now) != len(then) or any(then.get(k, now) is not v for k, v in now.items()):
        now.clear()
        now.update(then)


def qualify(prefix: str, target: str) -> str:
    """The model-level path of ``target`` in the root traced at ``prefix`` ("" for the model itself)."""
    return f"{prefix}.{target}" if prefix else target


def module_at(gm: Traced, node: fx.Node) -> Any:
    """The module a ``call_module`` node calls (typed Any: callers read its layer-specific attributes)."""
    return gm.get_submodule(node.target)  # type: ignore[arg-type]


def calls_module(gm: Traced, node: fx.Node, types: tuple[type[nn.Module], ...]) -> bool:
    """Whether ``node`` calls a module of exactly one of ``types``."""
    return node.op == "call_module" and type(module_at(gm, node)) in types
