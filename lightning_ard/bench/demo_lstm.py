"""Lightning's demo LSTM language model as a benchmark task: ``lightning.pytorch.demos.lstm.SimpleLSTM`` (embedding,
``nn.Dropout``, 2-layer ``nn.LSTM`` with dropout between the layers, ``nn.Dropout``, Linear decoder; ``batch_first``)
trained the way the demo's ``LightningLSTM`` trains it (SGD, hidden state carried between batches, detached), on
random tokens so that it runs without a download. Sized as the medium Zaremba LM: 10k words, 2 x 650, 35-token
windows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.demos.lstm import SimpleLSTM
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

VOCAB = 10_000
BPTT = 35


class DemoLSTM(LightningModule):
    """``SimpleLSTM(10k words, width, width, 2 layers, dropout p)`` with the demo's training step."""

    def __init__(self, width: int = 650, p: float = 0.5, lr: float = 1.0) -> None:
        super().__init__()
        self.model = SimpleLSTM(vocab_size=VOCAB, ninp=width, nhid=width, nlayers=2, dropout=p)
        self.lr = lr
        self.hidden: tuple[Tensor, Tensor] | None = None

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        tokens, target = batch
        if self.hidden is None or self.hidden[0].size(1) != tokens.size(0):
            self.hidden = self.model.init_hidden(tokens.size(0))
        self.hidden = (self.hidden[0].detach(), self.hidden[1].detach())
        output, self.hidden = self.model(tokens, self.hidden)
        return F.nll_loss(output, target.reshape(-1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def demo_lstm_data(batch: int, windows: int, generator: torch.Generator) -> DataLoader:
    """``windows`` batches of ``batch`` random 35-token sequences with their next-token targets, in order."""
    text = torch.randint(0, VOCAB, (windows * batch, BPTT + 1), generator=generator)
    return DataLoader(TensorDataset(text[:, :-1], text[:, 1:]), batch_size=batch)
