"""Which Linear sites read an LSTM's output: in sequence mode they draw their patterns with the LSTM's sequence
groups, so that the units one sequence keeps agree from the LSTM to the decoder.

Found on the same ``torch.fx`` trace as the sites themselves (:mod:`lightning_ard.sites.trace`): from each call of
one of the LSTMs, follow ``out`` of ``out, h = lstm(x)`` through ``.data``, ``pad_packed_sequence(...)[0]`` and
shape ops (reshape, view, flatten, ``.contiguous()``) to the dropout modules that read it.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence

import torch.fx as fx
from torch import nn
from torch.nn.utils.rnn import pad_packed_sequence

from lightning_ard.sites.site import Site
from lightning_ard.sites.trace import RESHAPES, Traced, attributes_kept, qualify, traced_roots


def find_lstm_followers(
    model: nn.Module, sites: Sequence[Site], lstm_paths: set[str], eligible: Callable[[Site], bool]
) -> dict[str, str]:
    """Site name -> LSTM path, for every Linear-consumer site (``eligible`` and with a dropout module) whose
    dropout reads the output of an LSTM in ``lstm_paths``.

    The model is traced (or, where its forward does not trace, its largest traceable submodules holding one of
    the LSTMs) with site-rule blocks traced through; it is not changed.
    """
    by_dropout: defaultdict[str, list[Site]] = defaultdict(list)
    for site in sites:
        if site.kind.feeds_linear and site.dropout is not None and eligible(site):
            by_dropout[site.dropout].append(site)
    found: dict[str, str] = {}
    with attributes_kept(model):
        roots = traced_roots(model, lstm_paths, rule_leaves=False)
    for prefix, gm in roots:
        for node in gm.graph.nodes:
            lstm_path = qualify(prefix, str(node.target))
            if node.op != "call_module" or lstm_path not in lstm_paths:
                continue
            for dropout in _modules_reading_output(gm, node, prefix):
                for site in by_dropout.get(dropout, []):
                    found[site.name] = lstm_path
    return found


def _modules_reading_output(gm: Traced, lstm: fx.Node, prefix: str) -> Iterator[str]:
    """Paths of the modules called on ``out`` of ``out, h = lstm(x)``, through the ops that pass it on as is."""
    pending = _first_items(lstm)
    while pending:
        cur = pending.pop()
        for user in cur.users:
            if user.op == "call_module":
                yield qualify(prefix, str(user.target))
            elif _passes_on(gm, user, cur):
                pending.append(user)
            elif user.op == "call_function" and user.target is pad_packed_sequence:
                pending += _first_items(user)


def _first_items(node: fx.Node) -> list[fx.Node]:
    """The readers of ``node[0]`` (``out`` of an LSTM's ``(out, h)``, the padded tensor of ``pad_packed_sequence``)."""
    return [u for u in node.users if u.target is operator.getitem and u.args[1] == 0]


def _passes_on(gm: Traced, user: fx.Node, cur: fx.Node) -> bool:
    """Whether ``user`` gives ``cur``'s values on unchanged: a shape op or ``.data`` applied to ``cur``."""
    is_data = user.op == "call_function" and user.target is getattr and user.args[1] == "data"
    return (is_data or RESHAPES.matches(user, gm)) and user.args[0] is cur
