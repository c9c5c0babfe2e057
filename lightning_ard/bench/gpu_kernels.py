"""GPU benchmark of the Triton ARD kernels: correctness at large shapes first, then timings.

Sections (each per precision mode: ``tf32`` = float32 tensors with TF32 tensor cores, ``bf16`` = bfloat16
tensors or bfloat16 autocast, optionally ``fp32`` = float32 without TF32):

1. correctness: forward and every gradient of the Triton backend against the PyTorch ops (the oracle) on large
   shapes (row patterns: compact and full-width input; tile patterns), as max relative error;
2. compact GEMM vs cuBLAS: each product of a row-pattern Linear (forward, grad_x, grad_W) through the gather
   kernel, against ``torch.mm`` on an already-compact copy of the same operands (copy made outside the timing);
   TFLOP/s of both, goal: ratio >= 0.9;
3. tile-skip GEMM vs dense GEMM at p = 0.3 / 0.5 / 0.7 (64 x 64 tiles): speedup over ``torch.mm`` on the full
   weight, goal: >= 0.85 / (kept fraction);
4. training step of the MLP 784-4096-4096-10 at batch 1024 and 4096 (forward, cross-entropy, backward, SGD
   step): ``nn.Dropout`` vs ARD row patterns through the Triton backend (new pattern every step, sampling
   included), with the FLOP ratio (ideal speedup) and the compact-model limit (the same MLP with the kept widths
   and no dropout). Goal: >= 0.85 x the FLOP ratio.

Timings are medians of ``triton.testing.do_bench`` (warm-up, then repeated runs timed with CUDA events, L2
flushed between runs); autotuning happens in an explicit warm-up call before timing.

Usage::

    python lightning_ard/bench/gpu_kernels.py --out docs/benchmarks/gpu_kernels_h100   # writes .json and .md
    python lightning_ard/bench/gpu_kernels.py --quick                                   # a short subset
    python lightning_ard/bench/gpu_kernels.py --dry-run                                 # plumbing check on the CPU

Without a CUDA device the script exits with status 2 and measures nothing. ``--dry-run`` instead runs every
section at tiny shapes in Triton's CPU interpreter (its numbers mean nothing and are labelled so).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

P_VALUES = (0.3, 0.5, 0.7)
# (dp, k) of the periodic row / tile family whose keep fraction k/dp is 1 - p.
PERIODIC = {0.3: (10, 7), 0.5: (2, 1), 0.7: (10, 3)}
MODES = ("tf32", "bf16", "fp32")


@dataclass(frozen=True)
class Shapes:
    """Sizes of one run (full-size on the GPU, tiny for --dry-run)."""

    gemm_batches: tuple[int, ...]
    width: int
    tile: tuple[int, int]
    mlp: tuple[int, int, int, int]
    mlp_batches: tuple[int, ...]
    check_batch: int


FULL = Shapes((1024, 4096), 4096, (64, 64), (784, 4096, 4096, 10), (1024, 4096), 2048)
QUICK = Shapes((4096,), 4096, (64, 64), (784, 4096, 4096, 10), (1024,), 1024)
DRY = Shapes((32,), 160, (16, 16), (48, 160, 160, 10), (32,), 32)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write results to OUT.json and OUT.md (suffix replaced)")
    parser.add_argument("--modes", default="tf32,bf16", help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--quick", action="store_true", help="batch 4096 GEMMs, batch 1024 MLP, p = 0.5 only")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes in the CPU interpreter (no GPU)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        parser.error(f"unknown modes {unknown}; choose from {list(MODES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before the first import of triton
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu_kernels.py: no CUDA device (torch.cuda.is_available() is False); nothing was measured. "
            "Run it on a machine with an NVIDIA GPU, or pass --dry-run to check the script on the CPU.",
            file=sys.stderr,
        )
        return 2
    bench = Bench(args)
    ok = bench.run()
    bench.report()
    return 0 if ok else 1


class Bench:
    """Runs the sections and collects rows for the table, the JSON and the Markdown report."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, when run as a script
        self.args = args
        self.torch = torch
        self.device = torch.device("cpu" if args.dry_run else "cuda")
        self.shapes = DRY if args.dry_run else (QUICK if args.quick else FULL)
        self.p_values = (0.5,) if args.quick else P_VALUES
        self.sections: dict[str, list[dict[str, Any]]] = {}
        self.gen = torch.Generator().manual_seed(args.seed)

    # --- infrastructure ------------------------------------------------------------------------------------------

    def time_ms(self, fn: Callable[[], Any]) -> float:
        """Median time of ``fn`` in ms (do_bench on CUDA; one perf_counter run in --dry-run)."""
        fn()  # warm-up: compiles and autotunes outside the timing
        if self.args.dry_run:
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))

    @contextlib.contextmanager
    def mode(self, name: str) -> Iterator[Any]:
        """Set TF32 for the mode; yield the tensor dtype of kernel-level benchmarks."""
        torch = self.torch
        old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = name == "tf32"
        try:
            yield torch.bfloat16 if name == "bf16" else torch.float32
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old

    def add(self, section: str, row: dict[str, Any]) -> None:
        self.sections.setdefault(section, []).append(row)
        print(f"[{section}] " + "  ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)

    def randn(self, *shape: int, dtype: Any = None) -> Any:
        t = self.torch.randn(*shape, generator=self.gen)
        return t.to(device=self.device, dtype=dtype or self.torch.float32)

    def run(self) -> bool:
        ok = True
        for mode in self.args.modes:
            ok &= self.correctness(mode)
        if not ok:
            print("correctness checks failed: timings skipped", file=sys.stderr)
            return False
        for mode in self.args.modes:
            self.compact_gemm(mode)
            self.tile_gemm(mode)
            self.mlp_step(mode)
        return True

    # --- 1. correctness ------------------------------------------------------------------------------------------

    def correctness(self, mode: str) -> bool:
        from lightning_ard.kernels.torch_backend import TorchBackend
        from lightning_ard.kernels.triton.backend import TritonBackend
        from lightning_ard.patterns import PeriodicRow, PeriodicTile, RandomSubsetRow

        torch = self.torch
        tol = {"tf32": 1e-2, "bf16": 3e-2, "fp32": 1e-4}[mode]
        m, n = self.shapes.check_batch, self.shapes.width
        all_ok = True
        with self.mode(mode) as dtype:
            p_out, p_in = PeriodicRow(n, 2).sample(self.gen), PeriodicRow(n, 10, 7).sample(self.gen)
            subset = RandomSubsetRow(n, n // 3).sample(self.gen)
            tile = PeriodicTile(n, n, 2, 1, self.shapes.tile).sample(self.gen)
            cases = {
                "row in+out, compact x": (lambda b, x, w, bb: b.row_linear(x, w, bb, p_in, p_out, True), p_in.num_kept),
                "row consumer, full x": (lambda b, x, w, bb: b.row_linear(x, w, bb, subset, None, False), n),
                "row producer": (lambda b, x, w, bb: b.row_linear(x, w, bb, None, p_out, False), n),
                "tile p=0.5": (lambda b, x, w, bb: b.tile_linear(x, w, bb, tile), n),
            }
            for name, (op, width) in cases.items():
                x0, w0 = self.randn(m, width, dtype=dtype), self.randn(n, n, dtype=dtype) / n**0.5
                b0 = self.randn(n, dtype=dtype)
                results = []
                for backend in (TritonBackend(), TorchBackend()):
                    x, w, b = (t.clone().requires_grad_(True) for t in (x0, w0, b0))
                    y = op(backend, x, w, b)
                    y.float().square().sum().backward()
                    results.append((y.detach(), x.grad, w.grad, b.grad))
                    del x, w, b, y
                errors = {
                    what: float((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-30))
                    for what, got, ref in zip(("y", "grad_x", "grad_W", "grad_b"), *results, strict=True)
                }
                finite = all(bool(torch.isfinite(t).all()) for t in results[0])
                ok = finite and max(errors.values()) <= tol
                all_ok &= ok
                self.add("correctness", {"mode": mode, "case": name, **errors, "tol": tol, "ok": ok})
                del results
        return all_ok

    # --- 2. compact GEMM vs cuBLAS -------------------------------------------------------------------------------

    def compact_gemm(self, mode: str) -> None:
        from lightning_ard.kernels.triton.common import precision_for

        with self.mode(mode) as dtype:
            prec = precision_for(dtype, self.device)
            for m in self.shapes.gemm_batches:
                for p in self.p_values:
                    self._compact_gemm_case(mode, dtype, prec, m, p)

    def _compact_gemm_case(self, mode: str, dtype: Any, prec: Any, m: int, p: float) -> None:
        from lightning_ard.kernels.triton.row import row_forward, row_grad_input, row_grad_weight
        from lightning_ard.patterns import PeriodicRow

        torch = self.torch
        n = self.shapes.width
        dp, k = PERIODIC[p]
        p_in, p_out = PeriodicRow(n, dp, k).sample(self.gen), PeriodicRow(n, dp, k).sample(self.gen)
        in_idx, out_idx = p_in.index(self.device), p_out.index(self.device)
        kc, nc = in_idx.numel(), out_idx.numel()
        w = self.randn(n, n, dtype=dtype)
        x_full = self.randn(m, n, dtype=dtype)
        xc = x_full[:, in_idx].contiguous()
        wc = w[out_idx][:, in_idx].contiguous()  # the already-compact copy cuBLAS gets (not timed)
        g = self.randn(m, nc, dtype=dtype)
        y = torch.empty(m, nc, dtype=dtype, device=self.device)
        gx = torch.empty(m, kc, dtype=dtype, device=self.device)
        gw = torch.zeros(n, n, dtype=dtype, device=self.device)
        products = {
            "forward (compact x)": (
                lambda: row_forward(xc, w, None, in_idx, out_idx, 1.0, True, prec, out=y),
                lambda: torch.mm(xc, wc.t()),
            ),
            "forward (gather x)": (
                lambda: row_forward(x_full, w, None, in_idx, out_idx, 1.0, False, prec, out=y),
                lambda: torch.mm(xc, wc.t()),
            ),
            "grad_x": (
                lambda: row_grad_input(g, w, in_idx, out_idx, 1.0, gx, prec),
                lambda: torch.mm(g, wc),
            ),
            "grad_W (into full-size grad)": (
                lambda: row_grad_weight(g, xc, gw, in_idx, out_idx, 1.0, True, prec),
                lambda: torch.mm(g.t(), xc),
            ),
        }
        flops = 2 * m * nc * kc
        for name, (triton_fn, cublas_fn) in products.items():
            t_tr, t_cu = self.time_ms(triton_fn), self.time_ms(cublas_fn)
            ratio = t_cu / t_tr
            self.add("compact_gemm", {
                "mode": mode, "M": m, "p": p, "N_kept": nc, "K_kept": kc, "product": name,
                "triton_ms": t_tr, "cublas_ms": t_cu, "triton_tflops": flops / t_tr / 1e9,
                "cublas_tflops": flops / t_cu / 1e9, "ratio": ratio, "goal": 0.9, "met": ratio >= 0.9,
            })  # fmt: skip

    # --- 3. tile-skip GEMM vs dense ------------------------------------------------------------------------------

    def tile_gemm(self, mode: str) -> None:
        from lightning_ard.kernels.triton.common import precision_for

        with self.mode(mode) as dtype:
            prec = precision_for(dtype, self.device)
            for m in self.shapes.gemm_batches:
                self._tile_gemm_batch(mode, dtype, prec, m)

    def _tile_gemm_batch(self, mode: str, dtype: Any, prec: Any, m: int) -> None:
        from lightning_ard.kernels.triton.tile import tile_forward, tile_grad_input, tile_grad_weight, tile_tables
        from lightning_ard.patterns import PeriodicTile

        torch = self.torch
        n = self.shapes.width
        x, w, g = self.randn(m, n, dtype=dtype), self.randn(n, n, dtype=dtype), self.randn(m, n, dtype=dtype)
        y, gx = torch.empty(m, n, dtype=dtype, device=self.device), torch.empty_like(x)
        gw = torch.zeros(n, n, dtype=dtype, device=self.device)
        dense = {
            "forward": lambda: torch.mm(x, w.t()),
            "grad_x": lambda: torch.mm(g, w),
            "grad_W": lambda: torch.mm(g.t(), x),
        }
        t_dense = {name: self.time_ms(fn) for name, fn in dense.items()}
        for p in self.p_values:
            dp, k = PERIODIC[p]
            pattern = PeriodicTile(n, n, dp, k, self.shapes.tile).sample(self.gen)
            tables, tile, s = tile_tables(pattern, self.device), pattern.tile, pattern.scale
            ops = {
                "forward": lambda t=tables, ti=tile, sc=s: tile_forward(x, w, None, t, ti, sc, prec, y),
                "grad_x": lambda t=tables, ti=tile, sc=s: tile_grad_input(g, w, t, ti, sc, prec, gx),
                "grad_W": lambda t=tables, ti=tile, sc=s: tile_grad_weight(g, x, gw, t, ti, sc, prec),
            }
            for name, fn in ops.items():
                t = self.time_ms(fn)
                speedup, goal = t_dense[name] / t, 0.85 / pattern.keep_fraction
                self.add("tile_gemm", {
                    "mode": mode, "M": m, "p": p, "kept_fraction": pattern.keep_fraction,
                    "tile": f"{tile[0]}x{tile[1]}", "product": name, "tile_ms": t, "dense_ms": t_dense[name],
                    "speedup": speedup, "goal": goal, "met": speedup >= goal,
                })  # fmt: skip

    # --- 4. MLP training step ------------------------------------------------------------------------------------

    def mlp_step(self, mode: str) -> None:
        import torch.nn.functional as F
        from torch import nn

        from lightning_ard.accounting import linear_step_flops
        from lightning_ard.kernels.triton.backend import TritonBackend
        from lightning_ard.patterns import PeriodicRow

        torch = self.torch
        d_in, h1, h2, d_out = self.shapes.mlp
        backend = TritonBackend()
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext()
        )

        def plain_mlp(a: int, b: int, p: float | None) -> nn.Sequential:
            drop = [nn.Dropout(p)] if p is not None else []
            layers = [nn.Linear(d_in, a), nn.ReLU(), *drop, nn.Linear(a, b), nn.ReLU(), *drop, nn.Linear(b, d_out)]
            return nn.Sequential(*layers).to(self.device)

        def step_fn(model: nn.Module, forward: Callable[[Any], Any], x: Any, target: Any) -> Callable[[], None]:
            opt = torch.optim.SGD(model.parameters(), lr=1e-3)

            def step() -> None:
                with autocast:
                    loss = F.cross_entropy(forward(x).float(), target)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            return step

        with self.mode(mode):
            for batch in self.shapes.mlp_batches:
                x = self.randn(batch, d_in)
                target = torch.randint(0, d_out, (batch,), generator=self.gen).to(self.device)
                for p in self.p_values:
                    dp, k = PERIODIC[p]
                    fam1, fam2 = PeriodicRow(h1, dp, k), PeriodicRow(h2, dp, k)
                    dense = plain_mlp(h1, h2, p).train()
                    t_dropout = self.time_ms(step_fn(dense, dense, x, target))

                    ard = plain_mlp(h1, h2, None).train()
                    l1, l2, l3 = ard[0], ard[2], ard[4]

                    def ard_forward(inp: Any, l1: Any = l1, l2: Any = l2, l3: Any = l3, f1: Any = fam1,
                                    f2: Any = fam2) -> Any:  # fmt: skip
                        p1, p2 = f1.sample(self.gen), f2.sample(self.gen)  # a new pattern every step
                        h = F.relu(backend.row_linear(inp, l1.weight, l1.bias, None, p1, False))
                        h = F.relu(backend.row_linear(h, l2.weight, l2.bias, p1, p2, True))
                        return backend.row_linear(h, l3.weight, l3.bias, p2, None, True)

                    t_ard = self.time_ms(step_fn(ard, ard_forward, x, target))
                    k1, k2 = round(h1 * k / dp), round(h2 * k / dp)
                    limit = plain_mlp(k1, k2, None).train()
                    t_limit = self.time_ms(step_fn(limit, limit, x, target))
                    dense_flops = (linear_step_flops(batch, h1, d_in, False) + linear_step_flops(batch, h2, h1, True)
                                   + linear_step_flops(batch, d_out, h2, True))  # fmt: skip
                    ard_flops = (linear_step_flops(batch, k1, d_in, False) + linear_step_flops(batch, k2, k1, True)
                                 + linear_step_flops(batch, d_out, k2, True))  # fmt: skip
                    flop_ratio = dense_flops / ard_flops
                    speedup = t_dropout / t_ard
                    self.add("mlp_step", {
                        "mode": mode, "batch": batch, "p": p, "dropout_ms": t_dropout, "ard_ms": t_ard,
                        "compact_limit_ms": t_limit, "speedup": speedup, "flop_ratio": flop_ratio,
                        "limit_speedup": t_dropout / t_limit, "of_flop_ratio": speedup / flop_ratio,
                        "goal": 0.85 * flop_ratio, "met": speedup >= 0.85 * flop_ratio,
                    })  # fmt: skip

    # --- output --------------------------------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        import triton

        torch = self.torch
        meta: dict[str, Any] = {
            "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "torch": torch.__version__,
            "triton": triton.__version__,
            "python": platform.python_version(),
            "modes": self.args.modes,
            "quick": self.args.quick,
            "dry_run": self.args.dry_run,
            "timing": "one perf_counter run after a warm-up call (dry run)"
            if self.args.dry_run
            else "median of triton.testing.do_bench(warmup=25 ms, rep=100 ms), after a warm-up/autotune call",
        }
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            meta.update(gpu=torch.cuda.get_device_name(self.device), capability=f"{props.major}.{props.minor}",
                        cuda=torch.version.cuda)  # fmt: skip
        else:
            meta["gpu"] = "none (CPU interpreter dry run: timings are meaningless)"
        return meta

    def report(self) -> None:
        meta = self.metadata()
        md = self.markdown(meta)
        print("\n" + md)
        if self.args.out is not None:
            out = self.args.out
            out.parent.mkdir(parents=True, exist_ok=True)
            out.with_suffix(".json").write_text(json.dumps({"meta": meta, **self.sections}, indent=2) + "\n")
            out.with_suffix(".md").write_text(md)
            print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")

    def markdown(self, meta: dict[str, Any]) -> str:
        lines = ["# Triton ARD kernels: GPU benchmark", ""]
        if meta["dry_run"]:
            lines += ["**DRY RUN in the CPU interpreter: not a measurement.**", ""]
        lines += [f"- {k}: {v}" for k, v in meta.items()] + [""]
        titles = {
            "correctness": "Correctness vs the PyTorch path (max relative error)",
            "compact_gemm": "Compact gather GEMM vs cuBLAS on an already-compact copy (goal: ratio >= 0.9)",
            "tile_gemm": "Tile-skipping GEMM vs dense GEMM (goal: speedup >= 0.85 / kept fraction)",
            "mlp_step": "MLP training step: nn.Dropout vs ARD row (Triton) (goal: >= 0.85 x FLOP ratio)",
        }
        for section, rows in self.sections.items():
            lines += [f"## {titles.get(section, section)}", ""]
            keys = list(rows[0])
            lines.append("| " + " | ".join(keys) + " |")
            lines.append("|" + "---|" * len(keys))
            lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in rows]
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
