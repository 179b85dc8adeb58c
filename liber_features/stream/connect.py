"""Which adapter a broker URL opens: a consumer (``open_source``) or a publisher (``open_publisher``)."""

from __future__ import annotations

from typing import Protocol

from liber_features.stream.brokers import KafkaConfig, NatsConfig, parse_broker_url
from liber_features.stream.source import Source

__all__ = ["Publisher", "open_publisher", "open_source"]


class Publisher(Protocol):
    def publish(self, messages: list[tuple[str, str, bytes]]) -> None:
        """Store (subject/key suffix or '', message id, body) messages in order."""

    def close(self) -> None: ...


def open_source(url: str, batch: int) -> Source:
    """A connected consumer for ``url``; ``BrokerError`` naming it when the broker is unreachable."""
    cfg = parse_broker_url(url)
    if isinstance(cfg, NatsConfig):
        from liber_features.stream.nats_source import NatsSource

        return NatsSource(cfg, batch)
    if isinstance(cfg, KafkaConfig):
        from liber_features.stream.kafka_source import KafkaSource

        return KafkaSource(cfg)
    from liber_features.stream.redis_source import RedisSource

    return RedisSource(cfg)


def open_publisher(url: str) -> Publisher:
    cfg = parse_broker_url(url)
    if isinstance(cfg, NatsConfig):
        from liber_features.stream.nats_source import NatsPublisher

        return NatsPublisher(cfg)
    if isinstance(cfg, KafkaConfig):
        from liber_features.stream.kafka_source import KafkaPublisher

        return KafkaPublisher(cfg)
    from liber_features.stream.redis_source import RedisPublisher

    return RedisPublisher(cfg)
