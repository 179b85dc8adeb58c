"""The field rules on a raw event frame: each row accepted or quarantined with its field and reason.

One definition for file ingest (``events.load_events``) and the stream's messages
(``stream/messages.py``), so a message and a file row pass or fail the same way. The rules, their
order (the first failing check wins) and the derived event ids are described in ``events``.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from liber_features.ingest.catalog import id_text
from liber_features.ingest.delimited import Delimited
from liber_features.ingest.feedback import EVENT_TYPE_CHARS, EVENT_TYPES, event_types, labels
from liber_features.ingest.quarantine import RowChecks
from liber_features.ledger.fieldrules import ID_MAX_CHARS, id_problems

__all__ = ["EVENT_COLUMNS", "Columns", "LoadConfig", "check_rows"]

EVENT_COLUMNS = ("event_id", "user_id", "item_id", "ts", "rating", "event_type", "label", "row")
_NAN_WORDS = ("nan", "+nan", "-nan")
Columns = dict[str, str | None]  # canonical field → source column (None: the input has none)


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


def _utc(when: datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(when)
    return stamp.tz_localize("UTC") if stamp.tz is None else stamp.tz_convert("UTC")


def _check_id(checks: RowChecks, ids: pd.Series, field: str) -> None:
    """The id rule of ``fieldrules`` (length, control characters) on non-empty ids."""
    too_long, bad_chars = id_problems(ids, field)
    checks.fail(too_long, field, f"{field} of {{}} characters is longer than {ID_MAX_CHARS[field]}",
                ids.str.len())  # fmt: skip
    checks.fail(bad_chars, field, f"{field} '{{}}' contains a control character", ids)


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


def _column(raw: pd.DataFrame, columns: Columns, field: str) -> pd.Series | None:
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
