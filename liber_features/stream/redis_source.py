"""Redis Streams through redis-py: a consumer group, ``XACK`` after the ledger commit, ``XAUTOCLAIM``
for entries a dead consumer left pending.

Each entry holds one field, ``event``: the message's JSON. A process reads its own pending entries
first (``XREADGROUP … 0``: what it fetched before a crash and never acked), then entries other
consumers left pending longer than ``claim_idle_s`` (``XAUTOCLAIM``), then new ones (``>``), so a
restarted consumer with the same name re-reads its batch before anything newer.
"""

from __future__ import annotations

import time

from liber_features.errors import BrokerError
from liber_features.stream.brokers import RedisStreamConfig
from liber_features.stream.source import Delivery, Source

__all__ = ["FIELD", "RedisPublisher", "RedisSource"]

FIELD = b"event"


def _client(cfg: RedisStreamConfig):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries inside the client: the consumer retries (with backoff, reported), and an
    # unreachable server must be one error at once, not seconds of silent attempts.
    client = redis.Redis(host=cfg.host, port=cfg.port, db=cfg.db, username=cfg.user,
                         password=cfg.password.get_secret_value() if cfg.password else None,
                         socket_connect_timeout=2, socket_timeout=10, health_check_interval=5,
                         retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
    except redis.RedisError as exc:
        raise BrokerError(f"cannot reach broker {cfg.safe_url}: {exc}") from None
    return client


def _offset(entry_id: str) -> int:
    ms, _, seq = entry_id.partition("-")
    return (int(ms) << 20) | int(seq)  # ms < 2**41 for millennia, seq < 2**20 per millisecond


class RedisSource(Source):
    """Consumer ``cfg.consumer`` of group ``cfg.group`` on stream ``cfg.stream``."""

    def __init__(self, cfg: RedisStreamConfig) -> None:
        import redis

        self.cfg, self.key, self.url = cfg, cfg.key, cfg.safe_url
        self._r = _client(cfg)
        try:
            self._r.xgroup_create(cfg.stream, cfg.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # the group exists already: join it
                raise BrokerError(f"broker {self.url}: {exc}") from None
        self._own_pending = True
        self._next_claim = 0.0

    def _deliveries(self, entries) -> list[Delivery]:
        out = []
        for raw_id, fields in entries:
            entry_id = raw_id.decode()
            out.append(Delivery(position=f"redis:{self.cfg.stream}:{entry_id}", offset=_offset(entry_id),
                                data=(fields or {}).get(FIELD), handle=raw_id,
                                broker_us=int(entry_id.partition("-")[0]) * 1000))
        return out

    def fetch(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        import redis

        cfg = self.cfg
        try:
            if self._own_pending:
                got = self._r.xreadgroup(cfg.group, cfg.consumer, {cfg.stream: "0"}, count=max_messages)
                entries = got[0][1] if got else []
                if entries:
                    return self._deliveries(entries)
                self._own_pending = False
            if time.monotonic() >= self._next_claim:
                self._next_claim = time.monotonic() + cfg.claim_idle_s / 2
                _, claimed, *_ = self._r.xautoclaim(cfg.stream, cfg.group, cfg.consumer,
                                                    min_idle_time=int(cfg.claim_idle_s * 1000),
                                                    start_id="0-0", count=max_messages)
                if claimed:
                    return self._deliveries(claimed)
            got = self._r.xreadgroup(cfg.group, cfg.consumer, {cfg.stream: ">"}, count=max_messages,
                                     block=max(int(timeout_s * 1000), 1))
        except redis.RedisError as exc:
            self._own_pending = True  # after a reconnect, read what we hold first again
            raise BrokerError(f"broker {self.url}: fetch failed: {type(exc).__name__}: {exc}") from None
        return self._deliveries(got[0][1]) if got else []

    def ack(self, deliveries: list[Delivery]) -> None:
        import redis

        if deliveries:
            try:
                self._r.xack(self.cfg.stream, self.cfg.group, *[d.handle for d in deliveries])
            except redis.RedisError as exc:
                raise BrokerError(f"broker {self.url}: ack failed: {exc}") from None

    def in_progress(self, deliveries: list[Delivery]) -> None:
        import redis

        # XCLAIM to ourselves resets the entries' idle time: no other consumer claims them meanwhile.
        try:
            self._r.xclaim(self.cfg.stream, self.cfg.group, self.cfg.consumer, 0,
                           [d.handle for d in deliveries], justid=True)
        except redis.RedisError:
            pass  # a missed heartbeat only risks a redelivery, which the ledger skips

    def close(self) -> None:
        self._r.close()


class RedisPublisher:
    """``XADD`` one entry per event (field ``event``), pipelined per call."""

    def __init__(self, cfg: RedisStreamConfig) -> None:
        self.cfg, self.url = cfg, cfg.safe_url
        self._r = _client(cfg)

    def publish(self, messages: list[tuple[str, str, bytes]]) -> None:
        import redis

        try:
            with self._r.pipeline(transaction=False) as pipe:
                for suffix, _msg_id, body in messages:
                    pipe.xadd(f"{self.cfg.stream}.{suffix}" if suffix else self.cfg.stream, {FIELD: body})
                pipe.execute()
        except redis.RedisError as exc:
            raise BrokerError(f"broker {self.url}: publish failed: {exc}") from None

    def close(self) -> None:
        self._r.close()
