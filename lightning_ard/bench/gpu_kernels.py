"""The one prepared GPU benchmark of the ARD kernels: every compact product vs cuBLAS, and the MLP training step.

On a fresh H100/H200, one call (at most about 6 minutes; only this repository on the path, the torch and triton
installed there, no ``pip install``, no Hydra or Lightning)::

    cd <repo> && PYTHONPATH=. python lightning_ard/bench/gpu_kernels.py --out docs/results/gpu/gpu_kernels

It writes ``<out>.json`` and ``<out>.md`` after every row (a killed run keeps what it measured), checks every timed
product against the reference at the timed shapes (a miss marks its row and the run goes on), and stops starting
new rows past ``--budget-s`` seconds. Tables:

1. products: forward, grad_x, grad_W of a 4096 x 4096 row-pattern layer (input and output patterned, p = 0.3 / 0.5
   / 0.7, batch 1024 and 4096, bf16) through the torch, gathered and triton backends' own steps, each against
   ``torch.mm`` (cuBLAS) on the same compact shape with pitch-padded operands (copies made outside the timing);
   tile patterns (64 x 64) against the dense GEMM and the kept fraction;
1c. pattern groups: the 4096 x 4096 layer with G = 4 groups (p = 0.5, compact input and output, batch 1024 and
   4096, bf16), forward + backward through one product per group (the torch backend), ``torch._grouped_mm``
   (:mod:`lightning_ard.kernels.grouped_mm`) and the Triton grouped kernel, against cuBLAS on one compact shape of
   the same FLOPs;
2. the MLP 784-4096-4096-10 training step (bf16 autocast over float32 weights, SGD with momentum, a new pattern
   every step) for each backend (``grouped_mm`` included) vs ``nn.Dropout`` at the same p, with the FLOP ratio
   and the compact-model limit (the same MLP at the kept widths, no dropout) side by side.

``--smoke`` runs everything at tiny shapes (under ``TRITON_INTERPRET=1`` when there is no GPU: numbers are
meaningless there); CI runs it (tests/kernels/test_gpu_bench_smoke.py). Without a GPU and without ``--smoke`` the
script exits with status 2. Timings: ``triton.testing.do_bench`` medians on CUDA (L2 flushed between runs), the
project timer (:func:`lightning_ard.profiling.median_time`) elsewhere.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PERIODIC = {0.3: (10, 7), 0.5: (2, 1), 0.7: (10, 3)}
"""(dp, k) of the periodic family whose keep fraction k/dp is 1 - p."""
APP_ONLY = ("hydra", "omegaconf", "lightning", "pytorch_lightning", "matplotlib")


@dataclass(frozen=True)
class Shapes:
    """Sizes of one run."""

    width: int
    batches: tuple[int, ...]
    p_values: tuple[float, ...]
    tile: tuple[int, int]
    mlp: tuple[int, int, int, int]


FULL = Shapes(4096, (1024, 4096), (0.3, 0.5, 0.7), (64, 64), (784, 4096, 4096, 10))
SMOKE = Shapes(32, (16,), (0.3, 0.5), (16, 16), (16, 32, 32, 10))
GROUPED_P, GROUPED_G = 0.5, 4
"""Rate and number of pattern groups of the grouped section (the MLP's default groups at p = 0.5)."""
TOL = 3e-2
"""Largest error relative to the reference's largest magnitude (bf16 operands, float32 accumulation)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "gpu" / "gpu_kernels",
                        help="write OUT.json and OUT.md (suffix replaced) after every row")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="tiny shapes; the CPU interpreter when there is no GPU")
    parser.add_argument("--budget-s", type=float, default=330.0, help="start no new row after this many seconds")
    parser.add_argument("--sections", default="products,tiles,grouped,mlp", help="comma-separated subset to run")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    os.environ.setdefault("LIGHTNING_ARD_TUNING", "short")  # short autotune lists, read when the kernels import
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # the checkout, when run as a script
    import torch

    if not torch.cuda.is_available():
        if not args.smoke:
            print("gpu_kernels.py: no CUDA device (torch.cuda.is_available() is False); nothing was measured. Run "
                  "it on a machine with an NVIDIA GPU, or pass --smoke to check the script on the CPU.",
                  file=sys.stderr)  # fmt: skip
            return 2
        if "triton" not in sys.modules:
            os.environ["TRITON_INTERPRET"] = "1"  # before the first import of triton
    bench = Bench(args, started)
    bench.run()
    print(f"\nwrote {bench.json_path} and {bench.md_path} ({len(bench.rows)} rows, "
          f"{sum(not r['ok'] for r in bench.rows)} not ok, {time.perf_counter() - started:.0f} s)")  # fmt: skip
    return 0 if all(r["ok"] for r in bench.rows) else 1


# --- helpers ------------------------------------------------------------------------------------------------------


def rel_error(got: Any, ref: Any) -> float:
    """max |got - ref| / max |ref| in float32 (inf if got has non-finite entries or another shape)."""
    if tuple(got.shape) != tuple(ref.shape):
        return float("inf")
    g, r = got.float(), ref.float()
    if not bool(g.isfinite().all()):
        return float("inf")
    return float((g - r).abs().max() / r.abs().max().clamp_min(1e-30)) if r.numel() else 0.0


def padded(t: Any) -> Any:
    """A copy of the 2-D ``t`` with its row pitch rounded up to 64 elements (what cuBLAS gets)."""
    from lightning_ard.kernels.gathered import padded_empty

    out = padded_empty(t.shape[0], t.shape[1], dtype=t.dtype, device=t.device)
    out.copy_(t)
    return out


class Bench:
    """Runs the sections, streaming every row to JSON and Markdown."""

    def __init__(self, args: argparse.Namespace, started: float) -> None:
        import torch

        self.args, self.torch, self.started = args, torch, started
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.shapes = SMOKE if args.smoke else FULL
        self.gen = torch.Generator().manual_seed(args.seed)
        self.rows: list[dict[str, Any]] = []
        out = Path(args.out)
        self.json_path, self.md_path = out.with_suffix(".json"), out.with_suffix(".md")
        self.json_path.parent.mkdir(parents=True, exist_ok=True)
        self.meta = self.metadata()
        from lightning_ard.kernels import triton_usable

        interpreting = os.environ.get("TRITON_INTERPRET") == "1" and "triton" in sys.modules
        usable = triton_usable(self.device) and (self.device.type == "cuda" or interpreting)
        self.backends = ("torch", "gathered", "triton") if usable else ("torch", "gathered")
        self.write()

    # --- infrastructure -----------------------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        import triton

        torch = self.torch
        meta: dict[str, Any] = {
            "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "torch": torch.__version__,
            "triton": triton.__version__,
            "python": platform.python_version(),
            "smoke": bool(self.args.smoke),
            "interpreter": os.environ.get("TRITON_INTERPRET") == "1",
            "tuning": os.environ.get("LIGHTNING_ARD_TUNING", "full"),
            "timing": "median of triton.testing.do_bench(warmup=25 ms, rep=100 ms) after a warm-up call"
            if self.device.type == "cuda"
            else "lightning_ard.profiling.median_time (one timed call in --smoke): meaningless in the interpreter",
        }
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            meta.update(gpu=torch.cuda.get_device_name(self.device), capability=f"{props.major}.{props.minor}",
                        cuda=torch.version.cuda, sms=props.multi_processor_count)  # fmt: skip
        else:
            meta["gpu"] = "none (CPU smoke run: timings are meaningless)"
        return meta

    def time_ms(self, fn: Callable[[], Any]) -> float:
        if self.device.type == "cuda":
            from triton.testing import do_bench

            fn()  # warm-up: compiles and autotunes outside the timing
            return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
        from lightning_ard.profiling import median_time

        return median_time(fn, self.device, reps=1, warmup=0 if self.args.smoke else 1) * 1e3

    def over_budget(self) -> bool:
        return time.perf_counter() - self.started > self.args.budget_s

    def row(self, section: str, label: dict[str, Any], measure: Callable[[], dict[str, Any]]) -> None:
        """Measure one row (errors and budget overruns become a row marked not ok) and stream it out."""
        row: dict[str, Any] = {"section": section, **label}
        if self.over_budget():
            row.update(ok=False, note=f"skipped: past the {self.args.budget_s:.0f} s budget")
        else:
            try:
                row.update(measure())
            except Exception as err:  # one broken row must not cost the others
                row.update(ok=False, note=f"{type(err).__name__}: {err}".splitlines()[0][:300])
                traceback.print_exc()
        self.rows.append(row)
        print(f"[{section}] " + "  ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k != "section"), flush=True)
        self.write()

    def write(self) -> None:
        self.meta["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        self.meta["app_modules_loaded"] = sorted(m for m in APP_ONLY if m in sys.modules)
        self.json_path.write_text(json.dumps({"meta": self.meta, "rows": self.rows}, indent=1) + "\n")
        self.md_path.write_text(markdown(self.meta, self.rows))

    def randn(self, *shape: int, dtype: Any = None) -> Any:
        t = self.torch.randn(*shape, generator=self.gen)
        return t.to(device=self.device, dtype=dtype or self.torch.bfloat16)

    def run(self) -> None:
        sections = {s.strip() for s in self.args.sections.split(",") if s.strip()}
        for m in self.shapes.batches:
            for p in self.shapes.p_values:
                if "products" in sections:
                    self.products(m, p)
                if "tiles" in sections:
                    self.tiles(m, p)
            if "grouped" in sections:
                self.grouped(m, GROUPED_P, GROUPED_G)
        if "mlp" in sections:
            for batch in self.shapes.batches:
                for p in self.shapes.p_values:
                    self.mlp(batch, p)

    # --- 1. row-pattern products vs cuBLAS ---------------------------------------------------------------------

    def products(self, m: int, p: float) -> None:
        from lightning_ard.patterns import PeriodicRow

        torch, dev, n = self.torch, self.device, self.shapes.width
        dp, k = PERIODIC[p]
        p_in, p_out = PeriodicRow(n, dp, k).sample(self.gen), PeriodicRow(n, dp, k).sample(self.gen)
        in_idx, out_idx = p_in.index(dev), p_out.index(dev)
        kc, nc = in_idx.numel(), out_idx.numel()
        w = self.randn(n, n) / n**0.5
        xc = self.randn(m, kc)  # the compact input a producer hands on (contiguous, odd pitch)
        g = self.randn(m, nc)
        wc_ref = w[out_idx][:, in_idx]
        # cuBLAS: the same compact shape, operands already gathered and pitch-padded (copies not timed)
        xp, wp, gp = padded(xc), padded(wc_ref), padded(g)
        cublas = {
            "forward": lambda: torch.mm(xp, wp.t()),
            "grad_x": lambda: torch.mm(gp, wp),
            "grad_w": lambda: torch.mm(gp.t(), xp),
        }
        refs = {name: fn().float() for name, fn in cublas.items()}
        t_cublas = {name: self.time_ms(fn) for name, fn in cublas.items()}
        kept = (out_idx[:, None], in_idx[None, :])

        def check_full(name: str, out: Any) -> float:
            """A full-size gradient: its kept block against cuBLAS, zeros elsewhere."""
            if name != "grad_w":
                return rel_error(out, refs[name])
            err = rel_error(out[kept], refs[name])
            rest = out.float().clone()
            rest[kept] = 0
            return err if bool((rest == 0).all()) else float("inf")

        operands = (w, xc, g, p_in, p_out)
        ops = {"torch": torch_products(*operands), "gathered": gathered_products(*operands)}
        ops["triton"] = triton_products(*operands)
        flops = 2 * m * nc * kc
        for backend, products in ops.items():
            for name, fn in products.items():

                def measure(fn: Callable[[], Any] = fn, name: str = name) -> dict[str, Any]:
                    err = check_full(name, fn())
                    t = self.time_ms(fn)
                    ratio = t_cublas[name] / t
                    return {"ms": t, "cublas_ms": t_cublas[name], "ratio": ratio, "tflops": flops / t / 1e9,
                            "err": err, "ok": err <= TOL}  # fmt: skip

                label = {"kind": "row", "M": m, "p": p, "shape": f"{nc}x{kc}", "product": name, "backend": backend}
                self.row("products", label, measure)

    # --- 1b. tile-pattern products vs dense ---------------------------------------------------------------------

    def tiles(self, m: int, p: float) -> None:
        from lightning_ard.kernels import get_backend
        from lightning_ard.patterns import PeriodicTile

        torch, dev, n = self.torch, self.device, self.shapes.width
        dp, k = PERIODIC[p]
        if dp > -(-n // self.shapes.tile[1]):
            return  # smoke shapes: fewer tile columns than the period
        pattern = PeriodicTile(n, n, dp, k, self.shapes.tile).sample(self.gen)
        mask = pattern.element_mask(torch.float32).to(dev)
        x, w, g = self.randn(m, n), self.randn(n, n) / n**0.5, self.randn(m, n)
        wm = (w.float() * mask).to(torch.bfloat16)
        ref_y = torch.mm(x, wm.t()).float()
        dense = lambda: (torch.mm(x, w.t()), torch.mm(g, w), torch.mm(g.t(), x))  # noqa: E731
        t_dense = self.time_ms(dense)
        for backend in self.backends:

            def measure(backend: str = backend) -> dict[str, Any]:
                be = get_backend(backend, dev)
                xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)

                def step() -> None:
                    xs.grad = ws.grad = None
                    be.tile_linear(xs, ws, None, pattern).backward(g)

                y = be.tile_linear(xs, ws, None, pattern)
                err = rel_error(y.detach(), ref_y)
                y.backward(g)
                err = max(err, rel_error(ws.grad, (torch.mm(g.t(), x).float() * mask).to(torch.bfloat16)))
                t = self.time_ms(step)
                speedup = t_dense / t
                return {"ms": t, "dense_ms": t_dense, "speedup": speedup, "ideal": 1.0 / pattern.keep_fraction,
                        "err": err, "ok": err <= TOL}  # fmt: skip

            label = {"kind": "tile", "M": m, "p": p, "shape": f"{n}x{n}", "product": "fwd+bwd", "backend": backend}
            self.row("tiles", label, measure)

    # --- 1c. pattern groups: per-group products vs one grouped GEMM vs cuBLAS ----------------------------------

    def grouped(self, m: int, p: float, groups: int) -> None:
        from lightning_ard.kernels.grouped_mm import AVAILABLE, grouped_mm_linear, plan_groups
        from lightning_ard.kernels.torch_backend import TorchBackend
        from lightning_ard.patterns import PeriodicRow

        torch, dev, n = self.torch, self.device, self.shapes.width
        dp, k = PERIODIC[p]
        fam = PeriodicRow(n, dp, k)
        ins, outs = fam.sample_many(groups, self.gen), fam.sample_many(groups, self.gen)  # one candidate: uniform K
        kc = ins[0].num_kept
        w = self.randn(n, n) / n**0.5
        x, g = self.randn(m, kc), self.randn(m, kc)  # compact per group, as the MLP's middle layer gets them
        xp, wp, gp = padded(x), padded(w[:kc, :kc].contiguous()), padded(g)  # one compact shape, the same FLOPs
        t_cublas = self.time_ms(lambda: (torch.mm(xp, wp.t()), torch.mm(gp, wp), torch.mm(gp.t(), xp)))
        paths: dict[str, Callable[..., Any]] = {
            "torch (per group)": TorchBackend().row_linear_groups,
            "grouped_mm": grouped_mm_linear,
        }
        if "triton" in self.backends:
            from lightning_ard.kernels.triton.grouped import grouped_row_linear

            paths["triton"] = grouped_row_linear

        def stepper(fn: Callable[..., Any]) -> Callable[[], Any]:
            xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)

            def step() -> Any:
                xs.grad = ws.grad = None
                y = fn(xs, ws, None, ins, outs, True, True)
                y.backward(g)
                return y.detach(), xs.grad, ws.grad

            return step

        reference = [t.float() for t in stepper(paths["torch (per group)"])()]
        flops = 3 * 2 * m * kc * kc
        for name, fn in paths.items():

            def measure(fn: Callable[..., Any] = fn, name: str = name) -> dict[str, Any]:
                step = stepper(fn)
                err = max(rel_error(got, ref) for got, ref in zip(step(), reference, strict=True))
                t = self.time_ms(step)
                row = {"ms": t, "cublas_ms": t_cublas, "ratio": t_cublas / t, "tflops": flops / t / 1e9,
                       "err": err, "ok": err <= TOL}  # fmt: skip
                if name == "grouped_mm" and (not AVAILABLE or plan_groups(m, ins, outs, n, n, dev) is None):
                    row["note"] = "fell back to the per-group path (no torch._grouped_mm or non-uniform counts)"
                return row

            label = {"kind": "grouped", "M": m, "p": p, "groups": groups, "shape": f"{kc}x{kc}",
                     "product": "fwd+bwd", "backend": name}  # fmt: skip
            self.row("grouped", label, measure)

    # --- 2. MLP training step -----------------------------------------------------------------------------------

    def mlp(self, batch: int, p: float) -> None:
        from lightning_ard.layers import ARDLinear
        from lightning_ard.patterns import PeriodicRow
        from lightning_ard.patterns.groups import auto_groups

        torch, dev = self.torch, self.device
        d_in, h1, h2, d_out = self.shapes.mlp
        dp, k = PERIODIC[p]
        fam1, fam2 = PeriodicRow(h1, dp, k), PeriodicRow(h2, dp, k)
        x = torch.randn(batch, d_in, generator=self.gen).to(dev)
        target = torch.randint(0, d_out, (batch,), generator=self.gen).to(dev)

        def mlp(a: int, b: int, drop: float | None) -> Any:
            return mlp_model((d_in, a, b, d_out), drop, dev)

        def stepper(model: Any, before: Callable[[], None] | None = None) -> Callable[[], Any]:
            return training_step(model, x, target, before)

        t_dropout = self.time_ms(stepper(mlp(h1, h2, p)))
        k1, k2 = round(h1 * k / dp), round(h2 * k / dp)
        t_limit = self.time_ms(stepper(mlp(k1, k2, None)))
        flop_ratio = mlp_flops(batch, (d_in, h1, h2, d_out)) / mlp_flops(batch, (d_in, k1, k2, d_out))
        reference: dict[int, Any] = {}
        # grouped_mm: the gathered backend with torch._grouped_mm for the pattern groups
        backends = (*self.backends, "grouped_mm") if hasattr(torch, "_grouped_mm") else self.backends
        for groups in (1, 2 if self.args.smoke else auto_groups(p)):  # the default groups="auto" on the GPU
            for backend in backends:

                def measure(backend: str = backend, groups: int = groups) -> dict[str, Any]:
                    model = mlp(h1, h2, None)
                    l1, l2, l3 = (ARDLinear.from_linear(model[i], backend) for i in (0, 2, 4))
                    state = torch.Generator().manual_seed(1)

                    def new_patterns() -> None:  # a new pattern (per group) every step, sampling included
                        a, b = fam1.sample_many(groups, state), fam2.sample_many(groups, state)
                        l1.set_patterns(out_pattern=a)
                        l2.set_patterns(in_pattern=a, out_pattern=b)
                        l3.set_patterns(in_pattern=b)

                    new_patterns()
                    with torch.autocast(dev.type, dtype=torch.bfloat16):
                        out = model(x).float()
                    out.square().mean().backward()
                    check = torch.cat([out.detach().flatten()[:4096], l2.weight.grad.flatten()[:: max(1, h1)]])
                    model.zero_grad(set_to_none=True)
                    err = rel_error(check, reference.setdefault(groups, check))  # vs the torch backend's
                    t = self.time_ms(stepper(model, new_patterns))
                    speedup = t_dropout / t
                    return {"ms": t, "dropout_ms": t_dropout, "speedup": speedup, "flop_ratio": flop_ratio,
                            "of_flop_ratio": speedup / flop_ratio, "limit_ms": t_limit,
                            "limit_speedup": t_dropout / t_limit, "err": err, "ok": err <= TOL}  # fmt: skip

                label = {"kind": "mlp", "M": batch, "p": p, "groups": groups, "backend": backend,
                         "shape": "-".join(map(str, self.shapes.mlp))}  # fmt: skip
                self.row("mlp", label, measure)


def mlp_model(widths: tuple[int, int, int, int], drop: float | None, device: Any) -> Any:
    """The benchmark's MLP ``d_in-a-b-d_out`` (ReLU, nn.Dropout(drop) after each hidden layer unless None), seeded."""
    import torch
    from torch import nn

    d_in, a, b, d_out = widths
    torch.manual_seed(0)
    extra = [nn.Dropout(drop)] if drop is not None else []
    layers = [nn.Linear(d_in, a), nn.ReLU(), *extra, nn.Linear(a, b), nn.ReLU(), *extra, nn.Linear(b, d_out)]
    return nn.Sequential(*layers).to(device).train()


def training_step(model: Any, x: Any, target: Any, before: Callable[[], None] | None = None) -> Callable[[], Any]:
    """One bf16-autocast SGD step of ``model`` on ``(x, target)``, after ``before()`` (new patterns) if given."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> Any:
        if before is not None:
            before()
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def mlp_flops(batch: int, widths: tuple[int, int, int, int]) -> int:
    """FLOPs of one training step of the three Linears of an MLP of ``widths`` (no grad_x for the first)."""
    from lightning_ard.accounting import linear_step_flops

    d_in, a, b, d_out = widths
    return (
        linear_step_flops(batch, a, d_in, False) + linear_step_flops(batch, b, a, True)
        + linear_step_flops(batch, d_out, b, True)
    )  # fmt: skip


# --- the three products of a row-pattern Linear, per backend, on compact operands --------------------------------

Products = dict[str, Callable[[], Any]]
"""``forward``, ``grad_x`` and ``grad_w`` of one backend, each a call without arguments."""


def torch_products(w: Any, xc: Any, g: Any, p_in: Any, p_out: Any) -> Products:
    """What torch_ops' autograd Function does per product (strided views of the weight, a scattered gradient)."""
    import torch

    from lightning_ard.kernels import torch_ops

    dev = w.device
    wc_t = torch_ops.take(torch_ops.take(w, 0, p_out.selector(dev)), 1, p_in.selector(dev)).contiguous()

    def grad_w() -> Any:
        gw = torch.zeros(w.shape, dtype=w.dtype, device=dev)
        torch_ops.put(gw, p_out.selector(dev), p_in.selector(dev), torch.mm(g.t(), xc))
        return gw

    def forward() -> Any:
        return torch.mm(xc, torch_ops.take(torch_ops.take(w, 0, p_out.selector(dev)), 1, p_in.selector(dev)).t())

    return {"forward": forward, "grad_x": lambda: torch.mm(g, wc_t), "grad_w": grad_w}


def gathered_products(w: Any, xc: Any, g: Any, p_in: Any, p_out: Any) -> Products:
    """The gathered backend: gather once (forward), reuse the block, one-pass full gradient."""
    import torch

    from lightning_ard.kernels.gathered import aligned, gather_block, mm_into, write_full
    from lightning_ard.kernels.kept import kept_units

    dev, dt, (n_out, n_in) = w.device, w.dtype, w.shape
    ins, outs = kept_units(p_in, n_in, dev), kept_units(p_out, n_out, dev)
    wc_g = gather_block(w, outs, ins, dt)
    xa, ga = aligned(xc, dt), aligned(g, dt)
    return {
        "forward": lambda: torch.mm(aligned(xc, dt), gather_block(w, outs, ins, dt).t()),
        "grad_x": lambda: mm_into(torch.empty(xc.shape, dtype=dt, device=dev), aligned(g, dt), wc_g, 1.0),
        "grad_w": lambda: write_full(lambda out: mm_into(out, ga.t(), xa, 1.0), outs, ins, dt, dev),
    }


def triton_products(w: Any, xc: Any, g: Any, p_in: Any, p_out: Any) -> Products:
    """The Triton backend's gather GEMM kernels, reading the weight through int32 kept-index vectors."""
    import torch

    from lightning_ard.kernels.kept import kept_units
    from lightning_ard.kernels.triton.common import precision_for
    from lightning_ard.kernels.triton.row import row_forward, row_grad_input, row_grad_weight

    dev, dt, (n_out, n_in) = w.device, w.dtype, w.shape
    prec = precision_for(dt, dev)
    ti, to = kept_units(p_in, n_in, dev).index32, kept_units(p_out, n_out, dev).index32

    def grad_w() -> Any:
        return row_grad_weight(g, xc, torch.zeros(w.shape, dtype=dt, device=dev), ti, to, 1.0, True, prec)

    return {
        "forward": lambda: row_forward(xc, w, None, ti, to, 1.0, True, prec),
        "grad_x": lambda: row_grad_input(g, w, ti, to, 1.0, torch.empty(xc.shape, dtype=dt, device=dev), prec),
        "grad_w": grad_w,
    }


# --- output -------------------------------------------------------------------------------------------------------

_COLUMNS = {
    "products": ["M", "p", "shape", "product", "backend", "ms", "cublas_ms", "ratio", "tflops", "err", "ok", "note"],
    "tiles": ["M", "p", "shape", "backend", "ms", "dense_ms", "speedup", "ideal", "err", "ok", "note"],
    "grouped": ["M", "p", "groups", "shape", "backend", "ms", "cublas_ms", "ratio", "tflops", "err", "ok", "note"],
    "mlp": ["M", "p", "groups", "backend", "ms", "dropout_ms", "speedup", "flop_ratio", "of_flop_ratio",
            "limit_ms", "limit_speedup", "err", "ok", "note"],
}  # fmt: skip
_TITLES = {
    "products": "Row-pattern products vs cuBLAS on the same pitch-padded compact shape (ratio = cuBLAS / backend; "
    "goal >= 0.9)",
    "tiles": "Tile patterns, forward + backward vs the dense GEMMs (ideal = 1 / kept fraction)",
    "grouped": "Pattern groups, forward + backward of the layer (compact input and output per group) vs cuBLAS on one "
    "compact shape of the same FLOPs (ratio = cuBLAS / path)",
    "mlp": "MLP training step vs nn.Dropout (bf16 autocast, SGD momentum; goal: speedup >= 0.85 x FLOP ratio at "
    "batch 4096, p = 0.5); limit = the compact model at the kept widths",
}


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = ["# ARD kernels: GPU benchmark", ""]
    if meta.get("smoke"):
        lines += ["**SMOKE RUN (tiny shapes" + (", CPU interpreter" if meta.get("interpreter") else "")
                  + "): not a measurement.**", ""]  # fmt: skip
    lines += [f"- {k}: {v}" for k, v in meta.items()] + [""]
    for section, columns in _COLUMNS.items():
        part = [r for r in rows if r["section"] == section]
        if not part:
            continue
        lines += [f"## {_TITLES[section]}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in part]
        lines.append("")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


if __name__ == "__main__":
    sys.exit(main())
