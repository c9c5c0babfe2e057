"""ARDController: executes a plan (apply / step / use / restore), transactional, bounded by the step's rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_ard import ARDController
from lightning_ard.config import ARDConfig
from lightning_ard.layers import ARDDropout, ARDLinear
from lightning_ard.planning import build_plan


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(64, 5))  # fmt: skip


class _Products(TorchDispatchMode):
    """Counts the matrix products a step runs (forward and backward)."""

    OPS = {"mm", "addmm", "bmm", "baddbmm", "_grouped_mm", "matmul"}

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in self.OPS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _step_products(groups: int, samples: int = 32) -> tuple[int, ARDController]:
    model = _mlp()
    ctl = ARDController(model, groups=groups).apply()
    ctl.follow_batch(samples)
    ctl.step()
    with _Products() as products:
        model(torch.randn(samples, 20)).sum().backward()
    return products.count, ctl


def test_more_groups_than_rows_cost_what_one_group_per_row_costs() -> None:
    huge, ctl = _step_products(10**6)
    per_row, _ = _step_products(32)
    assert huge == per_row
    assert [(sp.groups, sp.requested_groups) for sp in ctl.plan.sites] == [(32, 10**6), (32, 10**6)]
    assert len(ctl.patterns["2"]) == 32


def test_apply_swaps_and_restore_gives_the_plain_modules_back() -> None:
    model = _mlp()
    params = [id(p) for p in model.parameters()]
    ctl = ARDController(model, pattern="row", groups=1).apply()
    assert isinstance(model[3], ARDLinear) and isinstance(model[2], ARDDropout) and ctl.active
    pats = ctl.step()
    assert set(pats) == {"2", "5"} and model[3].ard_in_patterns == (pats["2"],)
    ctl.restore()
    assert type(model[3]) is nn.Linear and type(model[2]) is nn.Dropout and not ctl.active
    assert [id(p) for p in model.parameters()] == params


def test_a_given_plan_is_executed_as_it_is() -> None:
    plan = build_plan(_mlp(), ARDConfig(pattern="random", groups=2)).fall_back(["5"], "measured 0.9x")
    model = _mlp()
    ctl = ARDController(model, plan=plan).apply()
    assert ctl.config.pattern == "random" and ctl.fallen_back == {"5"}
    ctl.step()
    assert model[6].ard_in_patterns is None and model[3].ard_in_patterns is not None
    with pytest.raises(ValueError, match="pass either a plan or settings"):
        ARDController(model, plan=plan, pattern="row")


def test_a_new_plan_must_serve_the_same_sites() -> None:
    ctl = ARDController(_mlp(), groups=1).apply()
    other = build_plan(nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2)), ARDConfig())
    with pytest.raises(ValueError, match=r"a new plan must serve the same sites as the one in force, got \['1'\]"):
        ctl.use(other)


def test_a_plain_plan_restores_the_model() -> None:
    model = _mlp()
    ctl = ARDController(model, groups=1).apply()
    ctl.use(ctl.plan.give_up("the measured step is not faster (0.90x)"))
    assert not ctl.active and type(model[3]) is nn.Linear and ctl.step() == {}


def test_a_failed_swap_leaves_the_model_as_it_was(monkeypatch) -> None:
    from lightning_ard import controller

    model = _mlp()
    monkeypatch.setattr(controller, "PatternSampler", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        ARDController(model, groups=1).apply()
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]


def test_the_pattern_stream_does_not_depend_on_which_sites_are_served() -> None:
    a, b = ARDController(_mlp(), groups=2, seed=5).apply(), ARDController(_mlp(), groups=2, seed=5).apply()
    b.fall_back(["5"], "slower")
    for _ in range(3):
        pa, pb = a.step(), b.step()
        assert [p.merge_key for p in pa["2"]] == [p.merge_key for p in pb["2"]]


def test_a_plan_for_another_model_fails_before_the_swap() -> None:
    plan = build_plan(_mlp(), ARDConfig(groups=1))
    other = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 64), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(64, 5))  # fmt: skip
    with pytest.raises(ValueError, match=r"site '2' has width 64 in the plan but '3' reads 32 units; the plan was "):
        ARDController(other, plan=plan).apply()
    assert [type(m) for m in other] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
