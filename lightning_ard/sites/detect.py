"""Site detection and module surgery: which dropouts ARD can serve, and the in-place swap and restore.

A *site* is one use of a dropout whose output reaches a Linear (or an LSTM) input. Detection works on a
``torch.fx`` trace of the model (or of its largest traceable submodules when the whole does not trace), so it
sees functional forwards and ``nn.Sequential`` alike, plus every ``nn.LSTM(dropout=p)`` (its inter-layer dropout).

What is proven, and why it is enough:

* consumer: the dropout's only reader reaches a Linear/LSTM input through ops ``f`` with ``f(s·x) = s·f(x)``
  and ``f(0) = 0`` (ReLU, LeakyReLU, flatten/reshape, identity), so gathering the kept columns and scaling after
  ``f`` equals the masked dense computation;
* producer: the dropout's input comes from a Linear through elementwise ops, each with a single reader, and the
  Linear is called once, so it may compute only the kept rows;
* a dropout module is swapped only when *every* use of it is a proven site (its other uses would lose dropout),
  and a Linear is patterned only when it is called once (one pattern per module per step).

Whatever is not proven is left untouched and reported with the reason.
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from lightning_ard.layers import ARDLSTM, ARDDropout, ARDLinear

# f(s·x) = s·f(x), f(0) = 0: may sit between a dropout and its consumer.
_HOMOGENEOUS_MODULES = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Flatten)
_HOMOGENEOUS_FUNCTIONS = {F.relu, torch.relu, F.leaky_relu, torch.flatten, torch.reshape}
_HOMOGENEOUS_METHODS = {"relu", "flatten", "view", "reshape", "contiguous"}
# any elementwise op may sit between a producer Linear and the dropout (it runs on the kept units only).
_ELEMENTWISE_MODULES = (
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
)
_ELEMENTWISE_FUNCTIONS = {
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
_ELEMENTWISE_METHODS = {"relu", "tanh", "sigmoid", "contiguous"}


@dataclass
class Site:
    """One dropout use served by ARD.

    Attributes:
        name: unique name used in logs (``ard/<name>/...``): the dropout's path, suffixed with the consumer
            when the dropout is used at several places; ``<lstm>.l<i>`` for an LSTM's inter-layer dropout.
        kind: ``"producer+consumer"``, ``"consumer"``, ``"lstm-input"`` or ``"lstm-inter"``.
        p: the dropout rate of this site (the module's own, or the callback's override).
        width: number of units the pattern runs over.
        dropout: path of the ``nn.Dropout`` module (None for LSTM inter-layer dropout).
        consumer: path of the Linear or LSTM that reads the dropped units.
        consumer_layer: for LSTM consumers, the layer whose input this is.
        producer: path of the Linear that computes only kept units, if proven.
    """

    name: str
    kind: str
    p: float
    width: int
    dropout: str | None
    consumer: str
    consumer_layer: int = 0
    producer: str | None = None


@dataclass
class Skipped:
    """A dropout left as it is, and why."""

    name: str
    reason: str


@dataclass
class SiteReport:
    """Result of detection."""

    sites: list[Site] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def _target(gm: fx.GraphModule, node: fx.Node) -> object:
    if node.op == "call_module":
        return gm.get_submodule(node.target)  # type: ignore[arg-type]
    return node.target


def _is(node: fx.Node, gm: fx.GraphModule, modules: tuple, functions: set, methods: set) -> bool:
    if node.op == "call_module":
        return type(_target(gm, node)) in modules
    if node.op == "call_function":
        return node.target in functions
    if node.op == "call_method":
        return node.target in methods
    return False


def _is_dropout(node: fx.Node, gm: fx.GraphModule) -> bool:
    return node.op == "call_module" and type(_target(gm, node)) in (nn.Dropout, ARDDropout)


def _is_functional_dropout(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in (F.dropout, torch.dropout)


class _Tracer(fx.Tracer):
    """Keeps every dropout module (subclasses and Dropout1d/2d/3d too) a leaf, so each shows as one call."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _DropoutNd) or super().is_leaf_module(m, module_qualified_name)


def _trace(module: nn.Module) -> fx.GraphModule | None:
    try:
        graph = _Tracer().trace(module)
        return fx.GraphModule(module, graph)
    except Exception:  # noqa: BLE001 - any trace failure means "not provable from this root"
        return None


def _traced_roots(model: nn.Module) -> list[tuple[str, fx.GraphModule]]:
    """Trace the model, or else its largest traceable submodules (breadth first)."""
    roots: list[tuple[str, fx.GraphModule]] = []
    pending = [("", model)]
    while pending:
        prefix, module = pending.pop(0)
        gm = _trace(module)
        if gm is not None:
            roots.append((prefix, gm))
            continue
        for name, child in module.named_children():
            if not isinstance(child, _DropoutNd) and any(isinstance(m, nn.Dropout) for m in child.modules()):
                pending.append((f"{prefix}.{name}" if prefix else name, child))
    return roots


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def find_sites(
    model: nn.Module,
    p: float | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    sites: Sequence[str] | None = None,
) -> SiteReport:
    """Find the dropout sites of ``model`` that ARD can serve.

    Args:
        model: the model (not changed).
        p: rate override for every site; None keeps each dropout's own ``p``.
        include, exclude: glob patterns over dropout (or LSTM) module paths; a site is used when it matches an
            ``include`` pattern (all when None) and no ``exclude`` pattern.
        sites: explicit ``"dropout_path->consumer_path"`` pairs for sites detection cannot prove (the model's
            forward does not trace); they are taken as consumer-only sites on your word.
    """
    report = SiteReport()
    seen_dropouts: set[str] = set()
    candidates: dict[str, list[Site]] = defaultdict(list)  # dropout path -> proven sites
    unproven: dict[str, str] = {}  # dropout path -> reason
    linear_calls: dict[str, int] = defaultdict(int)

    for prefix, gm in _traced_roots(model):

        def full(target: str, prefix: str = prefix) -> str:
            return f"{prefix}.{target}" if prefix else target

        for node in gm.graph.nodes:
            if node.op == "call_module" and type(_target(gm, node)) in (nn.Linear, ARDLinear, nn.LSTM, ARDLSTM):
                linear_calls[full(node.target)] += 1
        for node in gm.graph.nodes:
            if _is_functional_dropout(node):
                report.skipped.append(
                    Skipped(
                        f"{full('')}{node.name}",
                        "functional dropout call (F.dropout): only "
                        "nn.Dropout modules can be swapped; use an nn.Dropout module",
                    )
                )
                continue
            if not _is_dropout(node, gm):
                continue
            dpath = full(node.target)
            seen_dropouts.add(dpath)
            module = _target(gm, node)
            site, reason = _prove(gm, node, dpath, full, module.p if p is None else p)
            if site is None:
                unproven[dpath] = reason
            else:
                candidates[dpath].append(site)

    for name, module in model.named_modules():
        if isinstance(module, _DropoutNd) and type(module) not in (nn.Dropout, ARDDropout):
            report.skipped.append(
                Skipped(
                    name,
                    f"{type(module).__name__} is not nn.Dropout (another semantics, or a "
                    "subclass that may override forward); left as it is",
                )
            )
            continue
        if isinstance(module, nn.Dropout) and name not in seen_dropouts and name not in candidates:
            unproven.setdefault(
                name,
                "no traced forward reaches it (the model's forward does not trace); name the "
                "site explicitly with sites=['dropout->consumer']",
            )

    for spec in sites or []:
        dpath, _, cpath = spec.partition("->")
        try:
            drop, cons = model.get_submodule(dpath), model.get_submodule(cpath)
        except AttributeError as err:
            raise ValueError(f"sites entry {spec!r}: {err}") from None
        if not isinstance(drop, nn.Dropout) or type(cons) not in (nn.Linear, ARDLinear, nn.LSTM, ARDLSTM):
            raise ValueError(
                f"sites entry {spec!r} must name an nn.Dropout and an nn.Linear or nn.LSTM as 'dropout->consumer', "
                f"got {type(drop).__name__} and {type(cons).__name__}"
            )
        width = cons.in_features if isinstance(cons, nn.Linear) else cons.input_size
        kind = "consumer" if isinstance(cons, nn.Linear) else "lstm-input"
        candidates[dpath] = [Site(dpath, kind, drop.p if p is None else p, width, dpath, cpath)]
        unproven.pop(dpath, None)
        linear_calls[cpath] = max(linear_calls[cpath], 1)

    for dpath, reason in unproven.items():
        candidates.pop(dpath, None)
        report.skipped.append(Skipped(dpath, reason))

    for dpath, uses in candidates.items():
        for site in uses:
            for layer in (site.consumer, site.producer):
                if layer is not None and linear_calls[layer] > 1:
                    if layer == site.producer:
                        site.producer, site.kind = None, "consumer"
                    else:
                        report.skipped.append(
                            Skipped(dpath, f"its consumer {layer} is called {linear_calls[layer]} times per forward")
                        )
                        break
            else:
                continue
            break
        else:
            if len(uses) > 1:
                for site in uses:
                    site.name = f"{dpath}->{site.consumer}"
            report.sites.extend(uses)

    for name, module in model.named_modules():
        if type(module) in (nn.LSTM, ARDLSTM) and module.num_layers > 1 and module.dropout > 0:
            if module.proj_size > 0:
                report.skipped.append(Skipped(name, "nn.LSTM with proj_size > 0 is not supported"))
                continue
            rate = module.dropout if p is None else p
            for layer in range(1, module.num_layers):
                width = module.hidden_size * (2 if module.bidirectional else 1)
                report.sites.append(Site(f"{name}.l{layer}", "lstm-inter", rate, width, None, name, layer))

    report.sites, dropped = _filter(report.sites, include, exclude)
    report.skipped += dropped
    for site in report.sites:  # a consumer must belong to one site only (one input pattern per layer)
        if (
            site.kind in ("consumer", "producer+consumer")
            and sum(s.consumer == site.consumer for s in report.sites) > 1
        ):
            raise ValueError(f"consumer {site.consumer} is fed by several sites; exclude all but one")
    return report


def _filter(
    sites: list[Site], include: list[str] | None, exclude: list[str] | None
) -> tuple[list[Site], list[Skipped]]:
    kept, dropped = [], []
    for site in sites:
        path = site.dropout or site.name
        if include is not None and not any(
            fnmatch.fnmatchcase(path, g) or fnmatch.fnmatchcase(site.name, g) for g in include
        ):
            dropped.append(Skipped(site.name, f"not matched by include={include}"))
        elif exclude and any(fnmatch.fnmatchcase(path, g) or fnmatch.fnmatchcase(site.name, g) for g in exclude):
            dropped.append(Skipped(site.name, f"matched by exclude={exclude}"))
        else:
            kept.append(site)
    # a dropout module is served only if all of its uses are kept
    by_dropout: dict[str, list[Site]] = defaultdict(list)
    for site in sites:
        if site.dropout is not None:
            by_dropout[site.dropout].append(site)
    final = []
    for site in kept:
        if site.dropout is not None and any(s not in kept for s in by_dropout[site.dropout]):
            dropped.append(Skipped(site.name, f"another use of {site.dropout} is excluded"))
        else:
            final.append(site)
    return final, dropped


def _prove(gm: fx.GraphModule, node: fx.Node, dpath: str, full, rate: float) -> tuple[Site | None, str]:  # type: ignore[no-untyped-def]
    """Prove one dropout call: (site, "") or (None, reason)."""
    # forward: through homogeneous ops to a Linear / LSTM input
    cur, reshaped = node, False
    while True:
        user = _single_user(cur)
        if user is None:
            return None, f"its output has {len(cur.users)} readers; ARD needs exactly one"
        if user.op == "call_module" and type(_target(gm, user)) in (nn.Linear, ARDLinear):
            if user.args[0] is not cur:
                return None, "it does not feed the Linear's input"
            consumer, kind = user, "consumer"
            break
        if user.op == "call_module" and type(_target(gm, user)) in (nn.LSTM, ARDLSTM):
            lstm = _target(gm, user)
            if user.args[0] is not cur or lstm.proj_size > 0:
                return None, "it does not feed the LSTM's input (or the LSTM has proj_size > 0)"
            consumer, kind = user, "lstm-input"
            break
        if _is(user, gm, _HOMOGENEOUS_MODULES, _HOMOGENEOUS_FUNCTIONS, _HOMOGENEOUS_METHODS) and user.args[0] is cur:
            reshaped = reshaped or not _is(user, gm, _ELEMENTWISE_MODULES, _ELEMENTWISE_FUNCTIONS, _ELEMENTWISE_METHODS)
            cur = user
            continue
        return None, f"its output reaches {user.format_node()} before any Linear"
    cmod = _target(gm, consumer)
    width = cmod.in_features if kind == "consumer" else cmod.input_size
    site = Site(dpath, kind, rate, width, dpath, full(consumer.target))
    if reshaped:  # flatten/reshape between: producer compaction would change widths; consumer only
        return site, ""
    # backward: through elementwise ops (single reader each) to a Linear called once
    cur = node.args[0] if node.args else None
    while isinstance(cur, fx.Node) and _single_user(cur) is not None:
        if cur.op == "call_module" and type(_target(gm, cur)) in (nn.Linear, ARDLinear):
            if _target(gm, cur).out_features == width and kind == "consumer":
                site.producer, site.kind = full(cur.target), "producer+consumer"
            break
        if _is(cur, gm, _ELEMENTWISE_MODULES, _ELEMENTWISE_FUNCTIONS, _ELEMENTWISE_METHODS):
            cur = cur.args[0]
            continue
        break
    return site, ""


@dataclass
class Surgery:
    """The swap applied to a model: which modules were converted, so they can be converted back."""

    model: nn.Module
    sites: list[Site]
    backend: str = "auto"
    linears: dict[str, ARDLinear] = field(default_factory=dict)
    lstms: dict[str, ARDLSTM] = field(default_factory=dict)
    dropouts: dict[str, ARDDropout] = field(default_factory=dict)
    dropout_uses: dict[str, int] = field(default_factory=dict)

    def apply(self) -> "Surgery":
        """Convert every module the sites name, in place (same objects, same Parameters)."""
        for site in self.sites:
            for path in (site.consumer, site.producer):
                if path is None:
                    continue
                module = self.model.get_submodule(path)
                if isinstance(module, nn.LSTM):
                    self.lstms[path] = ARDLSTM.from_lstm(module)
                else:
                    self.linears[path] = ARDLinear.from_linear(module, self.backend)
            if site.dropout is not None:
                self.dropouts[site.dropout] = ARDDropout.from_dropout(self.model.get_submodule(site.dropout))
                self.dropout_uses[site.dropout] = self.dropout_uses.get(site.dropout, 0) + 1
        return self

    def enable(self, enabled: bool = True) -> None:
        """Let the dropout modules hand their work to the ARD layers (or act as plain dropout again)."""
        for drop in self.dropouts.values():
            drop.ard_enabled = enabled

    def clear(self) -> None:
        """Remove all patterns (the converted modules act as the plain ones)."""
        for lin in self.linears.values():
            lin.clear_patterns()
        for lstm in self.lstms.values():
            lstm.clear_patterns()
        self.enable(False)

    def restore(self) -> None:
        """Give every converted module its original class back (trained values stay in the same Parameters)."""
        for lin in self.linears.values():
            lin.to_linear()
        for lstm in self.lstms.values():
            lstm.to_lstm()
        for drop in self.dropouts.values():
            drop.to_dropout()
        self.linears.clear(), self.lstms.clear(), self.dropouts.clear()
