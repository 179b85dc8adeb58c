"""Kafka through confluent-kafka: a consumer group whose resume points live in the ledger.

``enable.auto.commit`` is off and offsets are never stored automatically: the ledger's
``stream_positions`` row of each partition (written in the batch's transaction) is where this
consumer resumes. On every assignment (a start, a rebalance) the rebalance listener ``on_assign``
seeks each partition to the ledger's offset + 1, or to the beginning for a partition the ledger has
never seen; Kafka's own committed offsets are written after each ledger commit too, for Kafka's
tools (lag monitors), but never read. Records are keyed by user id, so one user's events live in one
partition, read in order by one consumer of the group.

Tested against librdkafka's in-process mock cluster (``test.mock.num.brokers``); a real cluster is
the same client with a real ``bootstrap.servers``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from liber_features.errors import BrokerError
from liber_features.stream.brokers import KafkaConfig
from liber_features.stream.nats_source import probe
from liber_features.stream.source import Delivery, Source

__all__ = ["KafkaPublisher", "KafkaSource"]


def _kafka() -> Any:
    # Imported when a kafka:// URL is used: librdkafka is a native library the other brokers' paths
    # need not load.
    import confluent_kafka

    return confluent_kafka


def _common(cfg: KafkaConfig) -> dict[str, Any]:
    conf: dict[str, Any] = {"bootstrap.servers": f"{cfg.host}:{cfg.port}", "log_level": 3}
    if cfg.user:
        conf |= {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "PLAIN", "sasl.username": cfg.user,
                 "sasl.password": cfg.password.get_secret_value() if cfg.password else ""}
    return conf


class KafkaSource(Source):
    """Group ``cfg.group`` on topic ``cfg.topic``; positions per partition from the ledger."""

    def __init__(self, cfg: KafkaConfig) -> None:
        probe(cfg.host, cfg.port, cfg.safe_url)
        kafka = _kafka()
        self.cfg, self.key, self.url = cfg, cfg.key, cfg.safe_url
        self._stored: Callable[[], dict[str, int]] = dict
        self._errors: list[str] = []
        conf = _common(cfg) | {"group.id": cfg.group, "enable.auto.commit": False,
                               "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
                               "session.timeout.ms": int(cfg.session_timeout_s * 1000),
                               "heartbeat.interval.ms": max(int(cfg.session_timeout_s * 1000 / 10), 100),
                               "error_cb": lambda err: self._errors.append(str(err))}
        self._c = kafka.Consumer(conf)
        self._c.subscribe([cfg.topic], on_assign=self._on_assign)

    def bind_positions(self, stored: Callable[[], dict[str, int]]) -> None:
        self._stored = stored

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        """The rebalance listener: resume each partition after the ledger's last committed offset."""
        kafka = _kafka()
        stored = self._stored()
        for tp in partitions:
            done = stored.get(str(tp.partition))
            tp.offset = done + 1 if done is not None else kafka.OFFSET_BEGINNING
        consumer.assign(partitions)

    def fetch(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        kafka = _kafka()
        try:
            msgs = self._c.consume(num_messages=max_messages, timeout=timeout_s)
        except kafka.KafkaException as exc:
            raise BrokerError(f"broker {self.url}: fetch failed: {exc}") from None
        if self._errors and not msgs:
            error, self._errors = self._errors[-1], []
            raise BrokerError(f"broker {self.url}: {error}")
        out = []
        for m in msgs:
            if m.error() is not None:
                if m.error().code() == kafka.KafkaError._PARTITION_EOF:
                    continue
                raise BrokerError(f"broker {self.url}: {m.error()}")
            out.append(Delivery(position=f"kafka:{m.topic()}:{m.partition()}:{m.offset()}", offset=m.offset(),
                                data=m.value(), broker_us=m.timestamp()[1] * 1000, handle=m,
                                shard=str(m.partition())))
        return out

    def ack(self, deliveries: list[Delivery]) -> None:
        """Kafka's committed offsets follow the ledger's, for Kafka's own tools; never read back."""
        if not deliveries:
            return
        kafka = _kafka()
        newest: dict[int, int] = {}
        for d in deliveries:
            newest[int(d.shard)] = max(newest.get(int(d.shard), -1), d.offset)
        offsets = [kafka.TopicPartition(self.cfg.topic, p, o + 1) for p, o in newest.items()]
        try:
            self._c.commit(offsets=offsets, asynchronous=False)
        except kafka.KafkaException as exc:
            raise BrokerError(f"broker {self.url}: commit failed: {exc}") from None

    def in_progress(self, deliveries: list[Delivery]) -> None:
        """Nothing to do: Kafka has no per-message redelivery timer (``max.poll.interval.ms`` is
        kept alive by the loop's next fetch)."""

    def close(self) -> None:
        self._c.close()


class KafkaPublisher:
    """Produces one record per event, keyed by its user id (one user, one partition, in order)."""

    def __init__(self, cfg: KafkaConfig) -> None:
        probe(cfg.host, cfg.port, cfg.safe_url)
        self.cfg, self.url = cfg, cfg.safe_url
        self._p = _kafka().Producer(_common(cfg) | {"enable.idempotence": True})

    def publish(self, messages: list[tuple[str, str, bytes]]) -> None:
        for _suffix, _msg_id, body in messages:
            try:
                key = str(json.loads(body).get("user_id", "")).encode()
            except (ValueError, AttributeError):  # not an event (a test's poison): no key
                key = None
            self._p.produce(self.cfg.topic, value=body, key=key)
            self._p.poll(0)
        if self._p.flush(30):
            raise BrokerError(f"broker {self.url}: publish failed: messages still queued after 30 s")

    def close(self) -> None:
        self._p.flush(10)
