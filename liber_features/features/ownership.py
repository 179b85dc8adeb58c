"""Which ledger a derived file came from, and the refusal to mix two ledgers in one data directory.

A Feast repo's data directory holds Parquet tables derived from one ledger (the long-term memory
table, the short-term cache history). A second ledger pointed at the same directory used to append
its caches to the first one's history and rewrite its tables, and both ledgers' users (whose ids
overlap: user 5 of one dataset is not user 5 of another) went online as one. So every file liber
writes there carries its ledger in the Parquet schema metadata (:func:`stamp`): ``liber.ledger_id``
(the ledger's identity, ``Ledger.ledger_id``) and ``liber.ledger`` (its redacted URL, for
messages). :func:`check` runs before a write and before a read: a file of another ledger — or one
without a stamp, written by release 0.1.0, whose ledger is unknown — ends the command with one
:class:`~liber_features.errors.LedgerMismatch` line naming both ledgers and the two ways out,
unless ``replace`` asks to drop those files first.

Metadata rather than a column: it costs one footer read (``pq.read_schema``) per file to check,
never a scan, and the tables' columns — the feature views' contract — stay as they were.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from liber_features.errors import InputError, LedgerMismatch
from liber_features.ledger.store import Ledger

__all__ = ["LEDGER_ID_KEY", "LEDGER_URL_KEY", "Owner", "check", "mismatch", "owner", "stamp"]

LEDGER_ID_KEY = b"liber.ledger_id"
LEDGER_URL_KEY = b"liber.ledger"


@dataclass(frozen=True)
class Owner:
    """The ledger a file says it came from; ``ledger_id`` None = no stamp (release 0.1.0)."""

    ledger_id: str | None
    url: str | None

    def describe(self) -> str:
        if self.ledger_id is None:
            return "a ledger of unknown identity (a file without a ledger stamp, e.g. from release 0.1.0)"
        return f"ledger {self.ledger_id[:8]} ({self.url or 'URL not recorded'})"


def stamp(table: pa.Table, ledger: Ledger) -> pa.Table:
    """``table`` with its ledger in the schema metadata (other metadata, e.g. pandas', kept)."""
    meta = dict(table.schema.metadata or {})
    meta[LEDGER_ID_KEY] = ledger.ledger_id.encode()
    meta[LEDGER_URL_KEY] = ledger.safe_url().encode()
    return table.replace_schema_metadata(meta)


def owner(path: str | Path) -> Owner | None:
    """The ledger stamped into the Parquet file at ``path``; None when there is no file."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path} is not a readable Parquet file: {exc}") from exc
    ident, url = meta.get(LEDGER_ID_KEY), meta.get(LEDGER_URL_KEY)
    return Owner(ident.decode() if ident else None, url.decode() if url else None)


def mismatch(data_dir: Path, name: str, found: Owner, ledger: Ledger) -> LedgerMismatch:
    """The one-line refusal: both ledgers, and the two ways out."""
    from liber_features.settings import ledger_key

    fresh = Path("data") / ledger_key(ledger.url, ledger.schema)
    return LedgerMismatch(
        f"{data_dir} holds {name} of {found.describe()}, not of {ledger.describe()}: nothing was "
        f"mixed; use a fresh data directory for this ledger (unset LIBER_DATA_DIR for its own "
        f"{fresh}, or set LIBER_DATA_DIR=<new dir>), or pass --replace to drop the other ledger's "
        f"files first")


def _files(data_dir: Path) -> list[Path]:
    """The Parquet tables in ``data_dir`` (temp files of a writer, ``.name...tmp``, excluded)."""
    if not data_dir.is_dir():
        return []
    return sorted(p for p in data_dir.glob("*.parquet") if p.is_file() and not p.name.startswith("."))


def check(data_dir: str | Path, ledger: Ledger, replace: bool = False) -> list[Path]:
    """Refuse a data directory holding another ledger's files; with ``replace`` delete them instead.

    Returns the files deleted (none unless ``replace``). Run before writing into ``data_dir`` and
    before reading from it; a missing directory is empty, so fine.
    """
    data_dir = Path(data_dir)
    foreign = []
    for path in _files(data_dir):
        found = owner(path)
        if found is not None and found.ledger_id != ledger.ledger_id:
            if not replace:
                raise mismatch(data_dir, path.name, found, ledger)
            foreign.append(path)
    for path in foreign:
        path.unlink(missing_ok=True)
    return foreign

