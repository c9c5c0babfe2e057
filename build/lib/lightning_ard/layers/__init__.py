"""ARD layers (no Lightning needed): Linear, Dropout and LSTM that keep the Parameters of the modules they replace."""

from lightning_ard.layers.dropout import ARDDropout
from lightning_ard.layers.linear import ARDLinear
from lightning_ard.layers.lstm import ARDLSTM

__all__ = ["ARDDropout", "ARDLSTM", "ARDLinear"]
