"""The results page's benchmark tables: ``ard-bench`` and ``ard-models-bench`` records rendered for a reader.

``ard-bench`` writes one record per case, family, group setting and rate (:class:`lightning_ard.bench.step.Record`);
the page needs them regrouped by the question asked: how much faster are the defaults than nn.Dropout beside one
pattern per step and the yardsticks (:func:`speed_table`), how much memory a step holds (:func:`memory_table`),
and what each group count costs (:func:`groups_table`, :func:`groups_plot`). A record with ``groups > 1`` is the
defaults' (``--groups auto``); one with ``groups == 1`` is one pattern per step.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lightning_ard.app.report import SummaryRow

Record = dict[str, Any]


def load(path: Path) -> list[Record]:
    """The records of a benchmark's ``--json`` file.

    Raises:
        FileNotFoundError: the file is missing (names the command's job to run).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run `ard-results` (or its job that writes it) first")
    return json.loads(path.read_text())


def _by_case(records: Sequence[Record]) -> dict[str, dict[str, Record]]:
    """Case -> {"defaults": record, "one": record}, in the records' case order."""
    out: dict[str, dict[str, Record]] = {}
    for r in records:
        out.setdefault(r["case"], {})["defaults" if r["groups"] > 1 else "one"] = r
    return out


def _model_and_batch(case: str) -> tuple[str, str]:
    name, _, batch = case.rpartition("_b")
    return name.replace("_", " "), batch


def _served(r: Record) -> str:
    if r.get("step_check") is not None:
        return f", plain model (step {r['step_check']:.2f}×)"
    served = r.get("served")
    if served and served.split("/")[0] != served.split("/")[1]:
        return f", {served} sites"
    return ""


def _case_table(
    records: Sequence[Record], header: Sequence[str], cells: Callable[[Record | None, Record | None, Record], list[str]]
) -> str:
    """A table with one row per case: ``cells(defaults, one pattern, base)`` after the model and batch, where base is
    the defaults' record or else one pattern's; a case whose ``cells`` is empty is left out."""
    lines = ["| " + " | ".join(["model", "batch", *header]) + " |", "|" + "---|" * (len(header) + 2)]
    for case, pair in _by_case(records).items():
        d, one = pair.get("defaults"), pair.get("one")
        base = d or one
        row = cells(d, one, base) if base is not None else []
        if row:
            lines.append("| " + " | ".join([*_model_and_batch(case), *row]) + " |")
    return "\n".join(lines)


def speed_table(records: Sequence[Record]) -> str:
    """One row per case: nn.Dropout's step, the defaults' and one pattern's speedups, the FLOP ratio and both
    compact limits (of the defaults' group count)."""

    def cells(d: Record | None, one: Record | None, base: Record) -> list[str]:
        grouped = base.get("grouped_limit") or base["limit"]
        ideal = max(r["ideal"] for r in (d, one) if r is not None)  # groups keep the FLOPs; a fallen-back step: 1.00
        return [
            f"{base['dense_ms']:.1f}",
            "" if d is None else f"**{d['speedup']:.2f}×** (G = {d['groups']}{_served(d)})",
            "" if one is None else f"{one['speedup']:.2f}×{_served(one)}",
            f"{ideal:.2f}×", f"{base['limit']:.2f}×", f"{grouped:.2f}×",
        ]  # fmt: skip

    header = ["nn.Dropout step (ms)", "defaults", "one pattern per step", "FLOP ratio", "compact limit",
              "grouped compact limit"]  # fmt: skip
    return _case_table(records, header, cells)


def _mib(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def memory_table(records: Sequence[Record]) -> str:
    """One row per case: the peak MiB a training step holds above its start, per variant, and the defaults' saving."""

    def cells(d: Record | None, one: Record | None, base: Record) -> list[str]:
        dense = base.get("dense_peak_mib")
        if dense is None:
            return []
        saving = "" if d is None or not dense else f"{d['ard_peak_mib'] / dense - 1:+.0%}"
        return [_mib(dense), _mib(d and d["ard_peak_mib"]), _mib(one and one["ard_peak_mib"]),
                _mib(base.get("limit_peak_mib")), saving]  # fmt: skip

    header = ["nn.Dropout (MiB)", "defaults (MiB)", "one pattern per step (MiB)", "compact limit (MiB)",
              "defaults vs nn.Dropout"]  # fmt: skip
    return _case_table(records, header, cells)


def _accuracy_by_groups(rows: Sequence[SummaryRow]) -> dict[int, SummaryRow]:
    """Group count -> summary row, from family labels such as ``block``, ``block x4 groups``; nn.Dropout is 0."""
    out = {}
    for r in rows:
        if r.family == "dropout":
            out[0] = r
        else:
            words = r.family.split()
            out[int(words[1].lstrip("x")) if len(words) > 1 else 1] = r
    return out


def groups_table(records: Sequence[Record], accuracy: Sequence[SummaryRow]) -> str:
    """One row per group count G: the step's speedup and its grouped compact limit beside the test accuracy."""
    acc = _accuracy_by_groups(accuracy)
    base = acc.get(0)
    lines = [
        "| patterns per step (G) | speedup | grouped compact limit | test accuracy (%) | Δ vs nn.Dropout |",
        "|---|---|---|---|---|",
    ]
    if base is not None and base.mean is not None:
        lines.append(f"| nn.Dropout | 1.00× | | {base.mean * 100:.2f} ± {(base.std or 0) * 100:.2f} | |")
    for r in sorted(records, key=lambda r: r["groups"]):
        a = acc.get(r["groups"])
        mean = "" if a is None or a.mean is None else f"{a.mean * 100:.2f} ± {(a.std or 0) * 100:.2f}"
        delta = "" if a is None or a.delta is None else f"{a.delta:+.2f} pt"
        grouped = r.get("grouped_limit") or r["limit"]
        lines.append(f"| {r['groups']} | {r['speedup']:.2f}× | {grouped:.2f}× | {mean} | {delta} |")
    return "\n".join(lines)


def groups_plot(records: Sequence[Record], accuracy: Sequence[SummaryRow], path: Path) -> None:
    """Two panels over the group count: the step's speedup with its grouped compact limit, and test accuracy
    against nn.Dropout's mean and spread (a run below the axis, as a diverged one, is marked at the bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = _accuracy_by_groups(accuracy)
    recs = sorted(records, key=lambda r: r["groups"])
    gs = [r["groups"] for r in recs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(gs, [r["speedup"] for r in recs], "o-", label="ARD step")
    left.plot(gs, [r.get("grouped_limit") or r["limit"] for r in recs], "k:", label="grouped compact limit")
    left.axhline(1.0, color="grey", lw=0.8)
    left.set(xlabel="patterns per step G", ylabel="speedup vs nn.Dropout", xscale="log", xticks=gs, xticklabels=gs)
    left.legend(fontsize=8)
    base = acc.get(0)
    floor = (base.mean - 0.03) * 100 if base and base.mean else 80.0
    if base and base.mean is not None:
        sd = (base.std or 0) * 100
        right.axhspan(base.mean * 100 - sd, base.mean * 100 + sd, color="grey", alpha=0.3, label="nn.Dropout ± std")
    points = [(g, acc[g]) for g in gs if g in acc and acc[g].mean is not None]
    ys = [max(a.mean * 100, floor) for _, a in points]
    right.errorbar([g for g, _ in points], ys, yerr=[(a.std or 0) * 100 for _, a in points], fmt="o-", label="ARD")
    for (g, a), y in zip(points, ys):
        if a.mean * 100 < floor:
            right.annotate(f"diverged ({a.mean * 100:.0f} %)", (g, y), textcoords="offset points", xytext=(4, 4))
    right.set(xlabel="patterns per step G", ylabel="test accuracy (%)", xscale="log", xticks=gs, xticklabels=gs)
    right.set_ylim(bottom=floor - 0.5)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def models_table(rows: Sequence[Record]) -> str:
    """One row per model of ``ard-models-bench``: sites found and served, both steps, the speedup, and the
    callback's own measured ``ard/step_speedup``."""
    lines = [
        "| model | dropout sites served | nn.Dropout step (ms) | defaults step (ms) | speedup "
        "| logged ard/step_speedup |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        served = len(r["sites"]) - len(r["fallen_back"])
        note = " (plain model back)" if r.get("gave_up") else ""
        logged = r.get("logged_step_speedup")
        cells = [r["model"].replace("_", " "), f"{served} of {len(r['sites'])}{note}", f"{r['plain_ms']:.1f}"]
        cells += [f"{r['ard_ms']:.1f}", f"{r['outside_speedup']:.2f}×", "" if logged is None else f"{logged:.2f}×"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
