"""Online writes that never lose data, against SQLite and the real Redis (+ PostgreSQL registry).

Rows reach the online store the way ``liber materialize`` sends them: through the ledger's sync
state (``features/sync.py``), which writes every row created since the last successful write.
Each test builds a throwaway copy of feature_repo/ with its own Feast project name, so runs never
collide; Redis keys (suffixed by the project) and the project's registry rows are removed after.
Redis or PostgreSQL being unreachable fails the test: it is never skipped.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from feastrepo import Repo, cleanup, redis_client, sample_redis_repo

from liber_features.errors import FeatureStoreError, VectorShapeError
from liber_features.features import sync
from liber_features.features.online import push_short_term_cache, write_online
from liber_features.features.repo import (
    LONG_TERM_VIEW,
    RANKER_SERVICE,
    SHORT_TERM_VIEW,
    sample_long_term,
    sample_short_term,
)
from liber_features.ledger.store import Ledger

NOW = datetime.now(UTC).replace(microsecond=0)
USERS = [f"user-{i}" for i in range(6)]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Tests set the environment they need through Repo.env; nothing leaks in from the shell."""
    for name in ("LIBER_DATA_DIR", "LIBER_MEMORY_SLOTS", "LIBER_VECTOR_DIM", "FEAST_FS_YAML_FILE_PATH",
                 "LIBER_REDIS_URL", "LIBER_REDIS_CONNECTION", "LIBER_REGISTRY_URL"):
        monkeypatch.delenv(name, raising=False)


BACKENDS = ["sqlite", pytest.param("redis", marks=[pytest.mark.redis, pytest.mark.postgres])]


@pytest.fixture(params=BACKENDS)
def repo(request, tmp_path):
    r = Repo(tmp_path, request.param)
    if r.backend == "redis":
        redis_client()
    r.write(sample_long_term(USERS, NOW - timedelta(days=30)), sample_short_term(USERS, NOW - timedelta(days=1)))
    yield r
    cleanup(r)


@pytest.fixture
def redis_repo(tmp_path):
    yield from sample_redis_repo(tmp_path, USERS, NOW)


def online(store, users=USERS, service=True) -> dict[str, list]:
    features = store.get_feature_service(RANKER_SERVICE) if service else [
        f"{LONG_TERM_VIEW}:{f}" for f in ("summary_vectors", "encoder_version")]
    rows = [{"user_id": u} for u in users]
    return store.get_online_features(features=features, entity_rows=rows, full_feature_names=True).to_dict()


@pytest.fixture
def ledger(tmp_path):
    return Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")


def us(t) -> int:
    return pd.Timestamp(t).value // 1000


def materialize(store, ledger) -> dict[str, sync.SyncReport]:
    """What ``liber materialize`` does: every view caught up through the ledger's sync state."""
    return {v: sync.sync_view(store, ledger, v) for v in (LONG_TERM_VIEW, SHORT_TERM_VIEW)}


def f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def assert_vectors(actual, expected) -> None:
    """Bit-exact float32 comparison (NaN payloads and -0.0 included)."""
    a, e = f32(actual), f32(expected)
    assert a.shape == e.shape and np.array_equal(a.view(np.uint32), e.view(np.uint32))


def test_ranker_service_apply_materialize_push_fetch(repo, ledger):
    store = repo.apply()
    reports = materialize(store, ledger)
    assert {v: (r.previous_mark, r.users_written) for v, r in reports.items()} == {
        LONG_TERM_VIEW: (None, len(USERS)), SHORT_TERM_VIEW: (None, len(USERS))}  # a first run writes all
    push = sample_short_term(USERS[:2], NOW, items=5)
    assert push_short_term_cache(store, push) == 2

    got = online(store)
    expected = sample_long_term(USERS, NOW - timedelta(days=30))
    for i, user in enumerate(USERS):
        assert got["user_id"][i] == user
        for col in ("summary_vectors", "shift_vectors"):
            assert_vectors(got[f"{LONG_TERM_VIEW}__{col}"][i], expected[col][i])
        for col in ("partition_count", "latest_summary", "latest_shift", "encoder_version"):
            assert got[f"{LONG_TERM_VIEW}__{col}"][i] == expected[col][i]
        cache = push if i < 2 else sample_short_term(USERS, NOW - timedelta(days=1))
        assert got[f"{SHORT_TERM_VIEW}__cache_item_ids"][i] == list(cache["cache_item_ids"][i])
        # materialized (users 2-5, from the Parquet history) and pushed (users 0-1) alike
        assert got[f"{SHORT_TERM_VIEW}__cache_event_types"][i] == list(cache["cache_event_types"][i]) == [
            "view", "click", "purchase", "view", "click"][:cache["cache_length"][i]]
        assert got[f"{SHORT_TERM_VIEW}__cache_length"][i] == cache["cache_length"][i]
        assert got[f"{SHORT_TERM_VIEW}__cache_newest_at"][i] == cache["cache_newest_at"][i]


def test_a_ranker_sees_each_cached_events_type_by_user_id(repo, ledger):
    """The ledger's typed events reach the online short-term view aligned with their items."""
    from liber_features.features.caches import current_caches
    from liber_features.ingest.events import LoadedEvents
    from liber_features.ingest.job import ingest
    from liber_features.ingest.partition import PartitionRule

    t0 = int(NOW.timestamp()) - 3600
    rows = [("u1", f"i{i}", t0 + i, kind) for i, kind in enumerate(["view", "cart", "purchase", None, "click"])]
    rows += [("u2", "i7", t0, "purchase"), ("u2", "i8", t0 + 1, "view")]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "event_type"])
    df["event_id"] = [f"e{i}" for i in range(len(df))]
    df["rating"] = np.nan
    df["ts"] = pd.to_datetime(df["ts"], unit="s", utc=True).astype("datetime64[us, UTC]")
    df["row"] = range(len(df))
    empty_q = pd.DataFrame(columns=["source", "row", "field", "reason", "raw"])
    ingest(LoadedEvents("mem", "csv", df, None, empty_q, read=len(df), duplicates=0), ledger,
           PartitionRule(k=3), progress=False)  # u1's first three are sealed; i3 (untyped), i4 stay cached
    caches = current_caches(ledger).set_index("user_id")
    assert caches.loc["u1", "cache_item_ids"] == ["i3", "i4"] and caches.loc["u1", "cache_event_types"] == ["", "click"]
    assert caches.loc["u2", "cache_event_types"] == ["purchase", "view"]
    store = repo.apply()
    assert push_short_term_cache(store, caches.reset_index()) == 2
    got = online(store, ["u1", "u2"])
    assert got[f"{SHORT_TERM_VIEW}__cache_item_ids"] == [["i3", "i4"], ["i7", "i8"]]
    assert got[f"{SHORT_TERM_VIEW}__cache_event_types"] == [["", "click"], ["purchase", "view"]]


def test_online_equals_point_in_time_historical(repo, ledger):
    """No train/serve skew: the same user and time give the same float32 vectors both ways."""
    old, new = NOW - timedelta(days=30), NOW - timedelta(days=2)
    frames = [sample_long_term(USERS, old), sample_long_term(USERS, new, partition_count=4, seed=1)]
    repo.write(pd.concat(frames, ignore_index=True))
    store = repo.apply()
    materialize(store, ledger)
    entity_df = pd.DataFrame({
        "user_id": USERS * 2,
        "event_timestamp": [NOW] * len(USERS) + [new - timedelta(seconds=1)] * len(USERS),
    })  # fmt: skip
    hist = store.get_historical_features(
        entity_df=entity_df, features=store.get_feature_service(RANKER_SERVICE), full_feature_names=True
    ).to_df()
    got = online(store)
    for i, user in enumerate(USERS):
        now_row = hist[(hist.user_id == user) & (hist.event_timestamp == NOW)].iloc[0]
        before_row = hist[(hist.user_id == user) & (hist.event_timestamp < new)].iloc[0]
        for col in ("summary_vectors", "shift_vectors"):
            name = f"{LONG_TERM_VIEW}__{col}"
            assert_vectors(now_row[name], got[name][i])  # serve == train at the same time
            assert_vectors(now_row[name], frames[1][col][i])
            assert_vectors(before_row[name], frames[0][col][i])  # no leak of a later partition
        assert now_row[f"{LONG_TERM_VIEW}__partition_count"] == got[f"{LONG_TERM_VIEW}__partition_count"][i] == 4


def test_late_partition_reaches_online(repo, ledger, monkeypatch):
    """Sealed before Feast's watermark, encoded after it: Feast's incremental run skips it, the sync does not."""
    monkeypatch.setattr(sync, "SYNC_OVERLAP", timedelta(0))  # count exactly what was pending
    store = repo.apply()
    materialize(store, ledger)
    first_mark = sync.synced_mark(ledger, repo.project, LONG_TERM_VIEW)
    assert first_mark == us(NOW - timedelta(days=30))
    store.materialize_incremental(end_date=datetime.now(UTC))  # Feast's watermark: now
    watermark = store.get_feature_view(LONG_TERM_VIEW, allow_registry_cache=False).most_recent_end_time
    # Sealed a day before the watermark, encoded (created) after it: the LLM lagged the seal.
    late = sample_long_term(USERS[:1], NOW - timedelta(days=1), created_at=watermark + timedelta(seconds=1),
                            partition_count=4, seed=7)
    repo.write(pd.concat([sample_long_term(USERS, NOW - timedelta(days=30)), late], ignore_index=True))

    store.materialize_incremental(end_date=datetime.now(UTC))
    stale = online(store, USERS[:1], service=False)
    assert not np.array_equal(f32(stale[f"{LONG_TERM_VIEW}__summary_vectors"][0]), late.summary_vectors[0])

    assert sync.sync_view(store, ledger, LONG_TERM_VIEW).users_written == 1  # that user only
    assert sync.synced_mark(ledger, repo.project, LONG_TERM_VIEW) == us(late.created_at[0])
    got = online(store, USERS[:1], service=False)
    assert_vectors(got[f"{LONG_TERM_VIEW}__summary_vectors"][0], late.summary_vectors[0])


def test_encoder_version_change_reaches_online(repo, ledger):
    """A re-encode keeps ``sealed_at`` (the event time) and only its ``created_at`` moves."""
    store = repo.apply()
    materialize(store, ledger)
    sealed = NOW - timedelta(days=30)
    reencoded = sample_long_term(USERS, sealed, created_at=NOW, encoder_version="v2", seed=3)
    repo.write(pd.concat([sample_long_term(USERS, sealed), reencoded], ignore_index=True))
    assert sync.sync_view(store, ledger, LONG_TERM_VIEW).users_written == len(USERS)
    got = online(store, service=False)
    assert got[f"{LONG_TERM_VIEW}__encoder_version"] == ["v2"] * len(USERS)
    for i in range(len(USERS)):
        assert_vectors(got[f"{LONG_TERM_VIEW}__summary_vectors"][i], reencoded.summary_vectors[i])


def test_failed_write_leaves_the_mark_and_the_next_sync_writes_it(repo, ledger, monkeypatch):
    """A sync whose write fails writes nothing and keeps its mark: the next run writes the same rows."""
    monkeypatch.setattr(sync, "SYNC_OVERLAP", timedelta(0))  # count exactly what was pending
    store = repo.apply()
    materialize(store, ledger)
    first_mark = sync.synced_mark(ledger, repo.project, LONG_TERM_VIEW)
    newer = sample_long_term(USERS[:2], NOW - timedelta(days=1), created_at=NOW, partition_count=5,
                             encoder_version="v2", seed=9)
    broken = newer.copy()
    broken.at[1, "summary_vectors"] = broken.at[1, "summary_vectors"][:7]
    base = sample_long_term(USERS, NOW - timedelta(days=30))
    repo.write(pd.concat([base, broken], ignore_index=True))
    with pytest.raises(VectorShapeError, match=r"user_id='user-1'.*summary_vectors.*7 floats"):
        sync.sync_view(store, ledger, LONG_TERM_VIEW)
    assert sync.synced_mark(ledger, repo.project, LONG_TERM_VIEW) == first_mark == us(NOW - timedelta(days=30))
    assert online(store, USERS[:2], service=False)[f"{LONG_TERM_VIEW}__encoder_version"] == ["v1", "v1"]

    repo.write(pd.concat([base, newer], ignore_index=True))  # the encoder wrote the table again
    assert sync.sync_view(store, ledger, LONG_TERM_VIEW).users_written == 2
    assert sync.synced_mark(ledger, repo.project, LONG_TERM_VIEW) == us(NOW)
    got = online(store, USERS[:2], service=False)
    assert got[f"{LONG_TERM_VIEW}__encoder_version"] == ["v2", "v2"]
    for i in range(2):
        assert_vectors(got[f"{LONG_TERM_VIEW}__summary_vectors"][i], newer.summary_vectors[i])


def test_wrong_vector_length_is_refused_before_any_write(repo):
    store = repo.apply()
    rows = sample_long_term(["good", "bad"], NOW)
    rows.at[1, "shift_vectors"] = rows.at[1, "shift_vectors"][:-1]
    # 3 partitions at M = 8, D = 384: 3×384 floats, only the filled slots.
    with pytest.raises(VectorShapeError,
                       match=r"user_id=.bad.*shift_vectors has 1151 floats, expected 1152 \(min\(partition_count"):
        write_online(store, LONG_TERM_VIEW, rows)
    assert online(store, ["good"], service=False)[f"{LONG_TERM_VIEW}__summary_vectors"] == [None]


@pytest.mark.redis
@pytest.mark.postgres
def test_redis_writer_matches_feast_byte_for_byte(redis_repo):
    """Our pipelined writer produces exactly the hash Feast's own write produces, and reads back."""
    store = redis_repo.apply()
    rows = sample_long_term(USERS, NOW - timedelta(hours=1))
    rows.at[0, "summary_vectors"][:4] = [np.nan, -0.0, 1e-45, np.inf]  # bit patterns must survive
    client = redis_client()

    store.write_to_online_store(LONG_TERM_VIEW, rows)
    feast_hashes = {k: client.hgetall(k) for k in client.scan_iter(match=b"*" + redis_repo.project.encode())}
    client.delete(*feast_hashes)
    assert write_online(store, LONG_TERM_VIEW, rows) == len(USERS)
    ours = {k: client.hgetall(k) for k in client.scan_iter(match=b"*" + redis_repo.project.encode())}
    assert ours == feast_hashes and len(ours) == len(USERS)

    got = online(store, service=False)
    for i in range(len(USERS)):
        assert_vectors(got[f"{LONG_TERM_VIEW}__summary_vectors"][i], rows.summary_vectors[i])


@pytest.mark.redis
@pytest.mark.postgres
def test_redis_writer_same_time_overwrites_older_never_does(redis_repo):
    store = redis_repo.apply()
    ts = NOW - timedelta(minutes=5)
    push_short_term_cache(store, sample_short_term(USERS[:1], ts, items=4))
    cleared = sample_short_term(USERS[:1], ts, items=0)  # sealed at the same second: cache emptied
    assert push_short_term_cache(store, cleared) == 1
    assert online(store, USERS[:1])[f"{SHORT_TERM_VIEW}__cache_length"] == [0]
    assert push_short_term_cache(store, sample_short_term(USERS[:1], ts - timedelta(seconds=1), items=9)) == 0
    assert online(store, USERS[:1])[f"{SHORT_TERM_VIEW}__cache_length"] == [0]


@pytest.mark.redis
@pytest.mark.postgres
def test_unreachable_redis_is_a_feature_store_error(redis_repo):
    store = redis_repo.apply()
    redis_repo.env["LIBER_REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    with pytest.raises(FeatureStoreError, match="ConnectionError"):
        push_short_term_cache(redis_repo.store(), sample_short_term(USERS, NOW))
    assert store.project == redis_repo.project
