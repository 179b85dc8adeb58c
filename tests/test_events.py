"""liber_features.ingest.events: layouts, catalogs, row validation, quarantine, dedupe, time slices."""

from __future__ import annotations

import atexit
import csv
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ml_latest_small
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from liber_features.errors import InputError
from liber_features.ingest import events as events_mod
from liber_features.ingest.events import (
    LoadConfig,
    LoadedEvents,
    detect_layout,
    iter_time_slices,
    load_catalog,
    load_events,
)


def _lay_out_fixtures() -> Path:
    """The layout fixtures under their GroupLens names (ratings.csv, u.data, ...) in a temp dir.

    They are stored with a ``.fixture`` suffix so the repository never tracks files named like
    the real datasets; the loaders detect layouts by those names, so tests read this copy.
    """
    stored = Path(__file__).parent / "fixtures" / "events"
    root = Path(tempfile.mkdtemp(prefix="liber-layouts-"))
    for src in stored.rglob("*.fixture"):
        dst = root / src.relative_to(stored).with_suffix("")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    atexit.register(shutil.rmtree, root, True)
    return root


FIXTURES = _lay_out_fixtures()
NOW = datetime(2025, 1, 1, tzinfo=UTC)
CONFIG = LoadConfig(now=NOW)
EVENT_DTYPES = {"event_id": "object", "user_id": "object", "item_id": "object",
                "ts": "datetime64[us, UTC]", "rating": "float64", "event_type": "object", "label": "float64",
                "row": "int64"}  # fmt: skip
QUARANTINE_DTYPES = {"source": "object", "row": "int64", "field": "object", "reason": "object",
                     "raw": "object"}  # fmt: skip


def derived_id(user: str, item: str, ts: str) -> str:
    micros = (pd.Timestamp(ts) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)
    return hashlib.sha1(f"{user}\x1f{item}\x1f{micros}".encode()).hexdigest()[:16]


def check_contract(loaded: LoadedEvents) -> None:
    """What every other module relies on, for any input."""
    assert loaded.read == len(loaded.events) + loaded.duplicates + len(loaded.quarantine)
    assert loaded.events.dtypes.astype(str).to_dict() == EVENT_DTYPES
    assert loaded.quarantine.dtypes.astype(str).to_dict() == QUARANTINE_DTYPES
    ev = loaded.events
    assert ev.index.equals(pd.RangeIndex(len(ev)))
    assert ev.equals(ev.sort_values(["user_id", "ts", "event_id"]).reset_index(drop=True))
    assert ev["event_id"].is_unique
    for col in ("event_id", "user_id", "item_id"):
        assert all(isinstance(v, str) and v for v in ev[col])
    # Accepted and quarantined rows are disjoint and in range.
    rows = set(ev["row"]) | set(loaded.quarantine["row"])
    assert len(rows) == len(ev) + len(loaded.quarantine)
    assert all(0 <= r < loaded.read for r in rows)
    if loaded.catalog is not None:
        assert list(loaded.catalog.columns) == ["item_id", "title", "categories"]
        assert loaded.catalog["item_id"].is_unique
        assert set(ev["item_id"]) <= set(loaded.catalog["item_id"])


def reasons(loaded: LoadedEvents) -> list[tuple[int, str, str]]:
    return list(loaded.quarantine[["row", "field", "reason"]].itertuples(index=False, name=None))


# --- layouts -----------------------------------------------------------------------------------


def test_ml_latest_layout() -> None:
    loaded = load_events(FIXTURES / "ml-latest", config=CONFIG)
    check_contract(loaded)
    assert loaded.layout == "ml-latest"
    assert loaded.source == str(FIXTURES / "ml-latest" / "ratings.csv")
    assert (loaded.read, len(loaded.events), loaded.duplicates) == (22, 8, 2)
    assert reasons(loaded) == [
        (5, "user_id", "user_id is null"),
        (6, "item_id", "item_id is null"),
        (7, "ts", "timestamp is empty"),
        (8, "ts", "timestamp 'yesterday' is neither epoch seconds nor ISO-8601"),
        (9, "ts", "timestamp '4102444800' is in the future"),
        (10, "rating", "rating 'abc' is not a number"),
        (11, "rating", "rating 'inf' is not finite"),
        (12, "rating", "rating 7.0 outside [0.5, 5.0]"),
        (13, "item_id", "item '999' not in catalog"),
        (18, "user_id", "user_id is null"),  # every check fails: the first one wins
        (19, "rating", "rating 'NaN' is not finite"),
        (20, "rating", "rating 0.0 outside [0.5, 5.0]"),
    ]
    q = loaded.quarantine
    assert set(q["source"]) == {str(FIXTURES / "ml-latest" / "ratings.csv")}
    assert json.loads(q["raw"][3]) == {"userId": "3", "movieId": "1", "rating": "3.0",
                                       "timestamp": "yesterday"}  # fmt: skip
    ev = loaded.events.set_index("row")
    # Rows 14 and 15 repeat row 0's (user, item, second): the first occurrence wins.
    assert ev.loc[0, "rating"] == 4.0 and 14 not in ev.index and 15 not in ev.index
    assert ev.loc[0, "ts"] == pd.Timestamp(964982703, unit="s", tz="UTC")
    assert ev.loc[0, "event_id"] == derived_id("1", "1", "2000-07-30 18:45:03+00:00")
    assert np.isnan(ev.loc[16, "rating"])  # an empty rating cell is accepted as NaN
    assert ev.loc[17, "user_id"] == "4"  # ids are stripped
    assert ev.loc[21, "item_id"] == "3"  # the blank line before it is not a data row
    cat = loaded.catalog.set_index("item_id")
    assert cat.loc["50", "title"] == "Usual Suspects, The (1995)"
    assert cat.loc["7", "categories"] == ""  # '(no genres listed)'
    assert cat.loc["1", "title"] == "Toy Story (1995)"  # duplicate catalog rows: first wins


def test_ml_100k_layout_latin1_and_genre_flags() -> None:
    loaded = load_events(FIXTURES / "ml-100k", config=CONFIG)
    check_contract(loaded)
    assert loaded.layout == "ml-100k"
    assert (loaded.read, len(loaded.events), loaded.duplicates) == (12, 5, 1)
    assert reasons(loaded) == [
        (5, "rating", "rating 0.0 outside [1.0, 5.0]"),
        (6, "item_id", "item '1683' not in catalog"),
        (7, "user_id", "user_id is null"),
        (8, "ts", "timestamp '4102444800' is in the future"),
        (10, "rating", "rating 0.5 outside [1.0, 5.0]"),
        (11, "row", "expected 4 fields, found 2"),  # a line with too few fields
    ]
    cat = loaded.catalog.set_index("item_id")
    assert cat.loc["51", "title"] == "Café au lait (Métisse) (1993)"
    assert cat.loc["51", "categories"] == "Comedy|Drama"
    assert cat.loc["302", "categories"] == "Crime|Film-Noir|Mystery|Thriller"
    assert cat.loc["377", "categories"] == "Children's|Comedy"
    assert cat.loc["267", "categories"] == ""  # the 'unknown' genre is no category


def test_ml_100k_catalog_without_u_genre_uses_standard_names(tmp_path: Path) -> None:
    (tmp_path / "u.item").write_bytes((FIXTURES / "ml-100k" / "u.item").read_bytes())
    assert load_catalog(tmp_path / "u.item").equals(load_catalog(FIXTURES / "ml-100k" / "u.item"))


def test_plain_parquet_catalog_and_catalog_directories(tmp_path: Path) -> None:
    pq.write_table(pa.table({
        "item_id": pa.array([10, 11, None, 10], pa.int64()),
        "title": ["Ten", None, "nobody", "Ten again"],
        "categories": [["x", "y"], [], ["z"], None],
    }), tmp_path / "items.parquet")  # fmt: skip
    cat = load_catalog(tmp_path / "items.parquet")
    assert cat.to_dict("list") == {"item_id": ["10", "11"], "title": ["Ten", ""],
                                   "categories": ["x|y", ""]}  # fmt: skip
    assert load_catalog(FIXTURES / "ml-1m").equals(load_catalog(FIXTURES / "ml-1m" / "movies.dat"))
    with pytest.raises(InputError, match="no catalog file"):
        load_catalog(tmp_path)


def test_ml_1m_layout() -> None:
    loaded = load_events(FIXTURES / "ml-1m", config=CONFIG)
    check_contract(loaded)
    assert loaded.layout == "ml-1m"
    assert (loaded.read, len(loaded.events), loaded.duplicates) == (10, 5, 1)
    assert reasons(loaded) == [
        (5, "rating", "rating 'abc' is not a number"),
        (6, "item_id", "item '9999' not in catalog"),
        (7, "rating", "rating 6.0 outside [1.0, 5.0]"),
        (8, "user_id", "user_id is null"),
    ]
    assert json.loads(loaded.quarantine["raw"][0])["Rating"] == "abc"
    cat = loaded.catalog.set_index("item_id")
    assert cat.loc["914", "title"].startswith("Dr. Strangelove or: How I")  # ':' is not '::'
    assert cat.loc["3", "title"] == 'Café "Noir" (1995)'  # latin-1, quotes kept verbatim
    assert cat.loc["661", "categories"] == "Animation|Children's|Musical"


def test_plain_csv_with_aliases_event_ids_and_catalog() -> None:
    loaded = load_events(FIXTURES / "plain" / "events.csv", FIXTURES / "plain" / "catalog.csv", CONFIG)
    check_contract(loaded)
    assert loaded.layout == "csv"
    assert (loaded.read, len(loaded.events), loaded.duplicates) == (10, 4, 1)
    assert reasons(loaded) == [
        (3, "rating", "rating -1.0 outside [0.5, 5.0]"),  # plain logs: GroupLens' range by default
        (4, "event_id", "event_id is empty"),
        (6, "item_id", "item 'i9' not in catalog"),
        (7, "ts", "timestamp '2024-13-45T00:00:00' is neither epoch seconds nor ISO-8601"),
        (8, "ts", "timestamp '2099-01-01' is in the future"),
    ]
    ev = loaded.events.set_index("event_id")
    assert list(loaded.events["event_id"]) == ["e2", "e1", "e3", "e8"]
    assert ev.loc["e1", "row"] == 0 and ev.loc["e1", "user_id"] == "u1"  # row 5 reused 'e1'
    assert ev.loc["e1", "ts"] == pd.Timestamp("2024-03-01T10:00:00Z")  # naive → UTC
    assert ev.loc["e2", "ts"] == pd.Timestamp("2024-03-01T08:00:00Z")  # offset → UTC
    assert np.isnan(ev.loc["e8", "rating"])
    assert loaded.catalog.set_index("item_id").loc["i2", "title"] == "Second, item"
    wide = load_events(FIXTURES / "plain" / "events.csv", FIXTURES / "plain" / "catalog.csv",
                       LoadConfig(now=NOW, rating_min=-1)).events.set_index("event_id")
    assert wide.loc["e4", "ts"] == pd.Timestamp("2024-03-01T10:00:00.25Z")  # float epoch
    assert wide.loc["e4", "rating"] == -1.0  # a configured range replaces the default one


def test_configured_rating_range_applies_to_plain_logs() -> None:
    loaded = load_events(FIXTURES / "plain" / "events.csv", config=LoadConfig(now=NOW, rating_min=0))
    check_contract(loaded)
    assert (3, "rating", "rating -1.0 outside [0.0, 5.0]") in reasons(loaded)
    assert loaded.catalog is None  # no catalog: unknown items are not a failure
    assert "e5" in set(loaded.events["event_id"])


def test_derived_event_ids_are_stable() -> None:
    first = load_events(FIXTURES / "plain" / "no_ids.csv", config=CONFIG)
    second = load_events(FIXTURES / "plain" / "no_ids.csv", config=CONFIG)
    pd.testing.assert_frame_equal(first.events, second.events)
    assert list(first.events["event_id"]) == [
        derived_id("42", "7", "2024-03-01T10:00:00Z"), derived_id("42", "8", "2024-03-01T10:00:00.5Z")]
    assert first.duplicates == 1  # same user, item and microsecond, other rating: same event
    assert list(first.events["rating"]) == [4.0, 3.0]


@pytest.fixture
def parquet_log(tmp_path: Path) -> Path:
    """Int user ids with a null, naive timestamps, and a rating with both null and NaN."""
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({
        "user_id": pa.array([1, 2, 3, None, 5], pa.int64()),
        "item_id": ["a", "b", "c", "d", " "],
        "ts": pa.array([datetime(2024, 1, day) for day in range(1, 6)], pa.timestamp("us")),
        "rating": pa.array([1.0, None, float("nan"), 2.0, 3.0], pa.float64()),
    }), path)  # fmt: skip
    return path


def test_parquet_layout_null_vs_nan(parquet_log: Path) -> None:
    assert detect_layout(parquet_log) == "parquet"
    loaded = load_events(parquet_log, config=CONFIG)
    check_contract(loaded)
    assert reasons(loaded) == [
        (2, "rating", "rating 'nan' is not finite"),
        (3, "user_id", "user_id is null"),
        (4, "item_id", "item_id is null"),
    ]
    ev = loaded.events
    assert list(ev["user_id"]) == ["1", "2"]  # int ids → decimal strings
    assert ev["ts"][0] == pd.Timestamp("2024-01-01", tz="UTC")
    assert np.isnan(ev["rating"][1])  # null → missing, accepted
    raw = json.loads(loaded.quarantine["raw"][1])
    assert raw["user_id"] is None and raw["ts"].startswith("2024-01-04T00:00:00")


# --- whole-input errors ------------------------------------------------------------------------


def test_missing_path_raises_input_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(InputError, match="nope.csv: no such file"):
        load_events(missing)
    with pytest.raises(InputError, match="no such catalog file"):
        load_catalog(tmp_path / "movies.csv")


def test_unknown_directory_layout(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(InputError, match="unknown directory layout.*ratings.csv, u.data, ratings.dat"):
        detect_layout(tmp_path)


def test_missing_column_is_named() -> None:
    path = FIXTURES / "plain" / "no_item.csv"
    with pytest.raises(InputError, match=r"no_item.csv: required column 'item_id' is missing"):
        load_events(path)


def test_missing_grouplens_and_catalog_columns_are_named(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text("userId,movieId,timestamp\n1,2,3\n")
    with pytest.raises(InputError, match="ratings.csv: required column 'rating' is missing"):
        load_events(tmp_path)
    (tmp_path / "cat.csv").write_text("item_id,name\n1,x\n")
    with pytest.raises(InputError, match="cat.csv: required column 'title' is missing"):
        load_catalog(tmp_path / "cat.csv")


def test_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="cannot read .*bad.parquet"):
        load_events(tmp_path / "bad.parquet")
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(InputError, match="cannot read .*empty.csv"):
        load_events(tmp_path / "empty.csv")
    (tmp_path / "log.json").write_text("{}")
    with pytest.raises(InputError, match="unknown event file format"):
        load_events(tmp_path / "log.json")


def test_header_only_file_loads_empty(tmp_path: Path) -> None:
    (tmp_path / "log.csv").write_text("user_id,item_id,timestamp\n")
    loaded = load_events(tmp_path / "log.csv")
    check_contract(loaded)
    assert (loaded.read, len(loaded.events), len(loaded.quarantine)) == (0, 0, 0)


def test_load_config_is_strict() -> None:
    with pytest.raises(ValidationError):
        LoadConfig(rating_minimum=1)  # a typo is an error, not a silently ignored field
    with pytest.raises(ValidationError, match="rating_min 5.0 > rating_max 1.0"):
        LoadConfig(rating_min=5, rating_max=1)


def test_future_tolerance_and_naive_now() -> None:
    path = FIXTURES / "plain" / "no_ids.csv"  # latest ts 2024-03-01T10:00:00.5Z
    just_before = datetime(2024, 3, 1, 9, 56)  # naive = UTC; 5 min tolerance still admits it
    assert len(load_events(path, config=LoadConfig(now=just_before)).quarantine) == 0
    strict = LoadConfig(now=just_before, future_tolerance_s=0)
    assert {r for _, _, r in reasons(load_events(path, config=strict))} == {
        "timestamp '1709287200' is in the future", "timestamp '1709287200.5' is in the future"}


# --- time slices -------------------------------------------------------------------------------


def test_iter_time_slices_are_consecutive_and_keep_ties() -> None:
    ev = load_events(FIXTURES / "ml-latest", config=CONFIG).events
    slices = iter_time_slices(ev, 3)
    assert len(slices) == 3
    pd.testing.assert_frame_equal(
        pd.concat(slices).sort_values("row").reset_index(drop=True),
        ev.sort_values("row").reset_index(drop=True))  # fmt: skip
    for before, after in zip(slices, slices[1:]):
        if len(before) and len(after):
            assert before["ts"].max() < after["ts"].min()
    for part in slices:
        assert part.equals(part.sort_values(["user_id", "ts", "event_id"]).reset_index(drop=True))
    # Three events share 2000-07-30 18:45:03: they can never be split across slices.
    assert [len(s) for s in iter_time_slices(ev, 8)].count(0) >= 1
    assert [len(s) for s in iter_time_slices(ev.iloc[:0], 2)] == [0, 0]
    with pytest.raises(ValueError):
        iter_time_slices(ev, 0)


def test_iter_time_slices_balance_by_row_count() -> None:
    ts = pd.Series(pd.to_datetime(np.arange(100) ** 3, unit="s", utc=True)).dt.as_unit("us")
    ev = pd.DataFrame({"event_id": [f"e{i:03d}" for i in range(100)], "user_id": "u",
                       "item_id": "i", "ts": ts, "rating": 1.0, "row": np.arange(100)})  # fmt: skip
    assert [len(s) for s in iter_time_slices(ev, 4)] == [25, 25, 25, 25]


# --- properties and real data ------------------------------------------------------------------

_good = st.tuples(
    st.integers(1, 5).map(str),  # user
    st.integers(1, 8).map(str),  # item
    st.integers(946_684_800, 1_700_000_000),  # epoch seconds
    st.integers(1, 10).map(lambda h: h / 2),  # rating 0.5..5
    st.booleans(),  # write ts as ISO text instead of epoch seconds
)
_bad = st.sampled_from([
    ("", "1", "1000000000", "3"), ("1", " ", "1000000000", "3"), ("1", "1", "soon", "3"),
    ("1", "1", "4102444800", "3"), ("1", "1", "1000000000", "x"), ("1", "1", "1000000000", "inf"),
    ("1", "1", "1000000000", "9.5"), ("1", "1", "", "3"),
])  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    good=st.lists(_good, max_size=40, unique_by=lambda g: (g[0], g[1], g[2])),
    bad=st.lists(_bad, max_size=10),
    dup_picks=st.lists(st.integers(0, 10**6), max_size=10),
    order=st.randoms(use_true_random=False),
)
def test_property_every_good_row_accepted_once(good, bad, dup_picks, order) -> None:
    def cells(g):
        ts = datetime.fromtimestamp(g[2], UTC).isoformat() if g[4] else str(g[2])
        return (g[0], g[1], ts, str(g[3]))

    dups = [good[p % len(good)] for p in dup_picks] if good else []
    rows = [("good", g) for g in good] + [("bad", b) for b in bad]
    order.shuffle(rows)
    # Duplicates go after their original, wherever that landed.
    for d in dups:
        first = rows.index(("good", d))
        rows.insert(order.randint(first + 1, len(rows)), ("dup", d))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.csv"
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["user_id", "item_id", "timestamp", "rating"])
            writer.writerows(cells(r) if kind != "bad" else r for kind, r in rows)
        loaded = load_events(path, config=LoadConfig(rating_min=0.5, rating_max=5.0, now=NOW))
    check_contract(loaded)
    assert (loaded.read, loaded.duplicates, len(loaded.quarantine)) == (len(rows), len(dups), len(bad))
    got = sorted(zip(loaded.events["user_id"], loaded.events["item_id"],
                     loaded.events["ts"].map(lambda t: int(t.timestamp())), loaded.events["rating"]))  # fmt: skip
    assert got == sorted(g[:4] for g in good)
    first_rows = sorted(i for i, (kind, _) in enumerate(rows) if kind == "good")
    assert sorted(loaded.events["row"]) == first_rows


def test_real_ml_latest_small() -> None:
    loaded = load_events(ml_latest_small())
    check_contract(loaded)
    assert loaded.layout == "ml-latest"
    assert (len(loaded.events), len(loaded.quarantine), loaded.duplicates) == (100_836, 0, 0)
    assert loaded.events["user_id"].nunique() == 610
    assert len(loaded.catalog) == 9_742
    assert loaded.events["ts"].min() >= pd.Timestamp("1996-01-01", tz="UTC")


# --- module hygiene ----------------------------------------------------------------------------


def test_public_api_is_pinned() -> None:
    assert sorted(events_mod.__all__) == sorted([
        "EVENT_COLUMNS", "PLAIN_ALIASES", "QUARANTINE_COLUMNS", "LoadConfig", "LoadedEvents", "check_rows",
        "detect_layout", "iter_time_slices", "load_catalog", "load_events",
    ])  # fmt: skip


def test_loading_events_does_not_import_feast() -> None:
    # import-linter keeps torch out of liber_features (pyproject [tool.importlinter]). No contract
    # keeps feast out of ingest (the features stage imports it by right), and the linter does not
    # see what a third-party import pulls in: the ingest path's start-up cost is checked here.
    code = "import sys, liber_features.ingest.events; print('feast' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_detect_layout_files() -> None:
    assert detect_layout(FIXTURES / "ml-latest" / "ratings.csv") == "ml-latest"
    assert detect_layout(FIXTURES / "ml-100k" / "u.data") == "ml-100k"
    assert detect_layout(FIXTURES / "ml-1m" / "ratings.dat") == "ml-1m"
    assert detect_layout(FIXTURES / "plain" / "events.csv") == "csv"
    # A GroupLens events file given alone has no catalog, so no catalog check.
    alone = load_events(FIXTURES / "ml-latest" / "ratings.csv", config=CONFIG)
    assert alone.catalog is None and 13 in set(alone.events["row"])
