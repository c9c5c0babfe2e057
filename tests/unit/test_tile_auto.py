"""tile="auto": the tile shape per layer from its weight, and sites no tile pattern serves skipped, not fatal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_ard.controller import ARDController
from lightning_ard.patterns.tile import auto_tile


@pytest.mark.parametrize(
    ("shape", "tile"),
    [((1024, 1024), (64, 64)), ((128, 256), (16, 16)), ((3072, 768), (64, 32)), ((10, 56), (1, 3)),
     ((56, 56), (7, 3)), ((10, 1024), (1, 64)), ((1, 1), (1, 1))],
)  # fmt: skip
def test_auto_tile_rule(shape: tuple[int, int], tile: tuple[int, int]) -> None:
    assert auto_tile(*shape) == tile


def test_auto_tile_gives_small_weights_a_fine_grid() -> None:
    """128x256 at p = 0.1: 64x64 tiles make 8 tiles, all kept in most draws; auto tiles make 8 x 16 = 128, and
    fewer draws keep every weight."""

    def kept_all(tile: tuple[int, int] | str) -> tuple[int, float]:
        model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 128))
        dist = ARDController(model, pattern="tile", tile=tile).apply().distributions["2"]
        gen = torch.Generator().manual_seed(0)
        return dist.width, sum(bool(dist.sample(gen).kept_tiles.all()) for _ in range(400)) / 400

    (tiles_auto, auto), (tiles_64, fixed) = kept_all("auto"), kept_all((64, 64))
    assert (tiles_auto, tiles_64) == (128, 8)
    assert auto < fixed - 0.05


@pytest.mark.parametrize("width", [56, 10])
def test_narrow_layers_train_on_the_defaults(width: int) -> None:
    """A 56-wide (or 10-wide) consumer stopped the fit with 64x64 tiles; on the defaults it trains with ARD."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, width), nn.ReLU(), nn.Dropout(0.5), nn.Linear(width, 5))
    ctl = ARDController(model, pattern="tile").apply()
    assert [s.name for s in ctl.report.sites] == ["2"]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        ctl.step()
        loss = F.cross_entropy(model(torch.randn(8, 20)), torch.randint(0, 5, (8,)))
        loss.backward()
        opt.step()
        opt.zero_grad()
        ctl.check_calls()
    assert torch.isfinite(loss)
    ctl.restore()


def test_a_weight_no_tile_pattern_serves_is_skipped_with_the_reason() -> None:
    """A 1-wide consumer has one tile: no pattern drops 30 % of it. auto skips the site, and the other use of its
    dropout module (which would lose its dropout otherwise); an explicit tile shape still fails loudly."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 1), nn.Linear(1, 3)
            self.c, self.e = nn.Linear(4, 64), nn.Linear(64, 3)
            self.d = nn.Dropout(0.3)

        def forward(self, x):
            return self.b(self.d(torch.relu(self.a(x)))) + self.e(self.d(torch.relu(self.c(x))))

    net = Net()
    ctl = ARDController(net, pattern="tile").apply()
    assert not ctl.active and ctl.report.sites == []
    reasons = {s.name: s.reason for s in ctl.report.skipped}
    assert set(reasons) == {"d->b", "d->e"}
    assert all(r.startswith("no tile pattern serves it: site 'd->b' (p=0.3, width=1): ") for r in reasons.values())
    assert all(type(m) in (nn.Linear, nn.Dropout) for m in net.children())
    with pytest.raises(ValueError, match="cannot be reached"):
        ARDController(net, pattern="tile", tile=(64, 64)).apply()
