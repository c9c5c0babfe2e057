"""Stored accuracy sweeps as tables: read the CSV that ``ard-report`` wrote and render it for the results page.

Two CSV layouts are read, told apart by their header:

* a per-run report (``<name>.csv``: one row per run, the columns of :data:`lightning_ard.app.report.COLUMNS`),
  folded over seeds here by the report's own :func:`~lightning_ard.app.report.summarize`;
* a summary (``<name>_summary.csv``: one row per model, family and rate, the fields of
  :class:`~lightning_ard.app.report.SummaryRow`), read as it is.

Either way the page shows what the report computed (mean and spread over seeds, change against nn.Dropout at the
same rate), so a table on the page and the sweep's own report cannot disagree.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from lightning_ard.app.regularization import NO_DROPOUT
from lightning_ard.app.report import BASELINE, COLUMNS, RunResult, SummaryRow, summarize

NOT_MEASURED = "*Not measured yet.*"


def _number(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


def _summary_row(record: dict[str, str]) -> SummaryRow:
    names = {f.name for f in fields(SummaryRow)}
    values = {k: record.get(k) for k in names}
    return SummaryRow(
        model=values["model"] or "",
        family=values["family"] or "",
        p=_number(values["p"]),
        metric=values["metric"] or "",
        runs=int(float(values["runs"] or 0)),
        mean=_number(values["mean"]),
        std=_number(values["std"]),
        delta=_number(values["delta"]),
        step_ms=_number(values["step_ms"]),
        speedup=_number(values["speedup"]),
        flops_saved=_number(values["flops_saved"]),
        val_best=_number(values.get("val_best")),
        val_last=_number(values.get("val_last")),
        kept=_number(values.get("kept")),
    )


def _run_row(record: dict[str, str]) -> RunResult:
    return RunResult(
        run=record["run"], status=record["status"], model=record["model"], family=record["family"],
        p=_number(record["p"]), metric=record["metric"], value=_number(record["value"]),
        step_ms=_number(record["step_ms"]), speedup=_number(record["speedup"]),
        flops_saved=_number(record["flops_saved"]),
    )  # fmt: skip


def read_summary(path: Path) -> list[SummaryRow]:
    """The summary rows of a per-run report CSV or a summary CSV written by ``ard-report``.

    Raises:
        ValueError: the header is neither layout (names the file and both expected headers).
    """
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = set(reader.fieldnames or ())
        records = list(reader)
    if set(COLUMNS) <= header:
        return summarize([_run_row(r) for r in records])
    summary_fields = {"model", "family", "p", "metric", "runs", "mean", "std", "delta"}
    if summary_fields <= header:
        return [_summary_row(r) for r in records]
    raise ValueError(
        f"{path}: header {sorted(header)} is neither an ard-report run table ({list(COLUMNS)}) nor its summary "
        f"(at least {sorted(summary_fields)}); write it with `ard-report <sweep dir> --out {path.parent}`"
    )


def _scale(metric: str) -> float:
    return 100.0 if metric == "test/acc" else 1.0


def format_mean(row: SummaryRow) -> str:
    """``86.58 ± 0.45`` (accuracy in percent, perplexity as it is; no spread for one run)."""
    if row.mean is None:
        return ""
    scale = _scale(row.metric)
    return f"{row.mean * scale:.2f}" + ("" if row.std is None else f" ± {row.std * scale:.2f}")


def format_delta(row: SummaryRow) -> str:
    """The change against nn.Dropout at the same rate: points of accuracy, percent of perplexity."""
    if row.delta is None:
        return ""
    return f"{row.delta:+.2f} pt" if row.metric == "test/acc" else f"{row.delta:+.1f} %"


def arm(family: str, p: float | None) -> str:
    """A readable arm name: nn.Dropout (no dropout at p = 0), or the family with its groups."""
    if family == NO_DROPOUT or (family == BASELINE and p == 0):
        return "no dropout"
    return "nn.Dropout" if family == BASELINE else family


def summary_table(rows: Sequence[SummaryRow], setting: str | None = None) -> str:
    """Markdown rows of folded runs: (setting,) model, p, arm, seeds, test metric, change against nn.Dropout."""
    head = ["setting"] if setting is not None else []
    head += ["model", "p", "arm", "seeds", "test metric (mean ± std)", "Δ vs nn.Dropout"]
    study = any(r.kept is not None or r.val_best is not None for r in rows)
    head += ["best / last validation", "dropout's gain kept"] * study
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += table_rows(rows, setting, study)
    return "\n".join(lines)


def table_rows(rows: Sequence[SummaryRow], setting: str | None = None, study: bool = False) -> list[str]:
    """The body rows of :func:`summary_table` (to join the rows of several sweeps into one table); ``study``: with
    the best and last validation value and the share of dropout's gain over no dropout each arm keeps."""
    out = []
    for r in rows:
        metric = "accuracy %" if r.metric == "test/acc" else "perplexity" if r.metric == "test/ppl" else r.metric
        cells = [] if setting is None else [setting]
        p = "" if r.p is None else f"{r.p:g}"
        cells += [r.model, p, arm(r.family, r.p), str(r.runs), f"{format_mean(r)} ({metric})", format_delta(r)]
        if study:
            val = "" if r.val_best is None or r.val_last is None else f"{r.val_best:.1f} / {r.val_last:.1f}"
            cells += [val, "" if r.kept is None else f"{r.kept:.0%}"]
        out.append("| " + " | ".join(cells) + " |")
    return out


def render_sweeps(sources: Sequence[tuple[str, Path]]) -> str:
    """One table over several stored sweeps (``(setting, csv path)``); a sweep whose CSV is absent shows as a row
    saying it is not measured yet, so the table says what is missing instead of hiding it."""
    head = ["setting", "model", "p", "arm", "seeds", "test metric (mean ± std)", "Δ vs nn.Dropout"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for setting, path in sources:
        if path.is_file():
            lines += table_rows(read_summary(path), setting)
        else:
            lines.append(f"| {setting} | | | | | not measured yet | |")
    return "\n".join(lines)


def render_folder(folder: Path, pattern: str = "*summary.csv", display: Path | None = None) -> str:
    """Every summary CSV in ``folder`` as one table (sorted by file name), or a line saying none is there yet
    (naming ``display``, the folder as the reader should see it, default ``folder``)."""
    paths = sorted(folder.glob(pattern)) if folder.is_dir() else []
    if not paths:
        return f"{NOT_MEASURED} (no `{pattern}` in `{(display or folder).as_posix()}/`)"
    rows = [row for path in paths for row in read_summary(path)]
    return summary_table(rows)
