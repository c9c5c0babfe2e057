"""Reliability around the fit: activation checkpointing, mixed train/eval modes, resume settings."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lightning_ard import ApproximateDropout
from lightning_ard.controller import ARDController
from tests.integration.test_callback import MLP, _data, _trainer


class Checkpointed(MLP):
    """The MLP with its first block (Linear -> ReLU -> Dropout -> Linear) under activation checkpointing."""

    def __init__(self, use_reentrant: bool | None) -> None:
        super().__init__(widths=(20, 64, 64, 5))
        self.use_reentrant = use_reentrant

    def forward(self, x):
        if self.use_reentrant is None:
            return self.net(x)
        head, tail = self.net[:4], self.net[4:]
        x = x.requires_grad_() if self.use_reentrant else x  # reentrant mode needs an input that requires grad
        return tail(checkpoint(head, x, use_reentrant=self.use_reentrant))


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_activation_checkpointing_reuses_the_step_pattern(use_reentrant: bool) -> None:
    """Recomputation under checkpointing is not a second use: no call-count error, and loss and gradients equal
    the same step without checkpointing (the recomputed forward used this step's patterns)."""
    torch.manual_seed(0)
    plain = Checkpointed(None)
    ckpt = copy.deepcopy(plain)
    ckpt.use_reentrant = use_reentrant
    x, y = torch.randn(16, 20), torch.randint(0, 5, (16,))
    grads = []
    for model in (plain, ckpt):
        ctl = ARDController(model, pattern="block", groups=4, seed=3).apply()
        assert len(ctl.report.sites) == 2
        for _ in range(2):
            model.zero_grad()
            ctl.step()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            ctl.check_calls()  # the recomputation is not counted as a second call
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
        ctl.restore()
    (loss0, g0), (loss1, g1) = grads
    assert torch.equal(loss0, loss1)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g0, g1, strict=True))


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointed_fit_trains_with_ard(tmp_path, use_reentrant: bool) -> None:
    cb = ApproximateDropout(pattern="row", groups=1, measure_speedup=False, verbose=False)
    trainer = _trainer(tmp_path, cb, max_steps=3)
    trainer.fit(Checkpointed(use_reentrant), _data())
    assert trainer.global_step == 3 and trainer.callback_metrics["ard/flops_saved"] > 0


def _consumer_only() -> nn.Module:
    """Dropout -> Linear with a LayerNorm before the dropout, so its site is consumer-only (no provable producer)."""
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.LayerNorm(64), nn.Dropout(0.5), nn.Linear(64, 5))


def _producer_consumer() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 5))


def _steps_equal_plain(model: nn.Module, eval_path: str, kind: str, steps: int = 4) -> None:
    """With ``eval_path`` in eval mode while the rest trains, the ARD model steps exactly as the plain one does
    (nn.Dropout under the same torch seed, the eval module plain), and warns once naming the modes."""
    plain = copy.deepcopy(model)
    ctl = ARDController(model, pattern="block", groups=1).apply()
    assert [str(s.kind) for s in ctl.report.sites] == [kind]
    for m in (model, plain):
        m.train()
        m.get_submodule(eval_path).eval()
    x = torch.randn(8, 20)
    with pytest.warns(UserWarning, match=r"disagree on train/eval mode \(.*" + eval_path.replace(".", r"\.") + " eval"):
        ctl.step()
    with torch.no_grad():
        no_dropout = copy.deepcopy(plain).eval()(x)
    dropped = False
    for step in range(steps):
        if step:
            ctl.step()
        torch.manual_seed(step)
        out = model(x)
        torch.manual_seed(step)
        ref = plain(x)
        ctl.check_calls()
        assert torch.equal(out, ref)
        dropped |= not torch.equal(out, no_dropout)
    dropout_trains = not isinstance(model.get_submodule(eval_path), nn.Dropout)
    assert dropped == dropout_trains  # dropout ran (not silently lost) unless the dropout itself is in eval
    ctl.restore()


def test_consumer_in_eval_runs_the_site_plainly() -> None:
    """Consumer Linear in eval, dropout training: dropout is applied (as nn.Dropout), not silently lost."""
    _steps_equal_plain(_consumer_only(), "4", "consumer")


def test_consumer_in_eval_with_a_producer_does_not_break_shapes() -> None:
    _steps_equal_plain(_producer_consumer(), "3", "producer+consumer")


def test_producer_in_eval_runs_the_site_plainly() -> None:
    _steps_equal_plain(_producer_consumer(), "0", "producer+consumer")


def test_dropout_in_eval_runs_the_site_plainly() -> None:
    """A dropout module in eval while its Linears train: no dropout (as nn.Dropout in eval), no call-count error."""
    _steps_equal_plain(_producer_consumer(), "2", "producer+consumer")


def test_mode_change_inside_the_step_is_named() -> None:
    model = _producer_consumer()
    ctl = ARDController(model, pattern="block", groups=1).apply()
    ctl.step()
    model(torch.randn(8, 20))
    model[3].eval()
    with pytest.raises(RuntimeError, match=r"mode of ARD modules changed during the training step \(3: train at the "):
        ctl.check_calls()
    ctl.restore()


def test_eval_submodule_in_a_lightning_fit(tmp_path) -> None:
    """A user's eval-mode Linear stays in eval through a fit (Lightning keeps submodule modes): the site is served
    plainly with one warning, the fit completes, the other site keeps ARD."""

    class Frozen(MLP):
        def on_train_start(self) -> None:
            self.net[6].eval()

    cb = ApproximateDropout(pattern="block", groups=1, measure_speedup=False, verbose=False)
    trainer = _trainer(tmp_path, cb, max_steps=3)
    with pytest.warns(UserWarning, match=r"site 'net.5' runs as plain .* \(net.5 train, net.6 eval, net.3 train\)"):
        trainer.fit(Frozen(), _data())
    assert trainer.global_step == 3


def _save_half(tmp_path, **settings) -> str:
    cb = ApproximateDropout(measure_speedup=False, verbose=False, **settings)
    trainer = _trainer(tmp_path, cb, max_steps=-1, max_epochs=1, logger=False)
    trainer.fit(MLP(), _data())
    path = str(tmp_path / "half.ckpt")
    trainer.save_checkpoint(path)
    return path


@pytest.mark.parametrize(
    ("saved", "now", "listed"),
    [
        ({"p": 0.5, "seed": 3}, {"p": 0.3, "seed": 3}, "p: checkpoint 0.5, now 0.3"),
        ({"seed": 3}, {"seed": 4}, "seed: checkpoint 3, now 4"),
        ({"seed": 3, "groups": 4}, {"seed": 3, "groups": 2, "pattern": "row"},
         "pattern: checkpoint 'block', now 'row', groups: checkpoint 4, now 2"),
    ],
)  # fmt: skip
def test_resume_with_other_settings_raises_naming_both(tmp_path, saved, now, listed) -> None:
    ckpt = _save_half(tmp_path, **saved)
    model = MLP()
    cb = ApproximateDropout(measure_speedup=False, verbose=False, **now)
    trainer = _trainer(tmp_path, cb, max_steps=-1, max_epochs=2, logger=False)
    with pytest.raises(ValueError, match=re.escape(f"other ARD settings ({listed}); resume with the checkpoint")):
        trainer.fit(model, _data(), ckpt_path=ckpt)
    assert all(type(m) in (nn.Sequential, nn.Linear, nn.ReLU, nn.Dropout) for m in model.net.modules())


def test_resume_with_other_settings_allowed_warns_and_uses_them(tmp_path) -> None:
    ckpt = _save_half(tmp_path, p=0.5, seed=3)
    cb = ApproximateDropout(p=0.3, seed=5, allow_settings_change=True, measure_speedup=False, verbose=False)
    trainer = _trainer(tmp_path, cb, max_steps=-1, max_epochs=2, logger=False)
    with pytest.warns(UserWarning, match=re.escape("(p: checkpoint 0.5, now 0.3, seed: checkpoint 3, now 5)")):
        trainer.fit(MLP(), _data(), ckpt_path=ckpt)
    assert trainer.current_epoch == 2 and cb.controller.sampler.seed == 5  # the new seed's stream, not the saved one
    assert {s.p for s in cb.controller.report.sites} == {0.3}


def test_resume_with_the_same_settings_is_silent(tmp_path, recwarn) -> None:
    ckpt = _save_half(tmp_path, seed=3)
    cb = ApproximateDropout(seed=3, measure_speedup=False, verbose=False)
    _trainer(tmp_path, cb, max_steps=-1, max_epochs=2, logger=False).fit(MLP(), _data(), ckpt_path=ckpt)
    assert not [w for w in recwarn if "ARD settings" in str(w.message)]


@pytest.mark.parametrize("step", ["_wire", "sampler"])
def test_a_failure_after_the_swap_leaves_the_model_plain(monkeypatch, step: str) -> None:
    """A failure after the modules were converted (wiring the layers, the sampler) undoes the swap: plain classes,
    a usable model, no controller state left."""
    import lightning_ard.controller as controller_module

    def boom(*args, **kwargs):
        raise RuntimeError(f"{step} failed")

    if step == "_wire":
        monkeypatch.setattr(ARDController, "_wire", boom)
    else:
        monkeypatch.setattr(controller_module, "PatternSampler", boom)
    model = _producer_consumer()
    ctl = ARDController(model, pattern="block", groups=1)
    with pytest.raises(RuntimeError, match=f"{step} failed"):
        ctl.apply()
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert not ctl.active and ctl.sampler is None
    model.eval()
    assert model(torch.randn(2, 20)).shape == (2, 5)
