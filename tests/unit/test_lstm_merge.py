"""The ARD LSTM's group-merging helper: groups that drew the same pattern (equal ``merge_key``) share one weight
gather, adjacent time chunks with one pattern run as one call, and the modes use it."""

from __future__ import annotations

import torch
from torch import nn

import lightning_ard.layers.lstm.layer as layer_module
import lightning_ard.layers.lstm.time_chunks as time_module
from lightning_ard.layers import ARDLSTM
from lightning_ard.layers.lstm.merge import Run, SharedWeights, merge_runs, pattern_key
from lightning_ard.patterns import BlockRow, RowPattern

BLOCK = BlockRow(6, 3)
A, B = BLOCK.pattern(0), BLOCK.pattern(2)


def test_merge_runs_joins_adjacent_equal_patterns_and_keeps_their_order() -> None:
    bounds = [(0, 2), (2, 4), (4, 4), (4, 5), (5, 7), (7, 9)]
    runs = merge_runs(bounds, [A, A, B, B, A, B])
    assert runs == [Run(0, 4, A), Run(4, 5, B), Run(5, 7, A), Run(7, 9, B)]  # the empty span (4, 4) is dropped


def test_merge_runs_uses_the_merge_key_not_the_object() -> None:
    twin = RowPattern(6, A.kept.clone(), A.scale, A.stride, A.key, A.span)  # same kept units and scale
    assert [(r.start, r.stop) for r in merge_runs([(0, 1), (1, 3)], [A, twin])] == [(0, 3)]
    keyless = [RowPattern(6, A.kept.clone(), A.scale) for _ in range(2)]  # no key: each only equals itself
    assert [(r.start, r.stop) for r in merge_runs([(0, 1), (1, 3)], keyless)] == [(0, 1), (1, 3)]


def test_shared_weights_builds_once_per_key() -> None:
    built: list[str] = []

    def build(name: str):
        return lambda: built.append(name) or [torch.tensor(float(len(built)))]

    shared = SharedWeights()
    first = shared.get((0, *pattern_key(A)), build("a"))
    assert shared.get((0, *pattern_key(A)), build("a again")) is first
    shared.get((0, *pattern_key(B)), build("b"))
    shared.get((1, *pattern_key(A)), build("a, layer 1"))
    shared.get((0, *pattern_key(None)), build("none"))
    assert built == ["a", "b", "a, layer 1", "none"]
    assert pattern_key(A, None) == (A.merge_key, None)


def _count_calls(monkeypatch, module, name: str) -> list[int]:
    calls: list[int] = []
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *args, **kw: calls.append(1) or original(*args, **kw))
    return calls


def test_time_chunks_merge_adjacent_chunks_and_share_gathers(monkeypatch) -> None:
    """Chunks A A B A: three fused calls (A A joined), two gathers (the second A run reuses the first's)."""
    layer = ARDLSTM.from_lstm(nn.LSTM(6, 4))
    layer.set_patterns([(A, A, B, A)], mode="time")
    gathers = _count_calls(monkeypatch, time_module, "direction_weights")
    calls = _count_calls(monkeypatch, time_module, "fused_layer")
    layer(torch.randn(8, 3, 6))
    assert (len(calls), len(gathers)) == (3, 2)
    assert [t for t, _, _ in layer.ard_record.work[0]] == [2 * 3] * 4  # work is still recorded per chunk


def test_sequence_groups_share_gathers_of_equal_patterns(monkeypatch) -> None:
    """Groups A B A over two layers: one call per group and layer, one gather per distinct (layer, pattern)."""
    layer = ARDLSTM.from_lstm(nn.LSTM(6, 4, 2, bidirectional=True))
    upper = BlockRow(8, 4)
    layer.set_patterns([(A, B, A), (upper.pattern(1), upper.pattern(1), upper.pattern(5))], mode="sequence")
    gathers = _count_calls(monkeypatch, layer_module, "layer_weights")
    calls = _count_calls(monkeypatch, layer_module, "fused_layer")
    layer(torch.randn(5, 6, 6))
    assert (len(calls), len(gathers)) == (6, 4)
