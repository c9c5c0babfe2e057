"""Regenerate the results page: ``ard-results [--full] [--sweeps] [--render-only] [--only NAME,...]``.

Runs the benchmarks behind every speed and memory table of ``docs/results.md`` (:func:`bench_jobs`), records each
run's command, machine line and wall time in ``docs/results/runs.json``, and rewrites the page's generated blocks
in place (:mod:`lightning_ard.bench.markers`). Accuracy tables are rendered from the sweeps stored under
``docs/results/accuracy/`` (``ard-report``'s CSV) by the same code; ``--sweeps`` runs those sweeps first (hours on
a CPU; :data:`SWEEPS` lists their commands, which the page shows).

Modes: quick (default; few rounds, a few minutes on 2 CPU cores) and ``--full`` (more warm-up steps, rounds and
fits; the page states the run time of each). ``--render-only`` rewrites the page from the stored files without
running anything.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lightning_ard.app.report import site_label
from lightning_ard.bench import summaries, tables
from lightning_ard.bench.machine import machine_line
from lightning_ard.bench.markers import replace_blocks
from lightning_ard.lstm_policy import AUTO_LSTM
from lightning_ard.patterns.groups import describe

RESULTS = Path("docs/results")
PAGE = Path("docs/results.md")
README = Path("README.md")
MANIFEST = RESULTS / "runs.json"
SCRIPTS = {"ard-bench": "lightning_ard.bench.step", "ard-models-bench": "lightning_ard.bench.models"}
"""Console script -> module whose ``main(argv)`` it runs (the page shows the script, this runs the module)."""

SPEED_CASES = ",".join((
    "mlp784-1024-1024-10_b128", "mlp784-2048-2048-10_b256", "mlp784-2048-2048-10_b1024", "lstm2x650_v10k_t35_b20",
    "transformer",
))  # fmt: skip


@dataclass(frozen=True)
class Job:
    """One benchmark run: a console script, its arguments and the JSON file it writes."""

    name: str
    script: str
    args: tuple[str, ...]
    output: Path

    @property
    def command(self) -> str:
        """The command line as a user types it (shown on the page)."""
        return shlex.join((self.script, *self.args))

    def run(self) -> None:
        """Run the script's ``main`` in this process (so the machine line is this run's).

        Raises:
            RuntimeError: the script exited with a non-zero status (names the command).
        """
        main: Callable[[list[str]], int] = importlib.import_module(SCRIPTS[self.script]).main
        status = main(list(self.args))
        if status:
            raise RuntimeError(f"`{self.command}` exited with status {status}; run it alone to see why")


def bench_jobs(full: bool = False, device: str = "cpu") -> list[Job]:
    """The benchmarks behind the page's speed and memory tables, in quick or full mode."""
    timing = ("--rounds", "4") if full else ("--rounds", "2")  # 3 warm-up steps: the first ARD steps are slow
    common = ("--device", device, "--families", "block", "--rates", "0.5", *timing, "--no-png")
    speed = RESULTS / "speed.json"
    groups = RESULTS / "groups_speed.json"
    models = RESULTS / "models.json"
    return [
        Job("speed", "ard-bench", ("--cases", SPEED_CASES, "--groups", "auto,1", "--never-slower", *common,
                                   "--json", speed.as_posix()), speed),
        Job("groups", "ard-bench", ("--cases", "mlp784-1024-1024-10_b128", "--groups", "1,2,4,8", *common,
                                    "--json", groups.as_posix()), groups),
        Job("models", "ard-models-bench", ("--steps", "40", "--rounds", "5" if full else "2",
                                           "--json", models.as_posix()), models),
    ]  # fmt: skip


@dataclass(frozen=True)
class Sweep:
    """A stored accuracy sweep: its ``ard-train -m`` commands, the CSV kept on the page's side and where it ran."""

    name: str
    setting: str
    csv: Path
    commands: tuple[str, ...]
    machine: str
    defaults: str | None = None  # the report label of the arm that spells the defaults out (None: "<family> xG")

    def run(self) -> None:
        """Run the sweep (hours on a CPU), report it with ``ard-report`` and keep its run table as :attr:`csv`."""
        out = Path("multirun/accuracy") / self.name
        for command in self.commands:
            subprocess.run(shlex.split(command), check=True)
        subprocess.run(["ard-report", out.as_posix()], check=True)
        self.csv.parent.mkdir(parents=True, exist_ok=True)
        if self.csv.name != "report_summary.csv":
            shutil.copyfile(out / "report.csv", self.csv)
            return
        for name in ("report_summary.csv", "report_curves.png"):  # a three-arm study: its summary and curves
            shutil.copyfile(out / name, self.csv.parent / name)


def _mlp(name: str, arms: Sequence[str], *settings: str) -> tuple[str, ...]:
    base = "ard-train -m experiment=mlp_fashion trainer.max_epochs=4 trainer.enable_progress_bar=false"
    return tuple(f"{base} {' '.join(settings)} {arm} hydra.sweep.dir=multirun/accuracy/{name}/{i}"
                 for i, arm in enumerate(arms))  # fmt: skip


LSTM_STUDY = RESULTS / "lstm_study"
"""The LSTM study where dropout pays; every ``*summary.csv`` here is rendered (``ard-report``'s summary)."""
LSTM_BATCH = RESULTS / "lstm_batch"
"""The same study at batch 64 (one shared pattern covers more tokens of a step)."""

_OWN = "ard.never_slower=false ard.measure_speedup=false"  # the setting's own accuracy: no step falls back
_ARMS = ("ard=dropout ard.p=0.3,0.5,0.7 seed=0,1,2", f"ard=default {_OWN} ard.p=0.3,0.5,0.7 seed=0,1,2")
_SGD = "model.optimizer=sgd model.lr=0.05 model.momentum=0.9 data.batch_size=128"
_ADAM = "model.optimizer=adam model.lr=0.001 data.batch_size=256"
_EPYC = "AMD EPYC, 2 cores, one run per core at 1 torch thread, torch 2.13.0+cpu"
_STUDY = "ard-train -m experiment=lstm_kjv_study trainer.enable_progress_bar=false"
_SPELLED = " ".join(f"ard.{k}={v}" for k, v in AUTO_LSTM.items())
_STUDY_ARMS = (
    "ard=dropout ard.p=0.0,0.3,0.5 seed=1,2,3",  # no dropout, nn.Dropout at both rates
    f"ard.p=0.3,0.5 {_SPELLED} {_OWN} seed=1,2,3",  # the defaults, spelled out (the same plan: test_lstm_policy)
    f"ard.p=0.5 ard.lstm_mode=sequence ard.lstm_groups=2 ard.lstm_pattern=random {_OWN} seed=1,2,3",  # sequence G=2
)
_STUDY_DEFAULTS = describe("block", 4, None, 1) + site_label({k: str(v) for k, v in AUTO_LSTM.items()})
"""The report label of the arm that spells the defaults out."""
_BATCH_64 = "data.batch_size=64 trainer.max_epochs=10 trainer.val_check_interval=1.0"  # about as many steps
_BATCH_ARMS = (
    "ard=dropout ard.p=0.5 seed=1,2,3,4,5", f"ard.p=0.5 {_OWN} seed=1,2,3,4,5",  # nn.Dropout, the defaults
    "ard=dropout ard.p=0.0 seed=1,2,3",  # no dropout: the check that this fit overfits without dropout
)  # fmt: skip
SWEEPS = (
    Sweep("mlp_sgd", "MLP, SGD momentum 0.9, lr 0.05, batch 128", RESULTS / "accuracy/mlp_sgd.csv",
          _mlp("mlp_sgd", _ARMS, _SGD), _EPYC),
    Sweep("mlp_nesterov", "MLP, SGD Nesterov momentum 0.9, lr 0.05, batch 128",
          RESULTS / "accuracy/mlp_nesterov.csv", _mlp("mlp_nesterov", _ARMS, _SGD, "model.nesterov=true"),
          _EPYC),
    Sweep("mlp_adam", "MLP, Adam, lr 1e-3, batch 256", RESULTS / "accuracy/mlp_adam.csv",
          _mlp("mlp_adam", _ARMS, _ADAM), _EPYC),
    Sweep("lstm_study", "LSTM LM 2 x 256, KJV, first 300k tokens, 5 epochs, SGD lr 1",
          LSTM_STUDY / "report_summary.csv",
          tuple(f"{_STUDY} {arm} hydra.sweep.dir=multirun/accuracy/lstm_study/{i}"
                for i, arm in enumerate(_STUDY_ARMS)),
          "AMD EPYC, 2 cores, every run at 1 torch thread (several runs at a time), torch 2.13.0+cpu",
          defaults=_STUDY_DEFAULTS),
    Sweep("lstm_batch", "LSTM LM 2 x 256, KJV, first 300k tokens, batch 64, 10 epochs, SGD lr 1",
          LSTM_BATCH / "report_summary.csv",
          tuple(f"{_STUDY} {_BATCH_64} {arm} hydra.sweep.dir=multirun/accuracy/lstm_batch/{i}"
                for i, arm in enumerate(_BATCH_ARMS)),
          "AMD EPYC, 2 cores, every run at 1 torch thread (two runs at a time), torch 2.13.0+cpu"),
    Sweep("mlp_groups", "MLP, SGD momentum 0.9, lr 0.05, batch 128, p = 0.5", RESULTS / "accuracy/mlp_groups.csv",
          _mlp("mlp_groups", ("ard=dropout ard.p=0.5 seed=0,1",
                              "ard=block ard.groups=1,2,4,8 ard.group_draws=independent ard.p=0.5 seed=0,1"), _SGD),
          "Intel Xeon, 2 cores, one run per core at 1 torch thread, torch 2.13.0+cpu"),
    Sweep("mlp_regularization", "MLP, 10k training images, 40 epochs, Adam, batch 256",
          RESULTS / "accuracy/mlp_regularization.csv",
          tuple(f"ard-train -m experiment=mlp_fashion data.val_size=50000 trainer.max_epochs=40 {_ADAM} {arm} "
                f"hydra.sweep.dir=multirun/accuracy/mlp_regularization/{i}" for i, arm in
                enumerate(("ard=dropout ard.p=0.0,0.5 seed=0,1,2", f"ard=default {_OWN} ard.p=0.5 seed=0,1,2"))),
          ""),
)  # fmt: skip
"""The accuracy sweeps the page renders; each CSV is ``ard-report``'s ``report.csv`` of the sweep (the KJV one a
summary CSV)."""


def _provenance(manifest: dict[str, dict[str, object]], job: str) -> str:
    """The lines under a benchmark table: its command, mode, wall time and machine (from the run's record)."""
    run = manifest.get(job)
    if run is None:
        return f"*Not measured yet: run `ard-results --only {job}`.*"
    return (
        f"Command ({run['mode']} mode, {float(run['seconds']):.0f} s): `{run['command']}`  \n"
        f"Machine: {run['machine']}."
    )


def _sweep_provenance(sweeps: Sequence[Sweep]) -> str:
    """The sweeps' commands (collapsed) and machines, under an accuracy table."""
    machines = sorted({s.machine for s in sweeps if s.machine and s.csv.is_file()})
    lines = [f"Machine: {'; '.join(machines)}." if machines else "", "", '??? note "Commands (`ard-results --sweeps`)"',
             "    ```bash"]  # fmt: skip
    for sweep in sweeps:
        lines += [f"    {c}" for c in sweep.commands]
        kept = (f"its report_summary.csv and report_curves.png in {sweep.csv.parent}"
                if sweep.csv.name == "report_summary.csv" else f"its report.csv as {sweep.csv}")  # fmt: skip
        lines.append(f"    ard-report multirun/accuracy/{sweep.name}  # then keep {kept}")
    lines.append("    ```")
    return "\n".join(lines)


def _sweeps(*names: str) -> list[Sweep]:
    return [s for s in SWEEPS if s.name in names]


def render_blocks(manifest: dict[str, dict[str, object]], results: Path = RESULTS) -> dict[str, str]:
    """Every generated block of the page, from the stored benchmark JSON files and sweep CSVs."""

    def bench(job: str, render: Callable[[list[tables.Record]], str], source: str) -> str:
        path = results / source
        body = render(tables.load(path)) if path.is_file() else summaries.NOT_MEASURED
        return f"{body}\n\n{_provenance(manifest, job)}"

    def accuracy(*names: str) -> str:
        chosen = _sweeps(*names)
        return summaries.render_sweeps([(s.setting, results / s.csv.relative_to(RESULTS)) for s in chosen]) + (
            "\n\n" + _sweep_provenance(chosen)
        )

    groups_acc = results / "accuracy/mlp_groups.csv"

    def groups(records: list[tables.Record]) -> str:
        rows = summaries.read_summary(groups_acc) if groups_acc.is_file() else []
        tables.groups_plot(records, rows, results / "groups.png")
        return f"{tables.groups_table(records, rows)}\n\n![Speed and accuracy per group count](results/groups.png)"

    def study(sweep: str, folder: Path) -> str:
        stored = results / folder.relative_to(RESULTS)
        link = (folder / "report_curves.png").relative_to(PAGE.parent).as_posix()
        figure = f"\n\n![Validation perplexity during the fit, mean over seeds]({link})"
        return (summaries.render_folder(stored, display=folder) + figure * (stored / "report_curves.png").is_file()
                + "\n\n" + _sweep_provenance(_sweeps(sweep)))  # fmt: skip

    return {
        "speed": bench("speed", tables.speed_table, "speed.json"),
        "models": bench("models", tables.models_table, "models.json"),
        "groups": bench("groups", groups, "groups_speed.json") + "\n\n" + _sweep_provenance(_sweeps("mlp_groups")),
        "memory": bench("speed", tables.memory_table, "speed.json"),
        "accuracy": accuracy("mlp_sgd", "mlp_nesterov", "mlp_adam"),
        "regularization": accuracy("mlp_regularization"),
        "lstm-study": study("lstm_study", LSTM_STUDY),
        "lstm-batch": study("lstm_batch", LSTM_BATCH),
    }


GLANCE = (
    ("MLP 784-2048-2048-10, batch 1024", "mlp784-2048-2048-10_b1024", None),
    ("MLP 784-1024-1024-10, batch 128", "mlp784-1024-1024-10_b128", "mlp_sgd"),
    ("LSTM LM 2 × 650, batch 20", "lstm2x650_v10k_t35_b20", "lstm_study"),
    ("Transformer encoder, batch 32", "transformer4x256-ff1024_t64_b32", None),
)
"""README's rows: label, the speed table's case, the accuracy sweep of that model (None: not measured)."""


def _accuracy_at(sweep: str | None, p: float, results: Path) -> str:
    """The defaults' change against nn.Dropout at rate ``p`` in a stored sweep, with its seeds."""
    chosen = _sweeps(sweep) if sweep else []
    path = results / chosen[0].csv.relative_to(RESULTS) if chosen else None
    if path is None or not path.is_file():
        return "not measured yet"
    rows = [r for r in summaries.read_summary(path) if r.p == p and r.delta is not None]
    defaults = chosen[0].defaults
    if defaults is not None:  # the arm that spells the defaults out
        rows = [r for r in rows if r.family == defaults][:1]
    else:  # the defaults' row, not an LSTM setting's
        rows = [r for r in rows if " lstm " not in f"{r.family} "][:1]
    return "; ".join(f"{summaries.format_delta(r)} ({r.runs} seed{'s' * (r.runs != 1)})" for r in rows) or (
        "not measured yet"
    )


def glance(results: Path = RESULTS) -> str:
    """README's short table: the defaults' speedup and memory (the speed run) and accuracy change (p = 0.5)."""
    path = results / "speed.json"
    records = tables.load(path) if path.is_file() else []
    lines = ["| model | speedup of the defaults | accuracy change at p = 0.5 | peak memory of a step |",
             "|---|---|---|---|"]  # fmt: skip
    for label, case, sweep in GLANCE:
        d = next((r for r in records if r["case"] == case and r["groups"] > 1), None)
        speed = "" if d is None else f"{d['speedup']:.2f}×"
        dense = d and d.get("dense_peak_mib")
        memory = f"{d['ard_peak_mib'] / dense - 1:+.0%}" if d and dense else ""
        lines.append(f"| {label} | {speed} | {_accuracy_at(sweep, 0.5, results)} | {memory} |")
    return "\n".join(lines)


def run_jobs(jobs: Sequence[Job], manifest: dict[str, dict[str, object]], mode: str, device: str) -> None:
    """Run every job, recording its command, mode, wall time and machine line in ``manifest`` as it finishes."""
    for job in jobs:
        print(f"ard-results: {job.command}", flush=True)
        start = time.perf_counter()
        job.run()
        manifest[job.name] = {
            "command": job.command,
            "mode": mode,
            "seconds": round(time.perf_counter() - start, 1),
            "machine": machine_line(device),
        }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``ard-results``)."""
    parser = argparse.ArgumentParser(prog="ard-results", description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="more warm-up, rounds and fits (see the page for time)")
    parser.add_argument("--sweeps", action="store_true", help="run the accuracy sweeps first (hours on a CPU)")
    parser.add_argument("--render-only", action="store_true", help="rewrite the page from the stored files only")
    names = ", ".join(j.name for j in bench_jobs())
    parser.add_argument("--only", default=None, help=f"comma-separated jobs to run: {names}")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device of the step benchmarks")
    parser.add_argument("--page", type=Path, default=PAGE, help="the page to rewrite")
    args = parser.parse_args(argv)
    if not args.page.is_file():
        parser.error(f"--page {args.page} does not exist; run from the repository root or pass --page")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is present; use --device cpu")
    jobs = bench_jobs(args.full, args.device)
    if args.only:
        names = args.only.split(",")
        unknown = sorted(set(names) - {j.name for j in jobs})
        if unknown:
            parser.error(f"--only {unknown}: no such job; jobs: {', '.join(j.name for j in jobs)}")
        jobs = [j for j in jobs if j.name in names]
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}
    if args.sweeps:
        for sweep in SWEEPS:
            sweep.run()
    if not args.render_only:
        start = time.perf_counter()
        run_jobs(jobs, manifest, "full" if args.full else "quick", args.device)
        MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
        print(f"ard-results: benchmarks took {time.perf_counter() - start:.0f} s", flush=True)
    args.page.write_text(replace_blocks(args.page.read_text(), render_blocks(manifest)))
    if README.is_file():
        README.write_text(replace_blocks(README.read_text(), {"glance": glance()}))
    print(f"ard-results: rewrote {args.page} and {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
