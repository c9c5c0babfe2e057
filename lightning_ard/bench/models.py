"""Drop-in on models nobody here wrote: the callback's defaults vs nn.Dropout on real model code, one run.

``python -m lightning_ard.bench.models [--steps N] [--rounds R] [--models a,b] [--json FILE] [--md FILE]``

Each model is built from torch's own layers (and lightning's demo Transformer) the way its library writes it: a
ViT-style ``nn.TransformerEncoder``, the lightning demo ``Transformer``, T5-style FFN blocks (wi -> act -> dropout ->
wo), timm-style ``Mlp`` blocks (fc1 -> act -> drop -> norm(Identity) -> fc2), MLP-Mixer blocks with
``nn.Dropout(0.0)``, a CNN head using ``F.dropout`` in a module without ``forward``, and an LSTM classifier on
packed sequences. For every model, fits with nn.Dropout and with ``ApproximateDropout()`` (the defaults) alternate
for ``--rounds`` rounds; an outside timer (:class:`~lightning_ard.app.step_timer.StepTimer`) gives the median step of
each fit, leaving out warm-up, the calibration step and the callback's nn.Dropout timing window. The table shows the
sites served and fallen back, the outside ratio (nn.Dropout step / ARD step, medians over rounds), and the
``ard/step_speedup`` the callback measured inside its own fits, beside the outside timer's ratio over the same window
steps (the check that the callback measures what an outside timer sees).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.data import DataLoader, TensorDataset

from lightning_ard import step_speedup
from lightning_ard.app.step_timer import StepTimer
from lightning_ard.bench.cli import check_outputs, select_cases
from lightning_ard.bench.step import device_name
from lightning_ard.callback import ApproximateDropout


class _Task(pl.LightningModule):
    """A model, a loss on its output, SGD with momentum."""

    def __init__(self, net: nn.Module, loss: Callable[[Any, Any], torch.Tensor]) -> None:
        super().__init__()
        self.net, self.loss = net, loss

    def forward(self, x: Any) -> Any:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return self.loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class _ViT(nn.Module):
    def __init__(self, d: int = 192, layers: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(48, d)
        layer = nn.TransformerEncoderLayer(
            d, 3, 4 * d, dropout=0.1, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


class _DemoLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from lightning.pytorch.demos import Transformer

        self.model = Transformer(vocab_size=1000, ninp=128, nhead=2, nhid=512, nlayers=2, dropout=0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, x)


class _T5FFN(nn.Module):
    """T5's DenseReluDense: wi -> ReLU -> dropout -> wo, residual around a norm."""

    def __init__(self, d: int = 256, ff: int = 1024, p: float = 0.1) -> None:
        super().__init__()
        self.norm, self.wi, self.wo = nn.LayerNorm(d), nn.Linear(d, ff, bias=False), nn.Linear(ff, d, bias=False)
        self.act, self.dropout = nn.ReLU(), nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.wo(self.dropout(self.act(self.wi(self.norm(x)))))


class _TimmMlp(nn.Module):
    """timm's Mlp: fc1 -> act -> drop1 -> norm (Identity) -> fc2 -> drop2."""

    def __init__(self, d: int = 256, hidden: int = 1024, p: float = 0.1) -> None:
        super().__init__()
        self.fc1, self.act, self.drop1 = nn.Linear(d, hidden), nn.GELU(), nn.Dropout(p)
        self.norm, self.fc2, self.drop2 = nn.Identity(), nn.Linear(hidden, d), nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class _Residual(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)


class _MixerBlock(nn.Module):
    """MLP-Mixer: token mixing over the sequence, channel mixing over features, timm's Mlp with drop=0.0."""

    def __init__(self, tokens: int = 64, d: int = 256) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.tokens, self.channels = _TimmMlp(tokens, tokens * 2, 0.0), _TimmMlp(d, 4 * d, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channels(self.norm2(x))


class _DropoutHead(nn.Module):
    """A classifier head written with the functional API: fc1 -> ReLU -> F.dropout -> fc2."""

    def __init__(self, d: int = 32 * 14 * 14, hidden: int = 512, classes: int = 10) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.dropout(F.relu(self.fc1(x)), 0.5, self.training))


class _CNNHead(pl.LightningModule):
    """A small CNN with that head; the LightningModule has no forward (training_step runs the parts)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.head = _DropoutHead()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.head(self.features(x)), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class _PackedLSTM(nn.Module):
    """Embedding -> dropout -> 2-layer LSTM (dropout) on packed sequences -> dropout -> Linear."""

    def __init__(self, vocab: int = 2000, d: int = 256, classes: int = 5) -> None:
        super().__init__()
        self.emb, self.drop_in = nn.Embedding(vocab, d), nn.Dropout(0.3)
        self.lstm = nn.LSTM(d, d, 2, dropout=0.3, batch_first=True)
        self.drop_out, self.fc = nn.Dropout(0.3), nn.Linear(d, classes)

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        tokens, lengths = batch
        packed = pack_padded_sequence(self.drop_in(self.emb(tokens)), lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return self.fc(self.drop_out(h[-1]))


def _tensors(*shape: int, classes: int, n: int, dtype: torch.dtype = torch.float32) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = (
        torch.randn(n, *shape, generator=g)
        if dtype.is_floating_point
        else torch.randint(0, 1000, (n, *shape), generator=g)
    )
    return TensorDataset(x, torch.randint(0, classes, (n,), generator=g))


def _lm_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(out.reshape(-1, out.shape[-1]), y.flatten())  # the demo returns (B * T, V) log-probabilities


def _packed_data(n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 40, (n,), generator=g)
    return TensorDataset(torch.randint(0, 2000, (n, 40), generator=g), lengths, torch.randint(0, 5, (n,), generator=g))


def _collate_packed(items: list[tuple[torch.Tensor, ...]]) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    tokens, lengths, labels = (torch.stack(t) for t in zip(*items, strict=True))
    return (tokens, lengths), labels


def _lm_data(n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 1000, (n, 33), generator=g)
    return TensorDataset(tokens[:, :-1], tokens[:, 1:])


MODELS: dict[str, Callable[[int], tuple[pl.LightningModule, DataLoader]]] = {
    "vit_tiny_encoder": lambda n: (
        _Task(_ViT(), F.cross_entropy),
        DataLoader(_tensors(32, 48, classes=10, n=n * 16), batch_size=16),
    ),
    "lightning_demo_transformer": lambda n: (_Task(_DemoLM(), _lm_loss), DataLoader(_lm_data(n * 16), batch_size=16)),
    "t5_ffn_stack": lambda n: (
        _Task(nn.Sequential(*[_T5FFN() for _ in range(4)], nn.Flatten(), nn.Linear(32 * 256, 10)), F.cross_entropy),
        DataLoader(_tensors(32, 256, classes=10, n=n * 32), batch_size=32),
    ),
    "timm_mlp_stack": lambda n: (
        _Task(
            nn.Sequential(*[_Residual(_TimmMlp()) for _ in range(4)], nn.Flatten(), nn.Linear(32 * 256, 10)),
            F.cross_entropy,
        ),
        DataLoader(_tensors(32, 256, classes=10, n=n * 32), batch_size=32),
    ),  # fmt: skip
    "mlp_mixer": lambda n: (
        _Task(
            nn.Sequential(*[_MixerBlock() for _ in range(4)], nn.Flatten(), nn.Linear(64 * 256, 10)), F.cross_entropy
        ),
        DataLoader(_tensors(64, 256, classes=10, n=n * 16), batch_size=16),
    ),
    "cnn_functional_dropout": lambda n: (
        _CNNHead(),
        DataLoader(_tensors(1, 28, 28, classes=10, n=n * 64), batch_size=64),
    ),
    "lstm_packed_classifier": lambda n: (
        _Task(_PackedLSTM(), F.cross_entropy),
        DataLoader(_packed_data(n * 32), batch_size=32, collate_fn=_collate_packed),
    ),
}
"""Model name -> (LightningModule, training data for ``n`` steps) builder."""


def _untimed(steps: int) -> set[int]:
    """Steps left out of the outside medians: warm-up, the calibration step, the callback's timing window."""
    window = range(step_speedup.START, step_speedup.START + 2 * step_speedup.STEPS)
    return {0, 1, 2, *window} & set(range(steps))


def _fit(name: str, steps: int, ard: bool) -> dict[str, Any]:
    pl.seed_everything(0, verbose=False)
    model, data = MODELS[name](steps)
    timer = StepTimer(warmup_steps=0)
    times: list[float] = []

    class Collect(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
            times.append(trainer.callback_metrics["time/step_ms"].item())

    cb = ApproximateDropout(verbose=False, measure_every=0) if ard else None
    with tempfile.TemporaryDirectory() as logdir:
        trainer = pl.Trainer(
            max_steps=steps, accelerator="cpu", devices=1, logger=pl.loggers.CSVLogger(logdir),
            callbacks=[timer, *([cb] if cb else []), Collect()], enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=10,
        )  # fmt: skip
        trainer.fit(model, data)
    skip = _untimed(steps)
    out: dict[str, Any] = {"step_ms": statistics.median(t for i, t in enumerate(times) if i not in skip)}
    window = range(step_speedup.START, step_speedup.START + 2 * step_speedup.STEPS)
    served = cb is not None and cb.controller is not None and bool(cb.controller.report.sites) and cb.gave_up is None
    if served and len(times) >= window.stop:  # the callback's own timing window, timed from outside
        plain = statistics.median(times[i] for i in window if (i - window.start) % 2 == 0)
        ard = statistics.median(times[i] for i in window if (i - window.start) % 2 == 1)
        out["window_outside_speedup"] = plain / ard
    if cb is not None and cb.controller is not None:
        metric = trainer.callback_metrics.get("ard/step_speedup")
        out["logged_step_speedup"] = float(metric) if metric is not None else None
        out["sites"] = [s.name for s in cb.controller.report.sites]
        out["fallen_back"] = list(out["sites"]) if cb.gave_up else sorted(cb.controller.fallen_back)
        out["skipped"] = {s.name: s.reason for s in cb.controller.report.skipped}
        out["gave_up"] = cb.gave_up
    return out


def bench_model(name: str, steps: int, rounds: int) -> dict[str, Any]:
    """Alternate nn.Dropout and ARD-default fits ``rounds`` times; medians of the outside step medians."""
    plain, ard = [], []
    for _ in range(rounds):
        plain.append(_fit(name, steps, ard=False))
        ard.append(_fit(name, steps, ard=True))
    plain_ms = statistics.median(r["step_ms"] for r in plain)
    ard_ms = statistics.median(r["step_ms"] for r in ard)
    logged = [r["logged_step_speedup"] for r in ard if r.get("logged_step_speedup") is not None]
    window = [r["window_outside_speedup"] for r in ard if r.get("window_outside_speedup") is not None]
    last = ard[-1]
    return {
        "model": name,
        "plain_ms": round(plain_ms, 3),
        "ard_ms": round(ard_ms, 3),
        "outside_speedup": round(plain_ms / ard_ms, 3),
        "logged_step_speedup": round(statistics.median(logged), 3) if logged else None,
        "window_outside_speedup": round(statistics.median(window), 3) if window else None,
        "sites": last.get("sites", []),
        "fallen_back": last.get("fallen_back", []),
        "gave_up": last.get("gave_up", False),
        "skipped": last.get("skipped", {}),
    }


def markdown(rows: list[dict[str, Any]], device: str) -> str:
    lines = [
        f"Device: {device}. nn.Dropout vs `ApproximateDropout()` (defaults), medians of interleaved fits.",
        "",
        "| model | sites | served | nn.Dropout step (ms) | ARD-default step (ms) | separate fits speedup "
        "| logged ard/step_speedup | outside timer, same steps | logged / outside |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        served = len(r["sites"]) - len(r["fallen_back"])
        logged = r["logged_step_speedup"]
        window = r["window_outside_speedup"]
        ratio = f"{logged / window:.3f}" if logged and window else ""
        gave_up = f" (plain model back: {r['gave_up']})" if r["gave_up"] else ""
        lines.append(
            f"| {r['model']} | {len(r['sites'])} | {served}{gave_up} "
            f"| {r['plain_ms']:.1f} | {r['ard_ms']:.1f} | {r['outside_speedup']:.3f}x "
            f"| {'' if logged is None else f'{logged:.3f}x'} | {'' if window is None else f'{window:.3f}x'} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="ard-models-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="steps per fit (>= 25: warm-up, calibration, window)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved nn.Dropout / ARD fits per model")
    parser.add_argument("--models", default=None, help=f"comma-separated prefixes of {', '.join(MODELS)}")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--md", type=Path, default=None)
    args = parser.parse_args(argv)
    minimum = step_speedup.START + 2 * step_speedup.STEPS + 5
    if args.steps < minimum or args.rounds < 1:
        parser.error(f"--steps must be >= {minimum} and --rounds >= 1, got --steps {args.steps} --rounds {args.rounds}")
    names = select_cases(parser, list(MODELS), args.models)
    check_outputs(parser, [args.json, args.md])
    rows = []
    for name in names:
        row = bench_model(name, args.steps, args.rounds)
        rows.append(row)
        print(json.dumps(row), flush=True)
    table = markdown(rows, device_name(torch.device("cpu")))
    print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.md:
        args.md.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
