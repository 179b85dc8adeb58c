"""The ``liber_affinities`` on-demand view (model/affinity.py, feature_repo/definitions.py): Feast's
online read for a user and 100 candidates, and its point-in-time join at a sample's moment, give
the boosted ranker's LIBER columns (``ranker_features``) bit for bit; on SQLite and on Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from feastrepo import Repo, cleanup, redis_client
from modelkit import encoded_repo, movielens_users

from encoders.ctr.gbdt import gbdt_features
from liber_features.errors import ConfigError, VectorShapeError
from liber_features.features.item_text import check_space, item_text_frame, sample_item_text, write_item_text
from liber_features.features.online import write_online
from liber_features.features.repo import (
    AFFINITY_SERVICE,
    LONG_TERM_VIEW,
    LiberFeatureConfig,
    data_file,
    sample_long_term,
)
from liber_features.features.sync import sync_view
from liber_features.model.affinity import AFFINITY_FEATURES
from liber_features.model.inputs import STAT_NAMES, user_inputs
from liber_features.model.ranker_features import BASE, LIBER, RankerItems, ranker_features
from liber_features.model.vocab import ItemVocab, UserVocab
from liber_features.training.samples import SampleConfig, build_training_set

SHAPE = LiberFeatureConfig(memory_slots=2, vector_dim=4, history_length=5)
ENV = {"LIBER_MEMORY_SLOTS": "2", "LIBER_VECTOR_DIM": "4", "LIBER_HISTORY_LENGTH": "5"}


@pytest.fixture(autouse=True)
def small_shape(monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Users 1 and 5 encoded at K = 7 (user 1: 232 ratings → 33 partitions, more than M); the item
    text view holds the ranker's unit text vectors of every item; the memory is online."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in ENV.items():
            mp.setenv(k, v)
        events, catalog = movielens_users(["1", "5"])
        ledger, repo, store = encoded_repo(tmp_path_factory.mktemp("aff"), events, catalog, k=7, shape=SHAPE)
        ts = build_training_set(ledger, store, SampleConfig(), SHAPE)
        text = np.random.default_rng(0).standard_normal((ts.item_vocab.size, 4)).astype(np.float32)
        text[:2] = 0
        items = RankerItems.from_catalog(ts.item_vocab, ts.catalog, text)
        ids = sorted(ts.item_vocab, key=ts.item_vocab.__getitem__)
        path, written = write_item_text(store, item_text_frame(ids, items.text[ts.item_vocab.index(ids)], "fake@1"),
                                        ledger)
        sync_view(store, ledger, LONG_TERM_VIEW)
    return {"ts": ts, "text": text, "items": items, "ids": ids, "store": store, "repo": repo, "events": events,
            "path": path, "written": written, "ledger": ledger}


def _online(store, user: str, cand: list[str]) -> np.ndarray:
    """``(N, 7)`` float32 in ``LIBER`` order, read through the service as a ranker reads it."""
    got = store.get_online_features(features=store.get_feature_service(AFFINITY_SERVICE),
                                    entity_rows=[{"user_id": user, "item_id": i} for i in cand],
                                    full_feature_names=False).to_dict()
    assert set(got) == {"user_id", "item_id", *AFFINITY_FEATURES}  # the sources' vectors stay out
    return np.column_stack([np.asarray(got[f], np.float32) for f in AFFINITY_FEATURES])


def _liber_columns(items: RankerItems, vocab: ItemVocab, row: dict, cand: list[str]) -> np.ndarray:
    """The scorer's LIBER columns for one user's long-term row (``user_inputs`` → ``ranker_features``)."""
    feeds = user_inputs(user_id="u", user_vocab=UserVocab.build(["u"]), item_vocab=vocab,
                        memory_slots=SHAPE.memory_slots, vector_dim=SHAPE.vector_dim,
                        history_length=SHAPE.history_length, cache_item_ids=None,
                        **{k: row[k] for k in ("summary_vectors", "shift_vectors", "partition_count",
                                               "recent_item_ids")})
    count = feeds["partition_count"]
    used = np.arange(SHAPE.memory_slots)[None, :] < np.minimum(count, SHAPE.memory_slots)[:, None]
    idx = vocab.index(cand)
    x = ranker_features(items, user_idx=feeds["user_idx"], item_idx=idx, hist_idx=feeds["hist_idx"],
                        stats=np.zeros((len(cand), len(STAT_NAMES)), np.float32), summary=feeds["summary"],
                        shift=feeds["shift"], slots_used=used, partition_count=count)
    return x[:, len(BASE):len(BASE) + len(LIBER)]


def test_item_text_view_holds_the_rankers_unit_vectors(built):
    table = pq.read_table(built["path"])
    assert built["written"] == table.num_rows == len(built["ids"])
    assert table.schema.field("text_vector").type.value_type.bit_width == 32
    got = np.stack(table["text_vector"].to_numpy(zero_copy_only=False))
    assert np.array_equal(got, built["items"].text[2:])  # vocabulary order; PAD and OOV are not items
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-6)


def test_online_read_for_100_candidates_equals_the_rankers_liber_columns(built):
    ts, store = built["ts"], built["store"]
    cand = [*built["ids"][:99], "never-seen"]  # one item the view has no vector for
    got = _online(store, "1", cand)
    newest = pd.read_parquet(data_file(f"{LONG_TERM_VIEW}.parquet", repo_dir=built["repo"].root))
    row = newest[newest.user_id == "1"].sort_values("sealed_at").iloc[-1].to_dict()
    want = _liber_columns(built["items"], ts.item_vocab, row, cand)
    assert np.array_equal(got, want)  # bit for bit, every candidate
    assert got[0, 0] == row["partition_count"] == 33 > SHAPE.memory_slots
    assert (got[-1, 1:] == 0).all() and (np.abs(got[:-1, 1:]) > 0).all()
    unknown = _online(store, "nobody", cand[:3])  # no memory: every feature 0
    assert (unknown == 0).all()


@pytest.mark.parametrize("moment_rank", [40, 110])
def test_point_in_time_join_equals_the_training_builders_row(built, moment_rank):
    """At a sample's moment (joined at t − 1 µs, strictly before t, as the builder joins memory)
    the view gives the builder's LIBER columns for that sample."""
    ts, events = built["ts"], built["events"]
    times = np.sort(np.unique(events[events.user_id == "1"].timestamp))
    t = int(times[moment_rank])
    sample = int(np.flatnonzero((ts.user_ids == "1") & (ts.ts_us == t * 1_000_000))[0])
    x, names = gbdt_features(ts, built["text"], (ts.summary_table, ts.shift_table), built["items"])
    entity = pd.DataFrame({"user_id": ["1", "1"], "item_id": [ts.item_ids[sample], "never-seen"],
                           "event_timestamp": pd.to_datetime([t * 1_000_000 - 1] * 2, unit="us", utc=True)})
    out = built["store"].get_historical_features(
        entity_df=entity, features=built["store"].get_feature_service(AFFINITY_SERVICE)).to_df()
    got = out[list(AFFINITY_FEATURES)].to_numpy(np.float32)
    lo = names.index(LIBER[0])
    assert np.array_equal(got[0], x[sample, lo:lo + len(LIBER)])
    assert got[0, 0] == ts.partition_count[sample] > 0
    assert got[1, 0] == got[0, 0] and (got[1, 1:] == 0).all()


@pytest.mark.redis
@pytest.mark.postgres
def test_online_read_on_redis_equals_the_rankers_liber_columns(tmp_path):
    repo = Repo(tmp_path, "redis")
    redis_client()
    now = datetime.now(UTC).replace(microsecond=0)
    long_term = sample_long_term(["alice"], now - timedelta(days=3), partition_count=5)  # 5 > M: 2 slots
    items = [f"i{j}" for j in range(100)]
    text = sample_item_text(items, seed=1)
    try:
        repo.write(long_term)
        store = repo.apply()
        write_online(store, LONG_TERM_VIEW, long_term)
        write_item_text(store, text)
        got = _online(store, "alice", items)
        vocab = ItemVocab.build(items)
        unit = np.zeros((vocab.size, 4), np.float32)
        unit[vocab.index(items)] = np.stack(text.text_vector)
        ranker_items = RankerItems(unit, (), np.zeros((vocab.size, 0), np.float32), np.full(vocab.size, ""))
        want = _liber_columns(ranker_items, vocab, long_term.iloc[0].to_dict(), items)
        assert np.array_equal(got, want) and got[0, 0] == 5
    finally:
        cleanup(repo)


def test_vectors_of_another_space_are_refused():
    with pytest.raises(ConfigError, match=r"gives D=384, the long-term view holds D=4 \(LIBER_VECTOR_DIM\)"):
        check_space(SHAPE, 384, "minilm@1", "minilm@1")
    with pytest.raises(ConfigError, match="encoded by proj@2, the item texts would be by minilm@1"):
        check_space(SHAPE, 4, "minilm@1", "proj@2")
    check_space(SHAPE, 4, "minilm@1", "minilm@1")  # one space: fine


def test_a_text_vector_of_another_length_is_not_written(built):
    wrong = item_text_frame(["a"], np.ones((1, 3), np.float32), "x@1")
    with pytest.raises(VectorShapeError, match=r"text vectors of \[3\] floats, the view holds D=4"):
        write_item_text(built["store"], wrong)


def test_liber_items_writes_the_encoders_vectors_and_refuses_another_encoder(built, tmp_path, monkeypatch):
    """``liber items``' body with the ledger's own (fake) text encoder: every item of the training
    vocabulary, as the ranker's item table normalises them; an encoder the memory was not encoded
    with is refused before anything is written."""
    from encoders.ctr.items import item_vectors
    from liber_features.cli.items import encode_items
    from liber_features.testing import HashEncoder

    monkeypatch.setenv("LIBER_CACHE_DIR", str(tmp_path))
    ts, store = built["ts"], built["store"]
    before = pq.read_table(built["path"])
    with pytest.raises(ConfigError, match="encoded by fake-hash-enc@1, the item texts would be by other@1"):
        encode_items(built["ledger"], store, HashEncoder("other@1", dim=4))
    assert pq.read_table(built["path"]).equals(before)
    enc = HashEncoder("fake-hash-enc@1", dim=4)
    try:
        summary = encode_items(built["ledger"], store, enc)
        assert summary["items"] == summary["written_online"] == ts.item_vocab.size - 2
        want = RankerItems.from_catalog(ts.item_vocab, ts.catalog, item_vectors(ts.item_vocab, ts.catalog, enc)).text
        got = pq.read_table(built["path"])
        assert got["item_id"].to_pylist() == built["ids"]
        assert np.array_equal(np.stack(got["text_vector"].to_numpy(zero_copy_only=False)), want[2:])
    finally:  # the other tests read the random vectors
        write_item_text(store, item_text_frame(built["ids"], built["items"].text[2:], "fake@1"), built["ledger"])


def test_before_liber_items_the_view_has_an_empty_table_and_feasts_own_materialize_runs(tmp_path):
    """Ingest's statistics refresh leaves an empty, ledger-stamped ``item_text.parquet``: Feast's
    materialize reads every view's source and stopped at the missing file before."""
    from liber_features.features.item_text import ensure_item_text
    from liber_features.features.ownership import owner

    events, catalog = movielens_users(["5"])
    ledger, repo, store = encoded_repo(tmp_path, events, catalog, k=7, shape=SHAPE)
    path = data_file("item_text.parquet", repo_dir=repo.root)
    table = pq.read_table(path)
    assert (table.num_rows, table.schema.names) == (0, ["item_id", "event_timestamp", "created_at", "text_vector",
                                                        "text_encoder_id"])
    assert owner(path).ledger_id == ledger.ledger_id
    store.materialize(start_date=datetime(1990, 1, 1, tzinfo=UTC), end_date=datetime.now(UTC))
    assert _online(store, "5", ["1", "2"]).shape == (2, 7)
    got = store.get_online_features(features=["item_text:text_vector"], entity_rows=[{"item_id": "1"}]).to_dict()
    assert got["text_vector"] == [None]
    # `liber items` replaces it; a later refresh never puts the empty table back over it.
    write_item_text(store, sample_item_text(["1", "2"]), ledger)
    assert ensure_item_text(Path(path).parent, ledger) is False
    assert pq.read_table(path).column("item_id").to_pylist() == ["1", "2"]
