"""LightningModules of the experiments: plain PyTorch models, with no ARD code (the callback rewrites them)."""

from lightning_ard.models.lstm_lm import LSTMLanguageModel
from lightning_ard.models.mlp import MLPClassifier

__all__ = ["LSTMLanguageModel", "MLPClassifier"]
