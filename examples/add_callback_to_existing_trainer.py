"""Add Approximate Random Dropout to an existing Lightning project: one line in the Trainer, no model changes.

What it shows:
  * a user's own LightningModule (plain ``nn.Linear`` / ``nn.Dropout``, written without ARD in mind) and a plain
    ``L.Trainer`` without Hydra, trained with ``nn.Dropout`` and then with ``ApproximateDropout()`` (the defaults);
  * the comparison a user wants: test accuracy, median step time, speedup, and the plan's decisions at the end of
    the fit (sites served, sites that fell back and why), also saved as ``ard_plan.json`` in the log directory;
  * a second, labelled run on a model where ARD does not pay on this machine (small layers, small batch): the
    never-slower rule measures that and trains the plain model instead, and the table says so;
  * after ``fit`` the model is the user's model: same classes, same state-dict keys.

On a 2-core CPU (AMD EPYC, 2 threads) it runs in under a minute; one run printed (figures vary with the machine
and its load; the accuracy is one seed)::

    main model (512-2048-2048-10, batch 256)       test acc   median step
    nn.Dropout                                       0.9539     130.94 ms
    ARD (defaults)                                   0.9504      95.65 ms   speedup 1.37x
    ApproximateDropout sites:
      site   kind               width  p    family  groups  E[rate]  E[FLOPs saved in its layers]
      drop1  producer+consumer  2048   0.5  block   4       0.5000   70.0%
      drop2  producer+consumer  2048   0.5  block   4       0.5000   74.9%

    small model (64-256-256-4, batch 32)           test acc   median step
    nn.Dropout                                       0.5762       4.27 ms
    ARD (defaults)                                   0.5842       4.49 ms   speedup 0.95x
    small model: ARD does not pay here; what the never-slower rule measured and decided:
    ApproximateDropout sites:
      ...
      plain model: no site is faster with ARD
      nn.Dropout drop1: ARD is not faster there (measured 0.38x at the first step's shapes)
      nn.Dropout drop2: ARD is not faster there (measured 0.42x at the first step's shapes)

Run it with ``python examples/add_callback_to_existing_trainer.py`` (``--steps`` sets the training steps per fit).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_ard import ApproximateDropout
from lightning_ard.app.step_timer import StepTimer


class UserClassifier(L.LightningModule):
    """Somebody's existing model: two hidden layers with dropout, written with an explicit ``forward``."""

    def __init__(self, features: int, hidden: int, classes: int, p: float = 0.5) -> None:
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
        return F.cross_entropy(self(x), y)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("test_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


@dataclass(frozen=True)
class Case:
    """One model and batch of the comparison."""

    name: str
    features: int
    hidden: int
    classes: int
    batch: int


NOISE = 6.0
"""Standard deviation of the noise around each class centre (the centres are standard normal)."""
MAIN = Case("main model", 512, 2048, 10, 256)
SMALL = Case("small model", 64, 256, 4, 32)


def synthetic_data(case: Case, n: int, seed: int) -> TensorDataset:
    """Noisy Gaussian clusters, standardized: a task the MLP learns in a few hundred steps, short of perfect."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(case.classes, case.features, generator=torch.Generator().manual_seed(123))
    y = torch.randint(case.classes, (n,), generator=g)
    return TensorDataset((centers[y] + NOISE * torch.randn(n, case.features, generator=g)) / NOISE, y)


def fit(case: Case, steps: int, ard: ApproximateDropout | None, logdir: str) -> tuple[UserClassifier, float, float]:
    """Train the user model (with or without ARD); return it, its test accuracy and its median step time (ms)."""
    L.seed_everything(0, verbose=False)
    model = UserClassifier(case.features, case.hidden, case.classes)
    timer = StepTimer(warmup_steps=3)
    trainer = L.Trainer(
        max_steps=steps, accelerator="auto", devices=1, callbacks=[timer] + ([ard] if ard else []),
        logger=L.pytorch.loggers.CSVLogger(logdir), enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=False,
    )  # fmt: skip
    train = DataLoader(synthetic_data(case, case.batch * steps, seed=0), batch_size=case.batch, shuffle=True)
    trainer.fit(model, train)
    (result,) = trainer.test(model, DataLoader(synthetic_data(case, 4096, seed=1), batch_size=512), verbose=False)
    return model, result["test_acc"], timer.median_ms or float("nan")


def compare(case: Case, steps: int, logdir: str) -> ApproximateDropout:
    """nn.Dropout, then the defaults (``ApproximateDropout()``), on ``case``; prints the comparison and returns the
    ARD callback (its plan holds what it decided)."""
    keys = list(UserClassifier(case.features, case.hidden, case.classes).state_dict())
    _, base_acc, base_ms = fit(case, steps, None, logdir)
    ard = ApproximateDropout(verbose=False)  # <- the one line a user adds to the Trainer's callbacks
    model, ard_acc, ard_ms = fit(case, steps, ard, logdir)
    assert type(model.fc1) is nn.Linear and list(model.state_dict()) == keys  # the user's model, as it was
    label = f"{case.name} ({case.features}-{case.hidden}-{case.hidden}-{case.classes}, batch {case.batch})"
    print(f"\n{label:<46}{'test acc':>9}{'median step':>14}")
    print(f"{'nn.Dropout':<46}{base_acc:>9.4f}{base_ms:>11.2f} ms")
    print(f"{'ARD (defaults)':<46}{ard_acc:>9.4f}{ard_ms:>11.2f} ms   speedup {base_ms / ard_ms:.2f}x")
    return ard


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=120, help="training steps per fit (main model)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as logdir:
        ard = compare(MAIN, args.steps, logdir)
        print(ard.site_table())
        small = compare(SMALL, max(args.steps // 2, 30), logdir)
        verdict = "ARD does not pay here" if small.gave_up or small.plan.fallen_back else "ARD pays here too"
        print(f"{SMALL.name}: {verdict}; what the never-slower rule measured and decided:")
        print(small.site_table())
    speedups = [s for s in ard.speedups.values()]
    if speedups:
        print(f"(main model: layers measured {statistics.median(speedups):.2f}x faster with ARD at the first step)")


if __name__ == "__main__":
    main()
