"""The Hydra app: every config composes and instantiates, bad input fails with a useful message, a multirun sweep
runs from the command line, and the report turns it into a table, a CSV and a plot."""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning_ard.conf
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig

from lightning_ard import ARDConfig
from lightning_ard.app.data.idx import IDXFormatError
from lightning_ard.app.report import main as report_main
from lightning_ard.app.report import read_scalars
from lightning_ard.app.step_timer import StepTimer
from lightning_ard.app.train import ard_enabled, build, instantiate_ard, objective, train

REPO = Path(__file__).resolve().parents[2]
CONF = Path(lightning_ard.conf.__file__).parent
GROUPS = ("data", "model", "ard", "ard/search", "trainer", "logger", "callbacks", "experiment")
# Small, fast settings for runs inside tests (the real experiments are minutes long).
FAST = ["model.widths=[32]", "data.eval_batch_size=500"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cfg(overrides: list[str], output_dir: Path) -> DictConfig:
    """The app's config as ``python -m lightning_ard.app.train <overrides>`` composes it, writing into output_dir."""
    with initialize_config_module("lightning_ard.conf", version_base="1.3"):
        return compose("config", overrides=[f"paths.output_dir={output_dir}", *overrides])


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_every_group_has_the_documented_options() -> None:
    assert set(options("ard")) == {"default", "row", "block", "random", "tile", "dropout"}
    assert set(options("ard/search")) == {"sgd", "exact"}
    assert {"mlp", "lstm_lm"} <= set(options("model")) and {"fashion_mnist", "ptb", "kjv"} <= set(options("data"))
    assert {"cpu", "gpu", "ddp"} <= set(options("trainer")) and "tensorboard" in options("logger")
    assert {"mlp_fashion", "lstm_ptb", "lstm_kjv", "paper_mlp", "paper_lstm"} <= set(options("experiment"))


CASES = [(g, o) for g in GROUPS for o in options(g)]


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_config_composes_and_instantiates(group: str, option: str, tmp_path: Path) -> None:
    overrides = [f"{group}={option}"]
    if group == "model" and option == "lstm_lm":
        overrides.append("data=ptb")
    if group == "data" and option in ("ptb", "kjv"):
        overrides.append("model=lstm_lm")
    if group in ("trainer", "experiment") and not torch.cuda.is_available():
        overrides.append("trainer.accelerator=cpu")  # gpu/ddp configs still instantiate on a CPU-only machine
    cfg = compose_cfg(overrides, tmp_path)
    if cfg.data._target_.endswith("KJVDataModule"):  # every config reading KJV
        if shutil.which("bible") is None:
            pytest.skip("the KJV corpus needs the Debian package bible-kjv (apt-get install -y bible-kjv)")
        cfg.data.cache_dir = str(tmp_path / "kjv")  # not the user's cache
    run = build(cfg)
    assert isinstance(run.callbacks[0], StepTimer)
    names = [type(c).__name__ for c in run.callbacks]
    assert ("ApproximateDropout" in names) == ard_enabled(cfg)
    if group == "ard":
        want = ARDConfig().pattern if option == "default" else option  # ard=default: the library's defaults
        assert cfg.ard.pattern == want or (option == "dropout" and not ard_enabled(cfg))
    dropout = [m.p for m in run.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropout and all(p == cfg.ard.p for p in dropout)  # the model's rate follows ard.p
    assert run.trainer.callbacks[0] is run.callbacks[0]
    if cfg.get("logger"):
        assert run.trainer.log_dir is not None and Path(run.trainer.log_dir).is_relative_to(tmp_path)


def test_defaults_and_baseline_switch(tmp_path: Path) -> None:
    cfg = compose_cfg([], tmp_path)
    assert (cfg.data._target_, cfg.model._target_, cfg.ard.pattern) == (
        "lightning_ard.app.data.FashionMNISTDataModule", "lightning_ard.app.models.MLPClassifier", "block"
    )  # fmt: skip
    assert ard_enabled(cfg)
    assert not ard_enabled(compose_cfg(["ard.enabled=false"], tmp_path))
    assert not ard_enabled(compose_cfg(["ard=dropout"], tmp_path))
    paper = compose_cfg(["experiment=paper_lstm"], tmp_path)
    assert (paper.model.hidden_size, paper.model.num_layers, paper.data.bptt, paper.data.batch_size) == (650, 2, 35, 20)
    assert compose_cfg(["experiment=paper_mlp"], tmp_path).model.widths == [2048, 2048]


def test_ard_config_passes_every_setting_to_the_callback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning_ard

    received: dict[str, object] = {}
    real = lightning_ard.ApproximateDropout

    def spy(**kwargs: object) -> object:
        received.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(lightning_ard, "ApproximateDropout", spy)
    cfg = compose_cfg(["ard=tile", "ard.p=0.3", "ard/search=exact", "seed=7"], tmp_path)
    instantiate_ard(cfg.ard)
    assert received["pattern"] == "tile" and received["p"] == 0.3 and received["seed"] == 7
    assert received["search"] == {"method": "exact", "dp_max": 16} and isinstance(received["search"], dict)
    assert "enabled" not in received and received["tile"] == "auto"


def test_ard_plan_replays_a_saved_plan_with_its_own_settings(tmp_path: Path) -> None:
    """ard.plan=<file>: the callback replays it; the node's ARD settings are left out (the plan holds its own)."""
    from torch import nn

    from lightning_ard import ARDConfig, PlanRecord
    from lightning_ard.planning import build_plan

    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.Linear(16, 2))
    PlanRecord([(0, build_plan(model, ARDConfig(pattern="row", p=0.3)))]).save(tmp_path / "ard_plan.json")
    cfg = compose_cfg(["ard=tile", f"ard.plan={tmp_path / 'ard_plan.json'}"], tmp_path)
    cb = instantiate_ard(cfg.ard)
    assert cb.replay is not None and cb.config.pattern == "row" and cb.config.p == 0.3 and not cb.measure_speedup


def test_objective_returns_the_monitored_metric(tmp_path: Path) -> None:
    cfg = compose_cfg([], tmp_path)
    assert objective(cfg, {"val/acc": 0.75, "val/loss": 1.0}) == 0.75
    assert objective(cfg, {"val/loss": 1.0}) is None


# --- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_unknown_key_or_option_fails_with_hydras_message(tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException, match="Could not override 'model.no_such_key'"):
        compose_cfg(["model.no_such_key=1"], tmp_path)
    with pytest.raises(MissingConfigException, match="Could not find 'ard/nope'"):
        compose_cfg(["ard=nope"], tmp_path)
    result = cli("-m", "lightning_ard.app.train", "trainer.no_such_arg=1")
    assert result.returncode != 0
    assert "Could not override 'trainer.no_such_arg'" in result.stderr
    assert "Key 'no_such_arg' is not in struct" in result.stderr


def test_missing_data_dir_names_path_package_and_override(tmp_path: Path) -> None:
    missing = tmp_path / "no-fashion-here"
    cfg = compose_cfg([f"data.root={missing}", "ard.enabled=false", "trainer.fast_dev_run=true"], tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        train(cfg)
    message = str(info.value)
    assert str(missing) in message and "dataset-fashion-mnist" in message and "data.root=" in message


def test_bad_rate_fails_before_training_with_the_callbacks_message(tmp_path: Path) -> None:
    cfg = compose_cfg(["ard.p=1.5", "trainer.fast_dev_run=true"], tmp_path)
    with pytest.raises(Exception, match=r"p must be in \[0, 1\), got 1.5"):
        train(cfg)
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "tensorboard").exists()


# --- runs ---------------------------------------------------------------------------------------------------------


def test_train_in_process_writes_metrics_and_tensorboard(tmp_path: Path) -> None:
    cfg = compose_cfg(
        [*FAST, "ard=row", "ard.p=0.3", "ard.never_slower=false", "trainer.max_epochs=1",
         "trainer.limit_train_batches=6", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
         "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "timing.warmup_steps=1"],
        tmp_path,
    )  # fmt: skip
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["time/step_ms_median"] > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["test/acc"] == pytest.approx(metrics["test/acc"])
    scalars = read_scalars(tmp_path)
    assert len(scalars["time/step_ms"]) == 6 and "test/acc" in scalars
    assert any(tag.startswith("ard/") for tag in scalars)  # the callback's scalars land in the run's TensorBoard
    assert 0.0 < scalars["ard/flops_saved"][-1] < 1.0
    assert metrics["ard/flops_saved"] == pytest.approx(scalars["ard/flops_saved"][-1])  # also in metrics.json
    assert list((tmp_path / "checkpoints").glob("*.ckpt"))


def test_lstm_experiment_runs_fast_dev_run(tmp_path: Path) -> None:
    cfg = compose_cfg(
        ["experiment=lstm_ptb", "model.hidden_size=32", "model.embed_dim=32", "trainer.fast_dev_run=true",
         "ard.never_slower=false", "trainer.enable_progress_bar=false"],
        tmp_path,
    )  # fmt: skip
    metrics = train(cfg)
    assert metrics["test/ppl"] > 1.0 and objective(cfg, metrics) == metrics["val/ppl"]
    assert 0.0 < metrics["ard/flops_saved"] < 1.0  # fast_dev_run has no logger: the value comes from callback_metrics


@pytest.mark.slow
def test_cli_multirun_sweep_over_two_rates_and_report(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = cli(
        "-m", "lightning_ard.app.train", "-m", "experiment=mlp_fashion", "ard=dropout,row", "ard.p=0.3,0.5", *FAST,
        "trainer.fast_dev_run=true", "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.parent.parent.name for p in sweep.glob("*/.hydra/config.yaml"))
    assert runs == ["0", "1", "2", "3"]
    assert all((sweep / r / "metrics.json").is_file() for r in runs)

    assert report_main([str(sweep)]) == 0
    for name in ("report.md", "report.csv", "report.png"):
        assert (sweep / name).stat().st_size > 0
    assert (sweep / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (sweep / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["family"], float(r["p"])) for r in rows) == [
        ("dropout", 0.3), ("dropout", 0.5), ("row x4 groups", 0.3), ("row x4 groups", 0.5)
    ]  # fmt: skip
    assert all(r["metric"] == "test/acc" and 0.0 <= float(r["value"]) <= 1.0 for r in rows)
    assert all(float(r["step_ms"]) > 0 and float(r["speedup"]) > 0 for r in rows)
    assert all(float(r["speedup"]) == 1.0 for r in rows if r["family"] == "dropout")
    table = (sweep / "report.md").read_text()
    assert table.startswith("| run | status | model | family | p |") and table.count("\n") == 6


def fake_run(
    run_dir: Path, family: str, p: float, metrics: dict[str, float] | None, extra: str = "", data: str = ""
) -> None:
    """A run folder as the app leaves it: the composed config, and metrics.json unless the run failed."""
    (run_dir / ".hydra").mkdir(parents=True)
    ard = "enabled: false\n  pattern: dropout" if family == "dropout" else f"enabled: true\n  pattern: {family}"
    ard += extra
    (run_dir / ".hydra" / "config.yaml").write_text(
        f"model:\n  _target_: lightning_ard.app.models.MLPClassifier\n  input_dim: 784\n  widths: [64]\n"
        f"  num_classes: 10\n  dropout: ${{ard.p}}\nard:\n  {ard}\n  p: {p}\n" + (f"data:\n  {data}\n" if data else "")
    )
    if metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(metrics))


def test_report_speedup_flops_and_incomplete_runs(tmp_path: Path) -> None:
    fake_run(tmp_path / "0", "dropout", 0.5, {"test/acc": 0.80, "time/step_ms_median": 10.0})
    fake_run(tmp_path / "1", "row", 0.5, {"test/acc": 0.79, "time/step_ms_median": 4.0, "ard/flops_saved": 0.6})
    fake_run(tmp_path / "2", "row", 0.7, {"test/acc": 0.75, "time/step_ms_median": 2.5})
    fake_run(tmp_path / "10", "tile", 0.5, None)
    out = tmp_path / "out"
    assert report_main([str(tmp_path), "--out", str(out)]) == 0
    with (out / "report.csv").open() as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert float(rows["1"]["speedup"]) == pytest.approx(2.5) and float(rows["1"]["flops_saved"]) == 0.6
    assert float(rows["2"]["speedup"]) == pytest.approx(4.0)  # no baseline at p=0.7: the model's other baselines
    assert rows["0"]["speedup"] == "1.0" and rows["0"]["flops_saved"] == "0.0"
    assert rows["10"]["status"] == "incomplete" and rows["10"]["value"] == "" and rows["1"]["status"] == "ok"
    assert rows["0"]["model"] == "mlp 784-64-10"


@pytest.mark.slow
def test_report_on_a_folder_without_runs_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report_main([str(tmp_path)]) == 1
    assert "no runs found in" in capsys.readouterr().err
    result = cli("-m", "lightning_ard.app.report", str(tmp_path / "missing"))
    assert result.returncode != 0 and "is not a folder" in result.stderr


def test_report_summary_folds_seeds(tmp_path: Path) -> None:
    for i, (family, acc) in enumerate([("dropout", 0.80), ("dropout", 0.82), ("row", 0.79), ("row", 0.80)]):
        fake_run(tmp_path / str(i), family, 0.5, {"test/acc": acc, "time/step_ms_median": 10.0 if i < 2 else 4.0})
    assert report_main([str(tmp_path)]) == 0
    summary = (tmp_path / "report_summary.md").read_text()
    row = next(line for line in summary.splitlines() if "| row |" in line)
    assert "| 2 | 79.50 ± 0.71 (test accuracy) | -1.50 pt |" in row
    assert "| 2.5 |" in row  # speedup: median baseline step 10 ms over 4 ms


def test_report_labels_pattern_groups(tmp_path: Path) -> None:
    fake_run(tmp_path / "0", "dropout", 0.5, {"test/acc": 0.80, "time/step_ms_median": 10.0})
    fake_run(tmp_path / "1", "row", 0.5, {"test/acc": 0.81, "time/step_ms_median": 5.0},
             "\n  groups: 700\n  pool: 8\n  lstm_groups: 5")  # fmt: skip
    fake_run(tmp_path / "2", "row", 0.5, {"test/acc": 0.79, "time/step_ms_median": 4.0}, "\n  groups: 1\n  pool: null")
    assert report_main([str(tmp_path)]) == 0
    summary = (tmp_path / "report_summary.md").read_text()
    assert "| row x700 groups pool 8 lstm 5 | 1 | 81.00 (test accuracy) | +1.00 pt |" in summary
    assert "| row | 1 | 79.00 (test accuracy) | -1.00 pt |" in summary


def test_report_labels_auto_groups_by_the_runs_batch(tmp_path: Path) -> None:
    """groups=auto is labelled with the count the callback draws for the run's data.batch_size."""
    fake_run(tmp_path / "0", "dropout", 0.5, {"test/acc": 0.80, "time/step_ms_median": 10.0})
    fake_run(tmp_path / "1", "block", 0.5, {"test/acc": 0.80}, "\n  groups: auto", "batch_size: 1024")
    fake_run(tmp_path / "2", "block", 0.7, {"test/acc": 0.70}, "\n  groups: auto", "batch_size: 128")
    assert report_main([str(tmp_path)]) == 0
    with (tmp_path / "report.csv").open() as f:
        families = sorted((r["family"], r["p"]) for r in csv.DictReader(f))
    assert families == [("block x10 groups", "0.7"), ("block x8 groups", "0.5"), ("dropout", "0.5")]


def test_truncated_test_file_fails_before_training(tmp_path: Path) -> None:
    """A truncated test-split file is caught by prepare_data: the fit never starts (no checkpoint, no step)."""
    from lightning_ard.app.data.fashion_mnist import DEFAULT_ROOT

    root = tmp_path / "fashion"
    root.mkdir()
    for name in os.listdir(DEFAULT_ROOT):
        (root / name).symlink_to(Path(DEFAULT_ROOT) / name)
    (root / "t10k-images-idx3-ubyte.gz").unlink()
    with gzip.open(Path(DEFAULT_ROOT) / "t10k-images-idx3-ubyte.gz", "rb") as f:
        head = f.read(16 + 4_999_968)  # half the images
    with gzip.open(root / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(head)
    cfg = compose_cfg([f"data.root={root}", "ard.enabled=false", "trainer.max_steps=2"], tmp_path)
    message = r"4999968 data bytes, but the header's shape \(10000, 28, 28\) needs 7840000"
    with pytest.raises(IDXFormatError, match=message):
        train(cfg)
    assert not list(tmp_path.rglob("*.ckpt")) and not (tmp_path / "metrics.json").exists()


def test_report_skips_unreadable_and_foreign_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Half-written, list-valued, empty and foreign configs are skipped with one line each naming the folder and
    the reason; they never become rows, and a foreign run never becomes the speedup baseline."""
    fake_run(tmp_path / "0", "dropout", 0.5, {"test/acc": 0.80, "time/step_ms_median": 10.0})
    fake_run(tmp_path / "1", "row", 0.5, {"test/acc": 0.79, "time/step_ms_median": 4.0})
    bad = {
        "2": "model:\n  _target_: lightning_ard.app.models.MLPClassifier\n  dropout: ${ard.p}\n",  # no ard.p
        "3": "- a\n- b\n",
        "4": "",
        "5": "model:\n  _target_: other_app.Net\nard:\n  enabled: false\n",  # another app's run
        "6": "model: [unclosed\n",
    }
    for name, text in bad.items():
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text(text)
    (tmp_path / "5" / "metrics.json").write_text(json.dumps({"test/acc": 0.5, "time/step_ms_median": 1.0}))
    assert report_main([str(tmp_path)]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ard-report: skipped")]
    assert len(lines) == 5
    assert f"skipped {tmp_path / '2'}: " in err and "InterpolationKeyError: Interpolation key 'ard.p' not found" in err
    assert f"skipped {tmp_path / '3'}: " in err and "holds a ListConfig, not a mapping of settings" in err
    assert f"skipped {tmp_path / '4'}: not a run of lightning_ard's app" in err
    assert f"skipped {tmp_path / '5'}: not a run of lightning_ard's app" in err
    assert f"skipped {tmp_path / '6'}: " in err and "cannot be read" in err
    with (tmp_path / "report.csv").open() as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["0", "1"] and float(rows["1"]["speedup"]) == pytest.approx(2.5)


def test_report_keeps_runs_of_different_batch_sizes_apart(tmp_path: Path) -> None:
    """A sweep over batch size and lr is folded per batch, each compared with its own nn.Dropout arm."""
    for i, (family, acc, batch) in enumerate([("dropout", 0.80, 64), ("row", 0.79, 64), ("dropout", 0.70, 128),
                                              ("row", 0.72, 128)]):  # fmt: skip
        lr = 0.1 * batch / 64
        fake_run(tmp_path / str(i), family, 0.5, {"test/acc": acc}, data=f"batch_size: {batch}")
        config = tmp_path / str(i) / ".hydra" / "config.yaml"
        config.write_text(config.read_text().replace("  num_classes: 10\n", f"  num_classes: 10\n  lr: {lr}\n"))
    assert report_main([str(tmp_path)]) == 0
    with (tmp_path / "report_summary.csv").open() as f:
        rows = {(r["model"], r["family"]): r for r in csv.DictReader(f)}
    assert sorted(rows) == [
        ("mlp 784-64-10 batch 128 lr 0.2", "dropout"),
        ("mlp 784-64-10 batch 128 lr 0.2", "row"),
        ("mlp 784-64-10 batch 64 lr 0.1", "dropout"),
        ("mlp 784-64-10 batch 64 lr 0.1", "row"),
    ]
    assert float(rows[("mlp 784-64-10 batch 64 lr 0.1", "row")]["delta"]) == pytest.approx(-1.0)
    assert float(rows[("mlp 784-64-10 batch 128 lr 0.2", "row")]["delta"]) == pytest.approx(2.0)
    assert all(r["runs"] == "1" for r in rows.values())


def test_report_leaves_shared_training_settings_out_of_the_label(tmp_path: Path) -> None:
    fake_run(tmp_path / "0", "dropout", 0.5, {"test/acc": 0.80}, data="batch_size: 64")
    fake_run(tmp_path / "1", "row", 0.5, {"test/acc": 0.79}, data="batch_size: 64")
    assert report_main([str(tmp_path)]) == 0
    with (tmp_path / "report.csv").open() as f:
        assert {r["model"] for r in csv.DictReader(f)} == {"mlp 784-64-10"}
