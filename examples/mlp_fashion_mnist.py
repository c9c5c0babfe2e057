"""The paper's MLP experiment in small: Fashion-MNIST, nn.Dropout against Approximate Random Dropout at the same p.

What it shows: the library's DataModule and MLP used from plain Python (no Hydra), and for each run the test
accuracy, the median training-step time and the ARD speedup over nn.Dropout. Defaults (784-1024-1024-10, p = 0.5,
one epoch per run) take about a minute or two on 2 CPU cores. Needs the Debian package dataset-fashion-mnist, or
--root pointing at the four IDX files.

    python examples/mlp_fashion_mnist.py
    python examples/mlp_fashion_mnist.py --patterns row tile --p 0.7 --widths 2048 2048 --epochs 2
"""

from __future__ import annotations

import argparse

import lightning as L

from lightning_ard import ApproximateDropout
from lightning_ard.app.data import FashionMNISTDataModule
from lightning_ard.app.data.fashion_mnist import DEFAULT_ROOT
from lightning_ard.app.models import MLPClassifier
from lightning_ard.app.step_timer import StepTimer


def run(pattern: str | None, args: argparse.Namespace) -> tuple[float, float]:
    """Train and test one model; ``pattern=None`` is the nn.Dropout baseline. Returns (test acc, median step ms)."""
    L.seed_everything(0, verbose=False)
    timer = StepTimer(warmup_steps=5)
    callbacks: list[L.Callback] = [timer]
    if pattern is not None:
        callbacks.append(ApproximateDropout(pattern=pattern, p=args.p, verbose=False))
    trainer = L.Trainer(
        max_epochs=args.epochs, limit_train_batches=args.limit_train_batches, callbacks=callbacks, logger=False,
        enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    datamodule = FashionMNISTDataModule(root=args.root, batch_size=args.batch_size, eval_batch_size=1000)
    model = MLPClassifier(widths=args.widths, dropout=args.p)
    trainer.fit(model, datamodule=datamodule)
    (result,) = trainer.test(model, datamodule=datamodule, verbose=False)
    return result["test/acc"], timer.median_ms or float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=DEFAULT_ROOT, help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--p", type=float, default=0.5, help="dropout rate (baseline and ARD)")
    parser.add_argument("--patterns", nargs="+", default=["row"], choices=["row", "block", "random", "tile"])
    parser.add_argument("--widths", type=int, nargs="+", default=[1024, 1024], help="hidden layer widths")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--limit-train-batches", type=float, default=1.0, help="fraction (or number) of batches")
    args = parser.parse_args()
    if args.limit_train_batches > 1:
        args.limit_train_batches = int(args.limit_train_batches)

    results = {"nn.Dropout": run(None, args)}
    for pattern in args.patterns:
        results[f"ARD {pattern}"] = run(pattern, args)

    base_ms = results["nn.Dropout"][1]
    print(f"\nMLP 784-{'-'.join(map(str, args.widths))}-10, p = {args.p}")
    print(f"{'':12}{'test acc':>10}{'median step':>14}{'speedup':>10}")
    for name, (acc, ms) in results.items():
        print(f"{name:12}{acc:>10.4f}{ms:>11.2f} ms{base_ms / ms:>9.2f}x")


if __name__ == "__main__":
    main()
