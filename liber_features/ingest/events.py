"""Event logs: layouts, loaders, row validation with quarantine, and time slices.

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

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from liber_features.errors import InputError
from liber_features.ingest.catalog import id_text, load_catalog, read_catalog, read_parquet, require_columns
from liber_features.ingest.delimited import Delimited, read_delimited
from liber_features.ingest.feedback import EVENT_TYPE_CHARS, EVENT_TYPES, event_types, labels
from liber_features.ingest.quarantine import QUARANTINE_COLUMNS, RowChecks
from liber_features.ledger.fieldrules import ID_MAX_CHARS, id_problems

__all__ = [
    "EVENT_COLUMNS", "PLAIN_ALIASES", "QUARANTINE_COLUMNS", "LoadConfig", "LoadedEvents", "check_rows",
    "detect_layout", "iter_time_slices", "load_catalog", "load_events",
]  # fmt: skip

EVENT_COLUMNS = ("event_id", "user_id", "item_id", "ts", "rating", "event_type", "label", "row")

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
_NAN_WORDS = ("nan", "+nan", "-nan")
_Columns = dict[str, str | None]  # canonical field → source column (None: the input has none)


class LoadConfig(BaseModel):
    """How ``load_events`` validates rows."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    rating_min: float | None = None
    """Lowest valid rating; None = the layout's (ml-latest and plain CSV/Parquet 0.5, ml-100k/ml-1m 1)."""
    rating_max: float | None = None
    """Highest valid rating; None = the layout's (5 for every layout)."""
    future_tolerance_s: float = 300.0
    """Timestamps later than now + this many seconds are quarantined (clock skew allowance)."""
    now: datetime | None = None
    """Injectable clock for tests; naive means UTC. None reads the system clock at load time."""
    earliest: datetime = datetime(1970, 1, 1, tzinfo=UTC)
    """Timestamps before this are quarantined; naive means UTC. The default refuses negative
    epochs (a 1969 date is almost always a sign error or a missing value written as -1)."""
    event_types: tuple[str, ...] = EVENT_TYPES
    """The valid values of an ``event_type`` column (lower case); other values are quarantined."""

    @field_validator("event_types")
    @classmethod
    def _types_fit_the_ledger(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Compared lower-case; stored in events.event_type, VARCHAR(32) (PostgreSQL enforces it).
        bad = [t for t in value if not t or t != t.strip().lower() or len(t) > EVENT_TYPE_CHARS]
        if bad or not value:
            raise ValueError(f"event types must be 1-{EVENT_TYPE_CHARS} lower-case characters, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _range_is_ordered(self) -> LoadConfig:
        low, high = self.rating_min, self.rating_max
        if low is not None and high is not None and low > high:
            raise ValueError(f"rating_min {low} > rating_max {high}")
        return self


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



def check_rows(raw: pd.DataFrame, columns: dict[str, str | None], rating_range: tuple[float, float],
               config: LoadConfig, catalog_items: pd.Series | None = None, *,
               rating_null: pd.Series | None = None, read: Delimited | None = None,
               ) -> tuple[pd.DataFrame, RowChecks]:
    """The field rules (module docstring) on a raw frame: (accepted rows in input order, checks).

    ``raw`` is indexed by the row position its quarantine entries name; ``columns`` maps the
    canonical fields to its columns (None: absent). ``rating_range`` is the layout's, which the
    config's bounds override. The accepted frame has ``EVENT_COLUMNS`` and is *not* deduplicated:
    file ingest keeps each id's first row, the stream consumer does the same per batch. Shared by
    ``load_events`` and the stream's messages (``stream/messages.py``), so a message and a file
    row pass or fail the same way.
    """
    checks = RowChecks(raw.index)
    if read is not None:
        checks.fail_rows(read.problems, {src: field for field, src in columns.items() if src})
    user = id_text(raw[columns["user_id"]])
    item = id_text(raw[columns["item_id"]])
    checks.fail(user == "", "user_id", "user_id is null")
    _check_id(checks, user, "user_id")
    checks.fail(item == "", "item_id", "item_id is null")
    _check_id(checks, item, "item_id")

    ts_raw = raw[columns["ts"]]
    ts, ts_empty = _parse_ts(ts_raw)
    checks.fail(ts_empty, "ts", "timestamp is empty")
    checks.fail(ts.isna(), "ts", "timestamp '{}' is neither epoch seconds nor ISO-8601", ts_raw)
    earliest = _utc(config.earliest)
    checks.fail(ts < earliest, "ts", f"timestamp '{{}}' is before the earliest allowed time "
                f"{earliest.isoformat()}", ts_raw)  # fmt: skip
    latest = _utc(config.now or datetime.now(UTC)) + pd.Timedelta(seconds=config.future_tolerance_s)
    # An epoch in milliseconds reads as a time thousands of years ahead: say so.
    millis = (ts > latest) & (ts > pd.Timestamp("3000-01-01", tz="UTC"))
    checks.fail(millis, "ts", "timestamp '{}' is in the future (milliseconds? epoch seconds "
                "are expected)", ts_raw)  # fmt: skip
    checks.fail(ts > latest, "ts", "timestamp '{}' is in the future", ts_raw)

    rating = pd.Series(np.nan, index=raw.index, dtype="float64")
    if columns["rating"] is not None:
        rating_raw = raw[columns["rating"]]
        rating, missing, is_number = _parse_rating(rating_raw, rating_null)
        checks.fail(~missing & ~is_number, "rating", "rating '{}' is not a number", rating_raw)
        infinite = ~missing & ~np.isfinite(rating)
        checks.fail(infinite, "rating", "rating '{}' is not finite", rating_raw)
        low, high = rating_range
        low = config.rating_min if config.rating_min is not None else low
        high = config.rating_max if config.rating_max is not None else high
        outside = (rating < low) | (rating > high)
        checks.fail(outside, "rating", f"rating {{!r}} outside [{low!r}, {high!r}]", rating)

    given = id_text(raw[columns["event_id"]]) if columns["event_id"] is not None else None
    if given is not None:
        checks.fail(given == "", "event_id", "event_id is empty")
        _check_id(checks, given, "event_id")
    kind = event_types(checks, _column(raw, columns, "event_type"), config.event_types)
    label = labels(checks, _column(raw, columns, "label"))
    if catalog_items is not None:
        checks.fail(~item.isin(catalog_items), "item_id", "item '{}' not in catalog", item)

    ok = checks.reason.isna()
    return pd.DataFrame({
        "event_id": given[ok] if given is not None else _derive_ids(user[ok], item[ok], ts[ok], kind[ok]),
        "user_id": user[ok], "item_id": item[ok], "ts": ts[ok], "rating": rating[ok],
        "event_type": kind[ok], "label": label[ok], "row": raw.index[ok].astype("int64"),
    }), checks  # fmt: skip


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


def _utc(when: datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(when)
    return stamp.tz_localize("UTC") if stamp.tz is None else stamp.tz_convert("UTC")


def _check_id(checks: RowChecks, ids: pd.Series, field: str) -> None:
    """The id rule of ``fieldrules`` (length, control characters) on non-empty ids."""
    too_long, bad_chars = id_problems(ids, field)
    checks.fail(too_long, field, f"{field} of {{}} characters is longer than {ID_MAX_CHARS[field]}",
                ids.str.len())  # fmt: skip
    checks.fail(bad_chars, field, f"{field} '{{}}' contains a control character", ids)


def _read_events(path: Path, layout: str
                 ) -> tuple[pd.DataFrame, _Columns, pd.Series | None, Delimited | None]:  # fmt: skip
    """Return (raw frame indexed by data row, canonical field → source column, rating null mask,
    the text reader's outcome with its problem rows; None for parquet).

    The null mask is only known for parquet, where null (missing) and NaN (invalid) differ.
    """
    read: Delimited | None = None
    if layout == "ml-latest":
        read = read_delimited(path)
        raw = read.frame
        columns: _Columns = {"user_id": "userId", "item_id": "movieId", "ts": "timestamp",
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


def _parse_ts(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Return (ts as datetime64[us, UTC] with NaT where unparseable, mask of empty cells)."""
    if pd.api.types.is_datetime64_any_dtype(values):
        utc = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
        return utc.dt.as_unit("us"), values.isna()
    if _is_number_dtype(values):
        text, seconds, empty = None, values.astype("float64"), values.isna()
    else:
        text = id_text(values)
        empty = text == ""
        seconds = pd.to_numeric(text, errors="coerce")
    # Epoch seconds → whole microseconds; magnitudes past ±2**62 µs cannot be represented.
    micros = (seconds * 1e6).round()
    epoch = np.isfinite(micros) & (micros.abs() < 2.0**62)
    ts = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us, UTC]")
    ts[epoch] = pd.Series(micros[epoch].astype("int64").to_numpy().astype("datetime64[us]"),
                          index=micros.index[epoch]).dt.tz_localize("UTC")  # fmt: skip
    if text is not None:
        iso = ~epoch & ~empty & seconds.isna()
        if iso.any():
            parsed = pd.to_datetime(text[iso], format="ISO8601", utc=True, errors="coerce")
            ts[iso] = parsed.dt.as_unit("us")
    return ts, empty


def _parse_rating(values: pd.Series, null: pd.Series | None) -> tuple[pd.Series, ...]:
    """Return (rating float64, missing mask, is-a-number mask); missing ratings stay NaN."""
    if _is_number_dtype(values):
        rating = values.astype("float64")
        missing = null if null is not None else pd.Series(False, index=values.index)
        return rating, missing, pd.Series(True, index=values.index)
    text = id_text(values)
    rating = pd.to_numeric(text, errors="coerce").astype("float64")
    # 'nan' parses to NaN like 'abc' does, but it is a number that is not finite.
    is_number = rating.notna() | text.str.lower().isin(_NAN_WORDS)
    return rating, text == "", is_number


def _is_number_dtype(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _column(raw: pd.DataFrame, columns: _Columns, field: str) -> pd.Series | None:
    """The source column of an optional field (None when the layout or the file has none)."""
    name = columns.get(field)
    return raw[name] if name is not None else None


def _derive_ids(user: pd.Series, item: pd.Series, ts: pd.Series, kind: pd.Series) -> pd.Series:
    micros = ts.dt.tz_convert(None).to_numpy().astype("datetime64[us]").astype("int64")
    keys = user + "\x1f" + item + "\x1f" + pd.Series(micros, index=ts.index).astype(str)
    typed = kind.notna()
    keys[typed] = keys[typed] + "\x1f" + kind[typed].astype(str)
    # sha1 has no vectorised form in pandas/arrow; this comprehension is the one per-row step.
    return pd.Series([hashlib.sha1(k.encode()).hexdigest()[:16] for k in keys], index=keys.index,
                     dtype=object)  # fmt: skip
