"""Shared fixtures: real services from env vars, one PostgreSQL schema / key prefix per run.

Redis, PostgreSQL and NATS tests never skip: if a service is down, they fail with the URL they tried.
"""

from __future__ import annotations

import atexit
import os
import uuid
import weakref
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("LIBER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("LIBER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("LIBER_TEST_NATS_URL", "nats://127.0.0.1:4222")
RUN_ID = uuid.uuid4().hex[:10]


def ml_latest_small() -> Path:
    """The real MovieLens ml-latest-small (never copied into the repo)."""
    env = os.environ.get("LIBER_ML_LATEST_SMALL")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared/data/ml-latest-small",
                                                      Path("/work/shared/data/ml-latest-small")]:
        if (candidate / "ratings.csv").exists():
            return candidate
    raise FileNotFoundError("ml-latest-small not found: set LIBER_ML_LATEST_SMALL")


_REGISTRIES: list[weakref.ref] = []


@pytest.fixture(scope="session", autouse=True)
def _track_feast_sql_registries():
    """Record every Feast SQL registry the session creates (see ``_close_feast_registries``)."""
    from feast.infra.registry.sql import SqlRegistry

    original = SqlRegistry.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        _REGISTRIES.append(weakref.ref(self))

    SqlRegistry.__init__ = init
    yield
    SqlRegistry.__init__ = original


@pytest.fixture(scope="module", autouse=True)
def _close_feast_registries():
    """Release, after each test module, the Feast SQL registries its tests opened.

    With ``cache_mode: thread`` (the production yamls) Feast 0.67 registers each registry's exit
    handler with ``atexit`` and keeps a refresh timer running, so a FeatureStore is never freed and
    its two SQLAlchemy pools keep their PostgreSQL connections: about three per Redis-backed test,
    which ran a full session into PostgreSQL's limit of 100 connections.
    """
    yield
    while _REGISTRIES:
        registry = _REGISTRIES.pop()()
        if registry is None:
            continue
        atexit.unregister(registry._exit_handler)
        timer = getattr(registry, "registry_refresh_thread", None)
        if timer is not None:
            timer.cancel()
        registry.write_engine.dispose()
        registry.read_engine.dispose()


@pytest.fixture(scope="session")
def pg_url() -> str:
    return PG_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture(scope="session")
def nats_url() -> str:
    """The shared NATS server with JetStream (tests name their own streams and durables)."""
    return NATS_URL


@pytest.fixture
def unique_name(request) -> str:
    """A name no other test or test run uses (schemas, Feast projects, key prefixes)."""
    return f"t{RUN_ID}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger(request, tmp_path, unique_name):
    """A fresh ledger on SQLite (a temp file) and on the real PostgreSQL (its own schema)."""
    from liber_features.ledger.store import Ledger

    if request.param == "sqlite":
        led = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    else:
        led = Ledger(PG_URL, schema=unique_name)
    yield led
    led.drop_schema()


@pytest.fixture(scope="session")
def redis_cluster_connection(tmp_path_factory) -> str:
    """A 3-master Redis Cluster on free local ports for this session (Feast's connection form)."""
    from rediscluster import redis_cluster

    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster.connection


@pytest.fixture(scope="module")
def local_ray():
    """A small local Ray for one test module, started before Feast needs one (Feast then uses it
    instead of starting one per core), shut down after the module: another module (the Ray
    encoder's tests) starts its own, and Ray allows one per process."""
    import ray  # the 'scale' extra, installed by `make install`: missing fails, never skips
    from feast.infra import ray_initializer

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()
    # Feast remembers "initialized" in a module global; a later test must not skip its init.
    ray_initializer._ray_initialized = False


# The served world (real Redis, a small exported model) shared by the scorer and HTTP tests.
from servekit import world  # noqa: E402, F401


@pytest.fixture
def drop_streams():
    """Delete the streams a test made on the shared NATS and Redis (``streamkit.broker_url``)."""
    from streamkit import drop_created

    yield
    drop_created()


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """The stream tests' reference: their MovieLens slice ingested from the file."""
    from streamkit import reference_rows

    return reference_rows(tmp_path_factory.mktemp("ref"))
