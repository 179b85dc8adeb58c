"""``liber`` commands that drive the Feast repo (registered on the ``liber`` group by cli.py).

``liber materialize`` = ``feast materialize-incremental <now>`` + the late-row pass that Feast lacks
(partitions sealed before the previous watermark but encoded after it, and re-encodes under a new
``encoder_version``). Errors follow the ``liber`` convention (``error: <message>`` on stderr,
non-zero exit) even when the command is used on its own.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from liber_features.errors import ConfigError, FeatureStoreError, LiberError

__all__ = ["materialize", "COMMANDS"]


def _utc(value: str | None, option: str) -> datetime | None:
    """ISO-8601 → aware UTC datetime; a naive value is taken as UTC (as Feast's CLI does)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{option} must be an ISO-8601 time, got {value!r}") from None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


def _views_with_data(store: Any) -> tuple[list[str], list[str]]:
    """Split the repo's views into those whose local Parquet exists and those whose does not.

    The short-term view is push-fed: a missing Parquet just skips it. Missing long-term data is an
    error that says what to run, instead of the offline store's stack trace.
    """
    from feast import FileSource

    from liber_features.featurestore import LONG_TERM_VIEW

    ready, missing = [], []
    for view in store.list_feature_views(allow_cache=False):
        src, path = view.batch_source, None
        if isinstance(src, FileSource) and "://" not in src.path:
            path = Path(FileSource.get_uri_for_file_path(store.config.repo_path, src.path))
        if path is None or path.exists():
            ready.append(view.name)
        elif view.name == LONG_TERM_VIEW:
            raise FeatureStoreError(f"no long-term memory table at {path}: run `liber encode` first")
        else:
            missing.append(view.name)
    if not ready and not missing:
        raise FeatureStoreError(f"no feature views in project {store.project!r}: run `feast apply` first")
    return ready, missing


@click.command()
@click.option("--repo", default="feature_repo", show_default=True, type=click.Path(),
              help="Feast feature repo (its yaml: FEAST_FS_YAML_FILE_PATH, else <repo>/feature_store.yaml)")
@click.option("--end", "end", default=None, metavar="ISO-TIME",
              help="materialize up to this event time (default: now)")
@click.option("--late-since", "late_since", default=None, metavar="ISO-TIME",
              help="rewrite online the newest row of every user with rows created since then "
                   "(default: 1 h before the previous watermark; none on a first run)")
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON line")
def materialize(repo: str, end: str | None, late_since: str | None, as_json: bool) -> None:
    """Materialize LIBER features online: incremental to now, then late and re-encoded rows."""
    from liber_features.featurestore import open_store
    from liber_features.online import _store_errors as store_errors
    from liber_features.online import materialize as run_materialize

    try:
        store = open_store(repo)
        with store_errors("reading the Feast registry"):
            ready, skipped = _views_with_data(store)
        report = run_materialize(
            store, end=_utc(end, "--end"), late_since=_utc(late_since, "--late-since"), views=ready
        )
    except LiberError as exc:
        from liber_features.redact import redact_text

        click.echo(f"error: {redact_text(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    summary: dict[str, Any] = {
        "project": store.project,
        "online_store": store.config.online_store.type,
        "end": report.end.isoformat(),
        "late_since": report.late_since.isoformat() if report.late_since else None,
        "late_users_written": report.late_rows,
        "skipped_views_without_data": skipped,
    }
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
        return
    click.echo("materialized LIBER features")
    for key, value in summary.items():
        click.echo(f"  {key:<22} {value}")


COMMANDS = [materialize]
