"""The LSTM recurrence on precomputed input gates: one direction of one layer over the whole batch.

Sequence groups give every group its own input projection, but the recurrence ``h_{t-1} · W_hhᵀ`` is the same
full-width product for all of them, so the batch runs it together. No PyTorch op takes precomputed input gates
(``_VF.lstm`` and ``_VF.lstm_cell`` always multiply their input by ``W_ih``), so the loop over time is written here
with a hand-written backward: per step one ``addmm`` and the gate arithmetic, and the gradient of ``W_hh`` as one
product over all tokens at the end (an autograd loop would add up one small product per step). Measured against
the alternatives in docs/notes/lstm.md.

Rows are time-major and packed: step t holds the rows ``[offset_t, offset_t + size_t)``, the first ``size_t``
sequences of the batch (sizes never grow with t, as in a ``PackedSequence``; padded input has every size equal to
the batch). A sequence not active at a step keeps its state, so the reverse direction starts each sequence from its
initial state at its own last step, as ``nn.LSTM`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.autograd.function import once_differentiable

Steps = Sequence[tuple[int, int]]
"""``(offset, size)`` of each time step's rows, in time order."""


def recurrence(
    gates: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_hh: torch.Tensor, steps: Steps, reverse: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(output, h, c)`` of the LSTM whose gate pre-activations before the recurrent term are ``gates``
    (rows × 4H, biases included; i, f, g, o order); ``h0``/``c0`` are (B, H); ``reverse`` runs the steps backwards."""
    order = tuple(reversed(steps)) if reverse else tuple(steps)
    return _Recurrence.apply(gates, h0, c0, w_hh, order)  # type: ignore[no-any-return]


class _Recurrence(torch.autograd.Function):
    """Forward and backward of :func:`recurrence` (``order``: the steps in the order they run). Each step's
    tensors are kept as they come (no copies into whole-sequence buffers); a sequence that is not active keeps its
    rows of the state."""

    @staticmethod
    def forward(ctx, gates, h0, c0, w_hh, order):  # type: ignore[no-untyped-def, override]
        hidden = h0.shape[1]
        h, c = h0_in, c0_in = h0.detach(), c0.detach()
        product = _right_product(w_hh.detach(), h0.shape[0])
        acts, h_prev, c_prev, tanh_c, outs = [], [], [], [], []
        for offset, size in order:
            a = product(h[:size], gates[offset : offset + size])  # activated in place: i, f, g, o
            a[:, : 2 * hidden].sigmoid_()
            a[:, 2 * hidden : 3 * hidden].tanh_()
            a[:, 3 * hidden :].sigmoid_()
            i, f, g, o = a.chunk(4, 1)
            c_new = torch.addcmul(f * c[:size], i, g)
            tc = torch.tanh(c_new)
            h_new = o * tc
            acts.append(a), h_prev.append(h[:size]), c_prev.append(c[:size]), tanh_c.append(tc), outs.append(h_new)
            h, c = _rows_updated(h, h_new), _rows_updated(c, c_new)
        ctx.steps = (acts, h_prev, c_prev, tanh_c)
        ctx.save_for_backward(w_hh)
        ctx.order, ctx.batch = order, h0.shape[0]
        return _in_row_order(outs, order), h.clone() if h is h0_in else h, c.clone() if c is c0_in else c

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_h, d_c):  # type: ignore[no-untyped-def, override]
        (w_hh,) = ctx.saved_tensors
        acts, h_prev, c_prev, tanh_c = ctx.steps
        hidden = w_hh.shape[1]
        dh, dc = (g if g is not None else acts[0].new_zeros(ctx.batch, hidden) for g in (d_h, d_c))
        product = _right_product(w_hh.t().contiguous(), ctx.batch)
        d_gates: list[torch.Tensor] = [acts[0]] * len(acts)  # placeholders, each replaced by its step's gradient
        for k in reversed(range(len(acts))):
            offset, size = ctx.order[k]
            i, f, g, o = acts[k].chunk(4, 1)
            tc = tanh_c[k]
            dh_t = dh[:size] + d_out[offset : offset + size] if d_out is not None else dh[:size]
            dc_t = torch.addcmul(dc[:size], dh_t * o, 1 - tc * tc)
            d_a = torch.cat([dc_t * g * i * (1 - i), dc_t * c_prev[k] * f * (1 - f), dc_t * i * (1 - g * g),
                             dh_t * tc * o * (1 - o)], 1)  # fmt: skip
            d_gates[k] = d_a
            dh, dc = _rows_updated(dh, product(d_a)), _rows_updated(dc, dc_t * f)
        d_gates_rows = _in_row_order(d_gates, ctx.order)
        d_w_hh = None
        if ctx.needs_input_grad[3]:
            d_w_hh = d_gates_rows.t() @ _in_row_order(h_prev, ctx.order)
        return d_gates_rows, dh, dc, d_w_hh, None


def _rows_updated(state: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """``state`` with its first rows replaced by ``first`` (the sequences active at a step)."""
    return first if first.shape[0] == state.shape[0] else torch.cat([first, state[first.shape[0] :]])


def _in_row_order(per_step: list[torch.Tensor], order: Steps) -> torch.Tensor:
    """The steps' tensors stacked in the rows' order (``order`` lists the steps as they ran)."""
    if order and order[0][0] > order[-1][0]:  # ran backwards
        per_step = per_step[::-1]
    return torch.cat(per_step)


PACKED_WEIGHTS = True
"""Whether float32 CPU recurrences multiply by a weight packed once for oneDNN (off: a plain GEMM per step)."""


def _right_product(weight: torch.Tensor, batch: int) -> Callable[..., torch.Tensor]:
    """``product(x, add=None) = x · weightᵀ (+ add)`` for the per-step products of at most ``batch`` rows.

    A plain GEMM of a few rows re-packs the whole weight at every step; on the CPU in float32 oneDNN's linear takes
    the weight packed once per call of the recurrence (other dtypes and devices: ``addmm``/``mm``)."""
    if (
        PACKED_WEIGHTS
        and weight.dtype == torch.float32
        and weight.device.type == "cpu"
        and torch.backends.mkldnn.is_available()
    ):
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, batch)
        linear = torch.ops.mkldnn._linear_pointwise

        def packed_product(x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
            if add is None:
                return linear(x, packed, None, "none", [], "")
            return linear.binary(x, add.contiguous(), packed, None, "add")

        return packed_product
    w_t = weight.t()

    def gemm(x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        return torch.mm(x, w_t) if add is None else torch.addmm(add, x, w_t)

    return gemm
