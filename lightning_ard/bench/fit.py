"""Benchmark of the callback inside a real Lightning fit: step time with and without it, and its own overhead.

``python -m lightning_ard.bench.fit [--steps N] [--rounds R] [--p P] [--pattern F] [--groups G] [--width W]
[--batch B]``

Fits the paper's MLP (784-W-W-10, default W = 2048, batch 256; the app's ``MLPClassifier`` with SGD momentum) on
random data twice, with plain ``nn.Dropout`` and with ``ApproximateDropout`` (its defaults unless ``--pattern`` /
``--groups`` are given), timing every training step with :class:`~lightning_ard.app.step_timer.StepTimer`
(first in the callback list, so it includes the callback's batch-start work). The callback's own hooks
(pattern draw, call check, FLOP accounting, logging) are timed separately: their share of the ARD step is the
overhead. The first steps (warm-up and the one-off speed calibration) and the callback's timing-window steps are
left out of the medians; ``--rounds`` runs the two fits in turn several times. ``logged_step_speedup`` is the
median of the callback's own ``ard/step_speedup`` (interleaved steps inside each ARD fit).
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
from torch.utils.data import DataLoader, TensorDataset

from lightning_ard.app.models import MLPClassifier
from lightning_ard.app.step_timer import StepTimer
from lightning_ard.bench.cli import check_outputs
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


def _fit(
    steps: int, p: float, callback: ApproximateDropout | None, logdir: str, device: str, width: int, batch: int
) -> tuple[list[float], dict[str, float]]:
    """Step times of one fit and its final ``callback_metrics``."""
    pl.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(batch * 8, 784, generator=g), torch.randint(0, 10, (batch * 8,), generator=g))
    timer = StepTimer(warmup_steps=0)
    times: list[float] = []

    class Collect(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
            times.append(trainer.callback_metrics["time/step_ms"].item())

    callbacks: list[pl.Callback] = [timer] + ([callback] if callback else []) + [Collect()]
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(logdir),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    model = MLPClassifier(784, (width, width), 10, "relu", p, optimizer="sgd", lr=0.01, momentum=0.9)
    trainer.fit(model, DataLoader(data, batch_size=batch))
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
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip", type=int, default=5, help="first steps left out of the medians")
    parser.add_argument(
        "--rounds", type=int, default=1, help="nn.Dropout and ARD fits run in turn this many times (medians of all)"
    )
    parser.add_argument("--p", type=float, default=0.5)
    parser.add_argument("--pattern", default=None, help="pattern family (default: the library's)")
    parser.add_argument("--groups", default=None, help="pattern groups, an integer or auto (default: the library's)")
    parser.add_argument("--width", type=int, default=2048, help="hidden width W of the 784-W-W-10 MLP")
    parser.add_argument("--batch", type=int, default=256)
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
    settings: dict[str, Any] = {}
    if args.pattern is not None:
        settings["pattern"] = args.pattern
    if args.groups is not None:
        settings["groups"] = args.groups if args.groups == "auto" else int(args.groups)
    try:
        _TimedARD(verbose=False, **settings)  # bad settings fail before any fit
    except ValueError as err:
        parser.error(str(err))
    dense_times: list[float] = []
    ard_timed: list[float] = []
    hooks: list[float] = []
    logged: list[float] = []
    with tempfile.TemporaryDirectory() as logdir:
        for _ in range(args.rounds):  # fits in turn: drift on a shared machine hits both alike
            dense, _ = _fit(args.steps, args.p, None, logdir, args.device, args.width, args.batch)
            ard_cb = _TimedARD(verbose=False, **settings)
            ard, metrics = _fit(args.steps, args.p, ard_cb, logdir, args.device, args.width, args.batch)
            dense_times += dense[args.skip :]
            ard_timed += _ard_steps(ard, ard_cb, args.skip)
            hooks += ard_cb.hook_ms[args.skip :]
            if "ard/step_speedup" in metrics:
                logged.append(metrics["ard/step_speedup"])
    dense_ms = statistics.median(dense_times)
    ard_ms = statistics.median(ard_timed)
    hook_ms = statistics.median(hooks)
    result = {
        "case": f"lightning_fit_mlp784-{args.width}-{args.width}-10_b{args.batch}",
        "family": describe(ard_cb.config.pattern, ard_cb.controller.linear_groups),  # type: ignore[union-attr]
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
