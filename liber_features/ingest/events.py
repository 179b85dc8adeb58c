"""Event logs: layouts, loaders and time slices; each row checked by ``rows`` (field rules, quarantine).

Events frame (accepted rows, sorted by ``user_id, ts, event_id``, index 0..n-1)::

    event_id  str                  the input's ``event_id`` column, else derived (below)
    user_id   str                  ids are stripped strings; GroupLens ints → decimal strings
    item_id   str
    ts        datetime64[us, UTC]
    rating    float64              NaN when there is no rating/weight column or the cell is empty
    event_type object (str | None) view, purchase, …; None when untyped (see ``feedback``)
    label     float64              an explicit 1.0 / 0.0 label; NaN when none (see ``feedback``)
    row       int64                0-based data row in the source (header, blank lines not counted)

A derived ``event_id`` is the first 16 hex digits of
``sha1(f"{user_id}\\x1f{item_id}\\x1f{ts_microseconds}")``: the same user, the same item and the
same microsecond are the same event, whatever the rating, so a re-sent row is a duplicate. A
typed event appends ``\x1f{event_type}`` to that key: a view and a purchase of one item in one
second are two events. Untyped logs (GroupLens) keep their ids.

Quarantine frame (one row per rejected input row, in row order)::

    source str (file path) | row int64 | field str | reason str | raw str (the input row as JSON)

``field`` is the canonical name of the offending column (user_id, item_id, ts, rating,
event_id), or ``row`` when the line as a whole is bad. Checks run in this order and the first
failing one wins: the line could not be read (invalid bytes for the encoding, a NUL byte, the
wrong number of fields: see ``delimited``), user_id null/empty, user_id too long or holding a
control character, the same for item_id, timestamp empty or unparseable, timestamp before
``LoadConfig.earliest`` or in the future, rating not a number / not finite / out of range,
event_id empty / too long / control characters, event_type not in the configured set, label
not 0 or 1, item not in the catalog (only when a catalog is
known). Id rules (1–128 characters for users and items, 1–64 for event ids, no control
characters) live in ``fieldrules``; reason and raw are capped there too.

Event ids are global: an id names one event whoever's it is. Rows passing every check are
deduplicated by event_id, first occurrence in input order wins, and ``ingest`` drops ids the
ledger already holds (for any user); dropped rows are counted in ``LoadedEvents.duplicates``,
not quarantined. An input as a whole that is unusable (missing file, unknown layout,
unreadable, header undecodable, required column missing) raises ``InputError``.

Layouts (``detect_layout``): a directory holding ``ratings.csv`` (ml-latest, ml-latest-small),
``u.data`` (ml-100k) or ``ratings.dat`` (ml-1m) brings its own catalog (``movies.csv``,
``u.item``, ``movies.dat``; none if absent). A plain ``.csv``/``.parquet`` log has ``user_id``,
``item_id``, ``timestamp`` (alias ``ts``), optional ``rating`` (alias ``weight``), optional
``event_id``, optional ``event_type`` (alias ``event``) and optional ``label`` (``feedback``);
its ratings must lie in 0.5–5 (GroupLens' scale) unless ``LoadConfig`` gives a range.
Timestamps: numbers are epoch seconds (int or float); text is ISO-8601; naive times are UTC.
Valid times lie in [``LoadConfig.earliest`` (default 1970-01-01 UTC: no negative epochs), now +
``future_tolerance_s``]; an epoch in milliseconds lands far in the future and the
reason says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from liber_features.errors import InputError
from liber_features.ingest.catalog import load_catalog, read_catalog, read_parquet, require_columns
from liber_features.ingest.delimited import Delimited, read_delimited
from liber_features.ingest.quarantine import QUARANTINE_COLUMNS
from liber_features.ingest.rows import EVENT_COLUMNS, Columns, LoadConfig, check_rows

__all__ = [
    "EVENT_COLUMNS", "PLAIN_ALIASES", "QUARANTINE_COLUMNS", "LoadConfig", "LoadedEvents", "check_rows",
    "detect_layout", "iter_time_slices", "load_catalog", "load_events",
]  # fmt: skip

#: directory layout → (events file, catalog file); the events file identifies the layout.
_DIR_LAYOUTS = {
    "ml-latest": ("ratings.csv", "movies.csv"),
    "ml-100k": ("u.data", "u.item"),
    "ml-1m": ("ratings.dat", "movies.dat"),
}
#: layout → valid rating range. Plain logs get GroupLens' 0.5–5 scale: with no range at all a
#: rating of 11 was accepted and, at ≥ 4, became a positive label. ``--rating-range`` overrides.
_RATING_RANGES = {"ml-latest": (0.5, 5.0), "ml-100k": (1.0, 5.0), "ml-1m": (1.0, 5.0),
                  "csv": (0.5, 5.0), "parquet": (0.5, 5.0)}
#: canonical field → accepted source column names (first present wins) for plain logs.
PLAIN_ALIASES = {
    "user_id": ("user_id",), "item_id": ("item_id",), "ts": ("timestamp", "ts"),
    "rating": ("rating", "weight"), "event_id": ("event_id",), "event_type": ("event_type", "event"),
    "label": ("label",),
}  # fmt: skip


@dataclass
class LoadedEvents:
    """The outcome of ``load_events``; ``read == len(events) + duplicates + len(quarantine)``."""

    source: str
    layout: str  # 'ml-latest' | 'ml-100k' | 'ml-1m' | 'csv' | 'parquet'
    events: pd.DataFrame
    catalog: pd.DataFrame | None
    quarantine: pd.DataFrame
    read: int
    duplicates: int
    catalog_quarantine: pd.DataFrame | None = None  # rejected catalog rows (not counted in read)


def detect_layout(path: str | Path) -> str:
    """Return 'ml-latest', 'ml-100k', 'ml-1m', 'csv' or 'parquet' for a directory or file."""
    path = Path(path)
    if path.is_dir():
        for layout, (events_file, _) in _DIR_LAYOUTS.items():
            if (path / events_file).is_file():
                return layout
        expected = ", ".join(events for events, _ in _DIR_LAYOUTS.values())
        raise InputError(f"{path}: unknown directory layout (expected one of {expected})")
    if not path.is_file():
        raise InputError(f"{path}: no such file or directory")
    if path.name == "u.data":
        return "ml-100k"
    if path.suffix == ".dat":
        return "ml-1m"
    if path.suffix == ".parquet":
        return "parquet"
    if path.suffix == ".csv":
        header = read_delimited(path, nrows=0).frame.columns
        return "ml-latest" if {"userId", "movieId"} <= set(header) else "csv"
    raise InputError(f"{path}: unknown event file format (expected a directory, .csv or .parquet)")


def load_events(
    events_path: str | Path,
    catalog_path: str | Path | None = None,
    config: LoadConfig | None = None,
) -> LoadedEvents:
    """Load, validate and deduplicate an event log (see the module docstring for the frames).

    ``catalog_path`` overrides the catalog a GroupLens directory brings; with a catalog, events
    of unknown items are quarantined.
    """
    config = config or LoadConfig()
    path = Path(events_path)
    layout = detect_layout(path)
    if path.is_dir():
        events_file, catalog_file = _DIR_LAYOUTS[layout]
        if catalog_path is None and (path / catalog_file).is_file():
            catalog_path = path / catalog_file
        path = path / events_file
    catalog, catalog_quarantine = read_catalog(catalog_path) if catalog_path is not None \
        else (None, None)
    raw, columns, rating_null, read = _read_events(path, layout)
    catalog_items = catalog["item_id"] if catalog is not None else None
    accepted, checks = check_rows(raw, columns, _RATING_RANGES[layout], config, catalog_items,
                                  rating_null=rating_null, read=read)
    repeated = accepted["event_id"].duplicated(keep="first")  # index is input order
    events = accepted[~repeated].sort_values(["user_id", "ts", "event_id"], kind="stable")
    return LoadedEvents(
        source=str(path),
        layout=layout,
        events=events.reset_index(drop=True),
        catalog=catalog,
        quarantine=checks.frame(raw, str(path)),
        read=len(raw),
        duplicates=int(repeated.sum()),
        catalog_quarantine=catalog_quarantine,
    )


def iter_time_slices(events: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    """Split an events frame into ``n`` consecutive time slices of about equal row counts.

    Boundaries are ts quantiles (row-count based, not equal-width time ranges: real logs are
    bursty and equal widths leave most slices empty). All events sharing a timestamp land in the
    same slice, so every ts in slice i is earlier than every ts in slice i+1; heavy ties can
    therefore leave a slice smaller or empty. Always returns exactly ``n`` frames, each in the
    canonical (user_id, ts, event_id) order with a fresh index; together they hold every row once.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ts = events["ts"].dt.tz_convert(None).to_numpy()  # datetime64, not an array of Timestamps
    # Slice i starts at the ts of row i*N//n in time order; ties at a cut go to the later slice.
    cuts = np.sort(ts)[[(i * len(ts)) // n for i in range(1, n)]] if len(ts) else ts[:0]
    slice_of = np.searchsorted(cuts, ts, side="right")
    canonical = events.sort_values(["user_id", "ts", "event_id"], kind="stable")
    labels = pd.Series(slice_of, index=events.index).loc[canonical.index].to_numpy()
    return [canonical[labels == i].reset_index(drop=True) for i in range(n)]


def _read_events(path: Path, layout: str
                 ) -> tuple[pd.DataFrame, Columns, pd.Series | None, Delimited | None]:  # fmt: skip
    """Return (raw frame indexed by data row, canonical field → source column, rating null mask,
    the text reader's outcome with its problem rows; None for parquet).

    The null mask is only known for parquet, where null (missing) and NaN (invalid) differ.
    """
    read: Delimited | None = None
    if layout == "ml-latest":
        read = read_delimited(path)
        raw = read.frame
        columns: Columns = {"user_id": "userId", "item_id": "movieId", "ts": "timestamp",
                             "rating": "rating", "event_id": None}  # fmt: skip
    elif layout in ("ml-100k", "ml-1m"):
        names = (["user_id", "item_id", "rating", "timestamp"] if layout == "ml-100k"
                 else ["UserID", "MovieID", "Rating", "Timestamp"])  # fmt: skip
        read = read_delimited(path, sep="\t" if layout == "ml-100k" else "::", names=names,
                              encoding="latin-1", quoted=False)  # fmt: skip
        raw = read.frame
        columns = {**dict(zip(("user_id", "item_id", "rating", "ts"), names, strict=True)),
                   "event_id": None}  # fmt: skip
    else:
        table = read_parquet(path) if layout == "parquet" else None
        read = None if table is not None else read_delimited(path)
        raw = table.to_pandas() if table is not None else read.frame
        columns = {field: next((c for c in names if c in raw.columns), None)
                   for field, names in PLAIN_ALIASES.items()}  # fmt: skip
        for field in ("user_id", "item_id", "ts"):
            if columns[field] is None:
                require_columns(raw, path, [PLAIN_ALIASES[field][0]])
        if table is not None and columns["rating"] is not None:
            null = pc.is_null(table.column(columns["rating"])).to_numpy(zero_copy_only=False)
            return raw, columns, pd.Series(null, index=raw.index), None
    require_columns(raw, path, [c for c in columns.values() if c is not None])
    return raw, columns, None, read
