"""The Linear sites that read an LSTM's output: found through ``.data``, ``pad_packed_sequence``, reshapes and
``.contiguous()``, by the model's path, and only for the eligible Linear-consumer sites."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lightning_ard.sites import BlockProof, BlockUse, find_lstm_followers, find_sites, register_site_rule
from lightning_ard.sites.rules import unregister_site_rule

torch.fx.wrap("pad_packed_sequence")  # one graph node, as a model that unpads under torch.fx would do


def _followers(model: nn.Module, eligible=lambda site: site.producer is None, lstm_paths=None) -> dict[str, str]:
    """The followers among the sites ``find_sites`` proves, for the LSTMs that a site feeds (or ``lstm_paths``)."""
    sites = find_sites(model).sites
    if lstm_paths is None:
        lstm_paths = {s.consumer for s in sites if s.kind.feeds_lstm}
    return find_lstm_followers(model, sites, lstm_paths, eligible)


class LM(nn.Module):
    """embedding -> dropout -> LSTM -> dropout -> Linear decoder; time-major unless ``batch_first``."""

    def __init__(self, batch_first: bool = False) -> None:
        super().__init__()
        self.emb, self.drop_in = nn.Embedding(30, 12), nn.Dropout(0.5)
        self.lstm = nn.LSTM(12, 10, 2, dropout=0.5, batch_first=batch_first)
        self.drop_out, self.dec = nn.Dropout(0.5), nn.Linear(10, 30)

    def forward(self, x):
        out, _ = self.lstm(self.drop_in(self.emb(x)))
        return self.dec(self.drop_out(out))


class BatchFirstLM(LM):
    """``out, h = lstm(x)`` with batch_first, flattened to one row per token before the decoder's dropout."""

    def __init__(self) -> None:
        super().__init__(batch_first=True)

    def forward(self, x, hidden=None):
        out, hidden = self.lstm(self.drop_in(self.emb(x)), hidden)
        return self.dec(self.drop_out(out.contiguous().view(-1, 10))), hidden


class PackedLM(nn.Module):
    """Packed input: the decoder reads ``pad_packed_sequence(out)[0]``."""

    def __init__(self) -> None:
        super().__init__()
        self.drop_in, self.lstm = nn.Dropout(0.5), nn.LSTM(6, 10, batch_first=True)
        self.drop_out, self.dec = nn.Dropout(0.5), nn.Linear(10, 4)

    def forward(self, packed):
        out, _ = self.lstm(packed)
        padded, _ = pad_packed_sequence(out, batch_first=True)
        return self.dec(torch.flatten(self.drop_out(padded.contiguous()), 0, 1))


class PackedDataLM(PackedLM):
    """Packed input: the decoder reads the packed tokens, ``out.data``."""

    def forward(self, packed):
        out, _ = self.lstm(packed)
        return self.dec(self.drop_out(out.data))


class LastState(LM):
    """The dropout reads the final hidden state ``h``, not the output sequence: no follower."""

    def forward(self, x):
        _, (h, _) = self.lstm(self.drop_in(self.emb(x)))
        return self.dec(self.drop_out(h[-1]))


class LastStep(LM):
    """The dropout reads one time step of the output (an index, not a reshape): no follower."""

    def forward(self, x):
        out, _ = self.lstm(self.drop_in(self.emb(x)))
        return self.dec(self.drop_out(out[-1]))


class Untraceable(nn.Module):
    """Its own forward does not trace; its ``body`` does, and holds the LSTM and the decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.body = LM()

    def forward(self, x):
        return self.body(x) if x.sum() > 0 else self.body(x + 1)


def test_time_major_lm() -> None:
    model = LM()
    assert _followers(model) == {"drop_out": "lstm"}
    assert _followers(model, lstm_paths=set()) == {}  # no LSTM served: nothing to follow


def test_batch_first_through_contiguous_and_view() -> None:
    assert _followers(BatchFirstLM()) == {"drop_out": "lstm"}


def test_packed_sequences_through_pad_packed_sequence_and_data() -> None:
    for model in (PackedLM(), PackedDataLM()):
        assert _followers(model, lstm_paths={"lstm"}) == {"drop_out": "lstm"}
    x, lengths = torch.randn(3, 5, 6), torch.tensor([5, 3, 2])
    assert PackedLM()(pack_padded_sequence(x, lengths, batch_first=True)).shape == (15, 4)  # the model runs


def test_a_dropout_not_reading_the_lstm_output_does_not_follow() -> None:
    assert _followers(LastState()) == {}
    assert _followers(LastStep()) == {}


def test_only_eligible_linear_consumer_sites_follow() -> None:
    model = LM()
    assert _followers(model, eligible=lambda site: False) == {}
    assert _followers(model, eligible=lambda site: site.name != "drop_out") == {}
    sites = find_sites(model).sites
    assert find_lstm_followers(model, [s for s in sites if s.kind.feeds_lstm], {"lstm"}, lambda s: True) == {}


def test_untraceable_model_is_searched_in_its_traceable_submodules() -> None:
    model = Untraceable()
    assert _followers(model, lstm_paths={"body.lstm"}) == {"body.drop_out": "body.lstm"}


class Decoder(nn.Module):
    """A block with a site rule: detection takes the rule's word; the follower search reads its code."""

    def __init__(self) -> None:
        super().__init__()
        self.drop, self.fc = nn.Dropout(0.5), nn.Linear(10, 30)

    def forward(self, x):
        return self.fc(self.drop(x))


class RuleLM(LM):
    def __init__(self) -> None:
        super().__init__()
        self.head = Decoder()

    def forward(self, x):
        return self.head(self.lstm(self.drop_in(self.emb(x)))[0])


def test_blocks_with_a_site_rule_are_traced_through() -> None:
    register_site_rule(Decoder, lambda block: BlockProof(uses=[BlockUse("drop", "fc")], calls={"fc": 1}))
    try:
        assert _followers(RuleLM()) == {"head.drop": "lstm"}
    finally:
        unregister_site_rule(Decoder)


class CachesState(LM):
    """Its forward keeps the LSTM state on the module and registers a buffer on first use."""

    def forward(self, x):
        out, self.state = self.lstm(self.drop_in(self.emb(x)))
        if "steps" not in self._buffers:
            self.register_buffer("steps", torch.zeros(()))
        return self.dec(self.drop_out(out))


def test_the_search_does_not_change_the_model() -> None:
    model = CachesState()
    sites = find_sites(model).sites
    assert not hasattr(model, "state") and "steps" not in dict(model.named_buffers())
    assert find_lstm_followers(model, sites, {"lstm"}, lambda s: True) == {"drop_out": "lstm"}
    assert not hasattr(model, "state") and "steps" not in dict(model.named_buffers())


def test_torch_fx_still_traces_after_a_graph_with_a_wrapped_function() -> None:
    """A GraphModule of a graph calling a torch.fx.wrap-ped function would break every later trace."""
    model = PackedLM()
    assert _followers(model, lstm_paths={"lstm"}) == {"drop_out": "lstm"}
    torch.fx.symbolic_trace(LM())
    assert _followers(LM()) == {"drop_out": "lstm"}
