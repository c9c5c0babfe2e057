"""Models: the MLP and the Zaremba-style LSTM LM are plain PyTorch layouts that train, log and evaluate correctly;
with the ARD callback they train and come back as the same plain modules."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_ard.app.data import PTBDataModule
from lightning_ard.app.models import LSTMLanguageModel, MLPClassifier


def toy_classification(n: int = 256, dim: int = 20, classes: int = 3, seed: int = 0) -> TensorDataset:
    """Linearly separable-ish blobs: enough signal for accuracy to rise within a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(classes, (n,), generator=g)
    centers = torch.randn(classes, dim, generator=g) * 3
    return TensorDataset(centers[y] + torch.randn(n, dim, generator=g), y)


def quick_trainer(**kwargs: object) -> L.Trainer:
    defaults: dict[str, object] = dict(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    defaults.update(kwargs)
    return L.Trainer(**defaults)  # type: ignore[arg-type]


# --- MLP --------------------------------------------------------------------------------------------------------


def test_mlp_is_a_plain_sequential_with_dropout_after_each_hidden_activation() -> None:
    model = MLPClassifier(input_dim=784, widths=[32, 16], num_classes=10, activation="gelu", dropout=[0.3, 0.6])
    kinds = [type(m) for m in model.net]
    assert kinds == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear, nn.GELU, nn.Dropout, nn.Linear]
    assert [m.p for m in model.net if isinstance(m, nn.Dropout)] == [0.3, 0.6]
    assert [(m.in_features, m.out_features) for m in model.net if isinstance(m, nn.Linear)] == [
        (784, 32), (32, 16), (16, 10)
    ]  # fmt: skip
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    assert model.hparams.dropout == [0.3, 0.6]
    no_dropout = MLPClassifier(widths=[8], dropout=0.0)
    assert not any(isinstance(m, nn.Dropout) for m in no_dropout.modules())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"activation": "swish"}, "model.activation must be one of"),
        ({"dropout": 1.0}, r"model.dropout rates must lie in \[0, 1\), got 1.0"),
        ({"dropout": [0.5]}, "one rate per hidden layer"),
        ({"widths": []}, "model.widths must be a non-empty list"),
    ],
)
def test_mlp_rejects_bad_settings(kwargs: dict[str, object], message: str) -> None:
    settings = {"widths": [8, 8], **kwargs}
    with pytest.raises(ValueError, match=message):
        MLPClassifier(**settings)  # type: ignore[arg-type]


def test_mlp_trains_and_logs_loss_and_accuracy() -> None:
    L.seed_everything(0)
    data = toy_classification()
    model = MLPClassifier(input_dim=20, widths=[32], num_classes=3, dropout=0.2, lr=0.01)
    trainer = quick_trainer(max_epochs=3)
    loader = DataLoader(data, batch_size=32, shuffle=True)
    trainer.fit(model, loader, DataLoader(data, batch_size=128))
    metrics = trainer.callback_metrics
    assert {"train/loss_step", "train/loss_epoch", "train/acc", "val/loss", "val/acc"} <= set(metrics)
    assert float(metrics["val/acc"]) > 0.8
    (test,) = trainer.test(model, DataLoader(data, batch_size=128), verbose=False)
    assert set(test) == {"test/loss", "test/acc"} and test["test/acc"] > 0.8
    model.eval()
    x = data.tensors[0][:4]
    assert torch.equal(model(x), model(x))  # eval is deterministic (dropout off)


def test_mlp_optimizer_choice() -> None:
    assert isinstance(MLPClassifier(widths=[4], optimizer="sgd").configure_optimizers(), torch.optim.SGD)
    with pytest.raises(ValueError, match="model.optimizer must be one of"):
        MLPClassifier(widths=[4], optimizer="lbfgs").configure_optimizers()


# --- LSTM LM ----------------------------------------------------------------------------------------------------


def small_lm(**kwargs: object) -> LSTMLanguageModel:
    settings: dict[str, object] = dict(vocab_size=50, embed_dim=12, hidden_size=16, dropout=0.5)
    settings.update(kwargs)
    return LSTMLanguageModel(**settings)  # type: ignore[arg-type]


def test_lstm_lm_has_zaremba_layout() -> None:
    model = small_lm(dropout=0.4, init_range=0.1)
    children = list(model.named_children())[:5]
    assert [(name, type(m)) for name, m in children] == [
        ("encoder", nn.Embedding), ("drop_in", nn.Dropout), ("lstm", nn.LSTM), ("drop_out", nn.Dropout),
        ("decoder", nn.Linear),
    ]  # fmt: skip
    assert model.lstm.num_layers == 2 and model.lstm.dropout == 0.4 and model.lstm.batch_first
    assert model.drop_in.p == model.drop_out.p == 0.4
    assert all(float(p.detach().abs().max()) <= 0.1 for p in model.parameters())
    logits, (h, c) = model(torch.randint(50, (3, 7)))
    assert logits.shape == (3, 7, 50) and h.shape == c.shape == (2, 3, 16)


def test_lstm_lm_carries_detached_hidden_state_across_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = small_lm(dropout=0.0)
    monkeypatch.setattr(model, "log", lambda *args, **kwargs: None)
    stream = torch.randint(50, (2, 21))
    first, second = (stream[:, :10], stream[:, 1:11]), (stream[:, 10:20], stream[:, 11:21])
    model.on_train_epoch_start()
    model.training_step(first, 0)
    carried = model._hidden["train"]
    assert carried is not None and not carried[0].requires_grad
    objective = model.training_step(second, 1)
    # Carrying the state makes two windows equal to one long window; the objective sums the 10 steps (Zaremba).
    logits, _ = model(stream[:, :20])
    loss_full_second_half = nn.functional.cross_entropy(logits[:, 10:].reshape(-1, 50), stream[:, 11:21].reshape(-1))
    torch.testing.assert_close(objective, 10 * loss_full_second_half)
    model.on_train_epoch_start()
    assert model._hidden["train"] is None
    # A window with another batch size (e.g. an eval loader) starts from zeros instead of failing.
    model.training_step((stream[:1, :10], stream[:1, 1:11]), 2)


def test_lstm_lm_learning_rate_schedule_follows_zaremba() -> None:
    model = small_lm(lr=1.0, lr_decay=0.8, decay_after=6)
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.SGD)
    lrs = []
    for _ in range(9):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:6] == [1.0] * 6 and lrs[6:] == pytest.approx([0.8, 0.64, 0.512])


def test_lstm_lm_rejects_missing_vocab_size() -> None:
    with pytest.raises(ValueError, match="model.vocab_size must be a positive integer, got None"):
        LSTMLanguageModel(vocab_size=None)  # type: ignore[arg-type]


def test_lstm_lm_trains_on_embedded_corpus_and_logs_perplexity() -> None:
    L.seed_everything(0)
    dm = PTBDataModule(batch_size=8, eval_batch_size=4, bptt=12, max_vocab_size=300)
    model = small_lm(vocab_size=dm.vocab_size, embed_dim=24, hidden_size=24, dropout=0.3, lr=2.0)
    trainer = quick_trainer(max_epochs=1, limit_train_batches=30, limit_val_batches=5, gradient_clip_val=1.0)
    trainer.fit(model, datamodule=dm)
    metrics = trainer.callback_metrics
    assert {"train/loss_step", "train/ppl", "val/loss", "val/ppl"} <= set(metrics)
    assert float(metrics["val/ppl"]) == pytest.approx(math.exp(float(metrics["val/loss"])), rel=0.02)
    assert float(metrics["val/ppl"]) < 300  # better than uniform over the vocabulary
    (test,) = trainer.test(model, datamodule=dm, verbose=False)
    assert math.isfinite(test["test/ppl"])


# --- with the ARD callback (the models stay plain) ---------------------------------------------------------------


def test_mlp_trains_with_ard_callback_and_is_restored() -> None:
    from lightning_ard import ApproximateDropout

    L.seed_everything(0)
    data = toy_classification(dim=64)
    model = MLPClassifier(input_dim=64, widths=[64, 64], num_classes=3, dropout=0.5, lr=0.01)
    keys = list(model.state_dict())
    params = [id(p) for p in model.parameters()]
    ard = ApproximateDropout(pattern="row", p=0.5, seed=0, verbose=False, measure_speedup=False)
    trainer = quick_trainer(max_epochs=2, callbacks=[ard])
    trainer.fit(model, DataLoader(data, batch_size=32, shuffle=True), DataLoader(data, batch_size=128))
    assert float(trainer.callback_metrics["val/acc"]) > 0.7
    assert [type(m) for m in model.net] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert list(model.state_dict()) == keys and [id(p) for p in model.parameters()] == params


def test_lstm_lm_trains_with_ard_callback_and_is_restored() -> None:
    from lightning_ard import ApproximateDropout

    L.seed_everything(0)
    dm = PTBDataModule(batch_size=8, eval_batch_size=4, bptt=12, max_vocab_size=300)
    model = small_lm(vocab_size=dm.vocab_size, embed_dim=32, hidden_size=32, dropout=0.5, lr=2.0)
    keys = list(model.state_dict())
    ard = ApproximateDropout(pattern="row", p=0.5, seed=0, verbose=False, measure_speedup=False)
    trainer = quick_trainer(max_epochs=1, limit_train_batches=10, limit_val_batches=3, gradient_clip_val=1.0,
                            callbacks=[ard])  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert math.isfinite(float(trainer.callback_metrics["val/ppl"]))
    assert type(model.lstm) is nn.LSTM and type(model.decoder) is nn.Linear and type(model.drop_in) is nn.Dropout
    assert list(model.state_dict()) == keys
