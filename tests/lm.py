"""A tiny word-level LSTM LM for planning tests: embedding dropout, nn.LSTM(dropout=...), dropout before the
decoder, one nn.Dropout module for both uses."""

from __future__ import annotations

from torch import nn


class TinyLM(nn.Module):
    def __init__(self, bidirectional: bool = False) -> None:
        super().__init__()
        self.emb, self.drop = nn.Embedding(30, 16), nn.Dropout(0.5)
        self.lstm = nn.LSTM(16, 16, 2, dropout=0.5, batch_first=True, bidirectional=bidirectional)
        self.dec = nn.Linear(16 * (1 + bidirectional), 30)

    def forward(self, x):
        return self.dec(self.drop(self.lstm(self.drop(self.emb(x)))[0]))
