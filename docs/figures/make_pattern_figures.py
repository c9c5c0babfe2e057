"""Draw the pattern figures of the documentation from the library's own pattern classes and search.

    python docs/figures/make_pattern_figures.py            # writes docs/figures/*.png and search_table.md

Everything is drawn from a fixed seed, so the files only change when the pattern code does. Figures:

* ``row_families.png``: the kept units (dark) of a 32-unit layer over 8 training steps, for every row family,
  and for a mixture found by :func:`lightning_ard.search.search_distribution`;
* ``tile_family.png``: the kept 64x64 tiles of a 512x512 weight over 4 steps (:class:`PeriodicTile`);
* ``compact_gemm.png``: which weight entries the three Linears of a two-site MLP still multiply in one step;
* ``kept_count_cdf.png``: the distribution of the number of kept units per step of searched mixtures against
  standard dropout's Binomial(N, 1 - p);
* ``lstm_masks.png``: one step's masks over the tokens of a batch at an LSTM site, for nn.Dropout, one pattern that
  drops all of p, and the LSTM default (a pattern drops 0.6 of p, element-wise dropout the rest);
* ``search_table.md``: the search diagnostics of those mixtures (included in ``method.md``).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from lightning_ard.patterns import (  # noqa: E402
    BlockRow,
    PatternDistribution,
    PeriodicRow,
    PeriodicTile,
    RandomSubsetRow,
    binomial_pmf,
)
from lightning_ard.search import search_distribution  # noqa: E402

OUT = Path(__file__).resolve().parent
SEED = 0
STEPS = 8
UNITS = 32
KEPT_CMAP = ListedColormap(["#f2f2f2", "#1f4e79"])  # dropped, kept
PNG_META = {"Software": None}  # no version string in the files: reruns give the same bytes


def _masks(family, steps: int, seed: int = SEED) -> torch.Tensor:
    """(steps, width) 0/1 masks drawn from ``family`` (a row family or a PatternDistribution)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([family.sample(gen).mask(scaled=False) for _ in range(steps)])


def _describe(dist: PatternDistribution) -> str:
    parts = []
    for fam, prob in dist.support():
        if prob >= 0.005:
            parts.append(f"dp={fam.dp},k={fam.k}: {prob:.2f}")
    return "; ".join(parts)


def _unit_grid(ax, rows: int, color: str, width: float) -> None:
    """Unit ticks every 4 units and a grid line around every cell of a (rows, UNITS) mask image."""
    ax.set_xticks(range(0, UNITS, 4))
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xticks([x - 0.5 for x in range(UNITS + 1)], minor=True)
    ax.set_yticks([y - 0.5 for y in range(rows + 1)], minor=True)
    ax.grid(which="minor", color=color, linewidth=width)
    ax.tick_params(which="minor", length=0)


def row_families() -> Path:
    mixture = search_distribution(0.3, UNITS, "row", ks=(1, 2, 3, 4))
    panels = [
        (PeriodicRow(UNITS, dp=2, k=1), "periodic row (paper), dp=2, k=1", ""),
        (PeriodicRow(UNITS, dp=4, k=1), "periodic row (paper), dp=4, k=1", ""),
        (PeriodicRow(UNITS, dp=4, k=3), "periodic row, dp=4, k=3", ""),
        (BlockRow(UNITS, keep=16), "block, K=16 (cyclic, uniform start)", ""),
        (RandomSubsetRow(UNITS, keep=16), "random subset, K=16", ""),
        (mixture, f"searched mixture of periodic rows, p=0.3, ks=(1,2,3,4), N={UNITS}", _describe(mixture)),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8.0, 1.55 * len(panels) + 0.6))
    for ax, (family, title, detail) in zip(axes, panels):
        masks = _masks(family, STEPS)
        ax.imshow(masks.numpy(), cmap=KEPT_CMAP, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        rate = family.expected_rate if isinstance(family, PatternDistribution) else family.rate
        title = f"{title}   (drop rate {rate:.3g})" + (f"\nprobabilities: {detail}" if detail else "")
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_yticks(range(STEPS), [str(s + 1) for s in range(STEPS)], fontsize=7)
        ax.set_ylabel("step", fontsize=8)
        _unit_grid(ax, STEPS, "white", 0.6)
    axes[-1].set_xlabel("unit index (dark: kept for the whole mini-batch in that step)", fontsize=8)
    fig.tight_layout()
    path = OUT / "row_families.png"
    fig.savefig(path, dpi=110, metadata=PNG_META)
    plt.close(fig)
    return path


def tile_family() -> Path:
    rows = [
        (PeriodicTile(512, 512, dp=2, k=1, tile=(64, 64)), "dp=2, k=1"),
        (PeriodicTile(512, 512, dp=4, k=1, tile=(64, 64)), "dp=4, k=1"),
        (PeriodicTile(512, 512, dp=4, k=3, tile=(64, 64)), "dp=4, k=3"),
    ]
    steps = 4
    fig, axes = plt.subplots(len(rows), steps, figsize=(2.0 * steps, 2.15 * len(rows)))
    gen = torch.Generator().manual_seed(SEED)
    for r, (family, label) in enumerate(rows):
        for s in range(steps):
            pattern = family.sample(gen)
            ax = axes[r, s]
            ax.imshow(
                pattern.element_mask(scaled=False).numpy(), cmap=KEPT_CMAP, vmin=0, vmax=1, interpolation="nearest"
            )
            ax.set_xticks(range(0, 513, 128))
            ax.set_yticks(range(0, 513, 128))
            ax.tick_params(labelsize=6)
            ax.set_xticks([64 * i - 0.5 for i in range(9)], minor=True)
            ax.set_yticks([64 * i - 0.5 for i in range(9)], minor=True)
            ax.grid(which="minor", color="white", linewidth=0.5)
            ax.tick_params(which="minor", length=0)
            ax.set_title(f"step {s + 1}, kept {pattern.keep_fraction:.2f}", fontsize=8)
            if s == 0:
                ax.set_ylabel(f"{label}\nweight row (out)", fontsize=8)
            if r == len(rows) - 1:
                ax.set_xlabel("weight column (in)", fontsize=8)
    fig.suptitle("PeriodicTile on a 512x512 weight, 64x64 tiles (dark: tile multiplied this step)", fontsize=9)
    fig.tight_layout()
    path = OUT / "tile_family.png"
    fig.savefig(path, dpi=110, metadata=PNG_META)
    plt.close(fig)
    return path


def compact_gemm() -> Path:
    width_in, hidden, width_out = 12, 16, 6
    site1 = PeriodicRow(hidden, dp=2, k=1).pattern(1)  # dropout after hidden layer 1
    site2 = PeriodicRow(hidden, dp=4, k=3).pattern(2)  # dropout after hidden layer 2
    a, b = site1.mask(scaled=False), site2.mask(scaled=False)
    producer = a[:, None].expand(hidden, width_in)  # W1 (hidden x in): rows kept by site 1
    middle = b[:, None] * a[None, :]  # W2 (hidden x hidden): rows kept by site 2, columns kept by site 1
    consumer = b[None, :].expand(width_out, hidden)  # W3 (out x hidden): columns kept by site 2
    panels = [
        (producer, "W1 (hidden x in), producer of site 1:\nrows kept by site 1"),
        (middle, "W2 (hidden x hidden), consumer of site 1\nand producer of site 2: rows x columns"),
        (consumer, "W3 (out x hidden), consumer of site 2:\ncolumns kept by site 2"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(9.0, 3.6), gridspec_kw={"width_ratios": [width_in, hidden, hidden]})
    for ax, (mask, title) in zip(axes, panels):
        ax.imshow(mask.numpy(), cmap=KEPT_CMAP, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xticks([x - 0.5 for x in range(mask.shape[1] + 1)], minor=True)
        ax.set_yticks([y - 0.5 for y in range(mask.shape[0] + 1)], minor=True)
        ax.grid(which="minor", color="white", linewidth=0.6)
        ax.tick_params(which="minor", length=0)
    fig.suptitle("Linear-ReLU-Dropout-Linear-ReLU-Dropout-Linear, one training step (dark: weight entries multiplied)\n"
                 "site 1: PeriodicRow(dp=2, k=1), site 2: PeriodicRow(dp=4, k=3)", fontsize=9)  # fmt: skip
    fig.tight_layout()
    path = OUT / "compact_gemm.png"
    fig.savefig(path, dpi=110, metadata=PNG_META)
    plt.close(fig)
    return path


def mixture_pmf(dist: PatternDistribution) -> torch.Tensor:
    """Kept-count pmf (length N + 1) of a distribution over row families."""
    pmf = torch.zeros(dist.width + 1, dtype=torch.float64)
    for fam, prob in dist.support():
        pmf += prob * fam.kept_count_pmf()
    return pmf


SEARCHES = [
    ("row", {"ks": (1,)}, "row, ks=(1,)"),
    ("row", {"ks": (1, 2, 3, 4)}, "row, ks=(1,2,3,4)"),
    ("block", {}, "block"),
]
WIDTH = 1024
RATES = (0.3, 0.5, 0.7)


def kept_count_cdf() -> Path:
    fig, axes = plt.subplots(1, len(RATES), figsize=(11.0, 3.4), sharey=True)
    for ax, p in zip(axes, RATES):
        counts = torch.arange(WIDTH + 1)
        for family, settings, label in SEARCHES:
            dist = search_distribution(p, WIDTH, family, **settings)
            ax.step(counts, mixture_pmf(dist).cumsum(0), where="post", label=label)
        ax.plot(counts, binomial_pmf(WIDTH, 1 - p).cumsum(0), color="black", linestyle=(0, (2, 2)), linewidth=1.6,
                label="nn.Dropout: Binomial(N, 1-p)", zorder=5)  # fmt: skip
        ax.set_title(f"p = {p}, N = {WIDTH}", fontsize=9)
        ax.set_xlabel("kept units in one step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("CDF over steps", fontsize=8)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = OUT / "kept_count_cdf.png"
    fig.savefig(path, dpi=110, metadata=PNG_META)
    plt.close(fig)
    return path


def search_table() -> Path:
    lines = [
        "| family, settings | p | candidates | support | expected rate | kept-count W1 / N | "
        "two-pattern baseline W1 / N | co-keep RMS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for family, settings, label in [*SEARCHES, ("random", {}, "random")]:
        for p in RATES:
            d = search_distribution(p, WIDTH, family, **settings).diagnostics
            lines.append(
                f"| {label} | {p} | {d['candidates']} | {d['support']} | {d['expected_rate']:.6f} | "
                f"{d['kept_count_w1']:.2e} | {d['baseline_w1']:.2e} | {d['cokeep_rms']:.3g} |"
            )
    path = OUT / "search_table.md"
    path.write_text(
        f"<!-- generated by docs/figures/make_pattern_figures.py (method sgd, default settings, N = {WIDTH}) -->\n"
        + "\n".join(lines)
        + "\n"
    )
    return path


def lstm_masks(p: float = 0.5, share: float = 0.6, tokens: int = 16) -> Path:
    """One step's input masks (tokens x units) at an LSTM site: which units each token keeps, and which columns
    the compact product skips (the pattern's dropped units, skipped for every token)."""
    from lightning_ard.lstm_policy import split_rate

    gen = torch.Generator().manual_seed(SEED)
    pattern_p, element_p = split_rate(p, share)
    element = (torch.rand(tokens, UNITS, generator=gen) >= p).float()  # nn.Dropout: a fresh mask per element
    one = RandomSubsetRow(UNITS, round(UNITS * (1 - p))).sample(gen).mask(scaled=False)
    split_pattern = RandomSubsetRow(UNITS, round(UNITS * (1 - pattern_p))).sample(gen).mask(scaled=False)
    inner = (torch.rand(tokens, UNITS, generator=gen) >= element_p).float()
    # 2: kept, 1: dropped element-wise (the product still reads the column), 0: column skipped by the pattern
    panels = [
        (element + 1, f"nn.Dropout, p = {p}: every token its own mask, no column skipped"),
        ((one * 2).expand(tokens, UNITS), f"one pattern drops all of p: {int(p * UNITS)} of {UNITS} columns skipped, "
         "the same units for every token"),
        (split_pattern * (1 + inner), f"the LSTM default: the pattern drops {share} of p ({pattern_p:.2g}), "
         f"element-wise {element_p:.3g} inside: {int((1 - split_pattern).sum())} columns skipped, masks per token"),
    ]  # fmt: skip
    cmap = ListedColormap(["#ffffff", "#d9d9d9", "#1f4e79"])  # skipped column, dropped element, kept
    fig, axes = plt.subplots(len(panels), 1, figsize=(8.0, 1.9 * len(panels) + 0.5))
    for ax, (masks, title) in zip(axes, panels):
        ax.imshow(masks.numpy(), cmap=cmap, vmin=0, vmax=2, aspect="auto", interpolation="nearest")
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_ylabel("token", fontsize=8)
        ax.set_yticks([])
        _unit_grid(ax, tokens, "#bbbbbb", 0.3)
    axes[-1].set_xlabel("input unit (dark: kept; grey: dropped for that token; white: column the product skips)",
                        fontsize=8)  # fmt: skip
    fig.tight_layout()
    path = OUT / "lstm_masks.png"
    fig.savefig(path, dpi=110, metadata=PNG_META)
    plt.close(fig)
    return path


def main() -> None:
    for path in (row_families(), tile_family(), compact_gemm(), kept_count_cdf(), lstm_masks(), search_table()):
        print(f"wrote {path.relative_to(OUT.parent.parent)}")


if __name__ == "__main__":
    main()
