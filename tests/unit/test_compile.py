"""torch.compile: ARD layers run eagerly (compiler.disable), so new patterns every step never recompile."""

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ard import ARDController


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(12, 32), nn.Linear(32, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.b(self.drop(torch.tanh(self.a(x) * 2.0)))


def test_compiled_model_matches_eager_without_recompiles() -> None:
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = Net()
    compiled = torch.compile(model, backend="aot_eager")
    ctl = ARDController(model, pattern="random").apply()  # surgery on the modules the compiled wrapper calls
    assert ctl.active
    x = torch.randn(6, 12)
    y = torch.randint(0, 4, (6,))
    for step in range(10):
        ctl.step()
        out = compiled(x)
        torch.testing.assert_close(out, model(x))
        F.cross_entropy(out, y).backward()
        if step == 1:
            graphs_after_two = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs_after_two  # patterns changed 8 more times: no recompile
    ctl.restore()
