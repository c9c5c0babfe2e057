"""ARD Linear: the same ``nn.Linear`` (same Parameters) computing only the kept part of its product."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ard.kernels.backend import Backend, get_backend
from lightning_ard.layers._swap import revert_class, swap_class
from lightning_ard.patterns import RowPattern, TilePattern

_ATTRIBUTES = (
    "ard_in_pattern",
    "ard_out_pattern",
    "ard_tile_pattern",
    "ard_backend_name",
    "_ard_backends",
    "ard_rows",
    "ard_grad_input",
)


class ARDLinear(nn.Linear):
    """An ``nn.Linear`` that, in training with patterns set, multiplies only kept rows/columns or kept tiles.

    Patterns (set per step with :meth:`set_patterns`):
      * ``in_pattern`` (a consumer): only the kept input units are used, scaled by the pattern's scale. The input
        may be full width (it is gathered) or already compact (the output of a producer with the same pattern).
      * ``out_pattern`` (a producer): only kept output units are computed; the output is compact ``(..., K)``.
      * ``tile_pattern`` (DropConnect): kept tiles of the weight, scaled; not combinable with row patterns.

    In eval mode, or with no pattern set, it is exactly ``nn.Linear``. Build one with :meth:`from_linear` (in
    place, no copy) and undo with :meth:`to_linear`.
    """

    ard_in_pattern: RowPattern | None
    ard_out_pattern: RowPattern | None
    ard_tile_pattern: TilePattern | None
    ard_backend_name: str

    @classmethod
    def from_linear(cls, linear: nn.Linear, backend: str = "auto") -> "ARDLinear":
        """Convert ``linear`` in place (same object, same Parameters) and return it."""
        swap_class(linear, nn.Linear, cls)
        layer: ARDLinear = linear  # type: ignore[assignment]
        get_backend(backend, layer.weight.device)  # validates the name (and a forced Triton) now
        layer.ard_backend_name = backend
        layer._ard_backends: dict[torch.device, Backend] = {}
        layer.ard_rows, layer.ard_grad_input = 0, False
        layer.clear_patterns()
        return layer

    def to_linear(self) -> nn.Linear:
        """Undo :meth:`from_linear` in place: the plain ``nn.Linear`` holding the trained Parameters."""
        revert_class(self, nn.Linear, _ATTRIBUTES)
        return self

    def set_patterns(
        self,
        in_pattern: RowPattern | None = None,
        out_pattern: RowPattern | None = None,
        tile_pattern: TilePattern | None = None,
    ) -> None:
        """Set this step's patterns (checked against the layer's shape)."""
        if in_pattern is not None and in_pattern.width != self.in_features:
            raise ValueError(f"in_pattern width {in_pattern.width} does not match in_features={self.in_features}")
        if out_pattern is not None and out_pattern.width != self.out_features:
            raise ValueError(f"out_pattern width {out_pattern.width} does not match out_features={self.out_features}")
        if tile_pattern is not None:
            if in_pattern is not None or out_pattern is not None:
                raise ValueError("tile_pattern cannot be combined with in_pattern/out_pattern on one layer")
            shape = (tile_pattern.out_features, tile_pattern.in_features)
            if shape != (self.out_features, self.in_features):
                raise ValueError(
                    f"tile_pattern shape {shape} does not match the weight shape "
                    f"{(self.out_features, self.in_features)}"
                )
        self.ard_in_pattern, self.ard_out_pattern, self.ard_tile_pattern = in_pattern, out_pattern, tile_pattern

    def clear_patterns(self) -> None:
        """Remove the patterns: the layer behaves as ``nn.Linear`` again."""
        self.ard_in_pattern = self.ard_out_pattern = self.ard_tile_pattern = None

    def backend_for(self, device: torch.device) -> Backend:
        """The backend this layer uses for tensors on ``device`` (resolved once per device)."""
        backend = self._ard_backends.get(device)
        if backend is None:
            backend = self._ard_backends[device] = get_backend(self.ard_backend_name, device)
        return backend

    @torch.compiler.disable  # per-step patterns are Python data: run eagerly, compile the rest
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        inp, out, tile = self.ard_in_pattern, self.ard_out_pattern, self.ard_tile_pattern
        if not self.training or (inp is None and out is None and tile is None):
            return F.linear(input, self.weight, self.bias)
        self.ard_rows = input.numel() // max(input.shape[-1], 1)  # read by FLOP accounting
        self.ard_grad_input = input.requires_grad
        backend = self.backend_for(input.device)
        if tile is not None:
            return backend.tile_linear(input, self.weight, self.bias, tile)
        x_compact = False
        if inp is not None and input.shape[-1] != self.in_features:
            if input.shape[-1] != inp.num_kept:
                raise ValueError(
                    f"ARDLinear got input width {input.shape[-1]}: expected in_features={self.in_features} "
                    f"or the {inp.num_kept} kept units of its input pattern"
                )
            x_compact = True
        return backend.row_linear(input, self.weight, self.bias, inp, out, x_compact)
