"""Benchmark of the callback inside a real Lightning fit: step time with and without it, and its own overhead.

``python -m lightning_ard.bench.fit [--model mlp|lstm] [--steps N] [--rounds R] [--p P] [--pattern F]
[--groups G] [--width W] [--batch B]``

Fits the paper's MLP (784-W-W-10, default W = 2048, batch 256; the app's ``MLPClassifier`` with SGD momentum), or
with ``--model lstm`` Lightning's demo LSTM LM (``lightning.pytorch.demos.lstm.SimpleLSTM``: 2 x W, default W = 650,
10k words, 35-token sequences, default batch 20, SGD, hidden state carried between batches), on random data twice,
with plain ``nn.Dropout`` and with ``ApproximateDropout`` (its defaults unless ``--pattern``, ``--groups`` or
``--set name=value`` are given), timing every training step with :class:`~lightning_ard.app.step_timer.StepTimer`
(first in the callback list, so it includes the callback's batch-start work). The callback's own hooks
(pattern draw, call check, FLOP accounting, logging) are timed separately: their share of the ARD step is the
overhead. The first steps (warm-up and the one-off speed calibration) and the callback's timing-window steps are
left out of the medians; ``--rounds`` runs the two fits in turn several times. ``logged_step_speedup`` is the
median of the callback's own ``ard/step_speedup`` (interleaved steps inside each ARD fit); ``served_at_end`` names
the sites ARD still serves when the last fit ends (the never-slower rule may have sent the others back).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from lightning_ard.app.models import MLPClassifier
from lightning_ard.app.step_timer import StepTimer
from lightning_ard.bench.cli import check_outputs
from lightning_ard.bench.demo_lstm import DemoLSTM, demo_lstm_data
from lightning_ard.bench.step import device_name
from lightning_ard.callback import ApproximateDropout
from lightning_ard.patterns.groups import describe
from lightning_ard.step_speedup import StepSpeedMeter


class _TimedARD(ApproximateDropout):
    """ApproximateDropout that also measures the time spent in its own per-step hooks."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hook_ms: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self._start_ms = (time.perf_counter() - t) * 1e3

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.hook_ms.append(self._start_ms + (time.perf_counter() - t) * 1e3)


def _task(model: str, p: float, width: int, batch: int) -> tuple[pl.LightningModule, DataLoader]:
    """The model to fit and its random data (8 batches, or the LSTM's 8 consecutive windows)."""
    g = torch.Generator().manual_seed(0)
    if model == "lstm":
        return DemoLSTM(width, p), demo_lstm_data(batch, 8, g)
    data = TensorDataset(torch.randn(batch * 8, 784, generator=g), torch.randint(0, 10, (batch * 8,), generator=g))
    net = MLPClassifier(784, (width, width), 10, "relu", p, optimizer="sgd", lr=0.01, momentum=0.9)
    return net, DataLoader(data, batch_size=batch)


def _fit(
    steps: int, p: float, callback: ApproximateDropout | None, logdir: str, task: tuple[str, int, int, str]
) -> tuple[list[float], dict[str, float]]:
    """Step times of one fit of ``task`` (model, width, batch, device) and its final ``callback_metrics``."""
    pl.seed_everything(0, verbose=False)
    model, width, batch, device = task
    timer = StepTimer(warmup_steps=0)
    times: list[float] = []

    class Collect(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
            times.append(trainer.callback_metrics["time/step_ms"].item())

    callbacks: list[pl.Callback] = [timer] + ([callback] if callback else []) + [Collect()]
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator=device,
        devices=1,
        logger=TensorBoardLogger(logdir),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    module, loader = _task(model, p, width, batch)
    trainer.fit(module, loader)
    return times, {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def _ard_steps(times: list[float], callback: ApproximateDropout, skip: int) -> list[float]:
    """The ARD fit's step times after ``skip``, without the callback's timing-window steps (half of them run
    nn.Dropout)."""
    meter = StepSpeedMeter(every=callback.measure_every)  # the schedule the callback's windows follow
    kept = [t for i, t in enumerate(times) if i >= skip and not (callback.measure_speedup and meter.mode(i))]
    return kept or times[skip:]  # every timed step in a window: all of them


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("mlp", "lstm"), default="mlp", help="the paper's MLP or the demo LSTM LM")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip", type=int, default=5, help="first steps left out of the medians")
    parser.add_argument(
        "--rounds", type=int, default=1, help="nn.Dropout and ARD fits run in turn this many times (medians of all)"
    )
    parser.add_argument("--p", type=float, default=0.5)
    parser.add_argument("--pattern", default=None, help="pattern family (default: the library's)")
    parser.add_argument("--groups", default=None, help="pattern groups, an integer or auto (default: the library's)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="another ApproximateDropout argument, e.g. --set lstm_groups=5 (repeatable)")  # fmt: skip
    parser.add_argument("--width", type=int, default=None, help="W of the MLP 784-W-W-10 (2048) or LSTM 2xW (650)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (MLP 256, LSTM 20 sequences)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--md", type=Path, default=None, help="write a one-row Markdown table here")
    args = parser.parse_args(argv)
    if args.steps <= args.skip or args.skip < 0:
        parser.error(f"--steps must exceed --skip >= 0 (steps to time), got --steps {args.steps} --skip {args.skip}")
    if args.rounds < 1:
        parser.error(f"--rounds must be an integer >= 1, got {args.rounds}")
    if not 0 <= args.p < 1:
        parser.error(f"--p must be in [0, 1), got {args.p}")
    check_outputs(parser, [args.json, args.md])
    width = args.width or (650 if args.model == "lstm" else 2048)
    batch = args.batch or (20 if args.model == "lstm" else 256)
    task = (args.model, width, batch, args.device)
    settings: dict[str, Any] = {}
    if args.pattern is not None:
        settings["pattern"] = args.pattern
    if args.groups is not None:
        settings["groups"] = args.groups if args.groups == "auto" else int(args.groups)
    for item in args.set:
        if not item.partition("=")[0] or "=" not in item:
            parser.error(f"--set takes NAME=VALUE (an ApproximateDropout argument), got {item!r}")
    settings.update(OmegaConf.to_container(OmegaConf.from_dotlist(args.set)))  # typed as on Hydra's command line
    try:
        _TimedARD(verbose=False, **settings)  # bad settings fail before any fit
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    dense_times: list[float] = []
    ard_timed: list[float] = []
    hooks: list[float] = []
    logged: list[float] = []
    with tempfile.TemporaryDirectory() as logdir:
        for _ in range(args.rounds):  # fits in turn: drift on a shared machine hits both alike
            dense, _ = _fit(args.steps, args.p, None, logdir, task)
            ard_cb = _TimedARD(verbose=False, **settings)
            ard, metrics = _fit(args.steps, args.p, ard_cb, logdir, task)
            dense_times += dense[args.skip :]
            ard_timed += _ard_steps(ard, ard_cb, args.skip)
            hooks += ard_cb.hook_ms[args.skip :]
            if "ard/step_speedup" in metrics:
                logged.append(metrics["ard/step_speedup"])
    dense_ms = statistics.median(dense_times)
    ard_ms = statistics.median(ard_timed)
    hook_ms = statistics.median(hooks)
    result = {
        "case": f"lightning_fit_demo_lstm2x{width}_b{batch}" if args.model == "lstm"
        else f"lightning_fit_mlp784-{width}-{width}-10_b{batch}",
        "family": describe(ard_cb.config.pattern, ard_cb.controller.linear_groups),  # type: ignore[union-attr]
        "settings": {k: v for k, v in settings.items() if k not in ("pattern", "groups")},
        "groups": ard_cb.controller.linear_groups,  # type: ignore[union-attr]
        "p": args.p,
        "device": device_name(torch.device(args.device)),
        "dense_ms": round(dense_ms, 3),
        "ard_ms": round(ard_ms, 3),
        "speedup": round(dense_ms / ard_ms, 3),
        "callback_hook_ms": round(hook_ms, 3),
        "callback_overhead": round(hook_ms / ard_ms, 4),
        "steps_timed": len(ard_timed),
        "rounds": args.rounds,
        "logged_step_speedup": round(statistics.median(logged), 3) if logged else None,
        "gave_up": ard_cb.gave_up,
        "served_at_end": [s.name for s in ard_cb.plan.served] if ard_cb.plan else [],
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.md:
        args.md.write_text(
            "| case | family | p | device | nn.Dropout step (ms) | ARD step (ms) | speedup | logged ard/step_speedup "
            "| callback hooks (ms) | overhead |\n|---|---|---|---|---|---|---|---|---|---|\n"
            f"| {result['case']} | {result['family']} | {result['p']} | {result['device']} | {result['dense_ms']:.1f} "
            f"| {result['ard_ms']:.1f} | {result['speedup']:.2f}× | {result['logged_step_speedup'] or ''} "
            f"| {result['callback_hook_ms']:.3f} | {result['callback_overhead']:.2%} |\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
