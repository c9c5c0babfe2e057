"""Is an exact compact optimizer update worth an opt-in? Measured on the CPU.

Run: ``python docs/results/gpu/compact_update.py`` (writes compact_update.md beside it).

With row patterns on both sides of a Linear, a step's weight gradient is zero outside the kept block (rows x
columns, a strided view for periodic k = 1 patterns). Three ways to take an SGD step on a W of N x N:

* full: the backend's full-size gradient (zeros + kept block) and ``torch.optim.SGD`` (foreach) over all of W;
* compact SGD: no full-size gradient; ``W[block] -= lr * g_block`` on the view (exact for plain SGD);
* compact momentum: velocity and a per-element "last step touched" counter; an element skipped for s steps decays
  in closed form (v <- mu^s v, W <- W - lr mu (1 - mu^s) / (1 - mu) v), then takes the normal step. Exact up to
  rounding; a full catch-up is needed before W is read (eval, checkpoint, end of fit).

The script checks exactness against torch.optim.SGD over random patterns, then times one step of each.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from lightning_ard.patterns import PeriodicRow  # noqa: E402
from lightning_ard.profiling import median_time  # noqa: E402

LR, MU = 0.05, 0.9


class CompactMomentum:
    """SGD with momentum (PyTorch's form: v <- mu v + g; W <- W - lr v) that touches only the kept block."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.w, self.v = weight, torch.zeros_like(weight)
        self.last = torch.zeros(weight.shape, dtype=torch.int32)  # step of the last update (0 = never)
        self.t = 0

    def _catch_up(self, w, v, last) -> None:
        skipped = (self.t - 1 - last).to(w.dtype)  # steps since the element's last update (its gradient was 0)
        decay = torch.pow(MU, skipped)
        never = last == 0  # untouched so far: v is 0, nothing to catch up
        w.sub_(torch.where(never, 0.0, LR * MU * (1 - decay) / (1 - MU)) * v)
        v.mul_(torch.where(never, 1.0, decay))

    def step(self, rows: slice, cols: slice, g_block: torch.Tensor) -> None:
        self.t += 1
        w, v, last = self.w[rows, cols], self.v[rows, cols], self.last[rows, cols]
        self._catch_up(w, v, last)
        v.mul_(MU).add_(g_block)
        w.sub_(v, alpha=LR)
        last.fill_(self.t)

    def finish(self) -> None:
        """Bring every element up to date (before W is read)."""
        self.t += 1
        self._catch_up(self.w, self.v, self.last)
        self.last.fill_(self.t)
        self.t -= 1


def blocks(n: int, p: float, steps: int, gen: torch.Generator):
    dp = round(1 / (1 - p))
    fam = PeriodicRow(n, dp)
    for _ in range(steps):
        a, b = fam.sample(gen), fam.sample(gen)
        yield slice(a.stride[0], None, dp), slice(b.stride[0], None, dp)


def exactness(n: int = 192, steps: int = 40) -> float:
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(n, n, dtype=torch.float64, generator=gen)
    ref = w0.clone().requires_grad_(True)
    opt = torch.optim.SGD([ref], lr=LR, momentum=MU)
    compact = CompactMomentum(w0.clone())
    for rows, cols in blocks(n, 0.5, steps, gen):
        g = torch.randn(len(range(n)[rows]), len(range(n)[cols]), dtype=torch.float64, generator=gen)
        full = torch.zeros(n, n, dtype=torch.float64)
        full[rows, cols] = g
        ref.grad = full
        opt.step()
        compact.step(rows, cols, g)
    compact.finish()
    return float((compact.w - ref.detach()).abs().max())


def timings(n: int, p: float) -> dict[str, float]:
    gen = torch.Generator().manual_seed(1)
    rows, cols = next(blocks(n, p, 1, gen))
    k_rows, k_cols = len(range(n)[rows]), len(range(n)[cols])
    g = torch.randn(k_rows, k_cols, generator=gen)
    w = torch.randn(n, n, generator=gen).requires_grad_(True)
    opt = torch.optim.SGD([w], lr=LR, momentum=MU, foreach=True)

    def full_sgd() -> None:  # what training does today: full-size gradient, full-size update
        grad = torch.zeros(n, n)
        grad[rows, cols] = g
        w.grad = grad
        opt.step()
        opt.zero_grad(set_to_none=True)

    plain = w.detach().clone()

    def compact_sgd() -> None:
        plain[rows, cols].sub_(g, alpha=LR)

    compact = CompactMomentum(w.detach().clone())
    compact.t = 5

    def compact_momentum() -> None:
        compact.step(rows, cols, g)

    full_sgd()
    return {
        name: median_time(fn, "cpu", reps=7, warmup=2) * 1e3
        for name, fn in (("full", full_sgd), ("compact_sgd", compact_sgd), ("compact_momentum", compact_momentum))
    }


def main() -> None:
    lines = [
        "# Exact compact optimizer update: CPU measurement",
        "",
        f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}; script: docs/results/gpu/compact_update.py",
        "",
        f"Exactness (float64, 192 x 192, 40 steps, p = 0.5, lr {LR}, momentum {MU}): max |compact - "
        f"torch.optim.SGD| = {exactness():.2e}",
        "",
        "| N | p | full step ms | compact SGD ms | compact momentum ms | full / compact SGD "
        "| full / compact momentum |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in (2048, 4096):
        for p in (0.5, 2 / 3):
            t = timings(n, p)
            lines.append(
                f"| {n} | {p:.2f} | {t['full']:.2f} | {t['compact_sgd']:.2f} | {t['compact_momentum']:.2f} | "
                f"{t['full'] / t['compact_sgd']:.2f} | {t['full'] / t['compact_momentum']:.2f} |"
            )
            print(lines[-1], flush=True)
    out = Path(__file__).with_suffix(".md")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
