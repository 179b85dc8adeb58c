"""Implicit feedback (ingest/feedback.py): event types and labels, validated, kept in the ledger."""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import select

from liber_features.ingest.events import LoadConfig, load_events
from liber_features.ingest.job import ingest
from liber_features.ingest.partition import CachedEvent, PartitionRule
from liber_features.ledger.store import events, partitions, user_cache

LOG = """user_id,item_id,timestamp,event_type,label
u1,a,2024-01-01T00:00:00Z,view,
u1,a,2024-01-01T00:00:00Z,Purchase,1
u1,b,2024-01-01T00:01:00Z,impression,0
u1,c,2024-01-01T00:02:00Z,,
u1,d,2024-01-01T00:03:00Z,refund,
u1,e,2024-01-01T00:04:00Z,click,2
u1,f,2024-01-01T00:05:00Z,cart,true
"""


def _load(tmp_path, config: LoadConfig | None = None):
    path = tmp_path / "events.csv"
    path.write_text(LOG)
    return load_events(path, config=config)


def test_types_and_labels_are_parsed_and_bad_ones_quarantined(tmp_path) -> None:
    loaded = _load(tmp_path)
    ev = loaded.events
    assert list(zip(ev.item_id, ev.event_type, ev.label.fillna(-1))) == [
        ("a", "purchase", 1.0), ("a", "view", -1.0), ("b", "impression", 0.0), ("c", None, -1.0),
        ("f", "cart", 1.0)]
    q = loaded.quarantine
    assert list(zip(q.row, q.field, q.reason)) == [
        (4, "event_type", "event_type 'refund' is not one of view, click, cart, purchase, rating, impression"),
        (5, "label", "label '2' is not 0 or 1")]
    # A view and a purchase of one item in one second are two events; an untyped row keeps its old id.
    micros = 1704067200000000
    assert set(ev.event_id[ev.item_id == "a"]) == {
        hashlib.sha1(f"u1\x1fa\x1f{micros}\x1f{t}".encode()).hexdigest()[:16] for t in ("view", "purchase")}
    assert ev.event_id[ev.item_id == "c"].item() == hashlib.sha1(
        f"u1\x1fc\x1f{micros + 120_000_000}".encode()).hexdigest()[:16]


def test_the_set_of_event_types_is_configurable(tmp_path) -> None:
    loaded = _load(tmp_path, LoadConfig(event_types=("view", "purchase", "refund")))
    assert set(loaded.quarantine.reason.str.extract(r"^event_type '(\w+)'")[0].dropna()) == {
        "impression", "click", "cart"}
    assert "refund" in set(loaded.events.event_type)


def test_event_types_must_fit_the_ledger_column() -> None:
    import pytest
    from pydantic import ValidationError

    for bad in (("View",), ("x" * 33,), ("",), ()):
        with pytest.raises(ValidationError, match="event types must be 1-32 lower-case characters"):
            LoadConfig(event_types=bad)


def test_ingest_keeps_types_and_labels_in_events_partitions_and_caches(tmp_path, ledger) -> None:
    s = ingest(_load(tmp_path), ledger, PartitionRule(k=3), progress=False)
    assert (s.accepted, s.partitions_sealed, s.cached_events) == (5, 1, 2)
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(events.c.item_id, events.c.event_type, events.c.label)
                            .order_by(events.c.ts_us, events.c.item_id, events.c.event_type)).all()
        part = json.loads(conn.execute(select(partitions.c.events_json)).scalar_one())
        cache = json.loads(conn.execute(select(user_cache.c.cache_json)).scalar_one())
    assert [tuple(r) for r in rows] == [("a", "purchase", 1.0), ("a", "view", None), ("b", "impression", 0.0),
                                        ("c", None, None), ("f", "cart", 1.0)]
    # Typed rows carry their type as a fifth field; an untyped row keeps the old four.
    assert [r[1:2] + r[3:] for r in part] == [["a", None, "purchase"], ["a", None, "view"],
                                              ["b", None, "impression"]]
    assert [len(r) for r in cache] == [4, 5]
    assert CachedEvent.from_row(cache[1]).event_type == "cart"


def test_an_untyped_event_keeps_its_row_and_partition_hash() -> None:
    from liber_features.ingest.partition import SealedPartition

    e = CachedEvent(ts_us=5, event_id="x", item_id="i", rating=4.0)
    assert e.to_row() == ["x", "i", 5, 4.0] and CachedEvent.from_row(e.to_row()) == e
    typed = CachedEvent(ts_us=5, event_id="x", item_id="i", rating=4.0, event_type="view")
    plain = SealedPartition("u", 0, (e,), 5, "count")
    assert plain.content_hash == hashlib.sha256(b"u\x1f0\x1ex\x1fi\x1f5\x1f4.0").hexdigest()[:32]
    assert SealedPartition("u", 0, (typed,), 5, "count").content_hash != plain.content_hash


def test_liber_ingest_takes_the_set_of_event_types(tmp_path) -> None:
    from click.testing import CliRunner

    from liber_features.cli.main import cli

    path = tmp_path / "events.csv"
    path.write_text(LOG)
    out = CliRunner().invoke(cli, ["ingest", "--events", str(path), "--event-types", "View, purchase,refund",
                                   "--ledger", f"sqlite:///{tmp_path}/l.db", "--repo", str(tmp_path / "repo"),
                                   "--json"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.output.strip().splitlines()[-1])
    assert (got["accepted"], got["quarantined"]) == (4, 3)  # impression, click, cart out; refund in


def test_liber_ingest_refuses_an_event_type_the_ledger_cannot_hold(tmp_path) -> None:
    from click.testing import CliRunner

    from liber_features.cli.main import cli

    out = CliRunner().invoke(cli, ["ingest", "--events", "x.csv", "--event-types", "view," + "y" * 33,
                                   "--ledger", f"sqlite:///{tmp_path}/l.db"])
    assert out.exit_code == 2 and "event types are at most 32 characters: yyy" in out.output
