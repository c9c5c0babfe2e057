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
    """Forward and backward of :func:`recurrence` (``order``: the steps in the order they run)."""

    @staticmethod
    def forward(ctx, gates, h0, c0, w_hh, order):  # type: ignore[no-untyped-def, override]
        rows, hidden = gates.shape[0], h0.shape[1]
        acts = torch.empty_like(gates)  # activated gates (i, f, g, o)
        c_prev, h_prev, tanh_c = (gates.new_empty(rows, hidden) for _ in range(3))
        out = gates.new_empty(rows, hidden)
        h, c = h0.detach().clone(), c0.detach().clone()
        product = _right_product(w_hh.detach(), ctx_batch := h0.shape[0])
        for offset, size in order:
            rs = slice(offset, offset + size)
            a = acts[rs]
            a.copy_(product(h[:size], gates[rs]))
            a[:, : 2 * hidden].sigmoid_()
            a[:, 2 * hidden : 3 * hidden].tanh_()
            a[:, 3 * hidden :].sigmoid_()
            i, f, g, o = a.chunk(4, 1)
            c_prev[rs], h_prev[rs] = c[:size], h[:size]
            c_new = torch.addcmul(f * c[:size], i, g)
            torch.tanh(c_new, out=tanh_c[rs])
            torch.mul(o, tanh_c[rs], out=out[rs])
            h[:size], c[:size] = out[rs], c_new
        ctx.save_for_backward(acts, c_prev, h_prev, tanh_c, w_hh)
        ctx.order, ctx.batch = order, ctx_batch
        return out, h, c

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_h, d_c):  # type: ignore[no-untyped-def, override]
        acts, c_prev, h_prev, tanh_c, w_hh = ctx.saved_tensors
        hidden = w_hh.shape[1]
        dh, dc = (g.clone() if g is not None else acts.new_zeros(ctx.batch, hidden) for g in (d_h, d_c))
        d_out = d_out if d_out is not None else torch.zeros_like(h_prev)
        d_gates = torch.empty_like(acts)
        product = _right_product(w_hh.t().contiguous(), ctx.batch)
        for offset, size in reversed(ctx.order):
            rs = slice(offset, offset + size)
            i, f, g, o = acts[rs].chunk(4, 1)
            dh_t = dh[:size] + d_out[rs]
            tc = tanh_c[rs]
            dc_t = dc[:size] + dh_t * o * (1 - tc * tc)
            di, df, dg, do = d_gates[rs].chunk(4, 1)
            torch.mul(dc_t * g, i * (1 - i), out=di)
            torch.mul(dc_t * c_prev[rs], f * (1 - f), out=df)
            torch.mul(dc_t * i, 1 - g * g, out=dg)
            torch.mul(dh_t * tc, o * (1 - o), out=do)
            dh[:size] = product(d_gates[rs])
            dc[:size] = dc_t * f
        d_w_hh = d_gates.t() @ h_prev if ctx.needs_input_grad[3] else None
        return d_gates, dh, dc, d_w_hh, None



PACKED_WEIGHTS = True
"""Whether float32 CPU recurrences multiply by a weight packed once for oneDNN (off: a plain GEMM per step)."""


def _right_product(weight: torch.Tensor, batch: int) -> Callable[..., torch.Tensor]:
    """``product(x, add=None) = x · weightᵀ (+ add)`` for the per-step products of at most ``batch`` rows.

    A plain GEMM of a few rows re-packs the whole weight at every step; on the CPU in float32 oneDNN's linear takes
    the weight packed once per call of the recurrence (other dtypes and devices: ``addmm``/``mm``)."""
    if PACKED_WEIGHTS and weight.dtype == torch.float32 and weight.device.type == "cpu" and torch.backends.mkldnn.is_available():
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
