"""A word-level LSTM language model in the style of Zaremba, Sutskever & Vinyals (2014), "Recurrent Neural Network
Regularization": dropout on the non-recurrent connections only.

Layout: ``Embedding -> Dropout -> LSTM(num_layers, dropout=p between layers) -> Dropout -> Linear decoder``. These
are the three places where Approximate Random Dropout can shrink the products (embedding into layer 1, between the
stacked layers, into the decoder); the model is plain PyTorch and the callback does any rewriting.

The training objective is Zaremba et al.'s: cross-entropy summed over the time steps of a window and averaged over
the batch, so their learning rate (1) and clipping norm (5) apply unchanged; logged losses are per token (nats), and
perplexity is ``exp`` of the per-token loss.

The hidden state is carried from one BPTT window to the next (detached, so gradients stop at the window edge) and
reset at the start of every epoch, separately for training, validation and test. Gradient clipping is the
Trainer's job (``trainer.gradient_clip_val``, 5 in Zaremba et al.'s medium model).
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.text import Perplexity

from lightning_ard.app.models.optim import build_optimizer
from lightning_ard.app.models.staged import StagedModule

Hidden = tuple[torch.Tensor, torch.Tensor]


class LSTMLanguageModel(StagedModule):
    """Zaremba-style LSTM LM; logs ``{train,val,test}/loss`` (nats per token) and ``{train,val,test}/ppl``.

    Args:
        vocab_size: number of token ids (from the DataModule's vocabulary).
        embed_dim: embedding width (Zaremba et al. use the hidden size).
        hidden_size: LSTM units per layer (medium: 650, large: 1500).
        num_layers: stacked LSTM layers (2 in the paper).
        dropout: rate on the embedding output, between LSTM layers and before the decoder (medium: 0.5).
        init_range: parameters start uniform in ``[-init_range, init_range]`` (medium: 0.05).
        optimizer: "sgd" (paper), "adam" or "adamw".
        lr: initial learning rate (paper: 1.0 with SGD).
        lr_decay: factor applied to the learning rate every epoch after ``decay_after`` epochs (medium: 0.8).
        decay_after: number of epochs at the initial learning rate (medium: 6).
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 650,
        hidden_size: int = 650,
        num_layers: int = 2,
        dropout: float = 0.5,
        init_range: float = 0.05,
        optimizer: str = "sgd",
        lr: float = 1.0,
        lr_decay: float = 0.8,
        decay_after: int = 6,
    ) -> None:
        super().__init__()
        for name, value in (
            ("vocab_size", vocab_size),
            ("embed_dim", embed_dim),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                hint = " (the app fills it from the DataModule when it is null)" if name == "vocab_size" else ""
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}{hint}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must lie in [0, 1), got {dropout!r}")
        if not 0.0 < lr_decay <= 1.0:
            raise ValueError(f"model.lr_decay must lie in (0, 1], got {lr_decay!r}")
        self.save_hyperparameters()
        self.encoder = nn.Embedding(vocab_size, embed_dim)
        self.drop_in = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lstm = nn.LSTM(
            embed_dim, hidden_size, num_layers=num_layers, dropout=dropout if num_layers > 1 else 0.0, batch_first=True
        )
        self.drop_out = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.decoder = nn.Linear(hidden_size, vocab_size)
        for param in self.parameters():
            nn.init.uniform_(param, -init_range, init_range)
        self.loss_fn = nn.CrossEntropyLoss()
        self.val_ppl = Perplexity()
        self.test_ppl = Perplexity()
        self._hidden: dict[str, Hidden | None] = {}

    def forward(self, tokens: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        """Logits ``[B, T, vocab]`` for tokens ``[B, T]``, and the final ``(h, c)`` (each ``[layers, B, hidden]``)."""
        x = self.drop_in(self.encoder(tokens))
        out, hidden = self.lstm(x, hidden)
        return self.decoder(self.drop_out(out)), hidden

    def _carried(self, stage: str, batch: int) -> Hidden | None:
        hidden = self._hidden.get(stage)
        if hidden is None or hidden[0].size(1) != batch:  # first window, or a loader with another batch size
            return None
        return hidden

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        tokens, targets = batch
        logits, hidden = self(tokens, self._carried(stage, tokens.size(0)))
        self._hidden[stage] = (hidden[0].detach(), hidden[1].detach())
        loss = self.loss_fn(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        if stage == "train":
            self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
            self.log("train/ppl", torch.exp(loss.detach()), on_step=True, on_epoch=False)
            # Zaremba et al.'s objective: summed over the window's time steps, averaged over the batch.
            return loss * tokens.size(1)
        else:
            ppl = getattr(self, f"{stage}_ppl")
            ppl(logits, targets)
            self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, sync_dist=True)
            self.log(f"{stage}/ppl", ppl, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def reset_hidden(self, stage: str) -> None:
        """Forget the carried state of ``stage`` ("train", "val" or "test"): the next window starts from zeros."""
        self._hidden[stage] = None

    def on_train_epoch_start(self) -> None:
        self.reset_hidden("train")

    def on_validation_epoch_start(self) -> None:
        self.reset_hidden("val")

    def on_test_epoch_start(self) -> None:
        self.reset_hidden("test")

    def configure_optimizers(self) -> dict[str, object]:
        hp = self.hparams
        optimizer = build_optimizer(self.parameters(), hp.optimizer, hp.lr)
        decay, after = hp.lr_decay, hp.decay_after
        # Zaremba et al.: lr_epoch = lr * decay ** max(epoch + 1 - after, 0), epochs counted from 0.
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: decay ** max(epoch + 1 - after, 0))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}
