"""Where the Feast repo is, how it is configured, and the shape of the LIBER vectors in it.

The shape (M memory slots × D dimensions) is read from the environment by both the feature
definitions and the writers, so the applied schema and what we write agree; the definitions stamp
it into the registry (``vector_length`` on each vector field, M and D in the view's tags), and the
writers check every row against the *registered* view before anything reaches a store.

Switching the embedded default (SQLite online store, file registry) to Redis + a SQL registry
needs no file edits: Feast 0.67 itself honours ``FEAST_FS_YAML_FILE_PATH`` (an alternate yaml)
and expands ``${VAR}`` in feature_store.yaml (``os.path.expandvars``; an unset variable stays
literally ``${VAR}``, so :func:`open_store` checks for that and names it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, Field

from liber_features.errors import ConfigError, FeatureStoreError
from liber_features.features.files import atomic_write
from liber_features.redact import redact_text, redact_url
from liber_features.settings import data_dir_for, get_settings

if TYPE_CHECKING:  # feast is heavy to import (it pulls torch when installed): only when used
    from feast import FeatureStore

    from liber_features.ledger.store import Ledger

__all__ = [
    "LiberFeatureConfig",
    "DEFAULT_REPO",
    "LONG_TERM_VIEW",
    "SHORT_TERM_VIEW",
    "SHORT_TERM_PUSH_SOURCE",
    "RANKER_SERVICE",
    "ITEM_TEXT_VIEW",
    "AFFINITY_VIEW",
    "AFFINITY_SERVICE",
    "data_file",
    "feast_redis_connection",
    "open_store",
    "LONG_TERM_SCHEMA",
    "SAMPLE_EVENT_TYPES",
    "SHORT_TERM_SCHEMA",
    "sample_long_term",
    "sample_short_term",
    "write_parquet",
]

DEFAULT_REPO = Path("feature_repo")
LONG_TERM_VIEW = "user_long_term_memory"
SHORT_TERM_VIEW = "user_short_term_cache"
SHORT_TERM_PUSH_SOURCE = "user_short_term_cache_push"
RANKER_SERVICE = "liber_ranker_v1"
ITEM_TEXT_VIEW = "item_text"  # each item's unit text vector (features/item_text.py)
AFFINITY_VIEW = "liber_affinities"  # the on-demand view over the memory and item_text (model/affinity.py)
AFFINITY_SERVICE = "liber_affinities_v1"
# Tags on the feature views: the ranker reshapes the flat vectors with them, the writers check them.
TAG_MEMORY_SLOTS = "liber.memory_slots"
TAG_VECTOR_DIM = "liber.vector_dim"

_TS = pa.timestamp("us", tz="UTC")
# The offline data contract (Parquet under LIBER_DATA_DIR); the feature views read these columns.
LONG_TERM_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("sealed_at", _TS), ("created_at", _TS),
    ("partition_count", pa.int64()),
    ("summary_vectors", pa.list_(pa.float32())), ("shift_vectors", pa.list_(pa.float32())),
    ("recent_item_ids", pa.list_(pa.string())),
    ("latest_summary", pa.string()), ("latest_shift", pa.string()), ("encoder_version", pa.string()),
])  # fmt: skip
SHORT_TERM_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("event_timestamp", _TS), ("created_at", _TS),
    ("cache_item_ids", pa.list_(pa.string())), ("cache_length", pa.int64()),
    ("cache_oldest_at", _TS), ("cache_newest_at", _TS),
    # Added after the others: a history file written before it reads back with nulls here.
    ("cache_event_types", pa.list_(pa.string())),
])  # fmt: skip
#: The event types ``sample_short_term`` cycles through, one per cached item.
SAMPLE_EVENT_TYPES = ("view", "click", "purchase")

_VAR = re.compile(r"\$(\w+|\{[^}]*\})")  # the pattern of posixpath.expandvars


class LiberFeatureConfig(BaseModel):
    """Shape of the long-term memory vectors, shared by the feature views and the writers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    memory_slots: int = Field(8, ge=1, le=1024)
    """M: partitions kept per user (slot 0 = newest; only filled slots are stored). Env LIBER_MEMORY_SLOTS."""

    vector_dim: int = Field(384, ge=1, le=65536)
    """D: text-encoder output dimension. Env LIBER_VECTOR_DIM."""

    history_length: int = Field(50, ge=1, le=10000)
    """L: behaviours a ranker reads per user (``recent_item_ids`` + cache). Env LIBER_HISTORY_LENGTH."""

    @property
    def vector_length(self) -> int:
        """Longest a flattened vector field (``summary_vectors``, ``shift_vectors``) may be: M×D."""
        return self.memory_slots * self.vector_dim

    def filled_length(self, partition_count: int) -> int:
        """Floats a vector field holds for a user with ``partition_count`` partitions: only the
        filled slots, min(count, M)×D (the model inputs pad to M×D at read time)."""
        return min(max(int(partition_count), 0), self.memory_slots) * self.vector_dim

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LiberFeatureConfig:
        """Read LIBER_MEMORY_SLOTS / LIBER_VECTOR_DIM / LIBER_HISTORY_LENGTH (unset → defaults) from
        the settings; a bad value → ConfigError naming the variable."""
        s = get_settings(environ)
        return cls(memory_slots=s.memory_slots, vector_dim=s.vector_dim, history_length=s.history_length)


def data_file(name: str, repo_dir: str | Path | None = None, environ: Mapping[str, str] | None = None) -> str:
    """Path of an offline Parquet table: ``<data dir>/<name>``, the data dir being LIBER_DATA_DIR,
    else ``data/ledger-<key>`` for the ledger the settings name (``settings.data_dir_for``), a
    relative one meaning relative to the feature repo (Feast's rule for file sources).

    With ``repo_dir`` the result is absolute. The definitions pass it because Feast's DuckDB offline
    store reads a relative path against the process's working directory, not the repo, so
    ``get_historical_features`` run from elsewhere would look in the wrong place.
    """
    path = data_dir_for(get_settings(environ)) / name
    if repo_dir is not None and not path.is_absolute():
        path = Path(repo_dir).absolute() / path
    return str(path)


def feast_redis_connection(url: str) -> str:
    """Translate ``redis://[:password@]host:port/db`` into Feast's ``host:port,db=N,...`` form.

    Feast's Redis config does not take URLs (it splits on ``,`` and ``:``), while redis-py, our
    tests and most deployments speak URLs; this is the one place that bridges them.
    """
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # 'Port could not be cast to integer value': one line, not a traceback
        raise ConfigError(f"bad port in Redis URL {redact_url(url)!r}") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(f"not a redis:// URL: {redact_url(url)!r}")
    db = (parts.path or "/0").strip("/") or "0"
    if not db.isdigit():
        raise ConfigError(f"Redis URL {redact_url(url)!r}: the database must be a number, got {db!r}")
    out = [f"{parts.hostname}:{port or 6379}", f"db={db}"]
    if parts.username:
        out.append(f"username={unquote(parts.username)}")
    if parts.password:
        out.append(f"password={unquote(parts.password)}")
    if parts.scheme == "rediss":
        out.append("ssl=true")
    return ",".join(out)


def _expand(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """``os.path.expandvars`` as Feast applies it, over ``env``; also return the names left unset."""
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        name = m.group(1).strip("{}")
        if name in env:
            return env[name]
        if not m.string[: m.start()].rsplit("\n", 1)[-1].lstrip().startswith("#"):
            missing.append(name)
        return m.group(0)

    return _VAR.sub(sub, text), sorted(set(missing))


def _check_registry_url(raw: object, yaml_path: Path) -> None:
    """A SQL registry URL that cannot parse (a bad port) fails here as one line; Feast would
    only fail at its first registry query, with a traceback."""
    registry = raw.get("registry") if isinstance(raw, dict) else None
    if not isinstance(registry, dict) or registry.get("registry_type") != "sql":
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    url = str(registry.get("path", ""))
    try:
        _ = make_url(url).port
    except (ValueError, ArgumentError) as exc:
        raise ConfigError(f"{yaml_path}: malformed registry URL {redact_url(url)!r}: "
                          f"{redact_text(str(exc))}") from None


def open_store(repo_path: str | Path = DEFAULT_REPO, environ: Mapping[str, str] | None = None) -> FeatureStore:
    """A FeatureStore for ``repo_path`` built from the yaml Feast would pick (FEAST_FS_YAML_FILE_PATH,
    else ``<repo>/feature_store.yaml``), expanded as Feast expands it, with errors that say what to set.

    LIBER_REDIS_CONNECTION (Feast's form) is derived from LIBER_REDIS_URL (a redis:// URL) when
    only the latter is set, so liber commands need just the URL (plain ``feast`` needs the former).
    Nothing connects here: a dead Redis shows up on the first read or write as FeatureStoreError.
    """
    from feast import FeatureStore, RepoConfig

    env = dict(os.environ if environ is None else environ)
    settings = get_settings(env)
    if settings.redis_url is not None and settings.redis_connection is None:
        env["LIBER_REDIS_CONNECTION"] = feast_redis_connection(settings.redis_url.get_secret_value())
    repo = Path(repo_path).absolute()
    yaml_path = Path(env.get("FEAST_FS_YAML_FILE_PATH") or repo / "feature_store.yaml").absolute()
    try:
        text, missing = _expand(yaml_path.read_text(), env)
    except OSError as exc:
        raise ConfigError(f"cannot read Feast config {yaml_path}: {exc}") from exc
    if missing:
        raise ConfigError(f"{yaml_path} needs environment variable(s) {', '.join(missing)}")
    if re.search(r"^\s*connection_string:\s*[\"']?rediss?://", text, re.MULTILINE):
        raise ConfigError(
            f"{yaml_path}: Feast wants a Redis connection string like '127.0.0.1:6379,db=0', "
            "not a redis:// URL; put the URL in LIBER_REDIS_URL (and unset LIBER_REDIS_CONNECTION): "
            "liber translates it"
        )
    _check_registry_url(yaml.safe_load(text), yaml_path)
    try:
        raw = yaml.safe_load(text)
        # A project name other than the yaml's without editing it (several teams, one registry):
        # liber commands honour LIBER_FEAST_PROJECT; plain `feast` needs FEAST_FS_YAML_FILE_PATH.
        if settings.feast_project:
            raw["project"] = settings.feast_project
        config = RepoConfig(**raw)
        config.repo_path = repo  # as feast.repo_config.load_repo_config does
        return FeatureStore(repo_path=str(repo), config=config)
    except Exception as exc:  # Feast raises a zoo of types here; keep its message, type it ours
        raise FeatureStoreError(f"cannot open the Feast repo {repo} ({yaml_path}): "
                                f"{redact_text(str(exc))}") from exc


# --- sample frames: a bootstrap for trying the repo, and the fixtures of our tests and bench ---


def sample_long_term(
    users: Sequence[str],
    sealed_at: datetime,
    *,
    created_at: datetime | None = None,
    partition_count: int = 3,
    encoder_version: str = "v1",
    shape: LiberFeatureConfig | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """One long-term row per user, random float32 vectors in the first ``partition_count`` slots."""
    shape = shape or LiberFeatureConfig.from_env()
    rng = np.random.default_rng(seed)
    filled = shape.filled_length(partition_count)

    def vectors() -> list[np.ndarray]:  # only the filled slots, as memory_table writes them
        return list(rng.standard_normal((len(users), filled), dtype=np.float32))

    return pd.DataFrame({
        "user_id": list(users),
        "sealed_at": pd.Timestamp(sealed_at),
        "created_at": pd.Timestamp(created_at or sealed_at),
        "partition_count": partition_count,
        "summary_vectors": vectors(),
        "shift_vectors": vectors(),
        "recent_item_ids": [[f"{u}-old{i}" for i in range(partition_count)] for u in users],
        "latest_summary": [f"{u} liked sample items ({encoder_version})" for u in users],
        "latest_shift": [f"{u} drifted to new items ({encoder_version})" for u in users],
        "encoder_version": encoder_version,
    })  # fmt: skip


def sample_short_term(users: Sequence[str], event_timestamp: datetime, *, items: int = 3) -> pd.DataFrame:
    """One short-term cache state per user with ``items`` item ids."""
    ts = pd.Timestamp(event_timestamp)
    return pd.DataFrame({
        "user_id": list(users),
        "event_timestamp": ts,
        "created_at": ts,
        "cache_item_ids": [[f"{u}-item{i}" for i in range(items)] for u in users],
        "cache_event_types": [[SAMPLE_EVENT_TYPES[i % 3] for i in range(items)] for _ in users],
        "cache_length": items,
        "cache_oldest_at": ts - pd.Timedelta(minutes=items),
        "cache_newest_at": ts,
    })  # fmt: skip


def write_parquet(df: pd.DataFrame, path: str | Path, schema: pa.Schema, ledger: Ledger | None = None) -> None:
    """Write ``df`` with the contract's Arrow schema (microsecond UTC timestamps, float32 lists),
    atomically (``features/files.py``): Feast may be reading the file while it is replaced. With
    ``ledger`` the file carries it (``features/ownership.py``); sample tables written by tests and
    benchmarks have none."""
    from liber_features.features.ownership import stamp

    table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    with atomic_write(path) as f:
        pq.write_table(stamp(table, ledger) if ledger is not None else table, f)


def apply_repo(store: FeatureStore, repo_path: str | Path = DEFAULT_REPO) -> list[str]:
    """``feast apply`` through the Python API: register every object ``definitions.py`` declares.

    The module is loaded fresh (not from sys.modules) because it reads M, D and the data dir from
    the environment at import. Returns the names applied.
    """
    import importlib.util
    import uuid
    import warnings

    from feast import Entity, FeatureService, FeatureView, OnDemandFeatureView
    from feast.data_source import DataSource

    path = Path(repo_path) / "definitions.py"
    spec = importlib.util.spec_from_file_location(f"liber_defs_{uuid.uuid4().hex}", path)
    if spec is None or spec.loader is None:
        raise FeatureStoreError(f"no feature definitions at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    objects = [v for v in vars(module).values()
               if isinstance(v, (Entity, FeatureView, OnDemandFeatureView, FeatureService, DataSource))]
    try:
        with warnings.catch_warnings():
            # Feast warns on every apply that holds an on-demand view (liber_affinities) that ODFVs
            # are "experimental ... do not scale well for offline retrieval": known, and measured
            # (docs/serving.md); not news to repeat at every liber command.
            warnings.filterwarnings("ignore", "On demand feature view is an experimental feature",
                                    RuntimeWarning)
            store.apply(objects)
        # With the SQL registry's `cache_mode: thread` the applying process's own cache is only
        # refreshed by the background thread (every cache_ttl_seconds): refresh it now, so this
        # store serves what it just applied.
        store.refresh_registry()
    except Exception as exc:  # Feast raises many unrelated types; keep the message, type it ours
        raise FeatureStoreError(f"feast apply of {path} failed: {exc}") from exc
    return sorted(o.name for o in objects)
