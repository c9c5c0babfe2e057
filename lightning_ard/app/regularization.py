"""Dropout's regularization in a sweep: how much of nn.Dropout's gain over no dropout an ARD setting keeps.

A study has three arms per model: no dropout (``ard=dropout ard.p=0``), nn.Dropout (``ard=dropout``) and ARD. Where
dropout matters the no-dropout arm overfits (its validation metric turns worse during the fit) and ends clearly
worse than nn.Dropout; an ARD setting is judged by the share of that gap it keeps: 100 % is nn.Dropout's test
metric, 0 % no dropout's. In a regime without that gap (one pass over the data) the share is undefined and the
study is in the wrong regime.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

NO_DROPOUT = "none"
"""Family label of runs without the callback and with dropout rate 0 (the no-dropout arm)."""

LOWER_IS_BETTER = ("ppl", "loss")


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` (``test/ppl``, ``val/acc``, ...) is better."""
    return metric.rsplit("/", 1)[-1] in LOWER_IS_BETTER


def gain_kept(none: float, dropout: float, ard: float, lower_better: bool = True) -> float | None:
    """Share of nn.Dropout's gain over no dropout that ``ard`` keeps (1.0: as good as nn.Dropout, 0.0: as no
    dropout); None when dropout gains nothing (no dropout is as good or better: the regime shows no regularization,
    and a share would only scale noise)."""
    gain = none - dropout if lower_better else dropout - none
    if gain <= 0:
        return None
    return (none - ard) / (none - dropout)


def val_tag(metric: str) -> str:
    """The validation series of a test metric (``test/ppl`` -> ``val/ppl``)."""
    return "val/" + metric.rsplit("/", 1)[-1]


def mean_curve(curves: Sequence[Sequence[float]]) -> list[float]:
    """Point-wise mean of validation curves over seeds, as long as the shortest one."""
    length = min((len(c) for c in curves), default=0)
    return [statistics.fmean(c[i] for c in curves) for i in range(length)]


def plot_curves(curves: dict[str, list[float]], metric: str, path: Path) -> None:
    """Validation metric against validation round, one line per arm (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    dashes = iter(["--", "-.", (0, (1, 1)), (0, (5, 1, 1, 1, 1, 1))] * 4)
    for label, curve in curves.items():
        style = {"linestyle": next(dashes), "color": "black"} if label.startswith("dropout") else {}
        if label.startswith(NO_DROPOUT):
            style = {"linestyle": ":", "color": "grey"}
        ax.plot(range(1, len(curve) + 1), curve, marker="o", label=label, **style)
    ax.set(xlabel="validation round", ylabel=val_tag(metric), title="Validation during the fit (mean over seeds)")
    if lower_is_better(metric):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
