"""Site detection: which dropouts ARD can serve, proven on a ``torch.fx`` trace or a site rule, and why the others
are left alone.

A *site* is one use of a dropout whose output reaches a Linear (or an LSTM) input. Detection analyses the model
module by module: a module with a site rule (:mod:`lightning_ard.sites.rules`, e.g. ``nn.TransformerEncoderLayer``)
is taken as its rule states; any other is traced with ``torch.fx`` (seeing functional forwards and
``nn.Sequential`` alike), and each leaf it calls that holds dropouts (a torch.nn container, a block with a rule)
is analysed in turn, with its call count; a module that does not trace has its children analysed instead. Every
``nn.LSTM(dropout=p)`` adds its inter-layer dropout. ARD layers (``ARDLinear``, ``ARDLSTM``, ``ARDDropout``) count
as the modules they replace, so an already converted model gives the same sites.

What is proven, and why it is enough:

* consumer: the dropout's only reader reaches a Linear/LSTM input through ops ``f`` with ``f(s·x) = s·f(x)``
  and ``f(0) = 0`` (ReLU, LeakyReLU, flatten/reshape, identity), so gathering the kept columns and scaling after
  ``f`` equals the masked dense computation;
* producer: the dropout's input comes from a Linear through elementwise ops, each with a single reader, and the
  Linear is called once, so it may compute only the kept rows;
* a dropout module is swapped only when *every* use of it is a proven site (its other uses would lose dropout),
  and a Linear is patterned only when it is called once (one pattern per module per step);
* a dropout with ``p = 0`` drops nothing: it is never a site (ARD would add work and save nothing).

Whatever is not proven is left untouched and reported with the true reason (the tracer's message when a forward
does not trace, "never called", a torch.nn container no rule covers, a functional call and the module making it).

``find_sites`` runs these as small passes over one :class:`_Evidence` record: analyse the modules (count layer
calls, prove each dropout use), report what no analysis reaches, add the explicit ``sites=``, skip ``p = 0``,
drop the unproven and the multiply-called consumers, add the LSTM inter-layer sites, then filter by
include/exclude. The tracer, the op tables and the path helpers are :mod:`lightning_ard.sites.trace`'s, shared
with :func:`~lightning_ard.sites.followers.find_lstm_followers`.
"""

from __future__ import annotations

import fnmatch
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from lightning_ard.layers import ARDDropout
from lightning_ard.sites.rules import BlockProof, BlockUse, site_rule_for
from lightning_ard.sites.site import Site, SiteKind, SiteReport, Skipped
from lightning_ard.sites.trace import (
    ELEMENTWISE,
    HOMOGENEOUS,
    LINEARS,
    LSTMS,
    Traced,
    attributes_kept,
    calls_module,
    module_at,
    qualify,
    trace,
)

_SWAPPABLE_DROPOUTS = (nn.Dropout, ARDDropout)  # exact types: a subclass may override forward
_FUNCTIONAL_DROPOUTS = frozenset(
    {
        F.dropout,
        F.dropout1d,
        F.dropout2d,
        F.dropout3d,
        F.alpha_dropout,
        F.feature_alpha_dropout,
        torch.dropout,
        torch.alpha_dropout,
        torch.feature_dropout,
        torch.feature_alpha_dropout,
    }
)

_ZERO_RATE_REASON = "p = 0: it drops nothing, so ARD has nothing to save; left as nn.Dropout"


@dataclass(frozen=True)
class _Analysed:
    """How one module was analysed: ``"traced"``, ``"rule"``, ``"failed"`` (its forward does not trace) or
    ``"container"`` (a torch.nn module that fx keeps as a leaf, no rule matching, not traceable on its own)."""

    how: str
    kind: str  # the module's class name
    detail: str = ""  # the tracer's message (and a refusing rule's reason)


@dataclass
class _Evidence:
    """What detection has found so far, per module path, before the report is assembled.

    Attributes:
        candidates: dropout path -> its proven uses (a dropout is served only if all its uses are proven).
        unproven: dropout path -> why one of its uses is not proven (or why no analysis reaches it).
        layer_calls: Linear/LSTM path -> calls per forward (a layer called twice cannot hold one pattern).
        seen: dropout paths some traced forward or rule calls.
        analysed: module path -> how it was analysed (the nearest one explains a dropout no analysis reaches).
        paths: ``id(module)`` -> its path in the model (the first, as ``named_modules`` and fx name it).
    """

    candidates: defaultdict[str, list[Site]] = field(default_factory=lambda: defaultdict(list))
    unproven: dict[str, str] = field(default_factory=dict)
    layer_calls: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    seen: set[str] = field(default_factory=set)
    analysed: dict[str, _Analysed] = field(default_factory=dict)
    paths: dict[int, str] = field(default_factory=dict)

    def path_of(self, module: nn.Module, fallback: str) -> str:
        return self.paths.get(id(module), fallback)


def find_sites(
    model: nn.Module,
    p: float | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    sites: Sequence[str] | None = None,
) -> SiteReport:
    """Find the dropout sites of ``model`` that ARD can serve.

    Args:
        model: the model (not changed: attributes its forward sets while traced, and parameters, buffers,
            submodules and hooks it registers, are put back).
        p: rate override for every site; None keeps each dropout's own ``p``. Dropouts with ``p = 0`` are never
            sites, whatever the override.
        include, exclude: glob patterns over dropout (or LSTM) module paths; a site is used when it matches an
            ``include`` pattern (all when None) and no ``exclude`` pattern.
        sites: explicit ``"dropout_path->consumer_path"`` pairs for sites detection cannot prove (the model's
            forward does not trace); they are taken as consumer-only sites on your word.
    """
    report = SiteReport()
    evidence = _Evidence(paths={id(m): name for name, m in model.named_modules()})
    with attributes_kept(model):
        _analyse(model, "", 1, p, evidence, report.skipped)
    _skip_foreign_dropouts(model, report.skipped)
    _report_unreached(model, evidence)
    _explicit_sites(model, sites or [], p, evidence)
    _skip_zero_rate(model, evidence)
    _drop_unproven(evidence, report.skipped)
    report.sites += _drop_multiply_called_consumers(evidence, report.skipped)
    report.sites += _lstm_inter_sites(model, p, report.skipped)
    report.sites, dropped = _filter(report.sites, include, exclude)
    report.skipped += dropped
    _check_one_site_per_consumer(report.sites)
    return report


# ------------------------------------------------------------------------------------------- graph nodes


def _is_functional_dropout(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in _FUNCTIONAL_DROPOUTS


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _is_torch_nn(module: nn.Module) -> bool:
    """Whether ``module``'s class is torch's own (torch.fx keeps those as leaves, except ``nn.Sequential``)."""
    return type(module).__module__.startswith(("torch.nn.", "torch.ao.nn."))


def _may_hold_dropout(module: nn.Module) -> bool:
    """Whether a dropout module, or code of yours that may call a functional dropout, is inside ``module``."""
    return any(isinstance(m, _DropoutNd) or not _is_torch_nn(m) for m in module.modules())


def _is_block(module: nn.Module) -> bool:
    """Whether a leaf of a trace needs its own analysis: it has a site rule, or is a torch.nn container of dropouts."""
    if isinstance(module, _DropoutNd) or type(module) in LINEARS + LSTMS:
        return False
    return site_rule_for(module) is not None or (_is_torch_nn(module) and _may_hold_dropout(module))


def _worth_analysing(child: nn.Module) -> bool:
    """Whether a child of an untraceable module may hold a dropout or make a functional dropout call."""
    if isinstance(child, _DropoutNd) or type(child) in LINEARS + LSTMS:
        return False
    return _may_hold_dropout(child)


def _where(path: str, kind: str) -> str:
    return "the model's forward" if not path else f"the forward of {path} ({kind})"


def _op_name(target: Any) -> str:
    """``F.gelu``, ``torch.sigmoid``, ``operator.add``: how a function reads in a reason."""
    name = getattr(target, "__name__", repr(target))
    module = getattr(target, "__module__", None) or ""
    if module == "torch.nn.functional":
        return f"F.{name}"
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    if module.startswith("torch") or module == "":
        return f"torch.{name}"
    return f"{module}.{name}"


def _describe(gm: Traced, node: fx.Node, prefix: str) -> str:
    """A graph node in words: ``norm (LayerNorm)``, ``torch.sigmoid``, ``Tensor.mean()``."""
    if node.op == "call_module":
        return f"{qualify(prefix, str(node.target))} ({type(module_at(gm, node)).__name__})"
    if node.op == "call_function":
        return _op_name(node.target)
    if node.op == "call_method":
        return f"Tensor.{node.target}()"
    return f"{node.op} {node.target}"


def _describe_op(op: Any) -> str:
    """An op a site rule names, in words."""
    return f"{type(op).__name__} module" if isinstance(op, nn.Module) else _op_name(op)


# ---------------------------------------------------------------------------------------------- analysis


def _analyse(
    module: nn.Module, prefix: str, calls: int, p: float | None, evidence: _Evidence, skipped: list[Skipped]
) -> None:
    """Analyse one module called ``calls`` times per forward: by its rule, else by its trace, else its children."""
    rule = site_rule_for(module)
    refusal = ""
    if rule is not None:
        proof = rule(module)
        if isinstance(proof, BlockProof):
            evidence.analysed[prefix] = _Analysed("rule", type(module).__name__)
            _apply_rule(module, prefix, calls, proof, p, evidence, skipped)
            return
        refusal = f"its site rule does not match: {proof}"
    gm, error = trace(module)
    if gm is not None:
        evidence.analysed[prefix] = _Analysed("traced", type(module).__name__)
        _count_layer_calls(gm, prefix, calls, evidence)
        _prove_traced_dropouts(gm, prefix, type(module).__name__, p, evidence, skipped)
        blocks = Counter(
            str(node.target) for node in gm.graph.nodes if node.op == "call_module" and _is_block(module_at(gm, node))
        )
        for target, n in blocks.items():
            sub = gm.get_submodule(target)
            _analyse(sub, evidence.path_of(sub, qualify(prefix, target)), calls * n, p, evidence, skipped)
        return
    if not prefix or type(module).forward is not nn.Module.forward:  # a ModuleList is called by its parent
        how = "container" if _is_torch_nn(module) and prefix else "failed"
        detail = f"{error}; {refusal}" if refusal else error
        evidence.analysed[prefix] = _Analysed(how, type(module).__name__, detail)
    for name, child in module.named_children():
        if _worth_analysing(child):
            _analyse(child, evidence.path_of(child, qualify(prefix, name)), calls, p, evidence, skipped)


def _apply_rule(
    block: nn.Module,
    prefix: str,
    calls: int,
    proof: BlockProof,
    p: float | None,
    evidence: _Evidence,
    skipped: list[Skipped],
) -> None:
    """Take a rule's facts about one call of ``block``: prove its uses, record its skips, count its calls."""
    kind = type(block).__name__
    for use in proof.uses:
        drop = _rule_submodule(block, prefix, use.dropout)
        if type(drop) not in _SWAPPABLE_DROPOUTS:
            continue  # reported by _skip_foreign_dropouts
        dpath = evidence.path_of(drop, qualify(prefix, use.dropout))
        evidence.seen.add(dpath)
        site = _prove_use(block, prefix, use, dpath, drop.p if p is None else p, evidence)
        if isinstance(site, str):
            evidence.unproven[dpath] = site
        else:
            evidence.candidates[dpath].append(site)
    for name, reason in proof.skipped.items():
        drop = _rule_submodule(block, prefix, name)
        if type(drop) in _SWAPPABLE_DROPOUTS:
            dpath = evidence.path_of(drop, qualify(prefix, name))
            evidence.seen.add(dpath)
            evidence.unproven[dpath] = reason
    for name, n in proof.calls.items():
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"the site rule for {kind} gives {name!r} {n!r} calls; it must be an int >= 1")
        sub = _rule_submodule(block, prefix, name)
        path = evidence.path_of(sub, qualify(prefix, name))
        if type(sub) in LINEARS + LSTMS:
            evidence.layer_calls[path] += calls * n
        else:
            _analyse(sub, path, calls * n, p, evidence, skipped)


def _rule_submodule(block: nn.Module, prefix: str, name: str) -> nn.Module:
    try:
        return block.get_submodule(name)
    except AttributeError:
        where = prefix or "the model"
        raise ValueError(
            f"the site rule for {type(block).__name__} names {name!r}, which {where} does not have; fix the rule"
        ) from None


def _prove_use(
    block: nn.Module, prefix: str, use: BlockUse, dpath: str, rate: float, evidence: _Evidence
) -> Site | str:
    """The same proof as on a trace, on the facts a rule states: exact types, a homogeneous op after the dropout,
    an elementwise op before it for a producer of the right width."""
    cons = _rule_submodule(block, prefix, use.consumer)
    cpath = evidence.path_of(cons, qualify(prefix, use.consumer))
    if type(cons) in LINEARS:
        kind, width = SiteKind.CONSUMER, cons.in_features
    elif type(cons) in LSTMS and cons.proj_size == 0:
        kind, width = SiteKind.LSTM_INPUT, cons.input_size
    else:
        return f"its reader {cpath} ({type(cons).__name__}) is not an nn.Linear or an nn.LSTM without proj_size"
    if use.after is not None and not HOMOGENEOUS.holds(use.after):
        return f"its output reaches {_describe_op(use.after)} before any Linear"
    site = Site(dpath, kind, rate, width, dpath, cpath)
    if kind is not SiteKind.CONSUMER or use.producer is None:
        return site
    if use.after is not None and not ELEMENTWISE.holds(use.after):
        return site  # a reshape between: consumer only
    prod = _rule_submodule(block, prefix, use.producer)
    elementwise = use.before is None or ELEMENTWISE.holds(use.before)
    if type(prod) in LINEARS and prod.out_features == width and elementwise:
        site.producer = evidence.path_of(prod, qualify(prefix, use.producer))
        site.kind = SiteKind.PRODUCER_CONSUMER
    return site


# ----------------------------------------------------------------------------------- passes (in order)


def _count_layer_calls(gm: Traced, prefix: str, calls: int, evidence: _Evidence) -> None:
    """Count the calls of every Linear and LSTM in one traced root called ``calls`` times."""
    for node in gm.graph.nodes:
        if calls_module(gm, node, LINEARS + LSTMS):
            module = module_at(gm, node)
            evidence.layer_calls[evidence.path_of(module, qualify(prefix, str(node.target)))] += calls


def _prove_traced_dropouts(
    gm: Traced, prefix: str, kind: str, p: float | None, evidence: _Evidence, skipped: list[Skipped]
) -> None:
    """Prove every dropout call of one traced root; functional dropout calls are skipped, named by the module
    whose forward makes them (nothing to swap)."""
    functional: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
    for node in gm.graph.nodes:
        if _is_functional_dropout(node):
            stack = list(node.meta.get("nn_module_stack", {}).values())
            path, caller = (qualify(prefix, stack[-1][0]), stack[-1][1].__name__) if stack else (prefix, kind)
            rate = node.kwargs.get("p", node.args[1] if len(node.args) > 1 else None)
            functional[(path, caller, _op_name(node.target))].append(rate)
        elif calls_module(gm, node, _SWAPPABLE_DROPOUTS):
            drop = module_at(gm, node)
            dpath = evidence.path_of(drop, qualify(prefix, str(node.target)))
            evidence.seen.add(dpath)
            site, reason = _prove(gm, node, dpath, prefix, kind, drop.p if p is None else p)
            if site is None:
                evidence.unproven[dpath] = reason
            else:
                evidence.candidates[dpath].append(site)
    for (path, caller, fn), rates in functional.items():
        shown = ", ".join(f"p={r}" if isinstance(r, (int, float)) else "p=?" for r in rates)
        if len(rates) == 1:
            call = f"functional dropout call {fn}({shown})"
        else:
            call = f"{len(rates)} functional dropout calls {fn} ({shown})"
        reason = f"{call} in {_where(path, caller)}: only nn.Dropout modules can be swapped; use an nn.Dropout module"
        skipped.append(Skipped(path or "(model)", reason))


def _skip_foreign_dropouts(model: nn.Module, skipped: list[Skipped]) -> None:
    """Report every dropout module that is not exactly ``nn.Dropout`` (Dropout2d, AlphaDropout, subclasses)."""
    for name, module in model.named_modules():
        if isinstance(module, _DropoutNd) and type(module) not in _SWAPPABLE_DROPOUTS:
            reason = (
                f"{type(module).__name__} is not nn.Dropout (another semantics, or a subclass that may override "
                "forward); left as it is"
            )
            skipped.append(Skipped(name, reason))


def _report_unreached(model: nn.Module, evidence: _Evidence) -> None:
    """Mark unproven every ``nn.Dropout`` no analysis calls, with the reason its nearest analysed ancestor gives."""
    for name, module in model.named_modules():
        if type(module) in _SWAPPABLE_DROPOUTS and name not in evidence.seen and name not in evidence.candidates:
            evidence.unproven.setdefault(name, _unreached_reason(name, evidence))


def _unreached_reason(dpath: str, evidence: _Evidence) -> str:
    parts = dpath.split(".")
    hint = f"name the site explicitly with sites=['{dpath}->consumer']"
    for i in range(len(parts) - 1, -1, -1):
        path = ".".join(parts[:i])
        found = evidence.analysed.get(path)
        if found is None:
            continue
        if found.how == "traced":
            return f"it is never called: {_where(path, found.kind)} does not call it"
        if found.how == "rule":
            return f"it is never called: the site rule for {found.kind} ({path or 'the model'}) lists no use of it"
        if found.how == "container":
            return (
                f"it is inside {path}, a torch.nn container ({found.kind}) that torch.fx keeps as a leaf; its "
                f"forward does not trace ({found.detail}) and no site rule matches it: add one with "
                f"register_site_rule, or {hint}"
            )
        return f"no traced forward reaches it: {_where(path, found.kind)} does not trace ({found.detail}); {hint}"
    return f"no traced forward reaches it; {hint}"


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
    if not isinstance(drop, nn.Dropout) or type(cons) not in LINEARS + LSTMS:
        raise ValueError(
            f"sites entry {spec!r} must name an nn.Dropout and an nn.Linear or nn.LSTM as 'dropout->consumer', "
            f"got {type(drop).__name__} and {type(cons).__name__}"
        )
    if isinstance(cons, nn.Linear):
        return Site(dpath, SiteKind.CONSUMER, drop.p if p is None else p, cons.in_features, dpath, cpath)
    return Site(dpath, SiteKind.LSTM_INPUT, drop.p if p is None else p, cons.input_size, dpath, cpath)


def _skip_zero_rate(model: nn.Module, evidence: _Evidence) -> None:
    """A dropout with ``p = 0`` is never a site (explicit or not, whatever the override): it saves nothing."""
    for dpath in [*evidence.candidates, *evidence.unproven]:
        if model.get_submodule(dpath).p == 0:
            evidence.candidates.pop(dpath, None)
            evidence.unproven[dpath] = _ZERO_RATE_REASON


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
        if not (type(module) in LSTMS and module.num_layers > 1 and module.dropout > 0):
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


def _prove(gm: Traced, node: fx.Node, dpath: str, prefix: str, kind: str, rate: float) -> tuple[Site | None, str]:
    """Prove one dropout call: (site, "") or (None, reason). The producer is sought only without a reshape."""
    found = _walk_to_consumer(gm, node, prefix, kind, dpath)
    if isinstance(found, str):
        return None, found
    consumer, site_kind, reshaped = found
    layer = module_at(gm, consumer)
    width = layer.in_features if site_kind is SiteKind.CONSUMER else layer.input_size
    site = Site(dpath, site_kind, rate, width, dpath, qualify(prefix, str(consumer.target)))
    if reshaped:  # flatten/reshape between: producer compaction would change widths; consumer only
        return site, ""
    producer = _walk_to_producer(gm, node, width)
    if producer is not None and site_kind is SiteKind.CONSUMER:
        site.producer, site.kind = qualify(prefix, str(producer.target)), SiteKind.PRODUCER_CONSUMER
    return site, ""


def _walk_to_consumer(
    gm: Traced, node: fx.Node, prefix: str, kind: str, dpath: str
) -> tuple[fx.Node, SiteKind, bool] | str:
    """Follow single readers through homogeneous ops to a Linear/LSTM input.

    Returns (consumer node, kind, whether a non-elementwise op such as flatten lies between), or the reason.
    """
    cur, reshaped = node, False
    while True:
        user = _single_user(cur)
        if user is None:
            return f"its output has {len(cur.users)} readers; ARD needs exactly one"
        if user.op == "output":
            return _leaves_reason(prefix, kind, dpath)
        if calls_module(gm, user, LINEARS):
            return (user, SiteKind.CONSUMER, reshaped) if user.args[0] is cur else "it does not feed the Linear's input"
        if calls_module(gm, user, LSTMS):
            if user.args[0] is not cur or module_at(gm, user).proj_size > 0:
                return "it does not feed the LSTM's input (or the LSTM has proj_size > 0)"
            return user, SiteKind.LSTM_INPUT, reshaped
        if not (HOMOGENEOUS.matches(user, gm) and user.args[0] is cur):
            return f"its output reaches {_describe(gm, user, prefix)} before any Linear"
        reshaped = reshaped or not ELEMENTWISE.matches(user, gm)
        cur = user


def _leaves_reason(prefix: str, kind: str, dpath: str) -> str:
    """Why a dropout whose value is returned by the traced forward is not a site."""
    if not prefix:
        return "its output is returned by the model's forward, not read by a Linear"
    return (
        f"its output leaves {prefix} ({kind}), which is traced on its own, so what reads it is not known; "
        f"name the site with sites=['{dpath}->consumer'] if a Linear reads it"
    )


def _walk_to_producer(gm: Traced, node: fx.Node, width: int) -> fx.Node | None:
    """Follow the dropout's input back through elementwise ops (one reader each) to a Linear of ``width`` outputs."""
    cur = node.args[0] if node.args else None
    while isinstance(cur, fx.Node) and _single_user(cur) is not None:
        if calls_module(gm, cur, LINEARS):
            return cur if module_at(gm, cur).out_features == width else None
        if not ELEMENTWISE.matches(cur, gm):
            return None
        cur = cur.args[0]
    return None
