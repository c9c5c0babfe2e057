"""Benchmark commands: records, table, plot and JSON are produced (timings themselves are not asserted)."""

import json

import pytest
import torch

from lightning_ard.bench import fit as fit_bench
from lightning_ard.bench import step as bench


def _tiny_case(rows: int = 32) -> bench.Case:
    def batch(device):
        g = torch.Generator().manual_seed(0)
        return torch.randn(rows, 16, generator=g), torch.randint(0, 4, (rows,), generator=g)

    return bench.Case(
        "tiny_mlp",
        lambda p: bench.mlp((16, 64, 64, 4), p),
        lambda p: bench.mlp((16, round(64 * (1 - p)), round(64 * (1 - p)), 4), None),
        batch,
    )


def test_bench_case_record_table_and_plot(tmp_path) -> None:
    rec = bench.bench_case(_tiny_case(), "row", 0.5, torch.device("cpu"), warmup=1, rounds=1, steps=2)
    assert rec.case == "tiny_mlp" and rec.family == "row" and rec.p == 0.5
    assert abs(rec.speedup - rec.dense_ms / rec.ard_ms) <= 0.0005 + 0.01 * rec.speedup  # rounded to 3 decimals
    assert 1.0 < rec.ideal < 8  # two patterned hidden layers at p = 0.5 (two sampled steps)
    assert abs(rec.of_ideal - rec.speedup / rec.ideal) < 0.01
    table = bench.format_table([rec])
    assert "tiny_mlp" in table and "| row | 0.5 |" in table
    bench.plot([rec], tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_bench_cli_rejects_bad_family(capsys) -> None:
    assert bench.main(["--families", "diagonal", "--device", "cpu"]) == 2
    assert "unknown families ['diagonal']" in capsys.readouterr().err
    assert bench.main(["--groups", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--groups must be comma-separated integers >= 1 or auto, --pool and --lstm-groups integers >= 1" in err


def test_bench_case_with_groups(tmp_path) -> None:
    rec = bench.bench_case(_tiny_case(), "row", 0.5, torch.device("cpu"), warmup=1, rounds=1, steps=2, groups=4)
    assert rec.groups == 4 and rec.label == "row x4 groups" and rec.pool is None
    pooled = bench.bench_case(_tiny_case(), "random", 0.5, torch.device("cpu"), 1, 1, 2, groups=32, pool=2)
    assert pooled.label == "random x32 groups pool 2"
    assert 1.0 < rec.ideal < 8  # the same FLOP saving as one pattern per step
    assert "| row x4 groups | 0.5 |" in bench.format_table([rec])
    bench.plot([rec], tmp_path / "g.png")
    assert json.loads(json.dumps(bench.asdict(rec)))["groups"] == 4


def test_bench_case_auto_groups_follow_the_batch() -> None:
    """groups="auto" at batch 1024 runs 8 groups, as a fit would, with a grouped limit beside them."""
    rec = bench.bench_case(_tiny_case(1024), "block", 0.5, torch.device("cpu"), 1, 1, 2, groups="auto")
    assert rec.groups == 8 and rec.label == "block x8 groups" and rec.grouped_limit is not None


def test_fit_bench_writes_json(tmp_path, monkeypatch) -> None:
    from lightning_ard import profiling

    # the calibration finds every layer faster, so that ARD serves the whole fit whatever the machine's load
    monkeypatch.setattr(profiling, "calibrate", lambda lin, lstm, rates=None, opts=(): {k: (1.0, 0.5) for k in lin})
    out = tmp_path / "fit.json"
    assert fit_bench.main(["--steps", "5", "--skip", "2", "--rounds", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["steps_timed"] == 6 and result["rounds"] == 2  # 3 steps from each of the two ARD fits
    assert result["dense_ms"] > 0 and result["ard_ms"] > 0
    assert 0 < result["callback_overhead"] < 1
    assert result["family"] == "block x4 groups" and result["groups"] == 4  # the library's defaults
    assert result["logged_step_speedup"] is None  # a 5-step fit ends before the first timing window (step 10)


def test_fit_bench_runs_the_demo_lstm_with_extra_settings(tmp_path, monkeypatch) -> None:
    """--model lstm fits Lightning's demo LSTM LM; --set passes any ApproximateDropout argument."""
    from lightning_ard import profiling

    monkeypatch.setattr(
        profiling, "calibrate", lambda lin, lstm, rates=None, opts=(): {k: (1.0, 0.5) for k in (*lin, *lstm)}
    )
    out = tmp_path / "fit.json"
    argv = ["--model", "lstm", "--width", "32", "--batch", "4", "--steps", "4", "--skip", "1",
            "--set", "lstm_pattern=random", "--set", "lstm_groups=3", "--json", str(out)]  # fmt: skip
    assert fit_bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["case"] == "lightning_fit_demo_lstm2x32_b4"
    assert result["settings"] == {"lstm_pattern": "random", "lstm_groups": 3}
    assert result["served_at_end"] == ["model.drop->model.rnn", "model.drop->model.decoder", "model.rnn.l1"]
    with pytest.raises(SystemExit):
        fit_bench.main(["--set", "lstm_groups", "--steps", "3", "--skip", "1"])


def test_fit_bench_leaves_the_callbacks_window_steps_out() -> None:
    """Half of a timing window's steps run nn.Dropout: the ARD median must not include them."""
    cb = fit_bench._TimedARD(verbose=False)
    times = [float(i) for i in range(30)]
    kept = fit_bench._ard_steps(times, cb, skip=5)
    assert kept == [float(i) for i in (*range(5, 10), *range(20, 30))]  # window: steps 10-19
    assert fit_bench._ard_steps(times[:15], cb, skip=12) == [12.0, 13.0, 14.0]  # all in the window: all of them


def test_fit_bench_arguments_fail_clearly(capsys) -> None:
    with pytest.raises(SystemExit):
        fit_bench.main(["--steps", "0"])
    assert "--steps must exceed --skip >= 0 (steps to time), got --steps 0 --skip 5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fit_bench.main(["--groups", "0", "--steps", "3", "--skip", "1"])
    assert "groups must be an integer in [1, 1048576] or 'auto', got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fit_bench.main(["--rounds", "0", "--steps", "3", "--skip", "1"])
    assert "--rounds must be an integer >= 1, got 0" in capsys.readouterr().err


def test_bench_records_the_grouped_compact_limit() -> None:
    """With G groups the record carries the grouped compact limit (G compact models on B/G rows each)."""
    rec = bench.bench_case(_tiny_case(), "block", 0.5, torch.device("cpu"), warmup=1, rounds=1, steps=2, groups="auto")
    assert rec.groups == 4 and rec.grouped_limit_ms is not None and rec.grouped_limit > 0
    assert abs(rec.of_grouped_limit - rec.speedup / rec.grouped_limit) < 0.01
    assert "grouped limit" in bench.format_table([rec])
    limit = bench.GroupedLimit([torch.nn.Linear(3, 2) for _ in range(3)])
    assert limit(torch.randn(7, 3)).shape == (7, 2)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rates", "1.5"], "--rates must be comma-separated rates in [0, 1), got '1.5'"),
        (["--rates", "0.5,x"], "--rates must be comma-separated rates in [0, 1), got '0.5,x'"),
        (["--cases", "nope"], "--cases 'nope': ['nope'] match no case; cases: mlp784-2048-2048-10_b256"),
        (["--cases", "mlp,zz"], "['zz'] match no case"),
        (["--json", "/no/such/folder/b.json"], "the folder of /no/such/folder/b.json does not exist"),
        (["--md", "/no/such/folder/b.md"], "mkdir -p /no/such/folder"),
    ],
)
def test_bench_cli_checks_arguments_before_timing(argv, message, capsys, monkeypatch) -> None:
    """Bad rates, unknown cases and missing output folders exit 2 with the value, before any case is timed."""
    monkeypatch.setattr(bench, "bench_case", lambda *a, **k: pytest.fail("timed a case despite a bad argument"))
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*argv, "--device", "cpu"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_fit_bench_checks_rate_and_outputs(capsys, monkeypatch) -> None:
    monkeypatch.setattr(fit_bench, "_fit", lambda *a, **k: pytest.fail("ran a fit despite a bad argument"))
    for argv, message in (
        (["--p", "1.5"], "--p must be in [0, 1), got 1.5"),
        (["--json", "/no/such/folder/f.json"], "the folder of /no/such/folder/f.json does not exist"),
    ):
        with pytest.raises(SystemExit):
            fit_bench.main(argv)
        assert message in capsys.readouterr().err


def _fake_measurements(monkeypatch, slow_layers=(), ard_ms: float = 0.5) -> dict:
    """Calibration finds ``slow_layers`` slower with ARD (the others twice as fast); the guard's window measures
    1 ms per reference step and ``ard_ms`` per ARD step."""
    from lightning_ard import profiling, speed_guard

    seen: dict = {"now": 0.0}

    def fake_calibrate(linears, lstms, rates=None, optimizers=()):
        seen["layers"] = sorted(linears)
        return {path: (1.0, 2.0 if path in slow_layers else 0.5) for path in linears}

    stop = speed_guard.SpeedGuard.stop

    def timed_stop(self) -> None:
        if self.mode is not None and self._ms is None:
            seen["now"] += (1.0 if self.mode == "plain" else ard_ms) / 1e3
        stop(self)

    monkeypatch.setattr(profiling, "calibrate", fake_calibrate)
    monkeypatch.setattr(speed_guard, "clock", lambda: seen["now"])
    monkeypatch.setattr(speed_guard.SpeedGuard, "stop", timed_stop)
    return seen


def _fake_time(ard_ms: float):
    """A stand-in for the benchmark's timer: runs the steps, 1 ms for a plain step, ``ard_ms`` for an ARD one."""

    def time_steps(runner, device, steps):
        out = []
        for _ in range(steps):
            runner.step()
            out.append(ard_ms if runner.ctl is not None else 1.0)
            runner.record_flops()
        return out

    return time_steps


@pytest.mark.parametrize(("slow", "served"), [((), "2/2"), (("6",), "1/2"), (("3", "6"), "0/2")])
def test_bench_never_slower_applies_the_callbacks_rule(slow, served, monkeypatch) -> None:
    """--never-slower: sites whose layers time slower go back to nn.Dropout; none faster: the plain model (no FLOP
    saving left), as the callback would run them."""
    seen = _fake_measurements(monkeypatch, slow, ard_ms=0.5)  # the step check passes: ARD steps take half
    monkeypatch.setattr(bench, "_time", _fake_time(ard_ms=0.5))
    rec = bench.bench_case(_tiny_case(), "block", 0.5, torch.device("cpu"), 1, 1, 2, groups=2, never_slower=True)
    assert seen["layers"] == ["0", "3", "6"]
    assert rec.step_check is None
    assert rec.served == served and rec.label == f"block x2 groups (never slower: {served} sites)"
    if served == "0/2":
        assert rec.ideal == 1.0  # the plain model ran: nothing saved
    else:
        assert rec.ideal > 1.0
    assert f"(never slower: {served} sites)" in bench.format_table([rec])


def test_bench_never_slower_step_check_gives_the_plain_model_back(monkeypatch) -> None:
    """--never-slower, second check (the callback's step window): every site's layers time faster, but the whole
    ARD step is not; the row then times the plain model, as a fit does after its window, and says why."""
    _fake_measurements(monkeypatch, (), ard_ms=1.25)
    monkeypatch.setattr(bench, "_time", _fake_time(ard_ms=1.25))
    rec = bench.bench_case(_tiny_case(), "block", 0.5, torch.device("cpu"), 1, 1, 2, groups=2, never_slower=True)
    assert rec.served == "0/2" and rec.step_check == pytest.approx(0.8)
    assert rec.label == "block x2 groups (never slower: plain model, step 0.80x)"
    assert rec.ideal == 1.0 and rec.speedup == pytest.approx(1.0)  # the plain model ran: nothing saved
    assert "(never slower: plain model, step 0.80x)" in bench.format_table([rec])


def test_bench_records_the_peak_memory_of_every_variant() -> None:
    """Every variant's peak memory of a step is in the record, the JSON record and the table (the grouped limit's
    where there are groups, "–" where not)."""
    rec = bench.bench_case(_tiny_case(), "block", 0.5, torch.device("cpu"), warmup=1, rounds=1, steps=1, groups="auto")
    peaks = [rec.dense_peak_mib, rec.ard_peak_mib, rec.limit_peak_mib, rec.grouped_limit_peak_mib]
    assert rec.groups == 4 and all(v is not None and v > 0 for v in peaks)
    fields = json.loads(json.dumps(bench.asdict(rec)))
    assert all(fields[f"{k}_peak_mib"] == v for k, v in zip(("dense", "ard", "limit", "grouped_limit"), peaks))
    one = bench.bench_case(_tiny_case(), "block", 0.5, torch.device("cpu"), warmup=1, rounds=1, steps=1)
    assert one.ard_peak_mib is not None and one.grouped_limit_peak_mib is None
    table = bench.format_table([rec, one])
    assert "| dense MiB | ARD MiB | limit MiB | grouped limit MiB |" in table
    assert f"| {rec.dense_peak_mib:.1f} | {rec.ard_peak_mib:.1f} |" in table and table.endswith("| – |")


def test_ard_step_peaks_below_nn_dropout_where_activations_dominate() -> None:
    """MLP 784-2048-2048-10, batch 1024, p = 0.5, block family, one pattern per step. nn.Dropout keeps per hidden
    layer a B×N ReLU output, a B×N dropout output and a B×N mask (8 + 8 + 2 MiB, 36 MiB for both layers); ARD keeps
    the compact B×K ReLU output and its scaled copy (K ≈ N/2: about 16 MiB), and, for a block that wraps around
    the layer's end, gathered weight copies (about 7 MiB); both build each full-size weight gradient through a
    temporary. nn.Dropout measured 56.1 MiB, ARD 32-48 MiB over twelve steps (by pattern): at least 8 MiB saved.
    The CPU reader is exact to the byte on hand-counted steps (no noise), so 5 MiB is a safe bound."""
    case = next(c for c in bench.paper_cases() if c.name == "mlp784-2048-2048-10_b1024")
    rec = bench.bench_case(case, "block", 0.5, torch.device("cpu"), warmup=1, rounds=1, steps=1, groups=1)
    assert rec.groups == 1
    assert rec.ard_peak_mib < rec.dense_peak_mib - 5, (rec.ard_peak_mib, rec.dense_peak_mib)
    assert rec.limit_peak_mib < rec.ard_peak_mib  # the compact model holds neither weight copies nor full gradients


def test_bench_lstm_settings_times_every_setting_in_one_run() -> None:
    """--lstm-settings: one record per LSTM setting, each with its FLOP ratio, beside one nn.Dropout and one limit."""

    def batch(device):
        tokens = torch.randint(0, 64, (8, 7), generator=torch.Generator().manual_seed(0))
        return tokens[:, :-1], tokens[:, 1:]

    case = bench.Case(
        "lstm_tiny", lambda p: bench.lstm_lm(64, 32, 2, p), lambda p: bench.CompactLSTMLM(64, 32, 2, 16), batch
    )
    records = bench.bench_lstm_settings(case, "block", 0.5, torch.device("cpu"), warmup=1, rounds=1, steps=1)
    assert [r.setting for r in records] == [s.name for s in bench.LSTM_SETTINGS]
    assert len({r.dense_ms for r in records}) == len({r.limit_ms for r in records}) == 1  # one run of each
    by_name = {r.setting: r for r in records}
    # the defaults' pattern drops 0.6 of p at the LSTM sites: less work saved than a pattern dropping 0.8 of it, and
    # that less than one dropping all of p
    defaults = next(r for r in records if r.setting.startswith("defaults"))
    share = by_name["LSTM random pattern 0.8 of p + element-wise"]
    assert 1.0 < defaults.ideal < share.ideal < by_name["decoder auto groups, LSTM one random pattern"].ideal
    assert by_name["random sequence G=2"].lstm_groups == 2
