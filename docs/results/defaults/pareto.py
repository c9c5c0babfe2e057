"""Speed against accuracy (Pareto plot): every setting at its measured step speedup and its accuracy change vs nn.Dropout.

    python docs/results/defaults/pareto.py --bench bench.json --case mlp784-1024-1024-10_b128 \
        --accuracy docs/results/defaults/groups_sgd_b128_p05.csv --p 0.5 --out pareto.png

Speedups come from one ``ard-bench`` run (records matched by family label and p); accuracies are means over the
seeds of the report CSVs (``ard-report``), as the difference from nn.Dropout's mean in percentage points.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path


def accuracy_deltas(paths: list[Path], p: float) -> dict[str, tuple[float, int]]:
    """Family label -> (mean test accuracy - nn.Dropout's mean, in points; number of seeds) at rate p."""
    values: dict[str, list[float]] = defaultdict(list)
    for path in paths:
        for row in csv.DictReader(path.open()):
            if row["status"] == "ok" and abs(float(row["p"]) - p) < 1e-9:
                values[row["family"]].append(100 * float(row["value"]))
    base = statistics.mean(values.pop("dropout"))
    return {label: (statistics.mean(v) - base, len(v)) for label, v in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, required=True)
    parser.add_argument("--case", required=True)
    parser.add_argument("--accuracy", type=Path, nargs="+", required=True)
    parser.add_argument("--p", type=float, default=0.5)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    speed = {}
    for rec in json.loads(args.bench.read_text()):
        if rec["case"] == args.case and abs(rec["p"] - args.p) < 1e-9:
            label = rec["family"] if rec["groups"] == 1 else f"{rec['family']} x{rec['groups']} groups"
            speed[label] = rec["speedup"]
    acc = accuracy_deltas(args.accuracy, args.p)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.scatter([1.0], [0.0], color="black", zorder=3)
    ax.annotate("nn.Dropout", (1.0, 0.0), textcoords="offset points", xytext=(5, 5), fontsize=8)
    for label, (delta, seeds) in sorted(acc.items()):
        if label not in speed:
            continue
        ax.scatter([speed[label]], [delta], zorder=3)
        ax.annotate(f"{label} ({seeds} seeds)", (speed[label], delta), textcoords="offset points", xytext=(5, -10),
                    fontsize=8)  # fmt: skip
    ax.axhline(-0.3, color="grey", ls=":", lw=0.8, label="-0.3 pt")
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_xlabel(f"training-step speedup vs nn.Dropout ({args.case})")
    ax.set_ylabel("test accuracy - nn.Dropout's (points, mean of seeds)")
    ax.set_title(args.title or f"p = {args.p}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"plot: {args.out}")
    for label, (delta, seeds) in sorted(acc.items()):
        print(f"{label}: speedup {speed.get(label, float('nan')):.2f}x, accuracy {delta:+.2f} pt ({seeds} seeds)")


if __name__ == "__main__":
    main()
