"""Every ``LIBER_*`` environment variable in one typed settings object.

Each variable is declared once here, with its default and a one-line description, so the README's
configuration table can be generated from it (``python -m liber_features.settings``) and a bad
value fails as one :class:`~liber_features.errors.ConfigError` that names the variable, wherever
it is first read. Three variables are only expanded by Feast itself (``${VAR}`` in the
``feature_repo/feature_store.*.yaml`` files); they are declared here too, marked as read by the
yaml, so the table is complete and a reader finds them in one place.

Settings are read fresh on every :func:`get_settings` call (a few microseconds) and never cached:
the old code read ``os.environ`` at call time, and tests and long-lived processes rely on a
change of the environment being seen. This module sits in the lowest layer: it imports only
pydantic(-settings) and :mod:`liber_features.errors`, so ``feast apply`` (which imports the
feature definitions, which read the vector shape through it) stays cheap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, get_args

from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_core import PydanticUseDefault
from pydantic_settings import BaseSettings, SettingsConfigDict

from liber_features.errors import ConfigError

__all__ = ["DEFAULT_LEDGER_URL", "ENV_PREFIX", "LiberSettings", "data_dir_for", "get_settings", "env_name",
           "ledger_key", "markdown_table"]

ENV_PREFIX = "LIBER_"
DEFAULT_LEDGER_URL = "sqlite:///.liber/ledger.db"  # relative to where liber runs (store.default_ledger_url)
_YAML = "feature_repo/feature_store.{}.yaml"


def _read_by_yaml(*flavours: str) -> dict[str, Any]:
    """Marks a variable that Feast expands in the yaml (liber reads it only to check and name it)."""
    return {"read_by": ", ".join(_YAML.format(f) for f in flavours)}


_ExpandedPath = Annotated[Path, AfterValidator(lambda p: p.expanduser())]


class LiberSettings(BaseSettings):
    """The ``LIBER_*`` environment, typed. An unset or blank variable takes its default."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", env_ignore_empty=True,
                                      case_sensitive=False, frozen=True)

    admin_token: SecretStr | None = Field(
        None, description="bearer token of `liber serve`'s `POST /admin/reload` (as `--admin-token`; unset: off)")
    cache_dir: _ExpandedPath = Field(
        Path("~/.cache/liber-features"), validate_default=True,
        description="where packaged model checkpoints and item-vector caches are unpacked")
    data_dir: Path | None = Field(
        None, description="offline Parquet tables of the feature views; relative = relative to the Feast repo "
                          "(default: `data/ledger-<key>`, one folder per ledger: the key hashes "
                          "`LIBER_LEDGER_URL` and `LIBER_LEDGER_SCHEMA`)")
    domain: str | None = Field(
        None, description="catalog domain of the LLM prompts (as `liber encode --domain`): `movies` (default), "
                          "`products`, or a TOML template file; part of the prompt version")
    debug: bool = Field(False, description="`liber` prints the traceback of an unexpected error (as `--debug`)")
    feast_project: str | None = Field(
        None, description="Feast project name used by liber commands instead of the yaml's `project`")
    history_length: int = Field(
        50, ge=1, le=10000, description="L: behaviours a ranker reads per user (`recent_item_ids` + cache)")
    ledger_schema: str | None = Field(None, description="PostgreSQL schema holding the ledger tables")
    ledger_url: SecretStr | None = Field(
        None, description="SQLAlchemy URL of the ledger (default: `sqlite:///.liber/ledger.db`)")
    llm: str | None = Field(
        None, description="LLM of `liber encode`: `smollm2` (packaged, default), a checkpoint dir, a .gguf "
                          "file, or `openai:http://host:port[,http://host2:port,...]#model` "
                          "(several: a pool of replicas)")
    llm_api_key: SecretStr | None = Field(
        None, description="API key of an `openai:` LLM server (else `OPENAI_API_KEY`)")
    memory_slots: int = Field(
        8, ge=1, le=1024, description="M: partitions kept per user in the long-term memory vectors")
    ml_latest_small: Path | None = Field(
        None, description="MovieLens ml-latest-small folder of `liber demo` (default: "
                          "`../shared/data/ml-latest-small` beside the checkout)")
    ray_storage_path: str | None = Field(
        None, json_schema_extra=_read_by_yaml("ray"),
        description="where Feast's Ray offline store stages results")
    redis_cluster_connection: SecretStr | None = Field(
        None, json_schema_extra=_read_by_yaml("ray"),
        description="Redis Cluster nodes in Feast's form: `host1:port1,host2:port2,...`")
    redis_connection: SecretStr | None = Field(
        None, json_schema_extra=_read_by_yaml("redis"),
        description="Redis in Feast's form `host:port,db=0[,password=...]`; liber derives it from "
                    "`LIBER_REDIS_URL`")
    redis_url: SecretStr | None = Field(
        None, description="Redis online store as a `redis://[:password@]host:port/db` URL (liber commands)")
    registry_url: SecretStr | None = Field(
        None, json_schema_extra=_read_by_yaml("redis", "ray"),
        description="SQLAlchemy URL of Feast's SQL registry")
    serve_token: SecretStr | None = Field(
        None, description="bearer token `liber serve` requires on `POST /score` and `GET /users/…` "
                          "(as `--token`; unset: open)")
    text_encoder: str | None = Field(
        None, description="transformers text-encoder folder of `liber encode` (default: packaged "
                          "all-MiniLM-L6-v2)")
    vector_dim: int = Field(384, ge=1, le=65536, description="D: text-encoder output dimension")

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        """An empty or blank value means "not set", as the code before this module read it."""
        if isinstance(value, str):
            value = value.strip()
            if not value:
                raise PydanticUseDefault()
        return value

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        """Keyword arguments, then the environment: no .env file or secrets dir is read behind a user's back."""
        return init_settings, env_settings

    @staticmethod
    def secret(value: SecretStr | None) -> str | None:
        """The plain text of a secret setting, for the one call that needs it."""
        return None if value is None else value.get_secret_value()


class _MappingSettings(LiberSettings):
    """The same fields from an explicit mapping only (keyword arguments): the environment is not read."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings,)


def env_name(field: str) -> str:
    """``memory_slots`` → ``LIBER_MEMORY_SLOTS``."""
    return f"{ENV_PREFIX}{field.upper()}"


def _secret_fields() -> set[str]:
    """Fields typed SecretStr: their values are never printed."""
    return {name for name, f in LiberSettings.model_fields.items()
            if f.annotation is SecretStr or SecretStr in get_args(f.annotation)}


def _config_error(exc: ValidationError) -> ConfigError:
    """One ConfigError naming each bad variable; a secret's value is never echoed."""
    parts = []
    for err in exc.errors(include_url=False):
        field = str(err["loc"][0]) if err["loc"] else ""
        shown = "" if field in _secret_fields() else f"={err.get('input')!r}"
        parts.append(f"{env_name(field)}{shown}: {err['msg']}")
    return ConfigError("bad setting " + "; ".join(parts))


def get_settings(environ: Mapping[str, str] | None = None) -> LiberSettings:
    """The settings of ``environ`` (default: the process environment, read now); bad values → ConfigError.

    An explicit mapping is taken alone (the process environment is not consulted), as the
    functions that accept an ``environ`` argument always did.
    """
    try:
        if environ is None:
            return LiberSettings()
        values = {key[len(ENV_PREFIX):].lower(): value for key, value in environ.items()
                  if key.upper().startswith(ENV_PREFIX)
                  and key[len(ENV_PREFIX):].lower() in LiberSettings.model_fields}
        return _MappingSettings(**values)
    except ValidationError as exc:
        raise _config_error(exc) from None


def ledger_key(url: str | None, schema: str | None) -> str:
    """``ledger-<10 hex>``: a ledger's data-folder name, from its URL (as given, password masked, so a
    rotated password keeps the folder) and schema, computed without opening the database.

    Cheap on purpose: ``feast apply`` computes the FileSource paths from it at import. Two spellings
    of one ledger (a relative and an absolute SQLite path) get two folders; two ledgers that end up
    in one folder anyway are refused by the files' ledger stamp (``features/ownership.py``).
    """
    from liber_features.redact import redact_url

    text = f"{redact_url(url or DEFAULT_LEDGER_URL)}|{schema or ''}"
    return "ledger-" + hashlib.sha256(text.encode()).hexdigest()[:10]


def data_dir_for(settings: LiberSettings) -> Path:
    """Where the feature views' Parquet tables live: ``LIBER_DATA_DIR``, else ``data/<ledger_key>``
    (relative = relative to the Feast repo), so two ledgers on one checkout never share files
    unless told to."""
    if settings.data_dir is not None:
        return settings.data_dir
    url = LiberSettings.secret(settings.ledger_url)
    return Path("data") / ledger_key(url, settings.ledger_schema)


def markdown_table() -> str:
    """The README's configuration table: variable, default, description (yaml-read ones marked)."""
    lines = ["| Variable | Default | Description |", "| --- | --- | --- |"]
    for name, field in LiberSettings.model_fields.items():
        default = field.default
        shown = "unset" if default is None else f"`{default}`"
        if isinstance(default, bool):
            shown = f"`{int(default)}`"
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        read_by = f" (read by Feast in `{extra['read_by']}`)" if "read_by" in extra else ""
        lines.append(f"| `{env_name(name)}` | {shown} | {field.description}{read_by} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m liber_features.settings > the README's table
    print(markdown_table(), end="")
