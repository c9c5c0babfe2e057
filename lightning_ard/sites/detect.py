"""Site detection: which dropouts ARD can serve, proven on a ``torch.fx`` trace, and why the others are left alone.

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

``find_sites`` runs these as small passes over one :class:`_Evidence` record: count layer calls and prove each
traced dropout call, report what no trace reaches, add the explicit ``sites=``, drop the unproven and the
multiply-called consumers, add the LSTM inter-layer sites, then filter by include/exclude.
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from lightning_ard.layers import ARDLSTM, ARDDropout, ARDLinear
from lightning_ard.sites.site import Site, SiteKind, SiteReport, Skipped


@dataclass(frozen=True)
class _Ops:
    """A set of graph ops: module types, functions and tensor method names, matched against fx nodes."""

    modules: tuple[type[nn.Module], ...]
    functions: frozenset[Any]
    methods: frozenset[str]

    def matches(self, node: fx.Node, gm: fx.GraphModule) -> bool:
        if node.op == "call_module":
            return type(_module(gm, node)) in self.modules
        if node.op == "call_function":
            return node.target in self.functions
        if node.op == "call_method":
            return node.target in self.methods
        return False


# f(s·x) = s·f(x), f(0) = 0: may sit between a dropout and its consumer.
_HOMOGENEOUS = _Ops(
    (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Flatten),
    frozenset({F.relu, torch.relu, F.leaky_relu, torch.flatten, torch.reshape}),
    frozenset({"relu", "flatten", "view", "reshape", "contiguous"}),
)
# any elementwise op may sit between a producer Linear and the dropout (it runs on the kept units only).
_ELEMENTWISE = _Ops(
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
_LINEARS = (nn.Linear, ARDLinear)
_LSTMS = (nn.LSTM, ARDLSTM)
_SWAPPABLE_DROPOUTS = (nn.Dropout, ARDDropout)  # exact types: a subclass may override forward

_FUNCTIONAL_REASON = (
    "functional dropout call (F.dropout): only nn.Dropout modules can be swapped; use an nn.Dropout module"
)
_UNTRACED_REASON = (
    "no traced forward reaches it (the model's forward does not trace); name the site explicitly with "
    "sites=['dropout->consumer']"
)


@dataclass
class _Evidence:
    """What detection has found so far, per module path, before the report is assembled.

    Attributes:
        candidates: dropout path -> its proven uses (a dropout is served only if all its uses are proven).
        unproven: dropout path -> why one of its uses is not proven (or why no trace reaches it).
        layer_calls: Linear/LSTM path -> calls per forward (a layer called twice cannot hold one pattern).
        seen: dropout paths some traced forward calls.
    """

    candidates: defaultdict[str, list[Site]] = field(default_factory=lambda: defaultdict(list))
    unproven: dict[str, str] = field(default_factory=dict)
    layer_calls: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    seen: set[str] = field(default_factory=set)


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
    report, evidence = SiteReport(), _Evidence()
    for prefix, gm in _traced_roots(model):
        _count_layer_calls(gm, prefix, evidence)
        _prove_traced_dropouts(gm, prefix, p, evidence, report.skipped)
    _skip_foreign_dropouts(model, report.skipped)
    _report_untraced(model, evidence)
    _explicit_sites(model, sites or [], p, evidence)
    _drop_unproven(evidence, report.skipped)
    report.sites += _drop_multiply_called_consumers(evidence, report.skipped)
    report.sites += _lstm_inter_sites(model, p, report.skipped)
    report.sites, dropped = _filter(report.sites, include, exclude)
    report.skipped += dropped
    _check_one_site_per_consumer(report.sites)
    return report


# ---------------------------------------------------------------------------------------------- tracing


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
                pending.append((_qualify(prefix, name), child))
    return roots


def _qualify(prefix: str, target: str) -> str:
    """The model-level path of ``target`` in the root traced at ``prefix`` ("" for the model itself)."""
    return f"{prefix}.{target}" if prefix else target


def _module(gm: fx.GraphModule, node: fx.Node) -> Any:
    """The module a ``call_module`` node calls (typed Any: callers read its layer-specific attributes)."""
    return gm.get_submodule(node.target)  # type: ignore[arg-type]


def _calls(gm: fx.GraphModule, node: fx.Node, types: tuple[type[nn.Module], ...]) -> bool:
    """Whether ``node`` calls a module of exactly one of ``types``."""
    return node.op == "call_module" and type(_module(gm, node)) in types


def _is_functional_dropout(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in (F.dropout, torch.dropout)


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


# ----------------------------------------------------------------------------------- passes (in order)


def _count_layer_calls(gm: fx.GraphModule, prefix: str, evidence: _Evidence) -> None:
    """Count the calls of every Linear and LSTM in one traced root."""
    for node in gm.graph.nodes:
        if _calls(gm, node, _LINEARS + _LSTMS):
            evidence.layer_calls[_qualify(prefix, node.target)] += 1


def _prove_traced_dropouts(
    gm: fx.GraphModule, prefix: str, p: float | None, evidence: _Evidence, skipped: list[Skipped]
) -> None:
    """Prove every dropout call of one traced root; functional dropout calls are skipped (nothing to swap)."""
    for node in gm.graph.nodes:
        if _is_functional_dropout(node):
            skipped.append(Skipped(_qualify(prefix, "") + node.name, _FUNCTIONAL_REASON))
        elif _calls(gm, node, _SWAPPABLE_DROPOUTS):
            dpath = _qualify(prefix, node.target)
            evidence.seen.add(dpath)
            rate = _module(gm, node).p if p is None else p
            site, reason = _prove(gm, node, dpath, prefix, rate)
            if site is None:
                evidence.unproven[dpath] = reason
            else:
                evidence.candidates[dpath].append(site)


def _skip_foreign_dropouts(model: nn.Module, skipped: list[Skipped]) -> None:
    """Report every dropout module that is not exactly ``nn.Dropout`` (Dropout2d, AlphaDropout, subclasses)."""
    for name, module in model.named_modules():
        if isinstance(module, _DropoutNd) and type(module) not in _SWAPPABLE_DROPOUTS:
            reason = (
                f"{type(module).__name__} is not nn.Dropout (another semantics, or a subclass that may override "
                "forward); left as it is"
            )
            skipped.append(Skipped(name, reason))


def _report_untraced(model: nn.Module, evidence: _Evidence) -> None:
    """Mark unproven every ``nn.Dropout`` that no traced forward calls (its uses are unknown)."""
    for name, module in model.named_modules():
        if type(module) in _SWAPPABLE_DROPOUTS and name not in evidence.seen and name not in evidence.candidates:
            evidence.unproven.setdefault(name, _UNTRACED_REASON)


def _explicit_sites(model: nn.Module, specs: Sequence[str], p: float | None, evidence: _Evidence) -> None:
    """Take each ``"dropout->consumer"`` pair as the dropout's only use, replacing what detection found."""
    for spec in specs:
        site = _explicit_site(model, spec, p)  # named by its dropout's path
        evidence.candidates[site.name] = [site]
        evidence.unproven.pop(site.name, None)
        evidence.layer_calls[site.consumer] = max(evidence.layer_calls[site.consumer], 1)


def _explicit_site(model: nn.Module, spec: str, p: float | None) -> Site:
    """The consumer-only site one ``"dropout->consumer"`` pair names; ValueError when it names anything else."""
    dpath, _, cpath = spec.partition("->")
    try:
        drop, cons = model.get_submodule(dpath), model.get_submodule(cpath)
    except AttributeError as err:
        raise ValueError(f"sites entry {spec!r}: {err}") from None
    if not isinstance(drop, nn.Dropout) or type(cons) not in _LINEARS + _LSTMS:
        raise ValueError(
            f"sites entry {spec!r} must name an nn.Dropout and an nn.Linear or nn.LSTM as 'dropout->consumer', "
            f"got {type(drop).__name__} and {type(cons).__name__}"
        )
    if isinstance(cons, nn.Linear):
        return Site(dpath, SiteKind.CONSUMER, drop.p if p is None else p, cons.in_features, dpath, cpath)
    return Site(dpath, SiteKind.LSTM_INPUT, drop.p if p is None else p, cons.input_size, dpath, cpath)


def _drop_unproven(evidence: _Evidence, skipped: list[Skipped]) -> None:
    """Skip every dropout with an unproven use, even if its other uses are proven (they would lose dropout)."""
    for dpath, reason in evidence.unproven.items():
        evidence.candidates.pop(dpath, None)
        skipped.append(Skipped(dpath, reason))


def _drop_multiply_called_consumers(evidence: _Evidence, skipped: list[Skipped]) -> list[Site]:
    """The sites of every dropout whose consumers are each called once; a producer called more is not compacted.

    A dropout used at several places gets one site per use, named ``dropout->consumer``.
    """
    served: list[Site] = []
    calls = evidence.layer_calls
    for dpath, uses in evidence.candidates.items():
        busy = [site.consumer for site in uses if calls[site.consumer] > 1]
        if busy:
            skipped.append(Skipped(dpath, f"its consumer {busy[0]} is called {calls[busy[0]]} times per forward"))
            continue
        for site in uses:
            if site.producer is not None and calls[site.producer] > 1:
                site.producer, site.kind = None, SiteKind.CONSUMER
            if len(uses) > 1:
                site.name = f"{dpath}->{site.consumer}"
        served.extend(uses)
    return served


def _lstm_inter_sites(model: nn.Module, p: float | None, skipped: list[Skipped]) -> list[Site]:
    """One site per inter-layer dropout of every ``nn.LSTM(num_layers > 1, dropout > 0)`` without projection."""
    sites: list[Site] = []
    for name, module in model.named_modules():
        if not (type(module) in _LSTMS and module.num_layers > 1 and module.dropout > 0):
            continue
        if module.proj_size > 0:
            skipped.append(Skipped(name, "nn.LSTM with proj_size > 0 is not supported"))
            continue
        rate = module.dropout if p is None else p
        width = module.hidden_size * (2 if module.bidirectional else 1)
        for layer in range(1, module.num_layers):
            sites.append(Site(f"{name}.l{layer}", SiteKind.LSTM_INTER, rate, width, None, name, layer))
    return sites


def _filter(
    sites: list[Site], include: Sequence[str] | None, exclude: Sequence[str] | None
) -> tuple[list[Site], list[Skipped]]:
    """Keep the sites ``include`` matches and ``exclude`` does not; a dropout is served only if all its uses are."""
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


def _check_one_site_per_consumer(sites: list[Site]) -> None:
    """Raise when two sites feed one Linear: a layer holds one input pattern per step."""
    for site in sites:
        if site.kind.feeds_linear and sum(s.consumer == site.consumer for s in sites) > 1:
            raise ValueError(f"consumer {site.consumer} is fed by several sites; exclude all but one")


# ------------------------------------------------------------------------------------------ one proof


def _prove(gm: fx.GraphModule, node: fx.Node, dpath: str, prefix: str, rate: float) -> tuple[Site | None, str]:
    """Prove one dropout call: (site, "") or (None, reason). The producer is sought only without a reshape."""
    found = _walk_to_consumer(gm, node)
    if isinstance(found, str):
        return None, found
    consumer, kind, reshaped = found
    layer = _module(gm, consumer)
    width = layer.in_features if kind is SiteKind.CONSUMER else layer.input_size
    site = Site(dpath, kind, rate, width, dpath, _qualify(prefix, consumer.target))
    if reshaped:  # flatten/reshape between: producer compaction would change widths; consumer only
        return site, ""
    producer = _walk_to_producer(gm, node, width)
    if producer is not None and kind is SiteKind.CONSUMER:
        site.producer, site.kind = _qualify(prefix, producer.target), SiteKind.PRODUCER_CONSUMER
    return site, ""


def _walk_to_consumer(gm: fx.GraphModule, node: fx.Node) -> tuple[fx.Node, SiteKind, bool] | str:
    """Follow single readers through homogeneous ops to a Linear/LSTM input.

    Returns (consumer node, kind, whether a non-elementwise op such as flatten lies between), or the reason.
    """
    cur, reshaped = node, False
    while True:
        user = _single_user(cur)
        if user is None:
            return f"its output has {len(cur.users)} readers; ARD needs exactly one"
        if _calls(gm, user, _LINEARS):
            return (user, SiteKind.CONSUMER, reshaped) if user.args[0] is cur else "it does not feed the Linear's input"
        if _calls(gm, user, _LSTMS):
            if user.args[0] is not cur or _module(gm, user).proj_size > 0:
                return "it does not feed the LSTM's input (or the LSTM has proj_size > 0)"
            return user, SiteKind.LSTM_INPUT, reshaped
        if not (_HOMOGENEOUS.matches(user, gm) and user.args[0] is cur):
            return f"its output reaches {user.format_node()} before any Linear"
        reshaped = reshaped or not _ELEMENTWISE.matches(user, gm)
        cur = user


def _walk_to_producer(gm: fx.GraphModule, node: fx.Node, width: int) -> fx.Node | None:
    """Follow the dropout's input back through elementwise ops (one reader each) to a Linear of ``width`` outputs."""
    cur = node.args[0] if node.args else None
    while isinstance(cur, fx.Node) and _single_user(cur) is not None:
        if _calls(gm, cur, _LINEARS):
            return cur if _module(gm, cur).out_features == width else None
        if not _ELEMENTWISE.matches(cur, gm):
            return None
        cur = cur.args[0]
    return None
