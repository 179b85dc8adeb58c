"""What the stream tests share: a MovieLens slice, broker URLs with names unique to the test, an
in-process consume, the ledger's partitions and caches as comparable rows, and a private
``nats-server`` (never the shared one) for tests that stop and restart the broker."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from functools import cache
from pathlib import Path

from conftest import NATS_URL, REDIS_URL, REPO, ml_latest_small
from sqlalchemy import func, select

from liber_features.ingest.events import LoadedEvents, load_events
from liber_features.ingest.partition import PartitionRule
from liber_features.ledger.store import Ledger, events, partitions, user_cache
from liber_features.stream.connect import open_publisher, open_source
from liber_features.stream.consumer import Consumer, StreamConfig
from liber_features.stream.producer import produce

K = 20
TOTAL = 2_279  # events in the slice
SLICE_USERS = 12  # the first 12 users by id: 2,279 events, 108 partitions at K=20


@cache
def movielens_slice() -> LoadedEvents:
    """12 real users' whole histories from ml-latest-small (2,279 events)."""
    full = load_events(ml_latest_small())
    users = sorted(full.events["user_id"].unique())[:SLICE_USERS]
    ev = full.events[full.events["user_id"].isin(users)].reset_index(drop=True)
    return dataclasses.replace(full, events=ev, read=len(ev), duplicates=0,
                               quarantine=full.quarantine.iloc[0:0])


CREATED: list[tuple[str, str]] = []  # (kind, name) on the shared servers, dropped by drop_created()


def broker_url(kind: str, name: str, *, base: str | None = None, **params: str) -> str:
    """A URL for a stream, subject/key and durable/group no other test uses."""
    tag = f"{name}_{uuid.uuid4().hex[:8]}"
    if base is None:
        CREATED.append((kind, f"S_{tag}" if kind == "nats" else f"s_{tag}"))
    if kind == "nats":
        query = {"subject": f"s_{tag}", "durable": "d", "ack_wait": "2", **params}
        return f"{base or NATS_URL}/S_{tag}?" + "&".join(f"{k}={v}" for k, v in query.items())
    query = {"stream": f"s_{tag}", "group": "g", "claim_idle": "2", **params}
    return f"{base or REDIS_URL}?" + "&".join(f"{k}={v}" for k, v in query.items())


def drop_created() -> None:
    """Delete the streams tests made on the shared NATS and Redis (shard keys included)."""
    import asyncio

    import nats
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    names = [n for kind, n in CREATED if kind == "nats"]
    for kind, name in CREATED:
        if kind == "redis":
            r.delete(name, *(f"{name}.{i}" for i in range(4)))
    CREATED.clear()

    async def drop() -> None:
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        for name in names:
            try:
                await js.delete_stream(name)
            except nats.js.errors.NotFoundError:
                pass
        await nc.close()

    if names:
        asyncio.run(drop())


def publish(url: str, loaded: LoadedEvents, **kw) -> int:
    pub = open_publisher(url)
    try:
        return produce(loaded, pub, **kw).published
    finally:
        pub.close()


def consume(url: str, ledger: Ledger, *, k: int = K, max_span_s: float | None = None, batch: int = 200,
            idle_s: float = 0.6, **kw):
    """Consume ``url`` into ``ledger`` in this process until the stream is idle; the summary."""
    source = open_source(url, batch)
    try:
        cfg = StreamConfig(batch=batch, until_idle_s=idle_s, **kw)
        return Consumer(source, ledger, PartitionRule(k=k, max_span_s=max_span_s), cfg,
                        say=lambda _line: None).run()
    finally:
        source.close()


def ledger_rows(ledger: Ledger) -> tuple[list[tuple], list[tuple]]:
    """Every partition (user, seq, content hash, seal time, events) and every cache, ordered."""
    with ledger.engine.connect() as conn:
        parts = conn.execute(select(partitions.c.user_id, partitions.c.seq, partitions.c.content_hash,
                                    partitions.c.sealed_at_us, partitions.c.rule, partitions.c.events_json)
                             .order_by(partitions.c.user_id, partitions.c.seq)).all()
        caches = conn.execute(select(user_cache.c.user_id, user_cache.c.cache_json, user_cache.c.next_seq,
                                     user_cache.c.last_seal_us).order_by(user_cache.c.user_id)).all()
    return [tuple(r) for r in parts], [tuple(r) for r in caches]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnNats:
    """A nats-server with JetStream of this test only, on a free port, its store in ``root``."""

    def __init__(self, root: Path) -> None:
        self.port, self.root = free_port(), root
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        exe = shutil.which("nats-server")
        assert exe, "nats-server is not installed"
        self.proc = subprocess.Popen([exe, "-js", "-sd", str(self.root), "-p", str(self.port), "-a", "127.0.0.1"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nats-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def start(url: str, ledger: Ledger, *args: str) -> subprocess.Popen:
    """``liber stream`` in its own process (so it can be SIGKILLed)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if ledger.schema:
        args = (*args, "--ledger-schema", ledger.schema)
    return subprocess.Popen([sys.executable, "-m", "liber_features.cli", "stream", "--from", url, "--ledger",
                             ledger.url, "--k", str(K), "--json", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[dict, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return json.loads(out.strip().splitlines()[-1]), err


def assert_each_event_once(ledger: Ledger) -> None:
    """Lost 0, counted twice 0: the events table, the partitions and the caches hold each event once."""
    with ledger.engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(events)).scalar()
        sealed = [e[0] for (j,) in conn.execute(select(partitions.c.events_json)) for e in json.loads(j)]
        cached = [e[0] for (j,) in conn.execute(select(user_cache.c.cache_json)) for e in json.loads(j)]
    everything = sealed + cached
    assert stored == TOTAL and len(everything) == TOTAL and len(set(everything)) == TOTAL
    assert set(everything) == set(movielens_slice().events["event_id"])


def reference_rows(root) -> tuple[list[tuple], list[tuple]]:
    """The slice ingested from the file, as ``liber ingest`` does: what every stream must equal."""
    from liber_features.ingest.job import ingest
    from liber_features.ingest.partition import PartitionRule

    ref = Ledger(f"sqlite:///{root / 'ref.db'}")
    s = ingest(movielens_slice(), ref, PartitionRule(k=K), progress=False)
    assert (s.accepted, s.partitions_sealed, s.cached_events) == (2_279, 108, 119)
    return ledger_rows(ref)
