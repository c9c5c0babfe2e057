"""Truncated-BPTT batching of a token stream, as in Zaremba et al. (2014).

The stream of token ids is cut into ``batch_size`` equal contiguous streams laid out as rows of a
``[batch_size, tokens]`` matrix (the tail that does not fit is dropped). Window ``k`` is the column slice
``[k * bptt, (k + 1) * bptt)`` as input and the same slice shifted by one token as target. Consecutive windows
continue each row's stream, so a model that carries its hidden state from one window to the next sees each row as
one long text.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """1-D ids -> ``[batch_size, len(ids) // batch_size]`` contiguous streams (row r holds the r-th part)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = ids.numel() // batch_size
    if n < 2:
        raise ValueError(
            f"a stream of {ids.numel()} tokens is too short for batch_size={batch_size}: each of the {batch_size} rows "
            f"needs at least 2 tokens; use a smaller batch size or a bigger corpus"
        )
    return ids[: n * batch_size].view(batch_size, n).contiguous()


class BPTTWindows(Dataset):
    """Windows ``(inputs, targets)`` of shape ``[batch_size, <= bptt]`` over a batchified stream, in order.

    Use with ``DataLoader(windows, batch_size=None, shuffle=False)``: each item is already a batch, and the order
    must be kept for the hidden state to carry over. The last window may be shorter than ``bptt``.
    """

    def __init__(self, streams: torch.Tensor, bptt: int) -> None:
        if streams.dim() != 2 or streams.size(1) < 2:
            raise ValueError(f"streams must be a [batch, tokens >= 2] matrix, got shape {tuple(streams.shape)}")
        if isinstance(bptt, bool) or not isinstance(bptt, int) or bptt < 1:
            raise ValueError(f"bptt must be a positive integer, got {bptt!r}")
        self.streams = streams
        self.bptt = bptt

    def __len__(self) -> int:
        return math.ceil((self.streams.size(1) - 1) / self.bptt)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= k < len(self):
            raise IndexError(f"window {k} out of range [0, {len(self)})")
        start = k * self.bptt
        length = min(self.bptt, self.streams.size(1) - 1 - start)
        return self.streams[:, start : start + length], self.streams[:, start + 1 : start + 1 + length]

    @property
    def num_tokens(self) -> int:
        """Number of predicted tokens over all windows."""
        return self.streams.size(0) * (self.streams.size(1) - 1)
