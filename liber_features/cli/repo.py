"""``liber`` commands that drive the Feast repo (registered on the ``liber`` group by cli.py).

``liber materialize`` writes online every row created since the last successful write, as the
ledger records it (sync.py): no event-time watermark to fall behind (a partition sealed long ago
but encoded now, a re-encode under a new ``encoder_version``), nothing lost to a failed run, and
``--rebuild`` restores a wiped online store. Errors follow the ``liber`` convention (``error: <message>`` on stderr,
non-zero exit) even when the command is used on its own.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from liber_features.cli.common import (
    SinceTime,
    fail,
    open_ledger,
    replace_option,
    require_ledger,
    setting_default,
    use_ledger,
)
from liber_features.errors import FeatureStoreError, LiberError

__all__ = ["materialize", "COMMANDS"]


def _views_with_data(store: Any) -> tuple[list[str], list[str]]:
    """Split the repo's views into those whose local Parquet exists and those whose does not.

    The short-term view is push-fed: a missing Parquet just skips it. Missing long-term data is an
    error that says what to run, instead of the offline store's stack trace.
    """
    from feast import FileSource

    from liber_features.features.repo import LONG_TERM_VIEW

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
@click.option("--ledger", "ledger_url", default=setting_default("ledger_url"),
              help="ledger holding the online sync state [env LIBER_LEDGER_URL]")
@click.option("--ledger-schema", default=setting_default("ledger_schema"),
              help="PostgreSQL schema of the ledger [env LIBER_LEDGER_SCHEMA]")
@click.option("--rebuild", is_flag=True,
              help="rewrite the whole online state (long-term rows from the offline table, short-term "
                   "caches from the ledger): the recovery after the online store lost its data")
@click.option("--late-since", "late_since", type=SinceTime(), default=None,
              help="also rewrite every user with rows created since then, an ISO-8601 time or a "
                   "duration back from now like 6h (never needed: the ledger records what is online)")
@replace_option
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON line")
def materialize(repo: str, ledger_url: str | None, ledger_schema: str | None, rebuild: bool,
                late_since: datetime | None, replace: bool, as_json: bool) -> None:
    """Bring the online store up to date with everything created since the last successful write."""
    from liber_features.features.online import store_errors
    from liber_features.features.repo import ITEM_TEXT_VIEW, open_store
    from liber_features.features.stats import ITEM_STATS_VIEW, USER_STATS_VIEW
    from liber_features.features.sync import check_sources, sync_view
    from liber_features.training.statistics import refresh_stats_tables

    try:
        use_ledger(ledger_url, ledger_schema)  # the option as given: the data dir's key (settings.data_dir_for)
        ledger_url = require_ledger(ledger_url)  # before Feast: a missing ledger is one line, at once
        store = open_store(repo)
        ledger = open_ledger(ledger_url, ledger_schema)
        with store_errors("reading the Feast registry"):
            # Another ledger's files are refused (or dropped: --replace) before anything is read.
            views = [v.name for v in store.list_feature_views(allow_cache=False)]
            check_sources(store, ledger, views, replace)
            if USER_STATS_VIEW in views or ITEM_STATS_VIEW in views:
                # Rebuilt from the ledger first: events a stream consumer committed since the last
                # ingest count too. Rows whose statistics did not change keep their created_at, so
                # the sync below writes only the entities that did change.
                refresh_stats_tables(ledger, repo)
            ready, skipped = _views_with_data(store)
        reports = [sync_view(store, ledger, view, rebuild=rebuild, since=late_since) for view in ready]
    except LiberError as exc:
        fail(exc, debug=False)
    stats = (USER_STATS_VIEW, ITEM_STATS_VIEW)
    per_item = (*stats, ITEM_TEXT_VIEW)
    summary: dict[str, Any] = {
        "ledger": ledger.safe_url(),
        "repo": str(repo),
        "project": store.project,
        "online_store": store.config.online_store.type,
        "rebuild": rebuild,
        "users_written": {r.view: r.users_written for r in reports if r.view not in per_item},
        # Statistics views count entities of their own kind (items too), not users.
        "stats_written": {r.view: r.users_written for r in reports if r.view in stats},
        "item_texts_written": sum(r.users_written for r in reports if r.view == ITEM_TEXT_VIEW),
        "synced_to": {r.view: r.mark.isoformat() if r.mark else None for r in reports},
        "previously_synced_to": {r.view: r.previous_mark.isoformat() if r.previous_mark else None
                                 for r in reports},
        "skipped_views_without_data": skipped,
    }
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
        return
    click.echo("materialized LIBER features")
    for key, value in summary.items():
        click.echo(f"  {key:<28} {value}")


COMMANDS = [materialize]
