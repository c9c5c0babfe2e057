"""ARDPlan and PlanRecord: plain data that round-trips exactly, new plans instead of edits, the record's steps."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lightning_ard import ARDConfig
from lightning_ard.plan import ARDPlan, PlanRecord, Schedule, distribution_from_dict, distribution_to_dict
from lightning_ard.planning import build_plan
from lightning_ard.search import search_distribution


def _mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 5)
    )


@pytest.mark.parametrize("family", ["row", "block", "random"])
def test_a_distribution_round_trips_bitwise(family) -> None:
    dist = search_distribution(0.37, 64, family)
    back = distribution_from_dict(json.loads(json.dumps(distribution_to_dict(dist))))
    assert torch.equal(back.probabilities, dist.probabilities) and back.candidates == dist.candidates
    assert back.target_rate == dist.target_rate


def test_a_tile_distribution_round_trips() -> None:
    dist = search_distribution(0.5, 64, "tile", shape=(64, 64), tile=(16, 16))
    back = distribution_from_dict(distribution_to_dict(dist))
    assert back.candidates == dist.candidates and torch.equal(back.probabilities, dist.probabilities)


def test_unknown_family_in_a_plan_is_named() -> None:
    data = distribution_to_dict(search_distribution(0.5, 8, "row"))
    data["candidates"][0]["type"] = "Zigzag"
    with pytest.raises(ValueError, match="unknown pattern family 'Zigzag' in a plan; known: "):
        distribution_from_dict(data)


def test_a_plan_round_trips_through_json() -> None:
    plan = build_plan(_mlp(), ARDConfig(pattern="row", groups=3))
    back = ARDPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert back == plan and back.to_dict() == plan.to_dict()
    assert [sp.name for sp in back.sites] == ["2", "5"] and [sp.groups for sp in back.sites] == [3, 3]


def test_new_plans_leave_the_old_one_as_it_was() -> None:
    plan = build_plan(_mlp(), ARDConfig(pattern="block", groups=1))
    fell = plan.fall_back(["5"], {"5": "slower"})
    assert plan.fallen_back == {} and fell.fallen_back == {"5": "slower"}
    assert [sp.name for sp in fell.served] == ["2"]
    chosen = fell.with_backends({"3": "gathered"})
    assert fell.backend_of["3"] == "auto" and chosen.backend_of["3"] == "gathered"
    plain = chosen.give_up("the measured step is not faster (0.90x)")
    assert plain.served == () and chosen.served != () and plain.plain.startswith("the measured step")


def test_a_fall_back_takes_every_use_of_the_dropout_module() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.c(self.drop(torch.relu(self.b(self.drop(torch.relu(self.a(x)))))))

    plan = build_plan(Shared(), ARDConfig(groups=1))
    names = [sp.name for sp in plan.sites]
    fell = plan.fall_back([names[0]], {names[0]: "slower"})
    assert fell.fallen_back == {names[0]: "slower", names[1]: "shares its dropout drop with a site that fell back"}


def test_the_record_gives_the_plan_in_force_at_each_step(tmp_path) -> None:
    plan = build_plan(_mlp(), ARDConfig(groups=1))
    later = plan.fall_back(["5"], "slower")
    record = PlanRecord([], Schedule(start=2, every=0, steps=1))
    record.add(0, plan)
    record.add(3, later)
    record.add(3, later)  # the same plan again: no new entry
    assert [s for s, _ in record.plans] == [0, 3]
    assert record.at(2) == plan and record.at(3) == later and record.at(99) == later
    assert [record.mode(i) for i in range(5)] == [None, None, "plain", "ard", None]
    record.save(tmp_path / "plan.json")
    assert PlanRecord.load(tmp_path / "plan.json").to_dict() == record.to_dict()


def test_no_reference_step_once_the_plain_model_trains() -> None:
    plan = build_plan(_mlp(), ARDConfig(groups=1))
    record = PlanRecord([(0, plan), (1, plan.give_up("slower"))], Schedule(start=0, every=2, steps=1))
    assert record.mode(0) == "plain" and [record.mode(i) for i in range(1, 6)] == [None] * 5


def test_a_record_of_another_format_is_refused() -> None:
    with pytest.raises(ValueError, match="plan format 7 is not supported"):
        PlanRecord.from_dict({"format": 7, "plans": [], "schedule": None})
