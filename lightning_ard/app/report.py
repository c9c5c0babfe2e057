"""Sweep report: ``python -m lightning_ard.app.report <multirun dir>`` (console script ``ard-report``).

Reads every run below the folder (a run is a folder with ``.hydra/config.yaml``, as Hydra writes for each job of
``-m``), its TensorBoard scalars (``time/step_ms*``, ``ard/flops_saved``, ``test/acc`` or ``test/ppl``) and, for what
the event files lack (``trainer.fast_dev_run`` disables loggers), the ``metrics.json`` the app writes. It writes
``report.md`` (Markdown table; runs without ``metrics.json``, i.e. failed or unfinished, are marked
``incomplete``), ``report_summary.md`` (runs folded over seeds: mean ± std of the test metric and its change
against nn.Dropout at the same p), ``report.csv`` and ``report.png`` (speedup and test metric against p, one line per
pattern family) into the folder, or ``--out``, and prints the table.

Speedup is the median step time of the ``nn.Dropout`` baseline run (``ard.enabled=false``) of the same model and
rate divided by the run's median step time; without a baseline at that rate, the baselines of the same model at any
rate are used (nn.Dropout's cost does not depend on p); without a baseline the column is empty.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lightning_ard.app.regularization import NO_DROPOUT, gain_kept, lower_is_better, mean_curve, plot_curves, val_tag
from lightning_ard.patterns.groups import describe, resolve_groups

TRAINING_SETTINGS = (("batch", "data.batch_size"), ("lr", "model.lr"))
"""Settings a sweep may vary besides ARD's: runs of one model that differ in them get them in their model label,
so that a sweep over batch sizes is never folded as if its runs were seeds of one setting."""

BASELINE = "dropout"
"""Family name of runs without the ARD callback."""

COLUMNS = ("run", "status", "model", "family", "p", "metric", "value", "step_ms", "speedup", "flops_saved")
METRIC_NAMES = {"test/acc": "test accuracy", "test/ppl": "test perplexity"}


@dataclass
class RunResult:
    """One row of the report."""

    run: str
    status: str
    model: str
    family: str
    p: float | None
    metric: str
    value: float | None
    step_ms: float | None
    speedup: float | None = None
    flops_saved: float | None = None
    scalars: dict[str, list[float]] = field(default_factory=dict, repr=False)
    training: dict[str, float | None] = field(default_factory=dict, repr=False)  # see TRAINING_SETTINGS


def find_runs(root: Path) -> list[Path]:
    """Run folders (holding ``.hydra/config.yaml``) at or below ``root``, in natural order (job 2 before job 10)."""
    runs = {p.parent.parent for p in root.rglob(".hydra/config.yaml")}

    def natural(path: Path) -> list[object]:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path.relative_to(root)))]

    return sorted(runs, key=natural)


def read_scalars(run_dir: Path) -> dict[str, list[float]]:
    """All TensorBoard scalar series of a run (every event file below it), tag -> values in step order."""
    files = sorted(run_dir.rglob("events.out.tfevents.*"))
    if not files:
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, list[tuple[int, float]]] = {}
    for path in files:
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            series.setdefault(tag, []).extend((e.step, float(e.value)) for e in acc.Scalars(tag))
    return {tag: [v for _, v in sorted(points, key=lambda sv: sv[0])] for tag, points in series.items()}


def read_metrics_json(run_dir: Path) -> dict[str, float]:
    """The final metrics the app wrote (empty when the run did not finish)."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return {}
    try:
        return {k: float(v) for k, v in json.loads(path.read_text()).items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def describe_model(cfg: DictConfig) -> str:
    """Short model label: MLP layer widths or LSTM layers x units."""
    model = cfg.get("model") or {}
    target = str(model.get("_target_", "?")).rsplit(".", 1)[-1]
    if "widths" in model:
        widths = [model.get("input_dim", "?"), *model.widths, model.get("num_classes", "?")]
        return "mlp " + "-".join(str(w) for w in widths)
    if "hidden_size" in model:
        return f"lstm {model.get('num_layers', '?')}x{model.hidden_size}"
    return target


def _last(values: Sequence[float] | None) -> float | None:
    return float(values[-1]) if values else None


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class SkippedRun(Exception):
    """A run folder the report leaves out (unreadable config, or not a run of this app), with the reason."""


APP_TARGET_PREFIX = "lightning_ard."
"""``model._target_`` of every run of this app starts with this; other Hydra apps' runs are not counted."""


def read_config(run_dir: Path) -> DictConfig:
    """A run's ``.hydra/config.yaml``, interpolations resolved; :class:`SkippedRun` when it cannot be read or is not
    a run of this app (so a half-written or foreign run never becomes a row, let alone the speedup baseline)."""
    path = run_dir / ".hydra" / "config.yaml"
    try:
        loaded = OmegaConf.load(path)
        if not isinstance(loaded, DictConfig):
            raise SkippedRun(f"{path} holds a {type(loaded).__name__}, not a mapping of settings")
        # resolve what the report reads (ard, model); the rest may hold ${hydra:...}, unset outside a Hydra job
        parts = {key: loaded.get(key) for key in ("ard", "model")}
        cfg = OmegaConf.create(
            {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v for k, v in parts.items()}
        )
        # what groups="auto" follows; None when missing or not resolvable outside a Hydra job
        cfg.data = {"batch_size": OmegaConf.select(loaded, "data.batch_size", throw_on_resolution_failure=False)}
    except SkippedRun:
        raise
    except Exception as err:  # YAML syntax, missing interpolation keys, bad values: all make the run unreadable
        raise SkippedRun(f"{path} cannot be read ({type(err).__name__}: {str(err).splitlines()[0]})") from err
    model = cfg.get("model")
    target = model.get("_target_") if isinstance(model, DictConfig) else None
    if (
        not isinstance(target, str)
        or not target.startswith(APP_TARGET_PREFIX)
        or not isinstance(cfg.get("ard"), DictConfig)
    ):
        raise SkippedRun(
            f"not a run of lightning_ard's app (no lightning_ard model._target_ and ard settings in {path})"
        )
    return cfg


def _batch_size(cfg: DictConfig) -> int | None:
    """The run's ``data.batch_size`` (what ``groups="auto"`` follows in the app's models), if it has one."""
    size = (cfg.get("data") or {}).get("batch_size")
    return int(size) if isinstance(size, int) else None


def load_run(run_dir: Path, root: Path) -> RunResult:
    """Config, scalars and final metrics of one run, reduced to a report row (speedup filled in later)."""
    cfg = read_config(run_dir)
    ard = cfg.get("ard") or {}
    enabled = bool(ard.get("enabled", True)) and bool(ard)
    family = str(ard.get("pattern", "?")) if enabled else BASELINE
    if enabled:  # several patterns per step: its own line in the report
        pool, lstm_groups = ard.get("pool"), ard.get("lstm_groups")
        family = describe(
            family,
            resolve_groups(ard.get("groups", 1) or 1, float(ard.get("p") or 0.5), _batch_size(cfg)),
            None if pool is None else int(pool),
            None if lstm_groups is None else int(lstm_groups),
        )
        family += site_label(ard)
    p_value = ard.get("p", None)
    if p_value is None:
        p_value = (cfg.get("model") or {}).get("dropout", None)
    p = float(p_value) if isinstance(p_value, (int, float)) else None
    if family == BASELINE and p == 0.0:
        family = NO_DROPOUT

    scalars = read_scalars(run_dir)
    final = read_metrics_json(run_dir)

    def value_of(tag: str) -> float | None:
        return _finite(_last(scalars.get(tag)) if tag in scalars else final.get(tag))

    metric, value = "", None
    for tag in ("test/acc", "test/ppl"):
        if value_of(tag) is not None:
            metric, value = tag, value_of(tag)
            break

    if scalars.get("time/step_ms_median"):
        step_ms = statistics.median(scalars["time/step_ms_median"])
    elif scalars.get("time/step_ms"):
        step_ms = statistics.median(scalars["time/step_ms"])
    else:
        step_ms = final.get("time/step_ms_median", final.get("time/step_ms"))

    if scalars.get("ard/flops_saved"):
        flops_saved = statistics.fmean(scalars["ard/flops_saved"])
    else:
        flops_saved = final.get("ard/flops_saved", 0.0 if family == BASELINE else None)

    return RunResult(
        run=str(run_dir.relative_to(root)) or ".",
        status="ok" if final else "incomplete",
        model=describe_model(cfg),
        family=family,
        p=p,
        metric=metric,
        value=value,
        step_ms=_finite(step_ms),
        flops_saved=_finite(flops_saved),
        scalars=scalars,
        training={name: _number(OmegaConf.select(cfg, key, default=None)) for name, key in TRAINING_SETTINGS},
    )


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def label_training_settings(rows: Sequence[RunResult]) -> None:
    """Append to each run's model label the training settings (:data:`TRAINING_SETTINGS`) that differ among the
    runs of that model, e.g. ``lstm 2x256 batch 64 lr 2``; a setting all of its runs share stays out."""
    by_model: dict[str, list[RunResult]] = {}
    for row in rows:
        by_model.setdefault(row.model, []).append(row)
    for runs in by_model.values():
        varied = [name for name, _ in TRAINING_SETTINGS if len({r.training.get(name) for r in runs}) > 1]
        for row in runs:
            row.model += "".join(f" {name} {_fmt(row.training.get(name)) or '?'}" for name in varied)


def site_label(ard: DictConfig | dict) -> str:
    """What the family label leaves out: sequence groups at LSTM sites, the LSTM family and pattern share, the sites
    included or excluded."""
    label = " seq" if ard.get("lstm_mode") == "sequence" and ard.get("lstm_groups") is not None else ""
    if ard.get("lstm_pattern"):
        label += f" lstm-pattern {ard['lstm_pattern']}"
    if ard.get("lstm_pattern_share") is not None:
        label += f" lstm-share {float(ard['lstm_pattern_share']):g}"
    for key in ("include", "exclude"):
        if ard.get(key):
            label += f" {key} " + ",".join(str(n) for n in ard[key])
    return label


def fill_speedups(rows: list[RunResult]) -> None:
    """Speedup of every run over the baseline of the same model (same p preferred), in place."""
    for row in rows:
        if row.step_ms is None or row.step_ms <= 0:
            continue
        same_model = [b for b in rows if b.family == BASELINE and b.model == row.model and b.step_ms]
        same_p = [b for b in same_model if b.p == row.p]
        baselines = same_p or same_model
        if baselines:
            row.speedup = statistics.median(b.step_ms for b in baselines) / row.step_ms  # type: ignore[misc]


def collect(root: Path) -> list[RunResult]:
    """Report rows of every run below ``root``, baseline first, then by family and p; a run that cannot be read is
    left out with one line on stderr naming its folder and the reason."""
    rows = []
    for run in find_runs(root):
        try:
            rows.append(load_run(run, root))
        except SkippedRun as err:
            print(f"ard-report: skipped {run}: {err}", file=sys.stderr)
        except (ValueError, TypeError, KeyError, OSError) as err:  # a bad value in a readable config or event file
            print(f"ard-report: skipped {run}: {type(err).__name__}: {str(err).splitlines()[0]}", file=sys.stderr)
    label_training_settings(rows)
    fill_speedups(rows)
    rows.sort(key=lambda r: (r.model, r.family != BASELINE, r.family, r.p if r.p is not None else -1.0, r.run))
    return rows


@dataclass
class SummaryRow:
    """Runs of one (model, family, p) folded over seeds: mean and spread of the test metric, and costs."""

    model: str
    family: str
    p: float | None
    metric: str
    runs: int
    mean: float | None
    std: float | None
    delta: float | None  # accuracy: points over the nn.Dropout mean; perplexity: percent over it
    step_ms: float | None
    speedup: float | None
    flops_saved: float | None
    val_best: float | None = None  # mean over seeds of the best validation value of the fit
    val_last: float | None = None  # ... and of the last one (worse than the best: the arm overfits)
    kept: float | None = None  # share of nn.Dropout's gain over no dropout (same model) this arm keeps


def _val_points(runs: Sequence[RunResult], metric: str) -> tuple[float | None, float | None]:
    """Mean best and mean last validation value of ``runs``."""
    curves = [r.scalars.get(val_tag(metric)) for r in runs]
    curves = [c for c in curves if c]
    if not curves:
        return None, None
    best = min if lower_is_better(metric) else max
    return statistics.fmean(best(c) for c in curves), statistics.fmean(c[-1] for c in curves)


def _fill_kept(out: Sequence[SummaryRow]) -> None:
    """Gain kept of every row of a model that has a no-dropout arm (nn.Dropout at the row's p: 100 %)."""
    for row in out:
        none = next((n for n in out if n.family == NO_DROPOUT and n.model == row.model), None)
        base = next((b for b in out if b.family == BASELINE and b.model == row.model and b.p == row.p), None)
        if none is None or base is None or row.family == NO_DROPOUT or None in (none.mean, base.mean, row.mean):
            continue
        row.kept = gain_kept(none.mean, base.mean, row.mean, lower_is_better(row.metric))  # type: ignore[arg-type]


def summarize(rows: Sequence[RunResult]) -> list[SummaryRow]:
    """Fold the runs over seeds: one row per (model, family, p), with the change against nn.Dropout at that p."""
    groups: dict[tuple[str, str, float | None], list[RunResult]] = {}
    for r in rows:
        if r.status == "ok":
            groups.setdefault((r.model, r.family, r.p), []).append(r)
    out: list[SummaryRow] = []
    for (model, family, p), runs in groups.items():
        values = [r.value for r in runs if r.value is not None]
        steps = [r.step_ms for r in runs if r.step_ms is not None]
        flops = [r.flops_saved for r in runs if r.flops_saved is not None]
        speeds = [r.speedup for r in runs if r.speedup is not None]
        out.append(SummaryRow(
            model, family, p, runs[0].metric, len(runs),
            statistics.fmean(values) if values else None,
            statistics.stdev(values) if len(values) > 1 else None,
            None,
            statistics.median(steps) if steps else None,
            statistics.median(speeds) if speeds else None,
            statistics.fmean(flops) if flops else None,
            *_val_points(runs, runs[0].metric),
        ))  # fmt: skip
    for row in out:
        base = next((b for b in out if b.family == BASELINE and b.model == row.model and b.p == row.p), None)
        if base is not None and base.mean and row.mean is not None and row.family != BASELINE:
            if row.metric == "test/ppl":
                row.delta = (row.mean / base.mean - 1.0) * 100.0
            else:
                row.delta = (row.mean - base.mean) * 100.0
    _fill_kept(out)
    out.sort(key=lambda r: (r.model, r.p if r.p is not None else -1.0, r.family != BASELINE, r.family))
    return out


def summary_markdown(summary: Sequence[SummaryRow]) -> str:
    """The folded table in Markdown: mean ± std over seeds and the change against nn.Dropout."""
    header = ["model", "p", "family", "runs", "test metric (mean ± std)", "Δ vs nn.Dropout", "median step (ms)",
              "speedup", "FLOPs saved"]  # fmt: skip
    curves = any(r.val_best is not None for r in summary)
    kept = any(r.kept is not None for r in summary)
    header += ["best / last val"] * curves + ["dropout's gain kept"] * kept
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in summary:
        name = METRIC_NAMES.get(r.metric, r.metric)
        scale = 100.0 if r.metric == "test/acc" else 1.0
        mean = "" if r.mean is None else f"{r.mean * scale:.2f}" + ("" if r.std is None else f" ± {r.std * scale:.2f}")
        unit = " pt" if r.metric == "test/acc" else " %"
        delta = "" if r.delta is None else f"{r.delta:+.2f}{unit}"
        cells = [r.model, _fmt(r.p, 3), r.family, str(r.runs), f"{mean} ({name})" if mean else "", delta,
                 _fmt(r.step_ms, 4), _fmt(r.speedup, 3), _fmt(r.flops_saved, 3)]  # fmt: skip
        if curves:
            cells.append("" if r.val_best is None else f"{r.val_best * scale:.2f} / {r.val_last * scale:.2f}")
        if kept:
            cells.append("" if r.kept is None else f"{r.kept:.0%}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary_csv(summary: Sequence[SummaryRow], path: Path) -> None:
    """The folded table as CSV (one row per model, family and p; empty cells for missing values)."""
    names = list(SummaryRow.__dataclass_fields__)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        for r in summary:
            writer.writerow({k: "" if v is None else v for k, v in asdict(r).items()})


def validation_curves(rows: Sequence[RunResult]) -> dict[str, list[float]]:
    """Mean validation curve over seeds per (model, family, p) label, for the runs that logged one."""
    groups: dict[str, list[list[float]]] = {}
    models = {r.model for r in rows}
    for r in rows:
        curve = r.scalars.get(val_tag(r.metric)) if r.metric else None
        if r.status == "ok" and curve:
            label = f"{r.family} p={_fmt(r.p, 3)}" + (f" ({r.model})" if len(models) > 1 else "")
            groups.setdefault(label, []).append(curve)
    return {label: mean_curve(curves) for label, curves in sorted(groups.items())}


def _fmt(value: object, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def to_markdown(rows: Sequence[RunResult]) -> str:
    """The table in Markdown (GitHub flavour)."""
    header = ["run", "status", "model", "family", "p", "metric", "value", "median step (ms)", "speedup", "FLOPs saved"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        cells = [r.run, r.status, r.model, r.family, _fmt(r.p, 3), r.metric, _fmt(r.value), _fmt(r.step_ms, 4),
                 _fmt(r.speedup, 3), _fmt(r.flops_saved, 3)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[RunResult], path: Path) -> None:
    """The table as CSV (empty cells for missing values)."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            record = {k: v for k, v in asdict(r).items() if k in COLUMNS}
            writer.writerow({k: "" if v is None else v for k, v in record.items()})


def plot(summary: Sequence[SummaryRow], path: Path) -> None:
    """Two panels against p: speedup over the baseline, and the test metric (mean, ± std over seeds as error bars);
    one line per (model,) family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r.model for r in summary})
    fig, (ax_speed, ax_metric) = plt.subplots(1, 2, figsize=(11, 4.2))
    for model in models:
        for family in sorted({r.family for r in summary if r.model == model}, key=lambda f: (f != BASELINE, f)):
            points = sorted((r for r in summary if r.model == model and r.family == family and r.p is not None),
                            key=lambda r: r.p)  # fmt: skip
            label = family if len(models) == 1 else f"{family} ({model})"
            style = {"linestyle": "--", "color": "black"} if family == BASELINE else {}
            speed = [(r.p, r.speedup) for r in points if r.speedup is not None]
            if speed:
                ax_speed.plot(*zip(*speed, strict=True), marker="o", label=label, **style)
            metric = [r for r in points if r.mean is not None]
            if metric:
                ax_metric.errorbar([r.p for r in metric], [r.mean for r in metric],
                                   yerr=[r.std or 0.0 for r in metric], marker="o", capsize=3, label=label,
                                   **style)  # fmt: skip
    metric_names = sorted({METRIC_NAMES.get(r.metric, r.metric) for r in summary if r.metric})
    ax_speed.set(xlabel="dropout rate p", ylabel="speedup over nn.Dropout (step time)", title="Training step speedup")
    ax_metric.set(xlabel="dropout rate p", ylabel=" / ".join(metric_names), title="Test metric (mean ± std)")
    for ax in (ax_speed, ax_metric):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(root: Path, out: Path | None = None, name: str = "report") -> tuple[list[RunResult], dict[str, Path]]:
    """Collect the runs below ``root`` and write ``<name>.md``, ``.csv`` and ``.png`` into ``out`` (default ``root``).

    Raises:
        FileNotFoundError: ``root`` is not a folder, or holds no run.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; pass a Hydra multirun folder such as multirun/<date>/<time>")
    rows = collect(root)
    if not rows:
        raise FileNotFoundError(
            f"no runs found in {root}: a run is a folder holding .hydra/config.yaml, as written by "
            f"`python -m lightning_ard.app.train -m ...`; pass a folder such as multirun/<date>/<time>"
        )
    out = out or root
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "md": out / f"{name}.md",
        "summary": out / f"{name}_summary.md",
        "csv": out / f"{name}.csv",
        "png": out / f"{name}.png",
        "summary_csv": out / f"{name}_summary.csv",
    }
    summary = summarize(rows)
    paths["md"].write_text(to_markdown(rows))
    paths["summary"].write_text(summary_markdown(summary))
    write_csv(rows, paths["csv"])
    write_summary_csv(summary, paths["summary_csv"])
    plot(summary, paths["png"])
    curves = validation_curves(rows)
    if curves:
        paths["curves"] = out / f"{name}_curves.png"
        plot_curves(curves, next(r.metric for r in rows if r.metric), paths["curves"])
    return rows, paths


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry; returns the exit status (0: report written, 1: no runs, 2: bad arguments)."""
    parser = argparse.ArgumentParser(prog="ard-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="Hydra multirun folder (or a single run folder)")
    parser.add_argument("--out", type=Path, default=None, help="folder for report.{md,csv,png} (default: sweep_dir)")
    parser.add_argument("--name", default="report", help="base name of the output files (default: report)")
    args = parser.parse_args(argv)
    try:
        rows, paths = write_report(args.sweep_dir, args.out, args.name)
    except FileNotFoundError as err:
        print(f"ard-report: {err}", file=sys.stderr)
        return 1
    print(to_markdown(rows))
    print(summary_markdown(summarize(rows)))
    print("Wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
