"""ARD on torch's transformer blocks: every layer's FFN found, trained as masked dense dropout, restored exactly."""

from __future__ import annotations

import copy
import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_ard import ApproximateDropout
from lightning_ard.controller import ARDController
from lightning_ard.patterns.groups import group_bounds
from lightning_ard.sites import find_sites

pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")


class MaskedDropout(nn.Module):
    """The dense reference of an ARD site: this step's pattern masks (one per row group), scaled; identity in eval."""

    def __init__(self) -> None:
        super().__init__()
        self.masks: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        flat = x.reshape(-1, x.shape[-1])
        bounds = group_bounds(flat.shape[0], len(self.masks))
        out = torch.cat([flat[r0:r1] * m for (r0, r1), m in zip(bounds, self.masks, strict=True)])
        return out.reshape(x.shape)


def _quiet_residuals(layers: nn.ModuleList) -> None:
    """Only the FFN dropouts stay random (their masks are the ARD patterns); attention and residual ones off."""
    for layer in layers:
        for attn in ("self_attn", "multihead_attn"):
            if hasattr(layer, attn):
                getattr(layer, attn).dropout = 0.0
        for name in ("dropout1", "dropout2", "dropout3"):
            if hasattr(layer, name):
                getattr(layer, name).p = 0.0


def _train_both(model: nn.Module, inputs: tuple[torch.Tensor, ...], steps: int = 3) -> tuple[ARDController, nn.Module]:
    """Train ``model`` with ARD (block family, 4 groups) and a dense copy with the same masks; compare each step."""
    reference = copy.deepcopy(model)
    plain_eval = copy.deepcopy(model).eval()
    masked = {}
    for i, layer in enumerate(reference.layers):
        layer.dropout = masked[f"layers.{i}.dropout"] = MaskedDropout()
    ctl = ARDController(model, pattern="block", groups=4).apply()
    assert [(s.name, s.kind, s.producer, s.consumer) for s in ctl.report.sites] == [
        (f"layers.{i}.dropout", "producer+consumer", f"layers.{i}.linear1", f"layers.{i}.linear2")
        for i in range(len(model.layers))
    ]
    model.eval(), reference.eval()
    with torch.no_grad():  # eval (torch's fast path included): the converted model is the plain one
        torch.testing.assert_close(model(*inputs), plain_eval(*inputs))
    model.train(), reference.train()
    opt, ref_opt = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(reference.parameters(), lr=0.1)
    for _ in range(steps):
        patterns = ctl.step()
        for name, mod in masked.items():
            mod.masks = [p.mask() for p in patterns[name]]
        loss, ref_loss = model(*inputs).pow(2).mean(), reference(*inputs).pow(2).mean()
        assert torch.isfinite(loss)
        torch.testing.assert_close(loss, ref_loss)
        loss.backward(), ref_loss.backward()
        ctl.check_calls()
        for (name, param), ref in zip(model.named_parameters(), reference.parameters(), strict=True):
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
            torch.testing.assert_close(param.grad, ref.grad, rtol=1e-4, atol=1e-5, msg=name)
        opt.step(), ref_opt.step()
        opt.zero_grad(), ref_opt.zero_grad()
    return ctl, reference


def _check_restored(model: nn.Module, keys: list[str], classes: list[type], reference: nn.Module, inputs) -> None:
    assert [type(m) for m in model.modules()] == classes
    assert list(model.state_dict()) == keys
    for (name, value), ref in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(value, ref, rtol=1e-4, atol=1e-5, msg=name)
    model.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(*inputs), reference(*inputs), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("d_model", [128, 512])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_ffn_sites_train_and_restore(d_model: int, norm_first: bool, activation: str) -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        d_model, 4, 2 * d_model, dropout=0.3, activation=activation, batch_first=True, norm_first=norm_first
    )
    model = nn.TransformerEncoder(layer, 2)
    classes, keys = [type(m) for m in model.modules()], list(model.state_dict())
    assert [s.name for s in find_sites(model).sites] == ["layers.0.dropout", "layers.1.dropout"]
    _quiet_residuals(model.layers)
    x = torch.randn(4, 6, d_model)
    ctl, reference = _train_both(model, (x,))
    ctl.restore()
    _check_restored(model, keys, classes, reference, (x,))


def test_decoder_ffn_sites_train_and_restore() -> None:
    torch.manual_seed(0)
    model = nn.TransformerDecoder(nn.TransformerDecoderLayer(64, 4, 96, dropout=0.3, batch_first=True), 2)
    classes, keys = [type(m) for m in model.modules()], list(model.state_dict())
    _quiet_residuals(model.layers)
    inputs = (torch.randn(3, 5, 64), torch.randn(3, 7, 64))  # target, memory
    ctl, reference = _train_both(model, inputs)
    ctl.restore()
    _check_restored(model, keys, classes, reference, inputs)


def test_lightning_demo_transformer_finds_encoder_and_decoder_ffns() -> None:
    demos = pytest.importorskip("lightning.pytorch.demos")
    torch.manual_seed(0)
    model = demos.Transformer(vocab_size=40, ninp=32, nhead=2, nhid=48, nlayers=2, dropout=0.2)
    ffn = [f"transformer.{part}.layers.{i}.dropout" for part in ("encoder", "decoder") for i in range(2)]
    report = find_sites(model)
    assert [(s.name, s.kind) for s in report.sites] == [(n, "producer+consumer") for n in ffn]
    plain = copy.deepcopy(model).eval()
    classes, keys = [type(m) for m in model.modules()], list(model.state_dict())
    tokens = torch.randint(0, 40, (2, 6))
    ctl = ARDController(model, pattern="block", groups=4).apply()
    assert [s.name for s in ctl.report.sites] == ffn
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        ctl.step()
        loss = F.nll_loss(model(tokens, tokens), tokens.reshape(-1))
        assert torch.isfinite(loss)
        loss.backward()
        ctl.check_calls()
        assert all(model.get_submodule(n.replace("dropout", "linear1")).weight.grad.abs().sum() > 0 for n in ffn)
        opt.step(), opt.zero_grad()
    ctl.restore()
    assert [type(m) for m in model.modules()] == classes and list(model.state_dict()) == keys
    plain.load_state_dict(model.state_dict())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, tokens), plain(tokens, tokens))


class TinyEncoder(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.3, batch_first=True), 2)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_second_fit_without_restore_trains_with_ard_again() -> None:
    """restore_on_fit_end=False leaves ARD classes in the model; a second fit re-detects the same sites."""
    torch.manual_seed(0)
    model = TinyEncoder()
    data = DataLoader(TensorDataset(torch.randn(16, 5, 16), torch.randint(0, 3, (16,))), batch_size=8)
    tables = []
    for _ in range(2):
        cb = ApproximateDropout(restore_on_fit_end=False, never_slower=False, verbose=False)  # tiny: slower
        trainer = pl.Trainer(
            max_steps=2,
            callbacks=[cb],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, data)
        assert cb.controller is not None and cb.controller.active
        tables.append([(s.name, s.kind, s.producer, s.consumer) for s in cb.controller.report.sites])
        assert "encoder.layers.1.dropout" in cb.site_table()
    assert (
        tables[0]
        == tables[1]
        == [
            (
                f"encoder.layers.{i}.dropout",
                "producer+consumer",
                f"encoder.layers.{i}.linear1",
                f"encoder.layers.{i}.linear2",
            )
            for i in range(2)
        ]
    )
