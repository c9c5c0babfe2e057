"""Measurement never changes training: a fit resumed from any of its epoch checkpoints, and a fit that replays
another's plan file, equal the uninterrupted fit bitwise, with the callback's measurement on."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_ard import ApproximateDropout, profiling, speed_guard
from lightning_ard.callback import PLAN_FILE

STEPS_PER_EPOCH, EPOCHS = 10, 3


class SmallMLP(pl.LightningModule):
    """32-256-256-4 with two nn.Dropout(0.5), SGD with momentum."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(32, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 256), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(256, 4),
        )  # fmt: skip

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class LM(SmallMLP):
    """Embedding dropout, a 2-layer nn.LSTM(dropout=0.5), dropout before the decoder."""

    def __init__(self) -> None:
        pl.LightningModule.__init__(self)
        self.emb, self.drop = nn.Embedding(40, 32), nn.Dropout(0.5)
        self.lstm = nn.LSTM(32, 32, 2, dropout=0.5, batch_first=True)
        self.decoder = nn.Linear(32, 40)

    def training_step(self, batch, batch_idx):
        x, y = batch
        out, _ = self.lstm(self.drop(self.emb(x)))
        return F.cross_entropy(self.decoder(self.drop(out)).flatten(0, 1), y.flatten())


def _data(lm: bool) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    if lm:
        tokens = torch.randint(0, 40, (STEPS_PER_EPOCH * 8, 13), generator=g)
        ds = TensorDataset(tokens[:, :-1], tokens[:, 1:])
    else:
        ds = TensorDataset(torch.randn(STEPS_PER_EPOCH * 32, 32, generator=g), torch.randint(0, 4, (320,), generator=g))
    return DataLoader(ds, batch_size=len(ds) // STEPS_PER_EPOCH, shuffle=True)


class _Clock:
    """A step clock that makes every ARD step last ``ard`` and every reference step ``plain`` (milliseconds)."""

    def __init__(self, ard: float, plain: float) -> None:
        self.now, self.ard, self.plain, self.callbacks = 0.0, ard, plain, []

    def __call__(self) -> float:
        guards = [cb.guard for cb in self.callbacks if cb.guard is not None]
        mode = guards[-1].mode if guards else None
        self.now += (self.plain if mode == "plain" else self.ard) / 1e3
        return self.now


@pytest.fixture
def measured(monkeypatch):
    """Deterministic measurements: calibration finds every layer faster except the last Linear's (its site falls
    back), and the windows' ARD steps are faster or slower as the test asks."""

    def calibrate(linears, lstms, rates=None, optimizers=()):
        times = {path: (1.0, 0.5) for path in [*linears, *lstms]}
        times.update({path: (1.0, 2.0) for path in ("net.6", "decoder") if path in times})
        return times

    monkeypatch.setattr(profiling, "calibrate", calibrate)

    def use(ard: float, plain: float) -> _Clock:
        clock = _Clock(ard, plain)
        monkeypatch.setattr(speed_guard, "clock", clock)
        return clock

    return use


def _fit(tmp_path: Path, name: str, model_cls, cb: ApproximateDropout, clock: _Clock, ckpt: str | None = None):
    pl.seed_everything(1)
    model = model_cls()
    clock.callbacks.append(cb)
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        default_root_dir=tmp_path / name,
        callbacks=[cb, pl.callbacks.ModelCheckpoint(dirpath=tmp_path / name / "ckpt", save_top_k=-1)],
        logger=pl.loggers.CSVLogger(tmp_path / name),
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(model, _data(model_cls is LM), ckpt_path=ckpt)
    return model, trainer


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("model_cls", [SmallMLP, LM], ids=["mlp", "lstm"])
@pytest.mark.parametrize("settings", [{}, {"pattern": "row"}], ids=["defaults", "row"])
@pytest.mark.parametrize("window", ["faster", "slower"])
def test_a_fit_resumed_from_each_epoch_checkpoint_equals_the_uninterrupted_fit(
    tmp_path, measured, model_cls, settings, window
) -> None:
    """The first window (steps 10-19) straddles the first checkpoint; when its ARD steps are slower the plain
    model trains from step 20 on (nn.Dropout masks from the global generator, which the checkpoint holds)."""
    clock = measured(ard=1.0, plain=2.0) if window == "faster" else measured(ard=2.0, plain=1.0)
    if model_cls is LM and settings:  # the defaults serve the LSTM sites with element-wise dropout; row: time chunks
        settings = {**settings, "lstm_groups": 2}
    full, _ = _fit(tmp_path, "full", model_cls, ApproximateDropout(seed=7, verbose=False, **settings), clock)
    ckpts = sorted(glob.glob(str(tmp_path / "full" / "ckpt" / "*.ckpt")))
    assert len(ckpts) == EPOCHS
    for i, ckpt in enumerate(ckpts[:-1]):
        cb = ApproximateDropout(seed=7, verbose=False, **settings)
        resumed, _ = _fit(tmp_path, f"resumed{i}", model_cls, cb, clock, ckpt)
        assert _same_weights(full, resumed), f"resumed from {Path(ckpt).name}"
        assert (cb.gave_up is not None) == (window == "slower")
    plain = _fit(tmp_path, "plain", model_cls, ApproximateDropout(seed=7, measure_speedup=False, verbose=False,
                                                                  **settings), clock)[0]  # fmt: skip
    assert not _same_weights(full, plain)  # the reference steps did train (with nn.Dropout's masks)


def test_replaying_a_plan_file_trains_the_same_weights_and_writes_the_same_file(tmp_path, measured) -> None:
    clock = measured(ard=2.0, plain=1.0)
    first_cb = ApproximateDropout(seed=7, verbose=False)
    first, trainer = _fit(tmp_path, "first", SmallMLP, first_cb, clock)
    plan_file = Path(trainer.log_dir) / PLAN_FILE
    saved = json.loads(plan_file.read_text())
    assert [p["from_step"] for p in saved["plans"]] == [0, 1, 20]  # first batch, calibration, the window's verdict
    assert saved["plans"][1]["sites"][1]["fallback"].startswith("ARD is not faster there (measured 0.80x")
    assert saved["plans"][2]["plain"] == "the measured step is not faster (0.50x)"
    clock.ard = clock.plain = float("nan")  # a replay measures nothing
    replay_cb = ApproximateDropout(plan=plan_file, verbose=False)
    second, trainer2 = _fit(tmp_path, "second", SmallMLP, replay_cb, clock)
    assert _same_weights(first, second)
    assert json.loads((Path(trainer2.log_dir) / PLAN_FILE).read_text()) == saved
    assert replay_cb.speedups == {} and replay_cb.gave_up == first_cb.gave_up


def test_two_fits_with_the_same_seed_train_the_same_weights(tmp_path, measured) -> None:
    clock = measured(ard=1.0, plain=2.0)
    a, _ = _fit(tmp_path, "a", LM, ApproximateDropout(verbose=False), clock)
    b, _ = _fit(tmp_path, "b", LM, ApproximateDropout(verbose=False), clock)
    assert _same_weights(a, b)


def test_a_fit_without_a_logger_writes_no_plan_file(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cb = ApproximateDropout(seed=7, measure_speedup=False, verbose=False)
    trainer = pl.Trainer(
        max_steps=2, logger=False, callbacks=[cb], enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", devices=1,
    )  # fmt: skip
    trainer.fit(SmallMLP(), _data(lm=False))
    assert list(tmp_path.iterdir()) == [] and cb.record is not None and cb.record.plans


def test_a_checkpoint_without_a_plan_record_starts_a_new_plan_and_says_so() -> None:
    cb = ApproximateDropout(seed=7, verbose=False)
    cb.load_state_dict({"sampler": {"seed": 7, "steps": 3, "generator": torch.Generator().get_state()}})
    with pytest.warns(UserWarning, match="holds no plan record \\(an older format\\); this fit builds a new plan"):
        assert cb._check_resumed_settings(7) is False


def test_a_fit_the_callback_serves_nowhere_resumes_with_the_same_dropout_masks(tmp_path, measured) -> None:
    """Under groups="auto" at p = 0.7 the LM's sites all stay nn.Dropout (the LSTM's above the studied rate, the
    decoder's with them: one module): the checkpoint still holds the global generator, so a resumed fit draws the
    uninterrupted fit's masks."""
    clock = measured(ard=1.0, plain=2.0)
    with pytest.warns(UserWarning, match="found no dropout site"):
        full, _ = _fit(tmp_path, "full", LM, ApproximateDropout(seed=7, p=0.7, verbose=False), clock)
    ckpt = sorted(glob.glob(str(tmp_path / "full" / "ckpt" / "*.ckpt")))[0]
    assert torch.load(ckpt, weights_only=False)["callbacks"]["ApproximateDropout"]["served"] is False
    cb = ApproximateDropout(seed=7, p=0.7, verbose=False)
    with pytest.warns(UserWarning, match="found no dropout site"):
        resumed, _ = _fit(tmp_path, "resumed", LM, cb, clock, ckpt)
    assert _same_weights(full, resumed) and cb.guard is None
