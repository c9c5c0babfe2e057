"""The swap record: which modules a model's sites converted to ARD layers, so they can be switched and restored.

The conversion is in place (same module objects, same Parameters), so optimizers, hooks and checkpoints keep
pointing at the right tensors; restoring gives every module its original class back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from lightning_ard.layers import ARDLSTM, ARDDropout, ARDLinear
from lightning_ard.layers.record import StepRecord
from lightning_ard.sites.site import Site


@dataclass
class Surgery:
    """The swap applied to a model: which modules were converted, so they can be converted back."""

    model: nn.Module
    sites: list[Site]
    backend: str = "auto"
    linears: dict[str, ARDLinear] = field(default_factory=dict)
    lstms: dict[str, ARDLSTM] = field(default_factory=dict)
    dropouts: dict[str, ARDDropout] = field(default_factory=dict)
    dropout_uses: dict[str, int] = field(default_factory=dict)
    records: dict[str, StepRecord] = field(default_factory=dict)  # ARD layer path -> what its last step ran

    def apply(self) -> Surgery:
        """Convert every module the sites name, in place (same objects, same Parameters)."""
        for site in self.sites:
            for path in (site.consumer, site.producer):
                if path is None:
                    continue
                module = self.model.get_submodule(path)
                record = self.records.setdefault(path, StepRecord())
                if isinstance(module, nn.LSTM):
                    self.lstms[path] = ARDLSTM.from_lstm(module, record)
                else:
                    self.linears[path] = ARDLinear.from_linear(module, self.backend, record)
            if site.dropout is not None:
                self.dropouts[site.dropout] = ARDDropout.from_dropout(self.model.get_submodule(site.dropout))
                self.dropout_uses[site.dropout] = self.dropout_uses.get(site.dropout, 0) + 1
        return self

    def enable(self, enabled: bool = True) -> None:
        """Let the dropout modules hand their work to the ARD layers (or act as plain dropout again)."""
        for drop in self.dropouts.values():
            drop.ard_enabled = enabled

    def clear(self) -> None:
        """Remove all patterns (the converted modules act as the plain ones)."""
        for lin in self.linears.values():
            lin.clear_patterns()
        for lstm in self.lstms.values():
            lstm.clear_patterns()
        self.enable(False)

    def restore(self) -> None:
        """Give every converted module its original class back (trained values stay in the same Parameters)."""
        for lin in self.linears.values():
            lin.to_linear()
        for lstm in self.lstms.values():
            lstm.to_lstm()
        for drop in self.dropouts.values():
            drop.to_dropout()
        self.linears.clear(), self.lstms.clear(), self.dropouts.clear(), self.records.clear()
