"""Online sync state in the ledger: what is known to be in the online store, and catching up.

Per (Feast project, feature view) the ledger keeps the newest source row — by ``created_at`` —
known to be online (table ``online_sync``). :func:`sync_view` writes online the newest row of every
entity with a source row created after it, then advances it, *only after* the write succeeded: a
run that fails (Redis down) leaves it where it was and the next run writes the same users again.
No time window to guess: an encode finished days ago is as pending as one finished a second ago.

Rows created up to :data:`SYNC_OVERLAP` before the mark are written again (idempotent): a batch
stamped just before another worker's, but committed after the table was built, and an encoder host
whose clock runs a little behind, must still reach the online store.

``rebuild`` ignores the mark and rewrites every entity: long-term rows from the offline table,
short-term caches from the ledger (the truth; the offline history may lag a failed push). It is
the recovery after the online store lost its data (Redis flushed or restarted empty).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select

from liber_features.errors import FeatureStoreError, LedgerMismatch
from liber_features.features.online import store_errors, write_online
from liber_features.features.ownership import check
from liber_features.features.repo import ITEM_TEXT_VIEW, LONG_TERM_VIEW, SHORT_TERM_VIEW, data_file
from liber_features.features.stats import ITEM_STATS_VIEW, USER_STATS_VIEW
from liber_features.ledger.store import Ledger, now_us, online_sync

if TYPE_CHECKING:
    from feast import FeatureStore

__all__ = ["SYNC_OVERLAP", "SyncReport", "check_sources", "source_path", "sync_long_term", "sync_view",
           "synced_mark", "write_users_online"]

SYNC_OVERLAP = timedelta(minutes=10)


@dataclass(frozen=True)
class SyncReport:
    view: str
    users_written: int
    previous_mark: datetime | None  # created_at known online before this run
    mark: datetime | None  # after it


def _dt(us: int | None) -> datetime | None:
    return None if us is None else datetime.fromtimestamp(us / 1e6, UTC)


def synced_mark(ledger: Ledger, project: str, view: str) -> int | None:
    """Microseconds of the newest source row known online, or None (nothing synced yet)."""
    with ledger.engine.connect() as conn:
        return conn.execute(select(online_sync.c.synced_created_us).where(
            online_sync.c.project == project, online_sync.c.view == view)).scalar()


def _advance(ledger: Ledger, project: str, view: str, mark: int, written: int) -> None:
    with ledger.begin() as conn:
        ledger.upsert(conn, online_sync, [{"project": project, "view": view,
                                           "synced_created_us": mark, "updated_us": now_us(),
                                           "rows_written": written}], ["project", "view"])


def source_path(store: FeatureStore, view_name: str) -> Path:
    """The local Parquet file behind a LIBER view's batch source."""
    from feast import FileSource

    view = store.get_feature_view(view_name, allow_registry_cache=False)
    src = view.batch_source
    if not isinstance(src, FileSource) or "://" in src.path:
        raise FeatureStoreError(f"{view_name}: the online sync reads local Parquet sources only")
    return Path(FileSource.get_uri_for_file_path(store.config.repo_path, src.path))


def check_sources(store: FeatureStore, ledger: Ledger, views: list[str], replace: bool = False) -> list[Path]:
    """:func:`ownership.check` the data directories the Feast registry reads ``views`` from (materialize, the
    training set): they must be this ledger's data directory, and hold only its files.

    A registry applied for another ledger reads that ledger's folder; ``--replace`` there would
    delete the other ledger's tables, so that case is refused with its own way out.
    """
    from liber_features.settings import get_settings

    # Per-ledger folders (LIBER_DATA_DIR unset) are told apart by name, ``ledger-<key>``: the repo
    # the registry was applied from may be named by another path than this command's --repo.
    # A LIBER_DATA_DIR the user chose is whatever the registry reads; its files are checked below.
    per_ledger = get_settings().data_dir is None
    mine = Path(data_file("_", repo_dir=store.config.repo_path)).parent
    removed: list[Path] = []
    for view in views:
        if view not in (LONG_TERM_VIEW, SHORT_TERM_VIEW, USER_STATS_VIEW, ITEM_STATS_VIEW, ITEM_TEXT_VIEW):
            continue  # not a table liber writes
        try:
            folder = source_path(store, view).parent
        except FeatureStoreError:  # not a local Parquet source: no folder of ours to check
            continue
        if per_ledger and folder.name != mine.name:
            raise LedgerMismatch(
                f"the Feast registry of project {store.project!r} reads {view} from {folder}, but "
                f"{ledger.describe()} keeps its tables in {mine}: run `feast apply` for this ledger "
                f"first (with LIBER_LEDGER_URL / LIBER_LEDGER_SCHEMA naming it), or give it a Feast "
                f"project of its own (LIBER_FEAST_PROJECT)")
        removed += check(folder, ledger, replace)
    return removed


def sync_view(store: FeatureStore, ledger: Ledger, view_name: str, *, rebuild: bool = False,
              since: datetime | None = None) -> SyncReport:
    """Write online every entity with source rows created after the ledger's mark (all with
    ``rebuild``; also those created since ``since``), then advance the mark."""
    with store_errors(f"reading {view_name}"):
        view = store.get_feature_view(view_name, allow_registry_cache=False)
        path = source_path(store, view_name)
    key, created = view.join_keys[0], view.batch_source.created_timestamp_column
    previous = synced_mark(ledger, store.project, view_name)
    light = pq.read_table(path, columns=[key, created])
    stamps = light[created].cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(
        zero_copy_only=False)
    mark = int(stamps.max()) if len(stamps) else previous
    since_us = None if rebuild or previous is None else previous - int(SYNC_OVERLAP / timedelta(microseconds=1))
    if since is not None and not rebuild:
        since_us = min(since_us, int(since.timestamp() * 1e6)) if since_us is not None else None
    if rebuild and view_name == SHORT_TERM_VIEW:
        from liber_features.features.caches import current_caches

        rows = current_caches(ledger)
    else:
        ids = light[key].to_numpy(zero_copy_only=False)
        touched = sorted(set(ids if since_us is None else ids[stamps > since_us]))
        rows = pq.read_table(path, filters=[(key, "in", touched)]).to_pandas() if touched else None
        if rows is not None:
            for col in rows.columns:  # pyarrow gives float32 lists as arrays already; keep dtype
                if rows[col].dtype == object and len(rows) and isinstance(rows[col].iloc[0], np.ndarray):
                    rows[col] = [np.asarray(v, dtype=np.float32) if v.dtype.kind == "f" else list(v)
                                 for v in rows[col]]
    written = write_online(store, view_name, rows) if rows is not None and len(rows) else 0
    if mark is not None and (previous is None or mark > previous or rebuild):
        _advance(ledger, store.project, view_name, mark, written)  # only after a successful write
    else:
        mark = previous
    return SyncReport(view_name, written, _dt(previous), _dt(mark))


def sync_long_term(store: FeatureStore, ledger: Ledger) -> SyncReport:
    """Rebuild the long-term table from the ledger where the registry reads it, then :func:`sync_view`
    it: what ``liber encode --follow`` runs after every committed batch, instead of a materialize."""
    from liber_features.features.memory import refresh_memory_table
    from liber_features.features.repo import LiberFeatureConfig

    shape = LiberFeatureConfig.from_env()
    with store_errors(f"reading {LONG_TERM_VIEW}"):
        path = source_path(store, LONG_TERM_VIEW)
    refresh_memory_table(ledger, path, memory_slots=shape.memory_slots, vector_dim=shape.vector_dim,
                         history_length=shape.history_length)
    return sync_view(store, ledger, LONG_TERM_VIEW)


def write_users_online(store: FeatureStore, ledger: Ledger, users: list[str]) -> int:
    """Write ``users``' long-term rows online now, built from the ledger for them alone (the rows the
    full table holds for them): what ``liber encode --follow`` does after each committed batch. The
    sync state is not advanced (the table is not rewritten): the next :func:`sync_long_term` writes
    them again, harmlessly, and covers them if this write failed."""
    from liber_features.features.memory import memory_table, to_frame
    from liber_features.features.repo import LiberFeatureConfig

    shape = LiberFeatureConfig.from_env()
    table = memory_table(ledger, memory_slots=shape.memory_slots, vector_dim=shape.vector_dim,
                         history_length=shape.history_length, users=users)
    return write_online(store, LONG_TERM_VIEW, to_frame(table)) if table.num_rows else 0
