"""ARD Linear: the same ``nn.Linear`` (same Parameters) computing only the kept part of its product."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ard.kernels import Backend, get_backend
from lightning_ard.kernels.select import layer_input
from lightning_ard.layers._swap import revert_class, swap_class
from lightning_ard.layers.record import StepRecord
from lightning_ard.patterns import RowPattern, TilePattern
from lightning_ard.patterns.groups import RowSlot, TileSlot, as_groups, common_groups, group_bounds

_ATTRIBUTES = (
    "ard_in_patterns",
    "ard_out_patterns",
    "ard_tile_patterns",
    "ard_groups",
    "ard_backend_name",
    "_ard_backends",
    "ard_record",
)


class ARDLinear(nn.Linear):
    """An ``nn.Linear`` that, in training with patterns set, multiplies only kept rows/columns or kept tiles.

    Patterns (set per step with :meth:`set_patterns`):
      * ``in_pattern`` (a consumer): only the kept input units are used, scaled by the pattern's scale. The input
        may be full width (it is gathered) or already compact (the output of a producer with the same pattern).
      * ``out_pattern`` (a producer): only kept output units are computed; the output is compact ``(..., K)``.
      * ``tile_pattern`` (DropConnect): kept tiles of the weight, scaled; not combinable with row patterns.

    Each slot also takes a sequence of G patterns: pattern g then serves the g-th contiguous share of the input's
    rows (:mod:`lightning_ard.patterns.groups`), and a producer's output stays full width (zeros at each group's dropped
    units), since the groups keep different units.

    In eval mode, or with no pattern set, it is exactly ``nn.Linear``. Build one with :meth:`from_linear` (in
    place, no copy) and undo with :meth:`to_linear`.
    """

    ard_in_patterns: tuple[RowPattern, ...] | None
    ard_out_patterns: tuple[RowPattern, ...] | None
    ard_tile_patterns: tuple[TilePattern, ...] | None
    ard_groups: int
    ard_backend_name: str

    @classmethod
    def from_linear(cls, linear: nn.Linear, backend: str = "auto", record: StepRecord | None = None) -> "ARDLinear":
        """Convert ``linear`` in place (same object, same Parameters) and return it; its training forwards write their
        shapes into ``record`` (a fresh one by default)."""
        get_backend(backend, linear.weight.device)  # validates the name (and a forced Triton) before any change
        swap_class(linear, nn.Linear, cls)
        layer: ARDLinear = linear  # type: ignore[assignment]
        layer.ard_backend_name = backend
        layer._ard_backends: dict[torch.device, Backend] = {}
        layer.ard_record = record if record is not None else StepRecord()
        layer.clear_patterns()
        return layer

    def use_backend(self, name: str) -> None:
        """Switch this layer to backend ``name`` (e.g. the one a measurement chose for ``"auto"``); validated
        before anything changes, effective from the next forward."""
        get_backend(name, self.weight.device)  # raises on a bad name or a Triton that cannot run here
        self.ard_backend_name = name
        self._ard_backends = {}

    def to_linear(self) -> nn.Linear:
        """Undo :meth:`from_linear` in place: the plain ``nn.Linear`` holding the trained Parameters."""
        revert_class(self, nn.Linear, _ATTRIBUTES)
        return self

    def set_patterns(
        self, in_pattern: RowSlot = None, out_pattern: RowSlot = None, tile_pattern: TileSlot = None
    ) -> None:
        """Set this step's patterns (one per slot, or one sequence per slot with a pattern per group), checked
        against the layer's shape."""
        ins, outs = as_groups(in_pattern, "in_pattern"), as_groups(out_pattern, "out_pattern")
        tiles = as_groups(tile_pattern, "tile_pattern")
        groups = common_groups({"in_pattern": ins, "out_pattern": outs, "tile_pattern": tiles})
        for pat in ins or ():
            if pat.width != self.in_features:
                raise ValueError(f"in_pattern width {pat.width} does not match in_features={self.in_features}")
        for pat in outs or ():
            if pat.width != self.out_features:
                raise ValueError(f"out_pattern width {pat.width} does not match out_features={self.out_features}")
        if tiles is not None:
            if ins is not None or outs is not None:
                raise ValueError("tile_pattern cannot be combined with in_pattern/out_pattern on one layer")
            for pat in tiles:
                shape = (pat.out_features, pat.in_features)
                if shape != (self.out_features, self.in_features):
                    raise ValueError(
                        f"tile_pattern shape {shape} does not match the weight shape "
                        f"{(self.out_features, self.in_features)}"
                    )
        self.ard_in_patterns, self.ard_out_patterns, self.ard_tile_patterns = ins, outs, tiles
        self.ard_groups = groups

    def clear_patterns(self) -> None:
        """Remove the patterns: the layer behaves as ``nn.Linear`` again."""
        self.ard_in_patterns = self.ard_out_patterns = self.ard_tile_patterns = None
        self.ard_groups = 1

    def backend_for(self, device: torch.device) -> Backend:
        """The backend this layer uses for tensors on ``device`` (resolved once per device)."""
        backend = self._ard_backends.get(device)
        if backend is None:
            backend = self._ard_backends[device] = get_backend(self.ard_backend_name, device)
        return backend

    @torch.compiler.disable  # per-step patterns are Python data: run eagerly, compile the rest
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        ins, outs, tiles = self.ard_in_patterns, self.ard_out_patterns, self.ard_tile_patterns
        if not self.training or (ins is None and outs is None and tiles is None):
            return F.linear(input, self.weight, self.bias)
        record = self.ard_record  # read by FLOP accounting, calibration and the backend choice
        rows = record.rows = input.numel() // max(input.shape[-1], 1)
        record.group_rows = [r1 - r0 for r0, r1 in group_bounds(rows, self.ard_groups)]
        record.grad_input = input.requires_grad
        record.input = layer_input(input)  # shape, dtype, compute dtype: what a backend measurement replays
        return self.ard_product(input, self.weight, self.bias)

    def _grouped_input_is_compact(self, input: torch.Tensor, ins: tuple[RowPattern, ...] | None) -> bool:
        """Whether a grouped layer's input holds only its groups' kept units (a grouped producer's compact output)."""
        width = input.shape[-1]
        if width == self.in_features:
            return False
        counts = {p.num_kept for p in ins or ()}
        if ins is None or counts != {width}:
            raise ValueError(
                f"ARDLinear with {self.ard_groups} pattern groups got input width {width}: expected "
                f"in_features={self.in_features}, or the kept count its groups share ({sorted(counts)})"
            )
        return True

    def ard_product(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, backend: Backend | None = None
    ) -> torch.Tensor:
        """This step's ARD product of ``input`` with ``weight`` and ``bias`` (the layer's own in :meth:`forward`;
        stand-ins of the same shape when the callback times the layer), through ``backend`` (default: the
        layer's). Needs patterns set."""
        ins, outs, tiles = self.ard_in_patterns, self.ard_out_patterns, self.ard_tile_patterns
        backend = backend if backend is not None else self.backend_for(input.device)
        if self.ard_groups > 1:
            if tiles is not None:
                return backend.tile_linear_groups(input, weight, bias, tiles)
            x_compact = self._grouped_input_is_compact(input, ins)
            out_compact = outs is not None and len({p.num_kept for p in outs}) == 1
            return backend.row_linear_groups(input, weight, bias, ins, outs, x_compact, out_compact)
        inp, out = (ins[0] if ins else None), (outs[0] if outs else None)
        if tiles is not None:
            return backend.tile_linear(input, weight, bias, tiles[0])
        x_compact = False
        if inp is not None and input.shape[-1] != self.in_features:
            if input.shape[-1] != inp.num_kept:
                raise ValueError(
                    f"ARDLinear got input width {input.shape[-1]}: expected in_features={self.in_features} "
                    f"or the {inp.num_kept} kept units of its input pattern"
                )
            x_compact = True
        return backend.row_linear(input, weight, bias, inp, out, x_compact)
