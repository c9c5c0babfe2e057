"""LSTM settings on the KJV corpus: test perplexity (mean of seeds) beside the 2x650 step speedup, one Pareto plot
per rate.

    python docs/results/lstm_kjv/pareto.py --runs <study out root> --bench bench_lstm.json --out docs/results/lstm_kjv
    python docs/results/lstm_kjv/pareto.py --summary docs/results/lstm_kjv/summary.md --bench a.json b.json --out DIR

Runs are the app's run folders of ``docs/results/lstm_kjv_study.sh`` (``<stage>_<setting>/<job>/``: the setting is
the folder's suffix, the rate ``ard.p`` of the run's config, the value ``test/ppl`` of its metrics.json); or, to
put another machine's speed run beside the same perplexities, the ``summary.md`` an earlier call wrote. Speedups
come from ``ard-bench --cases lstm --lstm-settings`` runs (records matched by setting and p). Writes
``summary.md`` (every setting and rate: runs, mean ± std perplexity, change vs nn.Dropout, speedup, FLOP ratio)
and ``pareto_p<rate>.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import yaml

SETTINGS = {
    "dropout": "nn.Dropout",
    "one": "one pattern per step",
    "time4": "time chunks G=4",
    "seq2": "sequence G=2",
    "seq4": "sequence G=4",
    "struct1": "structured G=1",
    "struct2": "structured G=2",
    "struct4": "structured G=4",
    "dec4one": "decoder G=4, LSTM one pattern",
    "dec10one": "decoder G=10, LSTM one pattern",
    "defaults": "defaults: decoder auto groups, LSTM time chunks G=2",
}
"""Folder suffix -> the setting's name in ``ard-bench --lstm-settings``."""


def perplexities(root: Path) -> dict[tuple[float, str], list[float]]:
    out: dict[tuple[float, str], list[float]] = defaultdict(list)
    for metrics in sorted(root.glob("*/*/metrics.json")):
        run = metrics.parent
        setting = SETTINGS.get(run.parent.name.rsplit("_", 1)[-1])
        if setting is None:
            continue
        p = float(yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["ard"]["p"])
        out[(p, setting)].append(float(json.loads(metrics.read_text())["test/ppl"]))
    return out


Stats = dict[tuple[float, str], tuple[int, float, float | None]]
"""(p, setting) -> (runs, mean perplexity, standard deviation or None for one run)."""


def run_stats(ppl: dict[tuple[float, str], list[float]]) -> Stats:
    return {
        key: (len(v), statistics.mean(v), statistics.stdev(v) if len(v) > 1 else None) for key, v in ppl.items() if v
    }


def summary_stats(path: Path) -> Stats:
    """The perplexity columns of a ``summary.md`` this script wrote."""
    out: Stats = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or cells[0] in ("p", "---"):
            continue
        mean, _, std = cells[3].partition(" ± ")
        out[(float(cells[0]), cells[1])] = (int(cells[2]), float(mean), float(std) if std else None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--runs", type=Path, help="the study's run folders")
    source.add_argument("--summary", type=Path, help="a summary.md written by this script (its perplexities)")
    parser.add_argument("--bench", type=Path, nargs="+", required=True, help="ard-bench --lstm-settings JSON file(s)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    stats = summary_stats(args.summary) if args.summary else run_stats(perplexities(args.runs))
    speed, flops, device = {}, {}, ""
    for bench in args.bench:
        for rec in json.loads(bench.read_text()):
            speed[(rec["p"], rec.get("setting") or "")] = rec["speedup"]
            flops[(rec["p"], rec.get("setting") or "")] = rec["ideal"]
            device = rec.get("device", device)
    runs = "one `ard-bench` run" if len(args.bench) == 1 else f"{len(args.bench)} `ard-bench` runs (rates split)"
    lines = [
        f"2x650 step speedups: {runs} on {device}. Perplexity: test set of the KJV corpus.",
        "",
        "| p | setting | runs | test ppl (mean ± std) | Δ vs nn.Dropout | 2x650 step speedup | FLOP ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for p in sorted({p for p, _ in stats}):
        base = stats[(p, "nn.Dropout")][1] if (p, "nn.Dropout") in stats else None
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for setting in SETTINGS.values():
            if (p, setting) not in stats:
                continue
            n, mean, sd = stats[(p, setting)]
            std = "" if sd is None else f" ± {sd:.2f}"
            delta = (mean / base - 1) * 100 if base else None
            s = 1.0 if setting == "nn.Dropout" else speed.get((p, setting))
            f = flops.get((p, setting))
            lines.append(
                f"| {p} | {setting} | {n} | {mean:.2f}{std} | "
                f"{'' if delta is None or setting == 'nn.Dropout' else f'{delta:+.1f} %'} | "
                f"{'' if s is None else f'{s:.2f}x'} | {'' if f is None or setting == 'nn.Dropout' else f'{f:.2f}x'} |"
            )
            if s is not None and delta is not None:
                ax.scatter([s], [delta], zorder=3, color="black" if setting == "nn.Dropout" else None)
                ax.annotate(f"{setting} ({n})", (s, delta), textcoords="offset points", xytext=(5, 4),
                            fontsize=8)  # fmt: skip
        ax.axhline(2.0, color="grey", ls=":", lw=0.8, label="+2 % perplexity")
        ax.axvline(1.3, color="grey", ls="--", lw=0.8, label="1.3x")
        ax.set_xlabel("2x650 LM step speedup vs nn.Dropout (ard-bench)")
        ax.set_ylabel("test perplexity change vs nn.Dropout (%)")
        ax.set_title(f"LSTM LM on the KJV corpus, p = {p} ({device})", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.out / f"pareto_p{p}.png", dpi=120)
        plt.close(fig)
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
