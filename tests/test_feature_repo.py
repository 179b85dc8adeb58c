"""feature_repo/: cheap definitions, yaml selection by environment, and the real ``feast`` CLI.

The CLI test runs the actual ``feast apply`` + ``feast materialize-incremental`` (subprocesses,
~5-15 s each) on a throwaway copy of the repo, once on the embedded default and once on Redis +
PostgreSQL selected purely by environment variables.
"""

from __future__ import annotations

import builtins
import importlib.util
import json
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from feastrepo import PG_URL, REDIS_URL, REPO, Repo, cleanup

from liber_features.cli.repo import materialize as materialize_cmd
from liber_features.errors import ConfigError
from liber_features.features.repo import (
    LONG_TERM_SCHEMA,
    LONG_TERM_VIEW,
    RANKER_SERVICE,
    LiberFeatureConfig,
    feast_redis_connection,
    open_store,
    sample_long_term,
    sample_short_term,
    write_parquet,
)
from liber_features.ledger.store import Ledger

ENV_NAMES = ("LIBER_DATA_DIR", "LIBER_MEMORY_SLOTS", "LIBER_VECTOR_DIM", "FEAST_FS_YAML_FILE_PATH",
             "LIBER_REDIS_URL", "LIBER_REDIS_CONNECTION", "LIBER_REGISTRY_URL")
NOW = datetime.now(UTC).replace(microsecond=0)
USERS = ["alice", "bob", "carol"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def copy_repo(dst: Path, backend: str = "sqlite", ledger=None) -> Repo:
    """A checkout-like copy of feature_repo/ at ``dst`` (own project) holding sample tables; with a
    ``ledger``, its tables in ``data/`` (LIBER_DATA_DIR=data, set by the caller), stamped with it."""
    dst.mkdir(parents=True)
    repo = Repo(dst, backend)
    repo.write(sample_long_term(USERS, NOW - timedelta(days=9)), sample_short_term(USERS, NOW - timedelta(days=1)),
               ledger, **({"data": "data"} if ledger else {}))
    return repo


def ledger_in_data_dir(tmp_path: Path, monkeypatch) -> tuple[Ledger, list[str]]:
    """A ledger whose tables live in ``<repo>/data`` (told so: LIBER_DATA_DIR), and its CLI option."""
    monkeypatch.setenv("LIBER_DATA_DIR", "data")
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    return ledger, ["--ledger", ledger.url]


def test_definitions_are_side_effect_free_and_carry_the_shape(monkeypatch, tmp_path):
    import feast  # noqa: F401  (importing feast itself may read files; definitions may not)

    monkeypatch.setenv("LIBER_MEMORY_SLOTS", "4")
    monkeypatch.setenv("LIBER_VECTOR_DIM", "16")
    monkeypatch.setenv("LIBER_DATA_DIR", str(tmp_path))

    def forbidden(*args, **kwargs):
        raise AssertionError(f"definitions.py touched I/O at import: {args[:1]}")

    spec = importlib.util.spec_from_file_location("liber_defs_cheap", REPO / "definitions.py")
    module = importlib.util.module_from_spec(spec)
    with monkeypatch.context() as m:
        m.setattr(builtins, "open", forbidden)
        m.setattr(socket.socket, "connect", forbidden)
        spec.loader.exec_module(module)

    assert module.user.join_key == "user_id"
    long_view = module.user_long_term_memory
    assert long_view.batch_source.timestamp_field == "sealed_at"
    assert long_view.batch_source.created_timestamp_column == "created_at"
    assert long_view.batch_source.path == str(tmp_path / "user_long_term_memory.parquet")
    assert long_view.online and long_view.ttl >= timedelta(days=365 * 50)
    vectors = {f.name: f.vector_length for f in long_view.features if f.vector_length}
    assert vectors == {"summary_vectors": 64, "shift_vectors": 64}
    assert long_view.tags == {"liber.memory_slots": "4", "liber.vector_dim": "16"}
    short_view = module.user_short_term_cache
    assert short_view.stream_source.name == "user_short_term_cache_push"
    assert short_view.batch_source.path == str(tmp_path / "user_short_term_cache.parquet")
    service = module.liber_ranker_v1
    assert service.name == RANKER_SERVICE
    assert [p.name for p in service.feature_view_projections] == [LONG_TERM_VIEW, "user_short_term_cache"]


def test_shape_config_from_env():
    assert LiberFeatureConfig.from_env({}).vector_length == 8 * 384
    assert LiberFeatureConfig.from_env({"LIBER_MEMORY_SLOTS": "2", "LIBER_VECTOR_DIM": "3"}).vector_length == 6
    for bad in ({"LIBER_VECTOR_DIM": "0"}, {"LIBER_MEMORY_SLOTS": "eight"}):
        with pytest.raises(ConfigError, match=f"^bad setting {next(iter(bad))}="):  # names the variable
            LiberFeatureConfig.from_env(bad)
    with pytest.raises(ValueError, match="extra"):
        LiberFeatureConfig(memory_slots=8, vector_dims=384)


def test_redis_url_becomes_feast_connection_string():
    assert feast_redis_connection("redis://10.0.0.5:6380/2") == "10.0.0.5:6380,db=2"
    assert feast_redis_connection("rediss://:p%40ss@cache") == "cache:6379,db=0,password=p@ss,ssl=true"
    with pytest.raises(ConfigError):
        feast_redis_connection("10.0.0.5:6379")


def test_yaml_is_selected_and_expanded_by_environment(tmp_path, monkeypatch):
    from feast.repo_config import load_repo_config

    repo = tmp_path / "feature_repo"
    copy_repo(repo)
    assert open_store(repo, environ={}).config.online_store.type == "sqlite"
    selected = {"FEAST_FS_YAML_FILE_PATH": str(repo / "feature_store.redis.yaml")}
    with pytest.raises(ConfigError, match="LIBER_REDIS_CONNECTION, LIBER_REGISTRY_URL"):
        open_store(repo, environ=selected)
    with pytest.raises(ConfigError, match="not a redis:// URL"):
        open_store(repo, environ={**selected, "LIBER_REDIS_CONNECTION": REDIS_URL, "LIBER_REGISTRY_URL": PG_URL})
    env = {**selected, "LIBER_REDIS_URL": "redis://10.1.2.3:6390/4", "LIBER_REGISTRY_URL": PG_URL}
    config = open_store(repo, environ=env).config
    assert config.online_store.connection_string == "10.1.2.3:6390,db=4"
    assert (config.registry.registry_type, config.registry.path) == ("sql", PG_URL)
    # Feast's own loader (what `feast` runs) expands the same file the same way.
    monkeypatch.setenv("LIBER_REDIS_CONNECTION", "10.1.2.3:6390,db=4")
    monkeypatch.setenv("LIBER_REGISTRY_URL", PG_URL)
    feast_config = load_repo_config(repo, repo / "feature_store.redis.yaml")
    assert feast_config.online_store.connection_string == config.online_store.connection_string
    assert feast_config.registry.path == PG_URL


def _feast(*args: str, cwd: Path, env: dict[str, str]) -> str:
    feast_bin = Path(sys.executable).parent / "feast"
    done = subprocess.run([str(feast_bin), *args], cwd=cwd, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"feast {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("redis", marks=[pytest.mark.redis, pytest.mark.postgres])])
def test_real_feast_cli_apply_then_materialize_incremental(tmp_path, backend):
    repo = tmp_path / "checkout" / "feature_repo"
    copied = copy_repo(repo, backend)
    project, env = copied.project, dict(copied.env)
    if backend == "redis":  # plain `feast` needs Feast's form; liber commands derive it from the URL
        env["LIBER_REDIS_CONNECTION"] = feast_redis_connection(REDIS_URL)
    try:
        out = _feast("-c", "feature_repo", "apply", cwd=repo.parent, env=env)
        assert f"Applying changes for project {project}" in out
        end = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _feast("-c", "feature_repo", "materialize-incremental", end, cwd=repo.parent, env=env)

        store = open_store(repo, environ={**os.environ, **env})
        assert store.config.online_store.type == backend
        got = store.get_online_features(features=store.get_feature_service(RANKER_SERVICE),
                                        entity_rows=[{"user_id": u} for u in USERS]).to_dict()
        expected = sample_long_term(USERS, NOW - timedelta(days=9))
        for i in range(len(USERS)):
            assert np.array_equal(np.asarray(got["summary_vectors"][i], np.float32), expected.summary_vectors[i])
        assert got["cache_length"] == [3, 3, 3]
    finally:
        cleanup(copied)


def test_liber_materialize_command_writes_what_was_created_since_its_last_write(tmp_path, monkeypatch):
    repo = tmp_path / "feature_repo"
    owner, ledger = ledger_in_data_dir(tmp_path, monkeypatch)
    store = copy_repo(repo, ledger=owner).apply()
    runner = CliRunner()
    first = runner.invoke(materialize_cmd, ["--repo", str(repo), "--json", *ledger])
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["users_written"] == {LONG_TERM_VIEW: 3, "user_short_term_cache": 3}
    assert summary["previously_synced_to"][LONG_TERM_VIEW] is None

    # The encoder re-encodes every sealed partition under a new version: same sealed_at, new rows
    # created long after the previous run: no window to guess, the ledger knows what is online.
    sealed = NOW - timedelta(days=9)
    both = [sample_long_term(USERS, sealed), sample_long_term(USERS, sealed, created_at=NOW, encoder_version="v2")]
    write_parquet(pd.concat(both, ignore_index=True), repo / "data/user_long_term_memory.parquet", LONG_TERM_SCHEMA,
                  owner)
    second = runner.invoke(materialize_cmd, ["--repo", str(repo), "--json", *ledger])
    assert second.exit_code == 0, second.output
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["users_written"][LONG_TERM_VIEW] == 3 and summary["online_store"] == "sqlite"
    assert summary["synced_to"][LONG_TERM_VIEW] == NOW.isoformat()
    got = store.get_online_features(features=[f"{LONG_TERM_VIEW}:encoder_version"],
                                    entity_rows=[{"user_id": u} for u in USERS]).to_dict()
    assert got["encoder_version"] == ["v2"] * 3


def test_liber_materialize_explains_missing_data(tmp_path, monkeypatch):
    repo = tmp_path / "feature_repo"
    owner, ledger = ledger_in_data_dir(tmp_path, monkeypatch)
    copied = copy_repo(repo, ledger=owner)
    runner = CliRunner()
    not_applied = runner.invoke(materialize_cmd, ["--repo", str(repo), *ledger])
    assert not_applied.exit_code == 2 and "run `feast apply` first" in not_applied.stderr
    copied.apply()
    (repo / "data/user_short_term_cache.parquet").unlink()  # push-fed: its Parquet may not exist yet
    result = runner.invoke(materialize_cmd, ["--repo", str(repo), "--json", *ledger])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["skipped_views_without_data"] == [
        "user_short_term_cache"]
    (repo / "data/user_long_term_memory.parquet").unlink()
    no_data = runner.invoke(materialize_cmd, ["--repo", str(repo), *ledger])
    assert no_data.exit_code == 2 and "run `liber encode` first" in no_data.stderr


@pytest.mark.redis
@pytest.mark.postgres
def test_liber_materialize_reports_unreachable_redis(tmp_path, monkeypatch):
    repo = tmp_path / "feature_repo"
    owner, ledger = ledger_in_data_dir(tmp_path, monkeypatch)
    copied = copy_repo(repo, "redis", ledger=owner)
    try:
        copied.apply()
        for name, value in copied.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("LIBER_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
        result = CliRunner().invoke(materialize_cmd, ["--repo", str(repo), *ledger])
        assert result.exit_code == 2
        assert result.stderr.startswith("error: ") and "ConnectionError" in result.stderr
    finally:
        cleanup(copied)


def test_project_name_comes_from_the_environment_without_editing_the_yaml(tmp_path):
    import shutil

    from liber_features.features.repo import open_store

    for name in ("feature_store.yaml", "definitions.py"):
        shutil.copy(Path(__file__).resolve().parents[1] / "feature_repo" / name, tmp_path)
    assert open_store(tmp_path, environ={}).project == "liber"
    assert open_store(tmp_path, environ={"LIBER_FEAST_PROJECT": "team_b_recs"}).project == "team_b_recs"
