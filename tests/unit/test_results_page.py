"""The results page's machinery: marker rewrite, sweep-summary rendering, the job list, the tables (no benchmark
runs here: the benchmarks' ``bench_case`` and ``bench_model`` are replaced by stubs)."""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

import pytest
import tomllib

from lightning_ard.app.report import COLUMNS
from lightning_ard.bench import models, results, step, summaries, tables
from lightning_ard.bench.machine import machine_line
from lightning_ard.bench.markers import MarkerError, block_names, replace_blocks

ROOT = Path(__file__).resolve().parents[2]

PAGE = """# Title

Prose before.

<!-- generated:speed -->
old table
<!-- /generated:speed -->

Prose between, with a `<!-- generated:speed -->` mention inline that is not a marker.

<!-- generated:memory -->
<!-- /generated:memory -->
Prose after.
"""


def test_replace_blocks_rewrites_only_the_blocks() -> None:
    out = replace_blocks(PAGE, {"speed": "| new |", "memory": "mem\n"})
    assert "old table" not in out
    assert "<!-- generated:speed -->\n| new |\n<!-- /generated:speed -->" in out
    assert "<!-- generated:memory -->\nmem\n<!-- /generated:memory -->" in out
    outside = PAGE.replace("old table\n", "")
    assert out.replace("| new |\n", "").replace("mem\n", "") == outside
    assert replace_blocks(out, {"speed": "| new |", "memory": "mem"}) == out  # idempotent


def test_replace_blocks_names_a_missing_block() -> None:
    with pytest.raises(MarkerError, match=r"no block named \['accuracy'\].*<!-- generated:accuracy -->"):
        replace_blocks(PAGE, {"speed": "", "memory": "", "accuracy": ""})


def test_replace_blocks_names_an_unknown_block() -> None:
    with pytest.raises(MarkerError, match=r"blocks \['memory'\] that nothing renders"):
        replace_blocks(PAGE, {"speed": "x"})
    assert "x\n<!-- /generated:speed -->" in replace_blocks(PAGE, {"speed": "x"}, strict=False)


@pytest.mark.parametrize(
    "page, message",
    [
        ("<!-- generated:a -->\ntext\n", "block 'a' is never closed"),
        ("<!-- /generated:a -->\n", "closes a block that is not open"),
        ("<!-- generated:a -->\n<!-- generated:b -->\n", "block 'a' is not closed before 'b' opens"),
        ("<!-- generated:a -->\n<!-- /generated:a -->\n<!-- generated:a -->\n<!-- /generated:a -->\n", "twice"),
    ],
)
def test_malformed_markers_fail_naming_the_block(page: str, message: str) -> None:
    with pytest.raises(MarkerError, match=message):
        replace_blocks(page, {"a": ""}, strict=False)


def test_the_page_has_exactly_the_blocks_the_command_renders(tmp_path: Path) -> None:
    names = block_names((ROOT / "docs/results.md").read_text())
    assert sorted(names) == sorted(results.render_blocks({}, tmp_path))
    assert "lstm-study" in names


def _write_runs(path: Path) -> None:
    rows = [
        ("dropout/0", "dropout", 0.5, 0.86), ("dropout/1", "dropout", 0.5, 0.87),
        ("default/0", "block x4 groups", 0.5, 0.865), ("default/1", "block x4 groups", 0.5, 0.875),
    ]  # fmt: skip
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for run, family, p, value in rows:
            empty = {"step_ms": "", "speedup": "", "flops_saved": ""}
            writer.writerow({"run": run, "status": "ok", "model": "mlp 8-4-2", "family": family, "p": p,
                             "metric": "test/acc", "value": value, **empty})  # fmt: skip


def test_summary_of_a_run_table_folds_seeds(tmp_path: Path) -> None:
    path = tmp_path / "report.csv"
    _write_runs(path)
    table = summaries.summary_table(summaries.read_summary(path))
    assert "| mlp 8-4-2 | 0.5 | nn.Dropout | 2 | 86.50 ± 0.71 (accuracy %) |  |" in table
    assert "| mlp 8-4-2 | 0.5 | block x4 groups | 2 | 87.00 ± 0.71 (accuracy %) | +0.50 pt |" in table


def test_summary_csv_renders_as_written(tmp_path: Path) -> None:
    path = tmp_path / "report_summary.csv"
    path.write_text(
        "model,family,p,metric,runs,mean,std,delta,step_ms,speedup,flops_saved\n"
        "lstm 2x256,dropout,0.0,test/ppl,3,120.5,2.0,,,,\n"
        "lstm 2x256,dropout,0.5,test/ppl,3,100.0,1.0,,,,\n"
        "lstm 2x256,block x4 groups,0.5,test/ppl,3,101.0,,1.0,,,\n"
    )
    table = summaries.render_folder(tmp_path)
    assert "| lstm 2x256 | 0 | no dropout | 3 | 120.50 ± 2.00 (perplexity) |  |" in table
    assert "| lstm 2x256 | 0.5 | block x4 groups | 3 | 101.00 (perplexity) | +1.0 % |" in table


def test_a_three_arm_summary_shows_validation_and_the_gain_kept(tmp_path: Path) -> None:
    path = tmp_path / "report_summary.csv"
    path.write_text(
        "model,family,p,metric,runs,mean,std,delta,step_ms,speedup,flops_saved,val_best,val_last,kept\n"
        "lstm 2x256,none,0.0,test/ppl,3,120.5,2.0,,,,,90.0,110.0,\n"
        "lstm 2x256,dropout,0.5,test/ppl,3,100.0,1.0,,,,,95.0,96.0,1.0\n"
        "lstm 2x256,block x4 groups,0.5,test/ppl,3,102.0,,2.0,,,,96.0,97.5,0.9\n"
    )
    table = summaries.render_folder(tmp_path)
    assert table.splitlines()[0].endswith("| best / last validation | dropout's gain kept |")
    assert "| lstm 2x256 | 0 | no dropout | 3 | 120.50 ± 2.00 (perplexity) |  | 90.0 / 110.0 |  |" in table
    assert "| block x4 groups | 3 | 102.00 (perplexity) | +2.0 % | 96.0 / 97.5 | 90% |" in table


def test_missing_summaries_say_not_measured(tmp_path: Path) -> None:
    assert summaries.render_folder(tmp_path / "absent").startswith(summaries.NOT_MEASURED)
    table = summaries.render_sweeps([("Nesterov", tmp_path / "nope.csv")])
    assert "| Nesterov | | | | | not measured yet | |" in table


def test_a_csv_of_another_layout_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="other.csv: header"):
        summaries.read_summary(path)


def _scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("full", [False, True])
def test_jobs_are_well_formed_commands(full: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each job is a console script of the package with arguments its own parser accepts (run against stubs)."""
    calls: list[str] = []

    def fake_case(case, family, p, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(case.name)
        rec = step.Record(case.name, family, p, "cpu", 2.0, 1.0, 2.0, 2.0, 1.0, 2.0, 1.0, 1.0, groups=4)
        rec.dense_peak_mib = rec.ard_peak_mib = 1.0
        return rec

    monkeypatch.setattr(step, "bench_case", fake_case)
    monkeypatch.setattr(models, "bench_model", lambda name, steps, rounds: {"model": name})
    monkeypatch.setattr(models, "markdown", lambda rows, device: "")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs/results").mkdir(parents=True)
    jobs = results.bench_jobs(full=full)
    assert [j.name for j in jobs] == ["speed", "groups", "models"]
    for job in jobs:
        words = shlex.split(job.command)
        assert words[0] in _scripts() and _scripts()[words[0]].startswith(results.SCRIPTS[words[0]] + ":")
        assert "--rounds" in words
        assert job.output.as_posix() in words and job.output.parent == results.RESULTS
        job.run()
        assert job.output.is_file()
    assert {"mlp784-2048-2048-10_b1024", "lstm2x650_v10k_t35_b20", "transformer4x256-ff1024_t64_b32"} <= set(calls)


def test_sweep_commands_name_their_settings() -> None:
    for sweep in results.SWEEPS:
        assert sweep.csv.parent in (results.RESULTS / "accuracy", results.LSTM_STUDY, results.LSTM_BATCH)
        for command in sweep.commands:
            words = shlex.split(command)
            assert words[:2] == ["ard-train", "-m"] and f"hydra.sweep.dir=multirun/accuracy/{sweep.name}" in command
            assert all("=" in w for w in words[2:]), command


RECORDS = [
    {"case": "mlp784-2048-2048-10_b256", "groups": 4, "dense_ms": 120.0, "speedup": 2.1, "ideal": 3.3, "limit": 4.0,
     "grouped_limit": 2.3, "served": "2/2", "step_check": None, "dense_peak_mib": 200.0, "ard_peak_mib": 120.0,
     "limit_peak_mib": 90.0},
    {"case": "mlp784-2048-2048-10_b256", "groups": 1, "dense_ms": 121.0, "speedup": 3.0, "ideal": 3.3, "limit": 4.0,
     "grouped_limit": 4.0, "served": "1/2", "step_check": None, "dense_peak_mib": 200.0, "ard_peak_mib": 110.0,
     "limit_peak_mib": 90.0},
]  # fmt: skip


def test_speed_and_memory_tables_pair_defaults_with_one_pattern() -> None:
    speed = tables.speed_table(RECORDS)
    row = "| mlp784-2048-2048-10 | 256 | 120.0 | **2.10×** (G = 4) | 3.00×, 1/2 sites | 3.30× | 4.00× | 2.30× |"
    assert row in speed
    memory = tables.memory_table(RECORDS)
    assert "| mlp784-2048-2048-10 | 256 | 200 | 120 | 110 | 90 | -40% |" in memory


def test_render_blocks_from_stored_files(tmp_path: Path) -> None:
    (tmp_path / "speed.json").write_text(json.dumps(RECORDS))
    manifest = {"speed": {"command": "ard-bench x", "mode": "quick", "seconds": 12.3, "machine": "CPU, 2 cores"}}
    blocks = results.render_blocks(manifest, tmp_path)
    assert "Command (quick mode, 12 s): `ard-bench x`" in blocks["speed"]
    assert "Machine: CPU, 2 cores." in blocks["speed"]
    assert blocks["models"].startswith(summaries.NOT_MEASURED)
    assert "ard-results --only models" in blocks["models"]
    assert blocks["lstm-study"].startswith(summaries.NOT_MEASURED)
    assert blocks["lstm-batch"].startswith(summaries.NOT_MEASURED) and "lstm_batch/0" in blocks["lstm-batch"]


def test_machine_line_names_cores_threads_and_torch() -> None:
    line = machine_line("cpu")
    assert "cores" in line and "torch threads" in line and "torch " in line


def test_glance_reads_the_lstm_study_row_that_spells_the_defaults_out(tmp_path) -> None:
    """The LSTM study's defaults arm carries LSTM settings in its label: the glance picks it by the sweep's label,
    not another LSTM setting's row, and not a decoder-only row."""
    study = tmp_path / results.LSTM_STUDY.relative_to(results.RESULTS)
    study.mkdir(parents=True)
    header = "model,family,p,metric,runs,mean,std,delta\n"
    rows = [
        "lstm 2x256,dropout,0.5,test/ppl,3,74.0,0.5,",
        "lstm 2x256,block x4 groups lstm 2 seq lstm-pattern random,0.5,test/ppl,3,76.0,1.0,2.7",
        f"lstm 2x256,{results._STUDY_DEFAULTS},0.5,test/ppl,3,74.5,0.4,0.68",
        f"lstm 2x256,{results._STUDY_DEFAULTS},0.3,test/ppl,3,73.0,0.4,0.25",
    ]
    (study / "report_summary.csv").write_text(header + "\n".join(rows) + "\n")
    assert results._accuracy_at("lstm_study", 0.5, tmp_path) == "+0.7 % (3 seeds)"
    assert results._accuracy_at("lstm_study", 0.7, tmp_path) == "not measured yet"
