"""``liber demo --stream``'s step (cli/demo_stream.py): the newest events through a real NATS, exactly
once into the ledger as file ingest would have put them, caches online, the sealed partitions encoded
(a fake LLM here; the demo uses SmolLM2)."""

from __future__ import annotations

import dataclasses

import pytest
from modelkit import encoded_repo, hash_llm, movielens_users
from sqlalchemy import select
from streamkit import broker_url, ledger_rows

from liber_features.cli.demo_stream import demo_broker_url, split_tail, stream_tail
from liber_features.errors import ConfigError
from liber_features.features.repo import LiberFeatureConfig
from liber_features.ingest.events import load_events
from liber_features.ingest.job import ingest
from liber_features.ingest.partition import PartitionRule
from liber_features.ledger.store import Ledger, interests, partitions
from liber_features.testing import HashEncoder

pytestmark = [pytest.mark.usefixtures("drop_streams")]
K, HELD = 10, 120


def test_demo_urls_get_their_own_stream_unless_one_is_named():
    assert demo_broker_url("nats://127.0.0.1:4222", "0123456789ab") == (
        "nats://127.0.0.1:4222/LIBER_DEMO_01234567?subject=liber_demo_01234567&durable=liber_demo")
    assert demo_broker_url("redis://127.0.0.1:6379", "0123456789ab") == (
        "redis://127.0.0.1:6379/0?stream=liber_demo_01234567&group=liber_demo")
    named = "nats://h:4222/S?subject=x&durable=d"
    assert demo_broker_url(named, "0123456789ab") == named
    with pytest.raises(ConfigError, match="--stream takes a nats://, redis:// or kafka:// URL, not 'http://x'"):
        demo_broker_url("http://x", "0123456789ab")


def test_the_streamed_tail_lands_as_file_ingest_would_have_put_it_and_is_encoded(tmp_path, monkeypatch):
    from modelkit import write_log

    events, catalog = movielens_users(["1", "5", "8"])
    full = load_events(*write_log(tmp_path / "all", events, catalog))
    head, tail = split_tail(full, HELD)
    assert (len(head.events), len(tail.events)) == (len(full.events) - HELD, HELD)
    assert tail.events["ts"].min() >= head.events["ts"].max()

    ref = Ledger(f"sqlite:///{tmp_path / 'ref.db'}")
    ingest(full, ref, PartitionRule(k=K), progress=False)

    shape = LiberFeatureConfig.from_env()
    h = head.events.rename(columns={"ts": "ts_us"})
    h = events.merge(h[["user_id", "item_id"]], on=["user_id", "item_id"])  # the same rows, as a file
    ledger, repo, _store = encoded_repo(tmp_path / "demo", h, catalog, k=K, shape=shape)
    url = broker_url("nats", "demo")
    llm = hash_llm()
    out = stream_tail(url, dataclasses.replace(tail), ledger, repo.root, k=K, llm=llm,
                      enc=HashEncoder("fake-hash-enc@1", dim=shape.vector_dim), say=lambda _l: None)
    assert ledger_rows(ledger) == ledger_rows(ref)  # partitions and caches: exactly what file ingest makes
    assert {k: out[k] for k in ("published", "fetched", "accepted", "duplicates", "quarantined")} == {
        "published": HELD, "fetched": HELD, "accepted": HELD, "duplicates": 0, "quarantined": 0}
    assert out["online_ms"]["n"] == HELD  # every streamed event's cache was written online
    assert out["partitions_sealed"] == 12
    # The user the stream sealed most for (user 1: 10 of the 12), two of those partitions encoded
    # (summary + shift each: 4 calls), and the long-term table synced online.
    assert out["encoded"] == {"user_id": "1", "partitions": 2, "llm_calls": 4, "users_written_online": 3}
    with ledger.engine.connect() as conn:
        done = conn.execute(select(partitions.c.user_id, partitions.c.seq).select_from(
            partitions.join(interests, interests.c.partition_id == partitions.c.id))
            .where(interests.c.llm_id == llm.llm_id).order_by(partitions.c.user_id, partitions.c.seq)).all()
    assert len(ledger_rows(ref)[0]) == 31
    assert len(done) == 31 - 12 + 2  # the head's partitions (encoded by encoded_repo) and the stream's two

    # A rerun publishes the same events again. Inside JetStream's duplicate window (2 min) the broker
    # itself drops them (the producer sets Nats-Msg-Id to the event id); later the ledger would
    # count them as duplicates. Either way: nothing accepted, nothing sealed, no LLM call.
    again = stream_tail(url, tail, ledger, repo.root, k=K, llm=llm,
                        enc=HashEncoder("fake-hash-enc@1", dim=shape.vector_dim), say=lambda _l: None)
    assert {k: again[k] for k in ("published", "fetched", "accepted", "duplicates", "partitions_sealed")} == {
        "published": HELD, "fetched": 0, "accepted": 0, "duplicates": 0, "partitions_sealed": 0}
    assert again["encoded"] == {"user_id": None, "partitions": 0, "llm_calls": 0}
    assert ledger_rows(ledger) == ledger_rows(ref)
