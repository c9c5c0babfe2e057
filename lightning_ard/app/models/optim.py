"""Optimizers from plain settings, shared by the models (keeps hyper-parameters YAML- and checkpoint-friendly)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

OPTIMIZERS = ("sgd", "adam", "adamw")


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    name: str,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """``torch.optim`` optimizer ``name`` ("sgd", "adam" or "adamw") over ``params`` (``nesterov``: SGD's Nesterov
    momentum, which needs a momentum above 0)."""
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0:
        raise ValueError(f"model.lr must be a positive number, got {lr!r}")
    if nesterov and (name != "sgd" or momentum <= 0):
        raise ValueError(
            f"model.nesterov=true needs model.optimizer=sgd and model.momentum > 0, got {name!r} and {momentum!r}"
        )
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"model.optimizer must be one of {list(OPTIMIZERS)}, got {name!r}")
