"""The swap: sites convert their modules to ARD layers in place, and restore gives the original classes back."""

from __future__ import annotations

from torch import nn

from lightning_ard.layers import ARDDropout, ARDLinear
from lightning_ard.sites import Surgery, find_sites


def test_surgery_swaps_and_restores_in_place() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 4))
    weight = model[2].weight
    surgery = Surgery(model, find_sites(model).sites).apply()
    assert type(model[0]) is ARDLinear and type(model[2]) is ARDLinear and type(model[1]) is ARDDropout
    assert model[2].weight is weight and surgery.dropout_uses == {"1": 1}
    surgery.restore()
    assert [type(m) for m in model] == [nn.Linear, nn.Dropout, nn.Linear] and not surgery.linears
