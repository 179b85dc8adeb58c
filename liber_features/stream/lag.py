"""How far a ``liber stream`` consumer is behind its broker: ``liber status --lag URL``.

Lag is what the broker holds that the consumer has not yet committed to the ledger: a count of
messages, and the age of the oldest of them (how stale the newest data in the ledger is). The
ledger alone cannot say it (it knows what it committed, not what was produced since), so it is
asked of each broker with its own client, read-only: nothing here creates a consumer, joins a
group or moves a position.

- NATS JetStream: the durable's ``num_pending`` (not yet delivered) + ``num_ack_pending``
  (delivered, not acked); the oldest is the first message of the subject after the ack floor.
- Redis Streams: the group's ``lag`` (Redis 7: entries not yet delivered) + ``pending`` (delivered,
  not acked); the oldest is the pending list's first entry, else the first entry after
  ``last-delivered-id`` (entry ids carry their time in ms).
- Kafka: the partitions' high watermarks minus the ledger's committed offsets (the ledger, not
  Kafka, is where this consumer resumes); the oldest is the first uncommitted message's timestamp.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy import select

from liber_features.errors import BrokerError
from liber_features.ledger.store import Ledger, now_us
from liber_features.ledger.tables import stream_positions as positions_t
from liber_features.stream.brokers import KafkaConfig, NatsConfig, RedisStreamConfig, parse_broker_url

__all__ = ["Lag", "broker_lag"]


@dataclass(frozen=True)
class Lag:
    source: str  # the stream_positions key: which stream and durable/group
    messages: int  # stored in the broker, not yet committed to the ledger by this consumer
    oldest_us: int | None  # when the broker stored the oldest of them (µs since the epoch); None: none
    oldest_age_s: float | None  # its age now

    def as_dict(self) -> dict:
        return asdict(self)


def _age(broker_us: int | None) -> float | None:
    return None if broker_us is None else round(max(0, now_us() - broker_us) / 1e6, 3)


def broker_lag(url: str, ledger: Ledger) -> Lag:
    """The lag of the consumer ``url`` names; ``BrokerError`` naming the URL when the broker cannot
    be reached or holds no such consumer."""
    cfg = parse_broker_url(url)
    try:
        if isinstance(cfg, NatsConfig):
            n, oldest = _nats(cfg)
        elif isinstance(cfg, RedisStreamConfig):
            n, oldest = _redis(cfg)
        else:
            n, oldest = _kafka(cfg, ledger)
    except BrokerError:
        raise
    except Exception as exc:  # the clients' own errors: one line naming the broker, no traceback
        raise BrokerError(f"broker {cfg.safe_url}: {type(exc).__name__}: {exc}") from None
    oldest = oldest if n else None
    return Lag(cfg.key, n, oldest, _age(oldest))


def _nats(cfg: NatsConfig) -> tuple[int, int | None]:
    import asyncio

    from nats.js.errors import NotFoundError

    from liber_features.stream.nats_source import _connect, probe

    probe(cfg.host, cfg.port, cfg.safe_url)

    async def ask() -> tuple[int, int | None]:
        nc = await _connect(cfg)
        try:
            js = nc.jetstream()
            try:
                info = await js.consumer_info(cfg.stream, cfg.durable)
            except NotFoundError:
                raise BrokerError(f"no durable consumer {cfg.durable!r} on stream {cfg.stream!r} at "
                                  f"{cfg.safe_url}: nothing has consumed it yet") from None
            n = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
            if not n:
                return 0, None
            floor = info.ack_floor.stream_seq if info.ack_floor else 0
            msg = await js.get_msg(cfg.stream, seq=floor + 1, subject=info.config.filter_subject, next=True)
            return n, int(msg.time.timestamp() * 1e6)
        finally:
            await nc.close()

    return asyncio.run(ask())


def _redis(cfg: RedisStreamConfig) -> tuple[int, int | None]:
    import redis

    r = redis.Redis(host=cfg.host, port=cfg.port, db=cfg.db, username=cfg.user,
                    password=cfg.password.get_secret_value() if cfg.password else None,
                    socket_connect_timeout=2, socket_timeout=5)
    try:
        try:
            groups = {g["name"].decode(): g for g in r.xinfo_groups(cfg.stream)}
        except redis.ResponseError:  # no such key
            groups = {}
        g = groups.get(cfg.group)
        if g is None:
            raise BrokerError(f"no consumer group {cfg.group!r} on stream {cfg.stream!r} at {cfg.safe_url}: "
                              "nothing has consumed it yet")
        pending, lag = int(g["pending"]), g.get("lag")
        if lag is None:  # Redis < 7, or a lag it cannot compute (entries deleted): count them
            last = g["last-delivered-id"].decode()
            lag = len(r.xrange(cfg.stream, min=f"({last}", max="+"))
        n = pending + int(lag)
        if not n:
            return 0, None
        if pending:
            first = r.xpending(cfg.stream, cfg.group)["min"]
        else:
            first = r.xrange(cfg.stream, min=f"({g['last-delivered-id'].decode()}", max="+", count=1)[0][0]
        first = first.decode() if isinstance(first, bytes) else first
        return n, int(first.split("-")[0]) * 1000
    except redis.ConnectionError as exc:
        raise BrokerError(f"cannot reach broker {cfg.safe_url}: {exc}") from None
    finally:
        r.close()


def _kafka(cfg: KafkaConfig, ledger: Ledger) -> tuple[int, int | None]:
    from confluent_kafka import Consumer, TopicPartition

    with ledger.engine.connect() as conn:
        done = {int(r.shard): int(r.position_offset) for r in conn.execute(
            select(positions_t.c.shard, positions_t.c.position_offset)
            .where(positions_t.c.source == cfg.key, positions_t.c.shard != ""))}
    # A group id is required by the client; this one never subscribes or commits.
    c = Consumer({"bootstrap.servers": f"{cfg.host}:{cfg.port}", "group.id": f"{cfg.group}.lag",
                  "enable.auto.commit": False, "socket.timeout.ms": 5000})
    try:
        meta = c.list_topics(cfg.topic, timeout=5)
        if cfg.topic not in meta.topics or meta.topics[cfg.topic].error is not None:
            raise BrokerError(f"no topic {cfg.topic!r} at {cfg.safe_url}")
        n, oldest = 0, None
        for p in sorted(meta.topics[cfg.topic].partitions):
            low, high = c.get_watermark_offsets(TopicPartition(cfg.topic, p), timeout=5)
            start = max(done.get(p, -1) + 1, low)
            if high <= start:
                continue
            n += high - start
            c.assign([TopicPartition(cfg.topic, p, start)])
            m = c.poll(5)
            if m is not None and m.error() is None:
                _, ms = m.timestamp()
                oldest = ms * 1000 if oldest is None else min(oldest, ms * 1000)
        return n, oldest
    finally:
        c.close()
