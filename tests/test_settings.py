"""liber_features.settings: every LIBER_* variable declared once, each overriding its default, a bad
value one ConfigError naming it, and the README's configuration table generated from the class."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from liber_features.errors import ConfigError
from liber_features.settings import LiberSettings, data_dir_for, get_settings, ledger_key, markdown_table

ROOT = Path(__file__).resolve().parents[1]

# Every variable, a non-default value for it, and the parsed value it must give (exact).
OVERRIDES = {
    "LIBER_ADMIN_TOKEN": ("t0ken", SecretStr("t0ken")),
    "LIBER_SERVE_TOKEN": ("s3rve", SecretStr("s3rve")),
    "LIBER_CACHE_DIR": ("/srv/liber/cache", Path("/srv/liber/cache")),
    "LIBER_DATA_DIR": ("/srv/liber/data", Path("/srv/liber/data")),
    "LIBER_DEBUG": ("1", True),
    "LIBER_DOMAIN": ("products", "products"),
    "LIBER_FEAST_PROJECT": ("team_b_recs", "team_b_recs"),
    "LIBER_HISTORY_LENGTH": ("7", 7),
    "LIBER_LEDGER_SCHEMA": ("liber_a", "liber_a"),
    "LIBER_LEDGER_URL": ("postgresql+psycopg://u:pw@db/x", SecretStr("postgresql+psycopg://u:pw@db/x")),
    "LIBER_LLM": ("openai:http://gpu1:8000#m", "openai:http://gpu1:8000#m"),
    "LIBER_LLM_API_KEY": ("sk-123", SecretStr("sk-123")),
    "LIBER_MEMORY_SLOTS": ("3", 3),
    "LIBER_ML_LATEST_SMALL": ("/data/ml", Path("/data/ml")),
    "LIBER_RAY_STORAGE_PATH": ("s3://b/ray", "s3://b/ray"),
    "LIBER_REDIS_CLUSTER_CONNECTION": ("a:1,b:2", SecretStr("a:1,b:2")),
    "LIBER_REDIS_CONNECTION": ("r:6379,db=1", SecretStr("r:6379,db=1")),
    "LIBER_REDIS_URL": ("redis://r:6379/1", SecretStr("redis://r:6379/1")),
    "LIBER_REGISTRY_URL": ("postgresql+psycopg://feast@db/feast", SecretStr("postgresql+psycopg://feast@db/feast")),
    "LIBER_TEXT_ENCODER": ("/models/minilm", "/models/minilm"),
    "LIBER_VECTOR_DIM": ("16", 16),
}


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in OVERRIDES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


def plain(value):
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def test_the_defaults(clean_env, tmp_path):
    s = get_settings()
    assert (s.memory_slots, s.vector_dim, s.history_length) == (8, 384, 50)
    assert s.cache_dir == tmp_path / ".cache/liber-features"  # ~ expanded against $HOME, read now
    assert s.data_dir is None and data_dir_for(s) == Path("data") / ledger_key(None, None)
    assert s.debug is False
    assert [name for name, v in s.model_dump().items() if v is None] == [
        "admin_token", "data_dir", "domain", "feast_project", "ledger_schema", "ledger_url", "llm", "llm_api_key",
        "ml_latest_small", "ray_storage_path", "redis_cluster_connection", "redis_connection", "redis_url",
        "registry_url", "serve_token", "text_encoder"]


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_each_variable_overrides_its_default(clean_env, name):
    raw, expected = OVERRIDES[name]
    field = name.removeprefix("LIBER_").lower()
    assert plain(getattr(get_settings(), field)) != plain(expected)  # the default differs
    clean_env.setenv(name, raw)
    assert plain(getattr(get_settings(), field)) == plain(expected)  # read fresh, not cached
    assert plain(getattr(get_settings({name: raw}), field)) == plain(expected)


def test_blank_means_unset_and_values_are_stripped(clean_env):
    clean_env.setenv("LIBER_MEMORY_SLOTS", "  ")
    clean_env.setenv("LIBER_DATA_DIR", "")
    clean_env.setenv("LIBER_VECTOR_DIM", " 12 ")
    s = get_settings()
    assert (s.memory_slots, s.data_dir, s.vector_dim) == (8, None, 12)


def test_the_default_data_dir_is_one_per_ledger(clean_env):
    """``data/ledger-<first 10 hex of sha256(url, password masked | schema)>``, no database opened."""
    import hashlib

    def key(text: str) -> str:
        return "ledger-" + hashlib.sha256(text.encode()).hexdigest()[:10]

    assert data_dir_for(get_settings()) == Path("data") / key("sqlite:///.liber/ledger.db|")
    clean_env.setenv("LIBER_LEDGER_URL", "postgresql://u:secret@db/x")
    clean_env.setenv("LIBER_LEDGER_SCHEMA", "team_a")
    assert data_dir_for(get_settings()) == Path("data") / key("postgresql://u:***@db/x|team_a")
    clean_env.setenv("LIBER_LEDGER_URL", "postgresql://u:rotated@db/x")  # a new password, same folder
    assert data_dir_for(get_settings()) == Path("data") / key("postgresql://u:***@db/x|team_a")
    clean_env.setenv("LIBER_DATA_DIR", "/srv/shared")  # told to share: as told
    assert data_dir_for(get_settings()) == Path("/srv/shared")


def test_an_explicit_mapping_is_read_alone(clean_env):
    clean_env.setenv("LIBER_MEMORY_SLOTS", "5")
    assert get_settings({"LIBER_VECTOR_DIM": "4", "PATH": "/bin"}).memory_slots == 8
    assert get_settings().memory_slots == 5


def test_a_bad_value_is_one_config_error_naming_the_variable(clean_env):
    clean_env.setenv("LIBER_MEMORY_SLOTS", "abc")
    with pytest.raises(ConfigError) as err:
        get_settings()
    assert str(err.value) == ("bad setting LIBER_MEMORY_SLOTS='abc': Input should be a valid integer, "
                              "unable to parse string as an integer")
    with pytest.raises(ConfigError) as err:
        get_settings({"LIBER_VECTOR_DIM": "0", "LIBER_DEBUG": "perhaps"})
    assert str(err.value) == (
        "bad setting LIBER_DEBUG='perhaps': Input should be a valid boolean, unable to interpret input; "
        "LIBER_VECTOR_DIM='0': Input should be greater than or equal to 1")


def test_a_bad_secret_is_named_but_never_echoed():
    with pytest.raises(ConfigError) as err:
        get_settings({"LIBER_REDIS_URL": ["redis://:hunter2@r"]})  # not a string: invalid
    assert str(err.value) == "bad setting LIBER_REDIS_URL: Input should be a valid string"


def test_secrets_are_hidden_in_the_repr(clean_env):
    clean_env.setenv("LIBER_LLM_API_KEY", "sk-hunter2")
    assert "hunter2" not in repr(get_settings())
    assert LiberSettings.secret(get_settings().llm_api_key) == "sk-hunter2"


def test_every_liber_variable_the_code_names_is_declared():
    """A new LIBER_* read anywhere (Python or a Feast yaml) must be declared, so the table is complete."""
    declared = {f"LIBER_{name.upper()}" for name in LiberSettings.model_fields}
    named = set()
    for folder in ("liber_features", "encoders", "feature_repo"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".yaml"):
                named |= {n for n in re.findall(r"\bLIBER_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())
                          if not n.startswith("LIBER_TEST_")}
    assert named - declared == set()
    assert declared - named == set()  # and nothing is declared that nothing reads


def test_no_module_reads_a_liber_variable_from_os_environ_itself():
    reads = re.compile(r"(environ\.get|environ\[|getenv)\(?\s*[\"']LIBER_")
    offenders = [str(p.relative_to(ROOT)) for folder in ("liber_features", "encoders", "feature_repo")
                 for p in (ROOT / folder).rglob("*.py") if reads.search(p.read_text())]
    assert offenders == []


def test_the_generator_prints_the_table():
    out = subprocess.run([sys.executable, "-m", "liber_features.settings"], capture_output=True, text=True,
                         check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert out == markdown_table()
    assert out.splitlines()[:2] == ["| Variable | Default | Description |", "| --- | --- | --- |"]
    assert out.splitlines()[3] == (
        "| `LIBER_CACHE_DIR` | `~/.cache/liber-features` | where packaged model checkpoints and item-vector "
        "caches are unpacked |")
    assert len(out.splitlines()) == 2 + len(OVERRIDES)
    assert ("| `LIBER_RAY_STORAGE_PATH` | unset | where Feast's Ray offline store stages results "
            "(read by Feast in `feature_repo/feature_store.ray.yaml`) |") in out.splitlines()


def test_readme_configuration_table_matches_the_settings():
    text = (ROOT / "README.md").read_text()
    found = re.search(r"^<!-- settings-table:start -->\n(.*?)^<!-- settings-table:end -->$", text,
                      re.MULTILINE | re.DOTALL)
    assert found, ("README.md needs the configuration table between <!-- settings-table:start --> and "
                   "<!-- settings-table:end --> lines; generate it with `python -m liber_features.settings`")
    assert found.group(1) == markdown_table()
