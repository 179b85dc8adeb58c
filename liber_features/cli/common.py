"""What every ``liber`` command module shares: the summary printer, the ledger options, the
parameter types of options that carry structure, and how an error reaches the user.

Its own module (not ``main.py``) so that the command modules ``main.py`` registers can import it
without importing ``main.py`` back — which breaks ``python -m liber_features.cli.main``.

Errors: a ``LiberError`` is one ``error: <message>`` line and its exit code (2); anything else is
a bug or an environment we did not foresee, and is one ``error: <Type>: <message>`` line and exit
1 — the traceback only with ``liber --debug`` or ``LIBER_DEBUG=1``. A bad option value is click's
usage error (exit 2), raised by the option's type before the command runs.
"""

from __future__ import annotations

import json
import re
import sys
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from pydantic import SecretStr

from liber_features.errors import ConfigError, LedgerError, LiberError

if TYPE_CHECKING:
    from liber_features.ledger.store import Ledger

__all__ = ["emit", "ledger_option", "schema_option", "setting_default", "IdList", "RatingRange",
           "SinceTime", "fail", "LiberGroup", "ledger_file", "require_ledger", "open_ledger", "replace_option",
           "use_ledger", "own_data_dir"]


def emit(summary: dict[str, Any], as_json: bool, title: str) -> None:
    """Print a summary: aligned lines for people, one JSON line for machines."""
    if as_json:
        click.echo(json.dumps(summary, default=str, sort_keys=True))
        return
    click.echo(title)
    for key, value in summary.items():
        if not isinstance(value, dict):
            click.echo(f"  {key:<22} {value}")


def setting_default(field: str) -> Callable[[], str | None]:
    """An option default read from the settings when the command runs (``LIBER_<FIELD>``)."""

    def default() -> str | None:
        from liber_features.settings import get_settings

        value = getattr(get_settings(), field)
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        return None if value is None else str(value)

    return default


ledger_option = click.option(
    "--ledger", "ledger_url", default=setting_default("ledger_url"),
    help="SQLAlchemy URL of the ledger [env LIBER_LEDGER_URL; default sqlite:///.liber/ledger.db]")
schema_option = click.option(
    "--ledger-schema", default=setting_default("ledger_schema"),
    help="PostgreSQL schema holding the ledger tables [env LIBER_LEDGER_SCHEMA]")


def ledger_file(url: str) -> Path | None:
    """The file a SQLite ledger URL names (None for PostgreSQL, an in-memory SQLite or a bad URL)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None  # Ledger() turns a malformed URL into its ConfigError
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def require_ledger(url: str | None) -> str:
    """The ledger URL a command uses (``--ledger``, else ``LIBER_LEDGER_URL``, else the default file),
    refused with a ``LedgerError`` naming it when it is a SQLite file that does not exist.

    Opening a SQLite ledger creates it: a command reading one (everything but ``ingest`` and the
    demo) would otherwise work on a new empty ledger and report zeros, as ``liber materialize``
    did when the README's example left out ``--ledger``.
    """
    from liber_features.ledger.store import default_ledger_url

    url = url or default_ledger_url()
    path = ledger_file(url)
    if path is not None and not path.is_file():
        raise LedgerError(f"no ledger at {path}: run `liber ingest` first, or name the ledger with "
                          "--ledger / LIBER_LEDGER_URL")
    return url


def open_ledger(url: str | None, schema: str | None, *, must_exist: bool = True) -> Ledger:
    """The command's ledger; with ``must_exist`` (every command but ``ingest``) a missing SQLite
    file is an error naming it instead of a new empty ledger (``require_ledger``)."""
    from liber_features.ledger import store

    return store.Ledger(require_ledger(url) if must_exist else url, schema=schema)


replace_option = click.option(
    "--replace", is_flag=True,
    help="drop another ledger's files from the data directory before writing (default: refuse)")


def use_ledger(ledger_url: str | None, ledger_schema: str | None) -> None:
    """Make ``--ledger`` / ``--ledger-schema`` the ``LIBER_LEDGER_URL`` / ``_SCHEMA`` of this command.

    The default data directory is per ledger (``settings.data_dir_for``), and Feast's definitions
    (``feature_repo/definitions.py``, loaded in this process by ``apply_repo``) compute their
    FileSource paths from the environment, not from our options: without this, ``--ledger B``
    would write B's tables where the environment's ledger A keeps its own. Restored when the
    command ends, so an in-process caller (tests, CliRunner) keeps its environment.
    """
    import os

    ctx = click.get_current_context(silent=True)
    saved = {name: os.environ.get(name) for name in ("LIBER_LEDGER_URL", "LIBER_LEDGER_SCHEMA")}
    for name, value in zip(saved, (ledger_url, ledger_schema)):
        if value:
            os.environ[name] = value

    def restore() -> None:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    if ctx is not None:
        ctx.call_on_close(restore)


def own_data_dir(repo: str, ledger: Any, replace: bool = False) -> None:
    """Refuse (``replace``: empty) a data directory of ``repo`` holding another ledger's files, before
    a command writes there (``features/ownership.py``); after :func:`use_ledger`, so it is this ledger's."""
    from liber_features.features.ownership import check
    from liber_features.features.repo import data_file

    check(Path(data_file("_", repo_dir=repo)).parent, ledger, replace)


class IdList(click.ParamType):
    """``ID,ID,...`` → ``["ID", "ID", ...]``: blanks around ids and empty items dropped; none at all
    is a usage error (an empty ``--users`` used to mean "everyone", silently)."""

    name = "ID,ID,..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[str]:
        if isinstance(value, list):
            return value
        ids = [part.strip() for part in str(value).split(",") if part.strip()]
        if not ids:
            self.fail(f"expected comma-separated ids, got {value!r}", param, ctx)
        return ids


class EventTypes(IdList):
    """``view,Purchase`` → ``("view", "purchase")``: the valid values of an ``event_type`` column."""

    name = "TYPE,TYPE,..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, ...]:
        from liber_features.ingest.feedback import EVENT_TYPE_CHARS

        types = tuple(t.lower() for t in super().convert(value, param, ctx))
        if too_long := [t for t in types if len(t) > EVENT_TYPE_CHARS]:
            self.fail(f"event types are at most {EVENT_TYPE_CHARS} characters: {', '.join(too_long)}", param, ctx)
        return types


class RatingRange(click.ParamType):
    """``MIN,MAX`` → ``(min, max)`` floats with ``MIN < MAX``."""

    name = "MIN,MAX"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, float]:
        if isinstance(value, tuple):
            return value
        try:
            lo, hi = (float(part) for part in str(value).split(","))
        except ValueError:
            self.fail(f"expected MIN,MAX (two numbers), got {value!r}", param, ctx)
        if not lo < hi:  # also rejects nan
            self.fail(f"MIN must be below MAX, got {value!r}", param, ctx)
        return lo, hi


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class SinceTime(click.ParamType):
    """An ISO-8601 time (naive = UTC, as Feast's CLI reads it) or a duration back from now
    (``90s``, ``15m``, ``6h``, ``2d``) → an aware UTC datetime."""

    name = "ISO-TIME|DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        if m := _DURATION.fullmatch(text):
            return datetime.now(UTC) - timedelta(seconds=float(m[1]) * _UNIT_S[m[2]])
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"expected an ISO-8601 time (2026-01-31T12:00:00Z) or a duration (15m, 6h, 2d), "
                      f"got {value!r}", param, ctx)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def fail(exc: BaseException, debug: bool) -> NoReturn:
    """End the command for ``exc``: one ``error:`` line on stderr, never a traceback unless ``debug``."""
    from liber_features.redact import redact_text

    if isinstance(exc, LiberError):
        click.echo(f"error: {redact_text(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    if debug:
        click.echo(redact_text("".join(traceback.format_exception(exc))).rstrip("\n"), err=True)
    message = redact_text(str(exc))
    click.echo(f"error: {type(exc).__name__}" + (f": {message}" if message else ""), err=True)
    sys.exit(1)


def _debug_requested(ctx: click.Context) -> bool:
    """``--debug`` on the group, else ``LIBER_DEBUG``; a broken setting is not worth a second error."""
    if ctx.find_root().params.get("debug"):
        return True
    from liber_features.settings import get_settings

    try:
        return get_settings().debug
    except ConfigError:
        return False


class LiberGroup(click.Group):
    """The ``liber`` group: every exception a command raises ends as one ``error:`` line (see :func:`fail`)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own: usage errors, --help, Ctrl-C (Exit and Abort are RuntimeErrors)
        except Exception as exc:
            fail(exc, not isinstance(exc, LiberError) and _debug_requested(ctx))

