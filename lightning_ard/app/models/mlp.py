"""A multilayer-perceptron classifier with dropout after every hidden activation (the paper's MLP setting).

The network is a plain ``nn.Sequential`` of ``Linear, activation, Dropout, ..., Linear``: exactly the
``Linear -> activation -> Dropout -> Linear`` chain that Approximate Random Dropout turns into compact matrix
products. The model itself knows nothing about ARD; the callback rewrites it during ``fit``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_ard.app.models.optim import build_optimizer
from lightning_ard.app.models.staged import StagedModule

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}


def build_mlp(
    input_dim: int, widths: Sequence[int], num_classes: int, activation: str, dropout: Sequence[float]
) -> nn.Sequential:
    """``Linear, act, Dropout`` per hidden width (Dropout omitted where its rate is 0), then the output Linear."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"model.activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = []
    fan_in = input_dim
    for width, p in zip(widths, dropout, strict=True):
        layers += [nn.Linear(fan_in, width), ACTIVATIONS[activation]()]
        if p > 0:
            layers.append(nn.Dropout(p))
        fan_in = width
    layers.append(nn.Linear(fan_in, num_classes))
    return nn.Sequential(*layers)


def _rates(dropout: float | Sequence[float], n: int) -> list[float]:
    rates = [dropout] * n if isinstance(dropout, (int, float)) else list(dropout)
    if len(rates) != n:
        raise ValueError(f"model.dropout must be one rate or one rate per hidden layer ({n}), got {dropout!r}")
    for p in rates:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"model.dropout rates must lie in [0, 1), got {dropout!r}")
    return [float(p) for p in rates]


class MLPClassifier(StagedModule):
    """MLP classifier over flattened inputs; logs ``{train,val,test}/loss`` and ``{train,val,test}/acc``.

    Args:
        input_dim: number of input features (784 for 28x28 images; inputs are flattened).
        widths: hidden layer widths, e.g. ``[1024, 1024]``.
        num_classes: number of classes.
        activation: hidden activation, one of :data:`ACTIVATIONS`.
        dropout: dropout rate after every hidden activation, or one rate per hidden layer.
        optimizer: "sgd", "adam" or "adamw".
        lr: learning rate.
        momentum: SGD momentum.
        nesterov: SGD with Nesterov momentum.
        weight_decay: L2 penalty.
    """

    def __init__(
        self,
        input_dim: int = 784,
        widths: Sequence[int] = (1024, 1024),
        num_classes: int = 10,
        activation: str = "relu",
        dropout: float | Sequence[float] = 0.5,
        optimizer: str = "adam",
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"model.widths must be a non-empty list of positive integers, got {widths!r}")
        rates = _rates(dropout, len(widths))
        # Saved normalized (lists, one rate per layer) so a checkpoint rebuilds the same network.
        self.save_hyperparameters(
            {
                "input_dim": input_dim,
                "widths": widths,
                "num_classes": num_classes,
                "activation": activation,
                "dropout": rates,
                "optimizer": optimizer,
                "lr": lr,
                "momentum": momentum,
                "weight_decay": weight_decay,
                "nesterov": nesterov,
            }
        )
        self.net = build_mlp(input_dim, widths, num_classes, activation, rates)
        self.loss_fn = nn.CrossEntropyLoss()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_classes] of inputs [B, ...] (flattened to [B, input_dim])."""
        return self.net(x.flatten(1))

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss_fn(logits, y)
        acc = getattr(self, f"{stage}_acc")
        acc(logits, y)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=not on_step)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        nesterov = bool(hp.get("nesterov", False))  # checkpoints written before the option have no such key
        return build_optimizer(self.parameters(), hp.optimizer, hp.lr, hp.momentum, hp.weight_decay, nesterov)
