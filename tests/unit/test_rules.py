"""Site rules: torch's transformer blocks (one test per rule), what a rule does not match, and a user's own rule."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_ard.sites import BlockProof, BlockUse, find_sites, register_site_rule, unregister_site_rule

pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")

ENC_RESIDUAL = "its output is added to the residual stream (TransformerEncoderLayer), not read by a Linear"
DEC_RESIDUAL = "its output is added to the residual stream (TransformerDecoderLayer), not read by a Linear"


def _report(model, **kw):
    report = find_sites(model, **kw)
    return [(s.name, str(s.kind), s.producer, s.consumer, s.width) for s in report.sites], {
        s.name: s.reason for s in report.skipped
    }


def _ffn(prefix: str, width: int, kind: str = "producer+consumer"):
    producer = f"{prefix}linear1" if kind == "producer+consumer" else None
    return (f"{prefix}dropout", kind, producer, f"{prefix}linear2", width)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize(
    "activation",
    ["relu", "gelu", F.relu, F.gelu, nn.GELU(approximate="tanh"), nn.ReLU()],
    ids=["str-relu", "str-gelu", "F.relu", "F.gelu", "GELU-tanh", "ReLU"],
)
def test_encoder_layer_rule(norm_first: bool, activation) -> None:
    layer = nn.TransformerEncoderLayer(16, 2, 24, activation=activation, norm_first=norm_first)
    sites, skipped = _report(layer)
    assert sites == [_ffn("", 24)]
    assert skipped == {"dropout1": ENC_RESIDUAL, "dropout2": ENC_RESIDUAL}


def test_encoder_layer_rule_non_elementwise_activation_is_consumer_only() -> None:
    """An activation the proofs do not allow keeps the FFN a site, without producer compaction."""
    sites, _ = _report(nn.TransformerEncoderLayer(16, 2, 24, activation=lambda x: x * x.mean()))
    assert sites == [_ffn("", 24, "consumer")]


def test_decoder_layer_rule() -> None:
    sites, skipped = _report(nn.TransformerDecoderLayer(16, 2, 40, activation="gelu", norm_first=True))
    assert sites == [_ffn("", 40)]
    assert skipped == {"dropout1": DEC_RESIDUAL, "dropout2": DEC_RESIDUAL, "dropout3": DEC_RESIDUAL}


def test_stack_rules() -> None:
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 24), 3, norm=nn.LayerNorm(16))
    assert _report(enc)[0] == [_ffn(f"layers.{i}.", 24) for i in range(3)]
    dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(16, 2, 24), 2)
    assert _report(dec)[0] == [_ffn(f"layers.{i}.", 24) for i in range(2)]


def test_transformer_rule() -> None:
    model = nn.Transformer(16, 2, 2, 1, 24)
    sites, skipped = _report(model)
    assert sites == [_ffn(f"encoder.layers.{i}.", 24) for i in range(2)] + [_ffn("decoder.layers.0.", 24)]
    assert skipped["decoder.layers.0.dropout3"] == DEC_RESIDUAL


class LayerStack(nn.Module):
    """A ModuleList-driven stack in user code, a Sequential of layers, and a dropout before the head."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.TransformerEncoderLayer(16, 2, 24, batch_first=True) for _ in range(2))
        self.seq = nn.Sequential(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True))
        self.drop, self.head = nn.Dropout(0.2), nn.Linear(16, 4)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(self.drop(self.seq(x)))


def test_rules_inside_traced_user_code() -> None:
    sites, _ = _report(LayerStack())
    assert sites == [
        ("drop", "consumer", None, "head", 16),
        _ffn("layers.0.", 24),
        _ffn("layers.1.", 24),
        _ffn("seq.0.", 32),
    ]


class TwiceCalled(LayerStack):
    def forward(self, x):
        return self.layers[0](self.layers[0](x))


def test_a_layer_called_twice_is_not_served() -> None:
    _, skipped = _report(TwiceCalled())
    assert skipped["layers.0.dropout"] == "its consumer layers.0.linear2 is called 2 times per forward"


class PatchedLayer(nn.TransformerEncoderLayer):
    def _ff_block(self, x):
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))) * 2)


def test_rules_match_code_not_names() -> None:
    """A subclass (it may override _ff_block) or an instance with its own _ff_block is not matched."""
    layer = PatchedLayer(16, 2, 24)
    _, skipped = _report(layer)
    assert skipped["dropout"] == (
        "no traced forward reaches it: the model's forward does not trace (RuntimeError: input to _none_or_dtype() "
        "must be None or torch.Tensor); name the site explicitly with sites=['dropout->consumer']"
    )
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 24), 2)
    enc.layers[1]._ff_block = types.MethodType(PatchedLayer._ff_block, enc.layers[1])
    sites, skipped = _report(enc)
    assert sites == [_ffn("layers.0.", 24)]
    assert skipped["layers.1.dropout"] == (
        "it is inside layers.1, a torch.nn container (TransformerEncoderLayer) that torch.fx keeps as a leaf; its "
        "forward does not trace (RuntimeError: input to _none_or_dtype() must be None or torch.Tensor; its site "
        "rule does not match: _ff_block is set on the instance, so its forward is not TransformerEncoderLayer's) "
        "and no site rule matches it: add one with register_site_rule, or name the site explicitly with "
        "sites=['layers.1.dropout->consumer']"
    )


def test_shared_ffn_dropout_is_not_served() -> None:
    """The FFN dropout also used as the residual dropout: one of its uses is not a site, so neither is."""
    layer = nn.TransformerEncoderLayer(16, 2, 24)
    layer.dropout2 = layer.dropout
    sites, skipped = _report(layer)
    assert sites == [] and skipped["dropout"] == ENC_RESIDUAL


class Gated(nn.Module):
    """A user block whose forward does not trace (data-dependent branch)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.drop, self.fc2 = nn.Linear(8, 12), nn.SiLU(), nn.Dropout(0.25), nn.Linear(12, 8)
        self.out_drop = nn.Dropout(0.1)

    def forward(self, x):
        if x.sum() > 0:
            x = x * 2
        return self.out_drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class UsesGated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block, self.head = Gated(), nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.block(x))


def test_user_rule() -> None:
    without = _report(UsesGated())[1]
    assert without["block.drop"] == (
        "no traced forward reaches it: the forward of block (Gated) does not trace (TraceError: symbolically traced "
        "variables cannot be used as inputs to control flow); name the site explicitly with "
        "sites=['block.drop->consumer']"
    )

    def rule(block: Gated) -> BlockProof:
        return BlockProof(
            uses=[BlockUse(dropout="drop", consumer="fc2", producer="fc1", before=block.act)],
            calls={"fc1": 1, "fc2": 1},
            skipped={"out_drop": "its output is the block's output"},
        )

    register_site_rule(Gated, rule)
    try:
        sites, skipped = _report(UsesGated())  # the block is a leaf now, so the model traces
        assert sites == [("block.drop", "producer+consumer", "block.fc1", "block.fc2", 12)]
        assert skipped == {"block.out_drop": "its output is the block's output"}
        with pytest.raises(ValueError, match="a site rule for Gated is already registered; pass replace=True"):
            register_site_rule(Gated, rule)
        register_site_rule(Gated, lambda b: BlockProof(uses=[BlockUse("drop", "fc9")]), replace=True)
        with pytest.raises(ValueError, match="the site rule for Gated names 'fc9', which block does not have"):
            find_sites(UsesGated())
        register_site_rule(Gated, lambda b: BlockProof(uses=[BlockUse("drop", "fc2", after=torch.tanh)]), replace=True)
        assert _report(UsesGated())[1]["block.drop"] == "its output reaches torch.tanh before any Linear"
        register_site_rule(Gated, lambda b: "not this code path", replace=True)  # a refusing rule: traced instead
        assert "its site rule does not match: not this code path" in _report(UsesGated())[1]["block.drop"]
    finally:
        unregister_site_rule(Gated)
    with pytest.raises(KeyError, match="no site rule is registered for 'Gated'"):
        unregister_site_rule(Gated)
    with pytest.raises(TypeError, match="module_type must be an nn.Module subclass, got 3"):
        register_site_rule(3, rule)  # type: ignore[arg-type]


def test_rules_see_ard_layers_as_the_modules_they_replace() -> None:
    from lightning_ard.controller import ARDController

    model = nn.Transformer(16, 2, 1, 1, 24)
    before = find_sites(model)
    ctl = ARDController(model, pattern="row").apply()
    assert type(model.encoder.layers[0].linear2).__name__ == "ARDLinear"
    after = find_sites(model)
    assert after.sites == before.sites and after.skipped == before.skipped
    ctl.restore()
