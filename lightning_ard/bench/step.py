"""Benchmark: full training steps (forward, backward, optimizer), nn.Dropout vs ARD, with both yardsticks.

``python -m lightning_ard.bench.step [--quick] [--device cpu|cuda] [--json FILE] [--png FILE] [--md FILE]``

For every case (the paper's MLP 784-2048-2048-10 at batch 256 and the Zaremba LSTM LM, 2×650, vocabulary 10k,
35 steps, batch 20), family and rate it times:

* ``dense_ms``: the model with ``nn.Dropout`` (the baseline);
* ``ard_ms``: the same model under :class:`~lightning_ard.ARDController` (patterns drawn inside the timed step);
* ``limit_ms``: the compact-model limit (docs/method.md, "How far from the limit"): a plain model whose widths are
  the expected kept widths, with no dropout at all;

and reports ``speedup = dense/ard``, ``ideal`` (dense/executed FLOP ratio of the step, averaged over the timed
steps), ``limit`` (dense/limit) and the fractions of both reached. Variants are timed interleaved (dense, ARD,
limit, dense, …) so that drift on a shared machine hits all three alike; each figure is a median.

Beside each time, the peak memory of one training step of the variant (``dense_peak_mib``, ``ard_peak_mib``,
``limit_peak_mib``, ``grouped_limit_peak_mib``): the most MiB its tensors held at once above what was allocated
before the step (:mod:`lightning_ard.memory`), measured on one extra untimed step after the timed ones.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ard import step_speedup
from lightning_ard.app.models.lstm_lm import LSTMLanguageModel
from lightning_ard.app.models.mlp import build_mlp
from lightning_ard.bench.cli import check_outputs, parse_rates, select_cases
from lightning_ard.controller import ARDController
from lightning_ard.memory import peak_mib
from lightning_ard.patterns.groups import describe
from lightning_ard.plan import Schedule
from lightning_ard.profiling import time_calls
from lightning_ard.search import FAMILIES
from lightning_ard.speed_guard import SpeedGuard

RATES = (0.3, 0.4, 0.5, 0.6, 0.7)


@dataclass
class Record:
    """One benchmark row (the JSON record format)."""

    case: str
    family: str
    p: float
    device: str
    dense_ms: float
    ard_ms: float
    speedup: float
    ideal: float
    limit_ms: float
    limit: float
    of_ideal: float
    of_limit: float
    groups: int = 1
    pool: int | None = None
    lstm_groups: int | None = None
    grouped_limit_ms: float | None = None
    grouped_limit: float | None = None
    of_grouped_limit: float | None = None
    setting: str | None = None
    served: str | None = None  # "k/n" sites ARD served after the never-slower rule (None: rule off, all served)
    step_check: float | None = None  # the rule's step window (plain / ARD step) when it gave the plain model back
    dense_peak_mib: float | None = None  # peak memory of one step above its start (lightning_ard.memory)
    ard_peak_mib: float | None = None
    limit_peak_mib: float | None = None
    grouped_limit_peak_mib: float | None = None  # None: one group (the compact limit is the grouped one)

    @property
    def label(self) -> str:
        """Family, with the pattern-group settings when they are not the default (or the named LSTM setting)."""
        if self.setting is not None:
            return f"{self.family} {self.setting}"
        label = describe(self.family, self.groups, self.pool, self.lstm_groups)
        if self.served is None:
            return label
        if self.step_check is not None:
            return f"{label} (never slower: plain model, step {self.step_check:.2f}x)"
        return f"{label} (never slower: {self.served} sites)"


class LogitsOnly(nn.Module):
    """The app's LSTM LM returning only its logits (the benchmark's loss reads logits)."""

    def __init__(self, lm: LSTMLanguageModel) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm(tokens)[0]


def lstm_lm(vocab: int, hidden: int, layers: int, p: float) -> nn.Module:
    """The app's Zaremba-style LM (embedding → dropout → nn.LSTM(dropout=p) → dropout → decoder), logits out."""
    return LogitsOnly(LSTMLanguageModel(vocab, hidden, hidden, layers, p))


class CompactLSTMLM(nn.Module):
    """The LSTM's compact-model limit: layers read ``kept`` input units, the decoder ``kept`` columns."""

    def __init__(self, vocab: int, hidden: int, layers: int, kept: int) -> None:
        super().__init__()
        self.kept = kept
        self.embedding = nn.Embedding(vocab, kept)
        self.layers = nn.ModuleList(nn.LSTM(kept, hidden, batch_first=True) for _ in range(layers))
        self.decoder = nn.Linear(kept, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embedding(tokens)
        for lstm in self.layers:
            x = lstm(x)[0][..., : self.kept]
        return self.decoder(x)


class GroupedLimit(nn.Module):
    """The grouped compact limit (docs/method.md): G plain compact models, model g stepping on the g-th contiguous share
    of the batch (``torch.tensor_split`` of dim 0), outputs concatenated; one optimizer over all of them. The least
    work G pattern groups can do: the same FLOPs as one compact model, in products of B/G rows."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = torch.tensor_split(x, len(self.models))
        return torch.cat([m(c) for m, c in zip(self.models, chunks, strict=True) if c.shape[0]])


class Encoder(nn.Module):
    """A Transformer encoder classifier (pre-norm ``nn.TransformerEncoderLayer`` blocks, GELU, mean-pooled head) on
    embedded tokens; its dropout sites are the FFNs' (linear1 -> GELU -> dropout -> linear2)."""

    def __init__(self, d: int, ff: int, layers: int, p: float | None) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            d, 4, ff, dropout=p or 0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(1))


def mlp(widths: tuple[int, ...], p: float | None) -> nn.Sequential:
    """The app's MLP: Linear → ReLU → Dropout(p) per hidden layer (no dropout when p is None), output Linear."""
    return build_mlp(widths[0], widths[1:-1], widths[-1], "relu", [p or 0.0] * (len(widths) - 2))


@dataclass
class Case:
    """A model family to benchmark: builders for the dropout model and its compact limit, and one batch."""

    name: str
    build: Callable[[float], nn.Module]
    build_limit: Callable[[float], nn.Module]
    batch: Callable[[torch.device], tuple[torch.Tensor, torch.Tensor]]


def paper_cases() -> list[Case]:
    """The paper's MLP (784-2048-2048-10) at batch 256 and 1024, the accuracy study's MLP (784-1024-1024-10, batch
    128, and 512 for the batch rule of ``groups="auto"``), the LSTM LM (2×650, vocab 10k, 35 steps, batch 20) and a
    Transformer encoder (4 pre-norm layers, width 256, FFN 1024, 64 tokens, batch 32; its limit has FFNs of the
    kept width and no dropout)."""

    def mlp_batch(rows: int) -> Callable[[torch.device], tuple[torch.Tensor, torch.Tensor]]:
        def batch(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
            g = torch.Generator().manual_seed(0)
            return torch.randn(rows, 784, generator=g).to(device), torch.randint(0, 10, (rows,), generator=g).to(device)

        return batch

    def lstm_batch(rows: int) -> Callable[[torch.device], tuple[torch.Tensor, torch.Tensor]]:
        def make(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
            g = torch.Generator().manual_seed(0)
            tokens = torch.randint(0, 10_000, (rows, 36), generator=g).to(device)
            return tokens[:, :-1], tokens[:, 1:]

        return make

    def lstm_case(rows: int) -> Case:
        return Case(
            f"lstm2x650_v10k_t35_b{rows}",
            lambda p: lstm_lm(10_000, 650, 2, p),
            lambda p: CompactLSTMLM(10_000, 650, 2, kept(650, p)),
            lstm_batch(rows),
        )

    def encoder_batch(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        return torch.randn(32, 64, 256, generator=g).to(device), torch.randint(0, 10, (32,), generator=g).to(device)

    def kept(width: int, p: float) -> int:
        return max(round(width * (1 - p)), 1)

    def mlp_case(width: int, rows: int) -> Case:
        return Case(
            f"mlp784-{width}-{width}-10_b{rows}",
            lambda p: mlp((784, width, width, 10), p),
            lambda p: mlp((784, kept(width, p), kept(width, p), 10), None),
            mlp_batch(rows),
        )

    # the paper's MLP at batch 256 and 1024, and the model and batches of the accuracy study (docs/results.md)
    mlp_cases = [mlp_case(2048, 256), mlp_case(2048, 1024), mlp_case(1024, 128), mlp_case(1024, 512)]
    return [
        *mlp_cases,
        lstm_case(20),
        lstm_case(64),
        Case(
            "transformer4x256-ff1024_t64_b32",
            lambda p: Encoder(256, 1024, 4, p),
            lambda p: Encoder(256, kept(1024, p), 4, None),
            encoder_batch,
        ),
    ]


def _loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))


class _Runner:
    """One model, its optimizer and (for ARD) its controller; ``step()`` is one full training step."""

    def __init__(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], ctl: ARDController | None):
        self.model, self.batch, self.ctl = model.train(), batch, ctl
        self.opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        self.flops: list[tuple[int, int]] = []

    def step(self) -> None:
        if self.ctl is not None:
            self.ctl.step()
        self.train_step()

    def train_step(self) -> None:
        """Forward, backward and the optimizer's update (the patterns, if any, are already set)."""
        x, y = self.batch
        _loss(self.model(x), y).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def record_flops(self) -> None:
        if self.ctl is not None:
            layer = self.ctl.layer_flops()
            self.flops.append((sum(d for d, _ in layer.values()), sum(e for _, e in layer.values())))


def _time(runner: _Runner, device: torch.device, steps: int) -> list[float]:
    return time_calls(runner.step, device, steps, after=runner.record_flops)


def _peaks(runners: dict[str, _Runner], device: torch.device) -> dict[str, float]:
    """Variant -> peak MiB of one more (untimed) training step, each after its timed ones (warm: optimizer state
    exists, so the figure is a steady step's)."""
    return {name: round(peak_mib(runner.step, device), 3) for name, runner in runners.items()}


def device_name(device: torch.device) -> str:
    """A readable name of the device (GPU model, or CPU model and thread count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def bench_case(
    case: Case,
    family: str,
    p: float,
    device: torch.device,
    warmup: int,
    rounds: int,
    steps: int,
    groups: int | str = 1,
    pool: int | None = None,
    lstm_groups: int | None = None,
    never_slower: bool = False,
) -> Record:
    """Time dense, ARD and limit steps of one case, interleaved, and build the record (``groups`` patterns per
    step per site). ``never_slower``: after the warm-up, the callback's rule sends sites that are not faster at
    their measured shapes back to nn.Dropout (all of them: the plain model), and its step window gives the plain
    model back when the whole ARD step is not faster, so the row is what a fit with the defaults runs."""
    batch = case.batch(device)
    torch.manual_seed(0)
    dense = _Runner(case.build(p).to(device), batch, None)
    torch.manual_seed(0)
    ard_model = case.build(p).to(device)
    ctl = ARDController(ard_model, pattern=family, seed=0, groups=groups, pool=pool, lstm_groups=lstm_groups).apply()
    if not ctl.active:
        raise RuntimeError(f"no ARD site found in case {case.name}")
    ctl.follow_batch(len(batch[0]))  # groups="auto" follows the batch, as in a fit
    ard = _Runner(ard_model, batch, ctl)
    limit = _Runner(case.build_limit(p).to(device), batch, None)
    runners = {"dense": dense, "ard": ard, "limit": limit}
    g = ctl.linear_groups
    if g > 1:
        grouped = GroupedLimit([case.build_limit(p) for _ in range(g)]).to(device)
        runners["grouped_limit"] = _Runner(grouped, batch, None)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for runner in runners.values():
        _time(runner, device, warmup)
    served, step_check = _never_slower(ctl, ard) if never_slower else (None, None)
    ard.flops.clear()
    for _ in range(rounds):
        for name, runner in runners.items():
            times[name] += _time(runner, device, steps)
    peaks = _peaks(runners, device)  # after the timed steps: the FLOP ratio stays theirs (no flops recorded)
    ctl.restore()
    med = {k: statistics.median(v) for k, v in times.items()}
    ideal = sum(d for d, _ in ard.flops) / sum(e for _, e in ard.flops) if ard.flops else 1.0
    speedup = med["dense"] / med["ard"]
    limit_speedup = med["dense"] / med["limit"]
    grouped = med.get("grouped_limit", med["limit"])  # one group: the compact limit itself
    return Record(
        case.name,
        family,
        p,
        device_name(device),
        round(med["dense"], 3),
        round(med["ard"], 3),
        round(speedup, 3),
        round(ideal, 3),
        round(med["limit"], 3),
        round(limit_speedup, 3),
        round(speedup / ideal, 3),
        round(speedup / limit_speedup, 3),
        g,
        pool if g > 1 else None,
        lstm_groups,
        round(grouped, 3),
        round(med["dense"] / grouped, 3),
        round(speedup / (med["dense"] / grouped), 3),
        served=served,
        step_check=step_check,
        dense_peak_mib=peaks["dense"],
        ard_peak_mib=peaks["ard"],
        limit_peak_mib=peaks["limit"],
        grouped_limit_peak_mib=peaks.get("grouped_limit"),
    )


def _never_slower(ctl: ARDController, runner: _Runner) -> tuple[str, float | None]:
    """The callback's never-slower rule on a benchmark model after its warm-up, run by the callback's own
    :class:`~lightning_ard.speed_guard.SpeedGuard`: one ARD step, whose calibration sends the sites whose layers
    are not faster back to nn.Dropout, then a window of :data:`~lightning_ard.step_speedup.STEPS` reference and ARD
    steps in turn; when the ARD steps' median is not below the reference one, the plain model is given back.

    Returns ``("served/total", None)``, or ``("0/total", plain / ARD step)`` when the window gave up."""
    total = len(ctl.plan.sites)
    guard = SpeedGuard(ctl, [runner.opt], schedule=Schedule(1, 0, step_speedup.STEPS), notify=lambda line: None)
    for _ in range(1 + 2 * step_speedup.STEPS):
        if not ctl.active:
            break
        with guard.step():
            runner.train_step()
    plan, step_check = guard.plan, None
    if plan.plain is not None and guard.step_ms is not None:
        plain_ms, ard_ms = guard.step_ms
        step_check = round(plain_ms / ard_ms, 3)
    if plan.plain is not None:
        ctl.restore()
        runner.ctl = None
    return f"{len(plan.served)}/{total}", step_check


@dataclass(frozen=True)
class LSTMSetting:
    """One LSTM setting of the ``--lstm-settings`` comparison: its ARDConfig group settings."""

    name: str
    groups: int | str  # "auto": the library's default at the case's rate
    lstm_groups: int | None
    lstm_mode: str = "time"
    recurrent: bool = False  # recurrent-path structured dropout at the case's rate
    lstm_pattern: str | None = None  # family at the LSTM sites (None: the run's family)
    pattern_share: float | None = None  # lstm_pattern_share: the pattern's share of the rate, element-wise the rest


LSTM_SETTINGS = (
    LSTMSetting("one pattern per step", 1, 1),
    LSTMSetting("defaults (to p = 0.5: LSTM random pattern 0.6 of p + element-wise)", "auto", None),
    LSTMSetting("decoder auto groups, LSTM one random pattern", "auto", 1, lstm_pattern="random"),
    LSTMSetting("LSTM random pattern 0.8 of p + element-wise", "auto", 1, lstm_pattern="random", pattern_share=0.8),
    LSTMSetting("random sequence G=2", "auto", 2, "sequence", lstm_pattern="random"),
    LSTMSetting("random sequence G=4", "auto", 4, "sequence", lstm_pattern="random"),
    LSTMSetting("time chunks G=4", 4, 4),
    LSTMSetting("structured G=2", 2, 2, "sequence", True),
)
"""The LSTM settings of the comparison, beside nn.Dropout (every record's ``dense_ms``)."""


def bench_lstm_settings(
    case: Case,
    family: str,
    p: float,
    device: torch.device,
    warmup: int,
    rounds: int,
    steps: int,
    settings: tuple[LSTMSetting, ...] = LSTM_SETTINGS,
) -> list[Record]:
    """nn.Dropout, the compact limit and every LSTM setting on one case, each round timing all of them in turn (one
    run: drift on a shared machine hits every setting alike); one record per setting, with its FLOP ratio (over the
    products of the whole step: the same dense work for every setting)."""
    batch = case.batch(device)
    torch.manual_seed(0)
    runners = {"dense": _Runner(case.build(p).to(device), batch, None)}
    controllers = {}
    for setting in settings:
        torch.manual_seed(0)
        model = case.build(p).to(device)
        ctl = ARDController(
            model,
            pattern=family,
            seed=0,
            groups=setting.groups,
            lstm_groups=setting.lstm_groups,
            lstm_mode=setting.lstm_mode,
            lstm_recurrent_p=p if setting.recurrent else None,
            lstm_pattern=setting.lstm_pattern,
            lstm_pattern_share=setting.pattern_share,
        ).apply()
        if not ctl.active:
            raise RuntimeError(f"no ARD site found in case {case.name}")
        ctl.follow_batch(len(batch[0]))
        runners[setting.name], controllers[setting.name] = _Runner(model, batch, ctl), ctl
    runners["limit"] = _Runner(case.build_limit(p).to(device), batch, None)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for runner in runners.values():
        _time(runner, device, warmup)
        runner.flops.clear()
    for _ in range(rounds):
        for name, runner in runners.items():
            times[name] += _time(runner, device, steps)
    peaks = _peaks(runners, device)
    med = {k: statistics.median(v) for k, v in times.items()}
    limit = med["dense"] / med["limit"]
    # FLOP ratio of the whole step's products: a setting that leaves the LSTM as nn.Dropout counts only its decoder,
    # so every setting's saving is set against the most work any setting counted (the LSTM and the decoder).
    counted = {name: runners[name].flops for name in controllers}
    dense_work = max(sum(d for d, _ in f) / len(f) for f in counted.values())
    records = []
    for setting in settings:
        controllers[setting.name].restore()  # its report (sites, groups) stays readable
        flops = counted[setting.name]
        saved = sum(d - e for d, e in flops) / len(flops)
        ideal = dense_work / (dense_work - saved)
        speedup = med["dense"] / med[setting.name]
        records.append(
            Record(
                case=case.name,
                family=family,
                p=p,
                device=device_name(device),
                dense_ms=round(med["dense"], 3),
                ard_ms=round(med[setting.name], 3),
                speedup=round(speedup, 3),
                ideal=round(ideal, 3),
                limit_ms=round(med["limit"], 3),
                limit=round(limit, 3),
                of_ideal=round(speedup / ideal, 3),
                of_limit=round(speedup / limit, 3),
                groups=controllers[setting.name].linear_groups,
                lstm_groups=setting.lstm_groups,
                setting=setting.name,
                dense_peak_mib=peaks["dense"],
                ard_peak_mib=peaks[setting.name],
                limit_peak_mib=peaks["limit"],
            )
        )
    return records


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def format_table(records: list[Record]) -> str:
    """Markdown table of the records: speedup with the three yardsticks side by side, then the peak memory of a
    step of each variant (MiB above the step's start; "–": not measured, or no grouped limit)."""
    head = (
        "| case | family | p | dense ms | ARD ms | speedup | ideal (FLOPs) | of ideal | limit | of limit "
        "| grouped limit | of grouped limit | dense MiB | ARD MiB | limit MiB | grouped limit MiB |"
    )
    lines = [head, "|" + "---|" * 16]
    for r in records:
        grouped = r.grouped_limit if r.grouped_limit is not None else r.limit
        of_grouped = r.of_grouped_limit if r.of_grouped_limit is not None else r.of_limit
        lines.append(
            f"| {r.case} | {r.label} | {r.p:.1f} | {r.dense_ms:.1f} | {r.ard_ms:.1f} | {r.speedup:.2f}× | "
            f"{r.ideal:.2f}× | {r.of_ideal:.0%} | {r.limit:.2f}× | {r.of_limit:.0%} | {grouped:.2f}× "
            f"| {of_grouped:.0%} | {_mib(r.dense_peak_mib)} | {_mib(r.ard_peak_mib)} | {_mib(r.limit_peak_mib)} "
            f"| {_mib(r.grouped_limit_peak_mib)} |"
        )
    return "\n".join(lines)


def plot(records: list[Record], path: Path) -> None:
    """Speedup against p, one line per family, with the ideal and limit yardsticks, one panel per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({r.case for r in records})
    fig, axes = plt.subplots(1, len(cases), figsize=(6 * len(cases), 4.2), squeeze=False)
    for ax, case in zip(axes[0], cases):
        rows = [r for r in records if r.case == case]
        for family in sorted({r.label for r in rows}):
            fr = sorted((r for r in rows if r.label == family), key=lambda r: r.p)
            ax.plot([r.p for r in fr], [r.speedup for r in fr], marker="o", label=f"ARD {family}")
        first = sorted({r.p: r for r in rows}.values(), key=lambda r: r.p)
        ax.plot([r.p for r in first], [r.ideal for r in first], "k--", label="ideal (FLOP ratio, row)")
        ax.plot([r.p for r in first], [r.limit for r in first], "k:", label="compact-model limit")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(f"{case}\n{rows[0].device}", fontsize=9)
        ax.set_xlabel("dropout rate p")
        ax.set_ylabel("training-step speedup vs nn.Dropout")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``ard-bench``)."""
    parser = argparse.ArgumentParser(prog="ard-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="row family at p=0.3/0.5/0.7, few repeats (< 2 min)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--families", default=None, help=f"comma-separated subset of {','.join(FAMILIES)}")
    parser.add_argument("--rates", default=None, help="comma-separated rates (default 0.3..0.7)")
    parser.add_argument("--cases", default=None, help="comma-separated prefixes of case names (mlp, lstm, transformer)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per variant")
    parser.add_argument("--json", type=Path, default=None, help="write the records here")
    parser.add_argument("--png", type=Path, default=None, help="write the plot here (default: next to --json)")
    parser.add_argument("--md", type=Path, default=None, help="write the Markdown table here")
    parser.add_argument("--no-png", action="store_true", help="write no plot (not even next to --json)")
    parser.add_argument("--groups", default="1", help="comma-separated pattern groups per step, integers or auto")
    parser.add_argument("--pool", type=int, default=None, help="distinct patterns per step when groups > 1")
    parser.add_argument("--lstm-groups", type=int, default=None, help="time chunks for LSTM sites (default: groups)")
    parser.add_argument(
        "--lstm-settings",
        action="store_true",
        help="LSTM case: time nn.Dropout and every LSTM setting (one pattern per step, time chunks, sequence groups, "
        "structured) in one interleaved run, instead of --groups",
    )
    parser.add_argument(
        "--never-slower",
        action="store_true",
        help="apply the callback's never-slower rule after the warm-up (sites not faster go back to nn.Dropout; "
        "a step window not faster gives the plain model back): time what a fit with these settings runs",
    )
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is present; use --device cpu", file=sys.stderr)
        return 2
    families = args.families.split(",") if args.families else (["row"] if args.quick else list(FAMILIES))
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        print(f"error: unknown families {bad}; choose from {list(FAMILIES)}", file=sys.stderr)
        return 2
    rates = parse_rates(parser, args.rates) if args.rates else ([0.3, 0.5, 0.7] if args.quick else RATES)
    all_cases = paper_cases()
    chosen = select_cases(parser, [c.name for c in all_cases], args.cases)
    cases = [c for c in all_cases if c.name in chosen]
    check_outputs(parser, [args.json, args.png, args.md])
    rounds = args.rounds or (2 if args.quick else 4)
    warmup, steps = (1, 2) if args.quick else (3, 5)

    try:
        group_counts: list[int | str] = [g if g == "auto" else int(g) for g in args.groups.split(",")]
        if any(g != "auto" and int(g) < 1 for g in group_counts):
            raise ValueError
        if any(v is not None and v < 1 for v in (args.pool, args.lstm_groups)):
            raise ValueError
    except ValueError:
        print(
            "error: --groups must be comma-separated integers >= 1 or auto, --pool and --lstm-groups integers >= 1, "
            f"got {args.groups!r}, {args.pool!r}, {args.lstm_groups!r}",
            file=sys.stderr,
        )
        return 2

    records: list[Record] = []
    for case in cases:
        if args.lstm_settings and case.name.startswith("lstm"):
            for family in families:
                for p in rates:
                    for rec in bench_lstm_settings(case, family, p, device, warmup, rounds, steps):
                        records.append(rec)
                        print(
                            f"{rec.case} {rec.label} p={rec.p}: speedup {rec.speedup:.2f}x (ideal {rec.ideal:.2f}x), "
                            f"peak {rec.dense_peak_mib:.1f} MiB dense, {rec.ard_peak_mib:.1f} MiB ARD"
                        )
            continue
        for family in families:
            for groups in group_counts:
                for p in rates:
                    rec = bench_case(
                        case, family, p, device, warmup, rounds, steps, groups, args.pool, args.lstm_groups,
                        args.never_slower,
                    )  # fmt: skip
                    records.append(rec)
                    print(
                        f"{rec.case} {rec.label} p={rec.p}: dense {rec.dense_ms:.1f} ms, ARD {rec.ard_ms:.1f} ms, "
                        f"speedup {rec.speedup:.2f}x (ideal {rec.ideal:.2f}x, limit {rec.limit:.2f}x), "
                        f"peak {rec.dense_peak_mib:.1f} MiB dense, {rec.ard_peak_mib:.1f} MiB ARD",
                        flush=True,
                    )
    table = format_table(records)
    print(f"\ndevice: {records[0].device if records else device}\n{table}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in records], indent=1))
    if args.md:
        args.md.write_text(table + "\n")
    png = args.png or (args.json.with_suffix(".png") if args.json else None)
    if png and records and not args.no_png:
        plot(records, png)
        print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
