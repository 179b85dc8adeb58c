"""The broker interface every adapter implements: fetch a batch, ack it after the ledger commit.

Delivery is at least once; the consumer makes the effect exactly once (``consumer.py``). So an
adapter only has to (1) hand out messages with a position that names them for good, (2) ack
exactly the messages it is given, *after* the caller committed them, and (3) keep messages being
committed from being redelivered meanwhile (``in_progress``). Nothing is acked on fetch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Delivery", "Source"]


@dataclass(frozen=True)
class Delivery:
    """One message as the broker delivered it."""

    position: str  # names the message for good: ``nats:STREAM:SEQ``, ``redis:KEY:ENTRY-ID``
    offset: int  # the position as an increasing integer (NATS stream sequence, Redis ms<<20 | seq)
    data: bytes | None  # the message body; None when the broker lost it (a deleted Redis entry)
    broker_us: int  # when the broker stored it (µs since the epoch): the latency clock's start
    handle: Any = field(default=None, compare=False, repr=False)  # the client's own message object
    shard: str = ""  # where ``offset`` counts: a Kafka partition; '' for NATS and Redis Streams


class Source(ABC):
    """A durable consumer on one broker stream (a NATS durable, a Redis consumer group)."""

    #: the stream_positions key: which stream and which durable/group, never the host or a password
    key: str
    #: the URL with its password masked, for messages
    url: str

    def bind_positions(self, stored: Callable[[], dict[str, int]]) -> None:
        """Give the source the ledger's committed offsets per shard (``stored()``), for a broker
        whose resume point the ledger keeps (Kafka seeks to them on assignment). Others ignore it:
        NATS and Redis keep the delivery state of their durable / group themselves."""
        del stored

    @abstractmethod
    def fetch(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        """Up to ``max_messages`` messages, waiting at most ``timeout_s`` for the first; [] if none.
        Raises ``BrokerError`` when the broker cannot be reached (the caller retries)."""

    @abstractmethod
    def ack(self, deliveries: list[Delivery]) -> None:
        """Acknowledge messages whose effect the ledger has committed; returns once the broker has
        recorded the acks (a lost ack only means a redelivery, which the ledger skips)."""

    @abstractmethod
    def in_progress(self, deliveries: list[Delivery]) -> None:
        """Tell the broker these messages are still being worked on (no redelivery yet)."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection; unacked messages are redelivered to the next consumer."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
