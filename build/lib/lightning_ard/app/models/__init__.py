"""LightningModules of the experiments: plain PyTorch models, with no ARD code (the callback rewrites them)."""

from lightning_ard.app.models.lstm_lm import LSTMLanguageModel
from lightning_ard.app.models.mlp import MLPClassifier

__all__ = ["LSTMLanguageModel", "MLPClassifier"]
