"""Add Approximate Random Dropout to an existing Lightning project: one line in the Trainer, no model changes.

What it shows:
  * a user's own LightningModule (plain ``nn.Linear`` / ``nn.Dropout``, written without ARD in mind) and a plain
    ``L.Trainer`` without Hydra;
  * ``ApproximateDropout`` finds the dropout sites (printed as a table at fit start), trains with regular
    row patterns that shrink the matrix products, and gives back the original modules at the end of ``fit``;
  * the trained model is the user's model: same classes, same state-dict keys, so checkpoints load anywhere;
  * the same training with ``nn.Dropout`` for comparison (test accuracy and median step time).

Runs in well under a minute on 2 CPU cores on synthetic data (no download):
    python examples/add_callback_to_existing_trainer.py
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_ard import ApproximateDropout
from lightning_ard.app.step_timer import StepTimer


class UserClassifier(L.LightningModule):
    """Somebody's existing model: two hidden layers with dropout, written with an explicit ``forward``."""

    def __init__(self, features: int = 256, hidden: int = 1024, classes: int = 8, p: float = 0.5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.drop1 = nn.Dropout(p)
        self.fc2 = nn.Linear(hidden, hidden)
        self.drop2 = nn.Dropout(p)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(F.relu(self.fc1(x)))
        x = self.drop2(F.relu(self.fc2(x)))
        return self.head(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("test_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def synthetic_data(n: int, features: int = 256, classes: int = 8, seed: int = 0) -> TensorDataset:
    """Noisy Gaussian clusters (about 90 % accuracy is reachable): a task an MLP learns in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=torch.Generator().manual_seed(123))
    y = torch.randint(classes, (n,), generator=g)
    return TensorDataset(centers[y] + 6.0 * torch.randn(n, features, generator=g), y)


def fit(use_ard: bool) -> tuple[UserClassifier, float, float]:
    """Train the user model (with or without ARD); return it, its test accuracy and its median step time."""
    L.seed_everything(0, verbose=False)
    model = UserClassifier()
    timer = StepTimer(warmup_steps=5)
    callbacks: list[L.Callback] = [timer]
    if use_ard:
        callbacks.append(ApproximateDropout(pattern="row", p=0.5))  # <- the one line a user adds
    trainer = L.Trainer(
        max_epochs=3, accelerator="auto", devices=1, callbacks=callbacks, logger=False,
        enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, DataLoader(synthetic_data(8192), batch_size=128, shuffle=True))
    (result,) = trainer.test(model, DataLoader(synthetic_data(2048, seed=1), batch_size=512), verbose=False)
    return model, result["test_acc"], timer.median_ms or float("nan")


def main() -> None:
    keys_before = list(UserClassifier().state_dict())
    ard_model, ard_acc, ard_ms = fit(use_ard=True)
    _, base_acc, base_ms = fit(use_ard=False)

    # After fit the model holds its own classes and keys again: save it, load it, export it as usual.
    assert type(ard_model.fc1) is nn.Linear and type(ard_model.drop1) is nn.Dropout
    assert list(ard_model.state_dict()) == keys_before

    print(f"\n{'':14}{'test acc':>10}{'median step':>14}")
    print(f"{'nn.Dropout':14}{base_acc:>10.4f}{base_ms:>11.2f} ms")
    print(f"{'ARD (row)':14}{ard_acc:>10.4f}{ard_ms:>11.2f} ms   speedup {base_ms / ard_ms:.2f}x")


if __name__ == "__main__":
    main()
