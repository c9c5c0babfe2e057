"""Site rules: what a block's own code does with its dropouts, for module types that torch.fx cannot trace.

``torch.fx`` keeps torch.nn modules as leaves and fails on some forwards (``nn.TransformerEncoderLayer``:
``input to _none_or_dtype() must be None or torch.Tensor``). A *rule* states, for one module type, what one call
of its forward does: which Linear feeds which dropout (through which op) and which Linear reads it, which
submodules it calls how often, and why its other dropouts are not sites. Detection then runs the same proofs on
these facts as on a trace (exact types, elementwise op before the dropout for a producer, homogeneous op after it,
single reader, layers called once), so a rule describes code and detection still decides.

A rule matches a module's code path, not its name: it is looked up by the module's exact type, and the built-in
rules also check that the methods they describe are torch's own (not overridden by the instance, not patched).

Add a rule for your own block type (a Linear, an activation, a dropout and a Linear, as its forward runs them)::

    from lightning_ard.sites import BlockProof, BlockUse, register_site_rule

    class MyFFN(nn.Module):                 # forward: self.fc2(self.drop(self.act(self.fc1(x))))
        ...

    register_site_rule(
        MyFFN,
        lambda block: BlockProof(
            uses=[BlockUse(dropout="drop", consumer="fc2", producer="fc1", before=block.act)],
            calls={"fc1": 1, "fc2": 1},
        ),
    )
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class BlockUse:
    """One use of a dropout in a block, as the block's code runs it: ``consumer(after(dropout(before(producer(x)))))``.

    Attributes:
        dropout: path of the ``nn.Dropout`` in the block.
        consumer: path of the ``nn.Linear`` (or ``nn.LSTM``) whose input is the dropout's output (through ``after``).
        producer: path of the ``nn.Linear`` whose output reaches the dropout (through ``before``); None if unknown.
        before: the op between producer and dropout (a module or a function; None: none). A producer is served
            only when it is elementwise.
        after: the op between dropout and consumer (None: none); it must be homogeneous (``f(s·x) = s·f(x)``,
            ``f(0) = 0``), else the use is not a site.
    Each op has the previous value as its only reader; that is what the rule asserts by naming them.
    """

    dropout: str
    consumer: str
    producer: str | None = None
    before: Any = None
    after: Any = None


@dataclass(frozen=True)
class BlockProof:
    """What one call of a block does, as a rule states it (paths are relative to the block).

    Attributes:
        uses: the dropout uses that reach a Linear/LSTM input (candidates for sites).
        calls: submodule -> times one call of the block calls it: its Linears and LSTMs (a consumer called twice
            cannot hold one pattern), and blocks it runs, which are then analysed in turn (by rule or trace).
        skipped: dropout -> why that use is not a site (for instance "added to the residual stream").
    """

    uses: Sequence[BlockUse] = ()
    calls: Mapping[str, int] = field(default_factory=dict)
    skipped: Mapping[str, str] = field(default_factory=dict)


SiteRule = Callable[[Any], "BlockProof | str"]
"""A rule: the block -> its :class:`BlockProof`, or a string saying why this block's code is not the one described."""

_RULES: dict[type[nn.Module], SiteRule] = {}


def register_site_rule(module_type: type[M], rule: Callable[[M], BlockProof | str], *, replace: bool = False) -> None:
    """Use ``rule`` for every module of exactly ``module_type`` (subclasses may override forward: not matched).

    A module with a rule is not traced: detection takes the rule's :class:`BlockProof` as what its forward does.
    ``replace=True`` replaces an existing rule (the built-in ones included).
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"module_type must be an nn.Module subclass, got {module_type!r}")
    if not callable(rule):
        raise TypeError(f"rule must be callable (block -> BlockProof | str), got {rule!r}")
    if module_type in _RULES and not replace:
        raise ValueError(
            f"a site rule for {module_type.__qualname__} is already registered; pass replace=True to replace it"
        )
    _RULES[module_type] = rule


def unregister_site_rule(module_type: type[nn.Module]) -> None:
    """Remove the rule for ``module_type`` (KeyError naming it when there is none)."""
    if module_type not in _RULES:
        raise KeyError(f"no site rule is registered for {getattr(module_type, '__qualname__', module_type)!r}")
    del _RULES[module_type]


def site_rule_for(module: nn.Module) -> SiteRule | None:
    """The rule registered for ``module``'s exact type, or None."""
    return _RULES.get(type(module))


def own_code(module: nn.Module, base: type[nn.Module], methods: Sequence[str]) -> str | None:
    """None if ``methods`` of ``module`` are ``base``'s own code (not set on the instance, not patched on the
    class); else the reason, naming the first method that differs."""
    for name in methods:
        if name in vars(module):
            return f"{name} is set on the instance, so its forward is not {base.__qualname__}'s"
        fn = getattr(type(module), name, None)
        if getattr(fn, "__qualname__", None) != f"{base.__qualname__}.{name}" or fn.__module__ != base.__module__:
            return f"{type(module).__qualname__}.{name} is not {base.__qualname__}'s own"
    return None


# ------------------------------------------------------------------------------- torch's transformer blocks

_RESIDUAL = "its output is added to the residual stream ({}), not read by a Linear"


def _ffn_use(layer: nn.TransformerEncoderLayer | nn.TransformerDecoderLayer) -> BlockUse:
    """``_ff_block``: ``linear2(dropout(activation(linear1(x))))``; ``activation`` is a module or a function."""
    return BlockUse(dropout="dropout", consumer="linear2", producer="linear1", before=layer.activation)


def _encoder_layer(layer: nn.TransformerEncoderLayer) -> BlockProof | str:
    """Training path of ``TransformerEncoderLayer.forward`` (either ``norm_first``): ``_sa_block`` once (its
    output ``dropout1(...)`` is added to ``x``), ``_ff_block`` once (``dropout2(linear2(...))`` added to ``x``).
    Its fast path (``torch._transformer_encoder_layer_fwd``) is taken only when ``self.training`` is False, where
    the ARD layers act as the plain ones."""
    wrong = own_code(layer, nn.TransformerEncoderLayer, ("forward", "_sa_block", "_ff_block"))
    if wrong is not None:
        return wrong
    residual = _RESIDUAL.format("TransformerEncoderLayer")
    return BlockProof(
        uses=[_ffn_use(layer)],
        calls={"linear1": 1, "linear2": 1},
        skipped={"dropout1": residual, "dropout2": residual},
    )


def _decoder_layer(layer: nn.TransformerDecoderLayer) -> BlockProof | str:
    """``TransformerDecoderLayer.forward``: ``_sa_block``, ``_mha_block`` and ``_ff_block`` once each, their
    outputs ``dropout1/2/3(...)`` added to ``x``."""
    wrong = own_code(layer, nn.TransformerDecoderLayer, ("forward", "_sa_block", "_mha_block", "_ff_block"))
    if wrong is not None:
        return wrong
    residual = _RESIDUAL.format("TransformerDecoderLayer")
    return BlockProof(
        uses=[_ffn_use(layer)],
        calls={"linear1": 1, "linear2": 1},
        skipped={"dropout1": residual, "dropout2": residual, "dropout3": residual},
    )


def _stack(stack: nn.TransformerEncoder | nn.TransformerDecoder) -> BlockProof | str:
    """``TransformerEncoder/Decoder.forward``: ``for mod in self.layers: output = mod(output, ...)``, then ``norm``
    once if set (the nested-tensor conversion of the encoder changes neither)."""
    wrong = own_code(stack, type(stack), ("forward",))
    if wrong is not None:
        return wrong
    calls = {f"layers.{i}": 1 for i in range(len(stack.layers))}
    if stack.norm is not None:
        calls["norm"] = 1
    return BlockProof(calls=calls)


def _transformer(model: nn.Transformer) -> BlockProof | str:
    """``Transformer.forward``: ``encoder`` once, then ``decoder`` once."""
    wrong = own_code(model, nn.Transformer, ("forward",))
    return wrong if wrong is not None else BlockProof(calls={"encoder": 1, "decoder": 1})


register_site_rule(nn.TransformerEncoderLayer, _encoder_layer)
register_site_rule(nn.TransformerDecoderLayer, _decoder_layer)
register_site_rule(nn.TransformerEncoder, _stack)
register_site_rule(nn.TransformerDecoder, _stack)
register_site_rule(nn.Transformer, _transformer)
