"""A served world for the scorer and HTTP tests: three real MovieLens users on the real Redis, a
small model trained on them and exported. Module-scoped: built once per test module."""

from __future__ import annotations

import os

import pytest
from feastrepo import cleanup, redis_client
from modelkit import encoded_repo, export_model, movielens_users

from liber_features.features.caches import current_caches
from liber_features.features.memory import latest_versions, memory_table, to_frame
from liber_features.features.online import push_short_term_cache, write_online
from liber_features.features.repo import LONG_TERM_VIEW, LiberFeatureConfig
from liber_features.training.samples import SampleConfig, build_training_set

SHAPE = LiberFeatureConfig(memory_slots=3, vector_dim=4, history_length=6)
ENV = {"LIBER_MEMORY_SLOTS": "3", "LIBER_VECTOR_DIM": "4", "LIBER_HISTORY_LENGTH": "6"}
USERS = ["1", "5", "8"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A Redis-backed repo holding three real MovieLens users, and a model trained on them."""
    redis_client()
    old = {k: os.environ.get(k) for k in ENV}
    os.environ.update(ENV)
    tmp = tmp_path_factory.mktemp("serving")
    events, catalog = movielens_users(USERS)
    ledger, repo, store = encoded_repo(tmp, events, catalog, k=10, shape=SHAPE, backend="redis")
    try:
        ts = build_training_set(ledger, store, SampleConfig(), SHAPE)
        model = export_model(tmp / "model", ts, latest_versions(ledger))
        table = to_frame(memory_table(ledger, memory_slots=3, vector_dim=4, history_length=6))
        write_online(store, LONG_TERM_VIEW, table)
        push_short_term_cache(store, current_caches(ledger))
        yield {"tmp": tmp, "ledger": ledger, "repo": repo, "store": store, "ts": ts, "model": model,
               "model_dir": tmp / "model"}
    finally:
        cleanup(repo)
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)




def free_port() -> int:
    """A TCP port that was free a moment ago."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int):
    """A private ``redis-server`` on ``port`` (no persistence), up when this returns; the caller ends it."""
    import socket
    import subprocess
    import time

    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server did not start on port {port}")


def private_store(world, port: int):
    """The world's repo, read from a private Redis on ``port`` that holds a copy of every user's hash."""
    import redis

    from liber_features.features.repo import open_store
    from liber_features.serving.fetch import RedisFetcher

    env = {**os.environ, **world["repo"].env, "LIBER_REDIS_URL": f"redis://127.0.0.1:{port}/0",
           "LIBER_REDIS_CONNECTION": f"127.0.0.1:{port},db=0"}
    shared = RedisFetcher(world["store"])
    own = redis.Redis(port=port)
    for user in USERS:
        key = shared.key(user)
        own.hset(key, mapping=shared.client.hgetall(key))
    return open_store(world["repo"].root, environ=env)


def unconfigure(handler) -> None:
    """Undo ``serving.logs.configure_logging``: later tests see the loggers as they were."""
    import logging

    serve = logging.getLogger("liber.serve")
    serve.removeHandler(handler)
    serve.setLevel(logging.NOTSET)
    serve.propagate = True
    logging.getLogger("liber.serve.access").setLevel(logging.NOTSET)
