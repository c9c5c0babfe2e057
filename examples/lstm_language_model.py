"""The paper's LSTM experiment in small: a Zaremba-style word-level LSTM LM, nn.Dropout against ARD at the same p.

What it shows: the PTB-format DataModule (embedded corpus from the Python standard library by default, or
--root with ptb.{train,valid,test}.txt), truncated BPTT with the hidden state carried across windows, gradient
clipping from the Trainer, and for each run the validation/test perplexity, the median training-step time and the
ARD speedup. ARD serves the three Zaremba dropout places: embedding -> layer 1, between the LSTM layers, and before
the decoder. Defaults (2 x 256, 35 steps, batch 20, p = 0.5, one epoch per run) take a few minutes on 2 CPU cores.
``--groups 1,700`` adds ARD with one pattern per token (pattern groups: slower here, but much closer to nn.Dropout's
perplexity, see docs/results.md).

    python examples/lstm_language_model.py
    python examples/lstm_language_model.py --groups 1,700
    python examples/lstm_language_model.py --hidden 650 --epochs 2 --root /path/to/ptb
"""

from __future__ import annotations

import argparse

import lightning as L

from lightning_ard import ApproximateDropout
from lightning_ard.app.data import PTBDataModule
from lightning_ard.app.models import LSTMLanguageModel
from lightning_ard.app.step_timer import StepTimer


def run(groups: int | None, args: argparse.Namespace) -> tuple[float, float, float]:
    """Train and test one LM (``groups=None``: nn.Dropout; else ARD with that many pattern groups).
    Returns (validation ppl, test ppl, median step ms)."""
    L.seed_everything(0, verbose=False)
    datamodule = PTBDataModule(root=args.root, batch_size=20, eval_batch_size=10, bptt=35)
    model = LSTMLanguageModel(
        vocab_size=datamodule.vocab_size, embed_dim=args.hidden, hidden_size=args.hidden, dropout=args.p,
        init_range=0.1, lr=1.0,
    )  # fmt: skip
    timer = StepTimer(warmup_steps=3)
    callbacks: list[L.Callback] = [timer]
    if groups is not None:
        callbacks.append(ApproximateDropout(pattern="row", p=args.p, groups=groups, verbose=True))
    trainer = L.Trainer(
        max_epochs=args.epochs,
        limit_train_batches=args.limit_train_batches,
        gradient_clip_val=5.0,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=datamodule)
    val_ppl = float(trainer.callback_metrics["val/ppl"])
    (result,) = trainer.test(model, datamodule=datamodule, verbose=False)
    return val_ppl, result["test/ppl"], timer.median_ms or float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help="folder with ptb.{train,valid,test}.txt (default: embedded)")
    parser.add_argument("--p", type=float, default=0.5, help="dropout rate (baseline and ARD)")
    parser.add_argument("--hidden", type=int, default=256, help="embedding and LSTM width (paper: 650)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--limit-train-batches", type=int, default=None, help="BPTT windows per epoch (default: all)")
    parser.add_argument("--groups", default="1", help="comma-separated ARD pattern groups to run (e.g. 1,700)")
    args = parser.parse_args()

    base = run(None, args)
    runs = [("nn.Dropout", base)]
    for groups in (int(g) for g in args.groups.split(",")):
        runs.append((f"ARD row x{groups}" if groups > 1 else "ARD row", run(groups, args)))
    print(f"\nLSTM LM 2 x {args.hidden}, p = {args.p}")
    print(f"{'':14}{'val ppl':>10}{'test ppl':>10}{'median step':>14}{'speedup':>10}")
    for name, (val, test, ms) in runs:
        print(f"{name:14}{val:>10.2f}{test:>10.2f}{ms:>11.2f} ms{base[2] / ms:>9.2f}x")


if __name__ == "__main__":
    main()
