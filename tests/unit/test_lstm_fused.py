"""The ARD LSTM's fused-call helper (the one call of ``torch._VF.lstm``) and a layer's weights on kept input
columns: both equal ``nn.LSTM``, forward and gradients, padded and packed, one or both directions."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from lightning_ard.layers.lstm.fused import fused_layer
from lightning_ard.layers.lstm.layer import layer_weights
from lightning_ard.patterns import BlockRow
from tests.grads import take_grads

TOL = dict(rtol=1e-10, atol=1e-10)
DT = torch.float64


def _inputs(lstm: nn.LSTM, gen: torch.Generator) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    dirs = 2 if lstm.bidirectional else 1
    shape = (4, 5) if lstm.batch_first else (5, 4)
    x = torch.randn(*shape, lstm.input_size, dtype=DT, generator=gen, requires_grad=True)
    h0 = torch.randn(dirs, 4, lstm.hidden_size, dtype=DT, generator=gen)
    return x, (h0, h0.flip(1).clone())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_fused_layer_equals_nn_lstm_on_packed_input(bidirectional: bool, bias: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    lstm = nn.LSTM(6, 5, bias=bias, bidirectional=bidirectional).to(DT)
    x, state = _inputs(lstm, gen)
    lengths = torch.tensor([3, 5, 1, 4])
    want, (h_want, c_want) = lstm(pack_padded_sequence(x, lengths, enforce_sorted=False), state)
    (want.data.pow(2).sum() + h_want.sum() + c_want.sum()).backward()
    expected = take_grads(x, *lstm.parameters())

    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    sorted_state = lstm.permute_hidden(state, packed.sorted_indices)
    y, h, c = fused_layer(
        packed.data, sorted_state, layer_weights(lstm, 0, None),
        batch_sizes=packed.batch_sizes, has_biases=bias, bidirectional=bidirectional,
    )  # fmt: skip
    h, c = lstm.permute_hidden((h, c), packed.unsorted_indices)
    torch.testing.assert_close(y, want.data, **TOL)
    torch.testing.assert_close(h, h_want, **TOL)
    torch.testing.assert_close(c, c_want, **TOL)
    (y.pow(2).sum() + h.sum() + c.sum()).backward()
    for got, exp in zip(take_grads(x, *lstm.parameters()), expected, strict=True):
        torch.testing.assert_close(got, exp, **TOL)


@pytest.mark.parametrize("batch_first", [False, True])
def test_fused_layer_on_kept_columns_equals_nn_lstm_on_zeroed_input(batch_first: bool) -> None:
    """Padded input, both directions: the kept input columns with ``weight_ih``'s kept columns equal the whole
    input with the dropped columns zero."""
    gen = torch.Generator().manual_seed(2)
    lstm = nn.LSTM(6, 5, bidirectional=True, batch_first=batch_first).to(DT)
    x, state = _inputs(lstm, gen)
    pattern = BlockRow(6, 4).pattern(3)  # wraps around: an index gather, not a slice
    want, (h_want, c_want) = lstm(x * pattern.mask(DT, scaled=False), state)
    (want.pow(2).sum() + h_want.sum()).backward()
    expected = take_grads(x, *lstm.parameters())

    kept = pattern.selector(x.device)
    weights = layer_weights(lstm, 0, kept)
    y, h, c = fused_layer(x.index_select(-1, kept), state, weights, bidirectional=True, batch_first=batch_first)
    torch.testing.assert_close(y, want, **TOL)
    torch.testing.assert_close(h, h_want, **TOL)
    torch.testing.assert_close(c, c_want, **TOL)
    (y.pow(2).sum() + h.sum()).backward()
    for got, exp in zip(take_grads(x, *lstm.parameters()), expected, strict=True):
        torch.testing.assert_close(got, exp, **TOL)
