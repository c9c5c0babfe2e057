"""What a dropout site is: its kind, the site record, and the detection report (kept and skipped dropouts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class SiteKind(str, Enum):
    """How a site is served: which layer reads the dropped units, and whether its producer is compacted too.

    A ``str`` enum, so ``SiteKind.CONSUMER == "consumer"`` holds and logs, tables and checks written with the
    plain strings keep working; ``str()`` and f-strings give the value as well.
    """

    CONSUMER = "consumer"
    """A Linear reads the kept columns only."""
    PRODUCER_CONSUMER = "producer+consumer"
    """As CONSUMER, and the Linear before the dropout computes only the kept rows."""
    LSTM_INPUT = "lstm-input"
    """An LSTM's first layer reads the kept input units only."""
    LSTM_INTER = "lstm-inter"
    """An ``nn.LSTM(dropout=p)``'s dropout between two of its layers."""

    def __str__(self) -> str:
        return self.value

    @property
    def feeds_linear(self) -> bool:
        """Whether a Linear consumes the site (consumer or producer+consumer): one input pattern per Linear."""
        return self in (SiteKind.CONSUMER, SiteKind.PRODUCER_CONSUMER)

    @property
    def feeds_lstm(self) -> bool:
        """Whether an LSTM consumes the site (its input, or between two of its layers)."""
        return self in (SiteKind.LSTM_INPUT, SiteKind.LSTM_INTER)


@dataclass
class Site:
    """One dropout use served by ARD.

    Attributes:
        name: unique name used in logs (``ard/<name>/...``): the dropout's path, suffixed with the consumer
            when the dropout is used at several places; ``<lstm>.l<i>`` for an LSTM's inter-layer dropout.
        kind: how the site is served (a plain string such as ``"consumer"`` is accepted and converted).
        p: the dropout rate of this site (the module's own, or the callback's override).
        width: number of units the pattern runs over.
        dropout: path of the ``nn.Dropout`` module (None for LSTM inter-layer dropout).
        consumer: path of the Linear or LSTM that reads the dropped units.
        consumer_layer: for LSTM consumers, the layer whose input this is.
        producer: path of the Linear that computes only kept units, if proven.
    """

    name: str
    kind: SiteKind
    p: float
    width: int
    dropout: str | None
    consumer: str
    consumer_layer: int = 0
    producer: str | None = None

    def __post_init__(self) -> None:
        self.kind = SiteKind(self.kind)


@dataclass
class Skipped:
    """A dropout (or LSTM) left as it is, and why: reported so that users see what ARD does not serve."""

    name: str
    reason: str


@dataclass
class SiteReport:
    """Result of detection: the sites ARD serves, in detection order, and everything it left alone."""

    sites: list[Site] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
