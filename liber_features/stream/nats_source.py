"""NATS JetStream through nats-py: a durable pull consumer, acked only after the ledger commit.

nats-py is asyncio-only; this adapter runs one event loop on a daemon thread and calls it from the
consumer's (synchronous) loop, so the rest of the stage stays plain code. The client reconnects by
itself for ever once connected (a broker restart is a pause, not an error); the first connection
is probed with a plain TCP connect so an unreachable server is one ``BrokerError`` at once.

Fetching sends JetStream's pull request (``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>``) itself and
collects the replies in a subscription callback: first ``no_wait`` (what is there now), else one that
waits up to the fetch timeout. nats-py's own ``fetch`` awaits each message with an asyncio timeout,
which cost a third of the consumer's time (docs/streaming.md); messages that arrive after a fetch
returned wait in a buffer for the next one, in delivery order.

Acks: every message but the last of a batch gets a plain ack, the last one ``ack_sync`` (the
double ack): the server handles one connection's messages in order, so when that reply arrives all
of the batch's acks are recorded. ``max_ack_pending`` is the batch size: after a consumer dies, a
new one gets nothing until the dead one's batch is redelivered (after ``ack_wait``), so each
user's events still reach the ledger in stream order.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Coroutine
from typing import Any

from liber_features.errors import BrokerError
from liber_features.stream.brokers import NatsConfig
from liber_features.stream.source import Delivery, Source

__all__ = ["NatsPublisher", "NatsSource", "probe"]

_CALL_SLACK_S = 10.0  # beyond a call's own timeout, before the loop thread counts as stuck


def probe(host: str, port: int, url: str, timeout_s: float = 2.0) -> None:
    """``BrokerError`` naming ``url`` unless a TCP connection to host:port opens."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise BrokerError(f"cannot reach broker {url}: {exc.strerror or exc}") from None


class _Loop:
    """An asyncio loop on a daemon thread; ``call`` runs a coroutine there and waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="nats-loop", daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, Any], timeout_s: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s + _CALL_SLACK_S)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


async def _connect(cfg: NatsConfig) -> Any:
    import nats

    async def quiet(_exc: Exception) -> None:
        # Reconnects are reported by the consumer's retries (one line each), not by the client.
        return None

    return await nats.connect(
        servers=[f"nats://{cfg.host}:{cfg.port}"], user=cfg.user,
        password=cfg.password.get_secret_value() if cfg.password else None,
        connect_timeout=2, reconnect_time_wait=0.5, max_reconnect_attempts=-1, error_cb=quiet)


async def _ensure_stream(js: Any, cfg: NatsConfig) -> None:
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(cfg.stream)
    except NotFoundError:
        base = cfg.subject.split(".")[0] if cfg.subject.count(".") == 1 else cfg.subject
        await js.add_stream(name=cfg.stream, subjects=sorted({base, f"{base}.*"}))


class NatsSource(Source):
    """A durable pull consumer (``NatsConfig.durable``) on ``NatsConfig.subject``."""

    def __init__(self, cfg: NatsConfig, batch: int) -> None:
        probe(cfg.host, cfg.port, cfg.safe_url)
        self.cfg, self.key, self.url = cfg, cfg.key, cfg.safe_url
        self._loop = _Loop()
        try:
            self._nc, self._sub = self._loop.call(self._open(batch), 10)
        except Exception as exc:
            self._loop.stop()
            raise BrokerError(f"broker {self.url}: {type(exc).__name__}: {exc}") from None

    async def _open(self, batch: int) -> tuple[Any, Any]:
        from nats.js.api import AckPolicy, ConsumerConfig

        nc = await _connect(self.cfg)
        js = nc.jetstream()
        await _ensure_stream(js, self.cfg)
        config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=self.cfg.ack_wait_s,
                                max_ack_pending=batch, filter_subject=self.cfg.subject)
        sub = await js.pull_subscribe(self.cfg.subject, durable=self.cfg.durable, stream=self.cfg.stream,
                                      config=config)
        # A durable made earlier keeps its own limit; asking for more than it lets out makes every
        # fetch wait its whole timeout for messages the server will not send.
        info = await sub.consumer_info()
        self._max_batch = info.config.max_ack_pending or batch
        self._buffer: list[Any] = []
        self._held: dict[int, Delivery] = {}  # stream seq → a delivery kept back (``_held_elsewhere``)
        self._wanted = 0
        self._signal = asyncio.Event()
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{self.cfg.stream}.{self.cfg.durable}"
        self._inbox = nc.new_inbox()
        await nc.subscribe(self._inbox, cb=self._on_msg)
        return nc, sub

    async def _on_msg(self, msg: Any) -> None:
        """A reply to our pull requests: a message, or a status (404 none, 408 expired, 409 ...)
        that ends the request."""
        if msg.reply and not (msg.headers and msg.headers.get("Status")):
            self._buffer.append(msg)
            if len(self._buffer) < self._wanted:
                return
        self._signal.set()

    def fetch(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        n = min(max_messages, self._max_batch)
        try:
            msgs = self._loop.call(self._fetch(max(n - len(self._held), 1), timeout_s), timeout_s)
        except Exception as exc:  # the client's errors have no common base; all mean "not now"
            raise BrokerError(f"broker {self.url}: fetch failed: {type(exc).__name__}: {exc}") from None
        redelivered = bool(self._held)
        for m in msgs:
            # $JS.ACK.<stream>.<durable>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>, or with
            # <domain>.<account hash> after ACK and a token at the end (12 tokens): what nats-py's
            # Msg.metadata parses, without building its objects for every message.
            t = m.reply.split(".")
            shift = 0 if len(t) == 9 else 2
            seq = int(t[5 + shift])
            redelivered |= t[4 + shift] != "1"
            # By stream sequence, the newest delivery winning: its reply subject is the one to ack.
            self._held[seq] = Delivery(position=f"nats:{self.cfg.stream}:{seq}", offset=seq, data=m.data,
                                       broker_us=int(t[7 + shift]) // 1000, handle=m)
        out = [self._held[seq] for seq in sorted(self._held)]  # redeliveries come back in any order
        if self.cfg.ordered and out and (redelivered or len(out) < n) and self._held_elsewhere(out, timeout_s):
            self.in_progress(out)  # kept here, not redelivered, while the missing ones come back
            return []
        self._held = {}
        return out

    def _held_elsewhere(self, out: list[Delivery], timeout_s: float) -> bool:
        """True while messages of the durable are delivered to someone else and not yet acked: a
        consumer that died holding them. Their redelivery could put an earlier event of a user
        behind a later one given out here, so this batch is kept back (``self._held``) until they
        come back to this consumer — after ``ack_wait`` — and go out together, in stream order.

        Asked only after a failure can have happened (a redelivered message, or a batch short of
        what the durable would let out), so the steady state costs no extra round trip.
        """
        try:
            info = self._loop.call(self._sub.consumer_info(), timeout_s + 5)
        except Exception as exc:  # the client's errors have no common base; all mean "not now"
            raise BrokerError(f"broker {self.url}: consumer info failed: {type(exc).__name__}: {exc}") from None
        return info.num_ack_pending > len(out) + len(self._buffer)

    async def _fetch(self, n: int, timeout_s: float) -> list[Any]:
        if not self._nc.is_connected:
            raise ConnectionError("not connected (reconnecting)")
        for request in ({"no_wait": True}, {"expires": int(timeout_s * 1e9)}):
            if len(self._buffer) >= n:
                break
            self._wanted = n
            self._signal.clear()
            await self._nc.publish(self._next, json.dumps({"batch": n - len(self._buffer), **request}).encode(),
                                   reply=self._inbox)
            try:
                await asyncio.wait_for(self._signal.wait(), timeout_s)
            except TimeoutError:
                pass
            if self._buffer:
                break
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def ack(self, deliveries: list[Delivery]) -> None:
        if not deliveries:
            return
        try:
            self._loop.call(self._ack([d.handle for d in deliveries]), 5)
        except Exception as exc:
            raise BrokerError(f"broker {self.url}: ack failed: {type(exc).__name__}: {exc}") from None

    @staticmethod
    async def _ack(msgs: list[Any]) -> None:
        for m in msgs[:-1]:
            await m.ack()
        await msgs[-1].ack_sync(timeout=5)

    def in_progress(self, deliveries: list[Delivery]) -> None:
        async def touch() -> None:
            for d in deliveries:
                await d.handle.in_progress()

        try:
            self._loop.call(touch(), 5)
        except Exception:  # noqa: BLE001 - a missed heartbeat only risks a redelivery (skipped)
            pass

    def close(self) -> None:
        try:
            self._loop.call(self._nc.close(), 5)
        except Exception:  # noqa: BLE001 - closing a dead connection: nothing left to release
            pass
        self._loop.stop()


class NatsPublisher:
    """Publishes to a JetStream subject with ``Nats-Msg-Id`` = event id (the server drops a
    re-publish of the same id within its duplicate window)."""

    def __init__(self, cfg: NatsConfig) -> None:
        probe(cfg.host, cfg.port, cfg.safe_url)
        self.cfg, self.url = cfg, cfg.safe_url
        self._loop = _Loop()
        self._nc = self._loop.call(_connect(cfg), 10)
        self._js = self._nc.jetstream()
        self._loop.call(_ensure_stream(self._js, cfg), 10)

    def publish(self, messages: list[tuple[str, str, bytes]]) -> None:
        """Publish (subject suffix or '', msg id, body) messages, in order; returns once stored."""
        try:
            self._loop.call(self._publish(messages), 30)
        except Exception as exc:
            raise BrokerError(f"broker {self.url}: publish failed: {type(exc).__name__}: {exc}") from None

    async def _publish(self, messages: list[tuple[str, str, bytes]]) -> None:
        subject, acks = self.cfg.subject, []
        for suffix, msg_id, body in messages:
            acks.append(await self._js.publish_async(f"{subject}.{suffix}" if suffix else subject, body,
                                                     headers={"Nats-Msg-Id": msg_id}))
        await asyncio.gather(*acks)  # every message stored (an error here is raised, not dropped)

    def close(self) -> None:
        try:
            self._loop.call(self._nc.close(), 5)
        finally:
            self._loop.stop()
