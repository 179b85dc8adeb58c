"""The online scorer: torch-free, one read per request, two fetch paths that agree, failure policy."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC

import numpy as np
import pytest
from modelkit import movielens_users
from servekit import ENV, SHAPE, USERS

from liber_features.errors import ConfigError, OnlineStoreError
from liber_features.features.repo import LONG_TERM_VIEW, LiberFeatureConfig
from liber_features.model.card import ModelCard
from liber_features.serving.fetch import FEATURES, FeastFetcher, RedisFetcher
from liber_features.serving.scorer import LiberScorer, ScorerConfig


def test_fast_path_equals_feast_path(world):
    store = world["store"]
    fast, feast = RedisFetcher(store), FeastFetcher(store)
    users = USERS + ["nobody"]
    a, b = fast.fetch(users), feast.fetch(users)
    assert a[3] is None and b[3] is None
    for ra, rb in zip(a[:3], b[:3]):
        for _, f in FEATURES:
            if f.endswith("_vectors"):
                va, vb = ra[f], np.asarray(rb[f], np.float32)
                assert va.dtype == np.float32 and va.shape == (12,) and np.array_equal(va, vb)
            else:
                assert ra[f] == rb[f], f
    assert a[0]["partition_count"] == 23 and len(a[0]["recent_item_ids"]) == 6  # user 1: 232 ratings, K=10


def test_fast_path_reads_the_users_statistics_as_feast_does(world):
    """A boosted ranker's read adds the user_stats view: still one HMGET, the same values as Feast's
    read, timestamps included (Feast keeps them in whole seconds)."""
    from liber_features.features.stats import USER_STATS_VIEW
    from liber_features.features.sync import sync_view
    from liber_features.serving.fetch import RANKER_FEATURES

    store = world["store"]
    sync_view(store, world["ledger"], USER_STATS_VIEW)
    users = USERS + ["nobody"]
    a = RedisFetcher(store, features=RANKER_FEATURES).fetch(users)
    b = FeastFetcher(store, features=RANKER_FEATURES).fetch(users)
    assert a[3] is None and b[3] is None
    for ra, rb in zip(a[:3], b[:3]):
        assert {f: ra[f] for _, f in RANKER_FEATURES[len(FEATURES):]} == \
            {f: rb[f] for _, f in RANKER_FEATURES[len(FEATURES):]}
    events = movielens_users(["1"])[0]
    assert a[0]["user_event_count"] == len(events) == 232
    assert a[0]["user_last_event_at"].timestamp() == events.timestamp.max()


def test_fast_path_reads_what_feast_itself_wrote(world):
    """Feast's own write_to_online_store, read back by the fast path, bit for bit."""
    from datetime import datetime

    from liber_features.features.repo import sample_long_term

    store = world["store"]
    df = sample_long_term(["fx1", "fx2"], datetime(2020, 1, 1, tzinfo=UTC), shape=SHAPE,
                          partition_count=2)
    store.write_to_online_store(LONG_TERM_VIEW, df)
    got = RedisFetcher(store).fetch(["fx1", "fx2"])
    for i, row in enumerate(got):
        assert np.array_equal(row["summary_vectors"], df.summary_vectors[i])
        assert np.array_equal(row["shift_vectors"], df.shift_vectors[i])
        assert row["recent_item_ids"] == list(df.recent_item_ids[i]) and row["partition_count"] == 2
        assert row["cache_item_ids"] is None


def test_onnx_scores_equal_torch_on_the_scorers_and_the_builders_feeds(world):
    """The exported graph (onnxruntime) computes what the trained model (torch) computes, on the
    feeds the scorer builds from the Redis fast path and on the training builder's feeds.

    This is graph parity, not train/serve input parity: that the scorer's inputs equal the training
    builder's for the same user and moment is proven by
    ``test_samples.py::test_training_inputs_equal_online_inputs_at_the_same_moment``.
    """
    from encoders.ctr.export import torch_scores

    ts, model = world["ts"], world["model"].model
    scorer = LiberScorer.load(world["model_dir"], world["repo"].root, store=world["store"])
    items = list(ts.item_vocab)[:150] + ["never-seen"]
    for u in USERS:
        # Online holds the state after the user's last event; the training builder's view of a
        # moment after it is its last sample's inputs plus that sample's own event and seal.
        res = scorer.score(u, items)
        row = RedisFetcher(world["store"]).fetch([u])[0]
        feeds = scorer.user_side(u, row)
        feeds["item_idx"] = ts.item_vocab.index(items)
        want = torch_scores(model, feeds)
        assert np.abs(res.scores - want).max() <= 1e-5
        assert res.unknown_items == [150] and not res.cold_start and not res.degraded
        assert res.encoder_version == scorer.card.encoder_version
    # And at a moment inside the history: training-builder inputs → torch == scorer inputs → ORT.
    i = int(np.flatnonzero((ts.user_ids == "1") & (ts.partition_count >= 3))[0])
    summ, shift = ts.vectors(ts.slot_rows[i][None])
    offline = {"user_idx": ts.user_idx[i:i + 1], "summary": summ, "shift": shift,
               "partition_count": ts.partition_count[i:i + 1], "hist_idx": ts.hist_idx[i:i + 1],
               "item_idx": np.arange(2, 102, dtype=np.int64)}
    got = scorer.session.run(None, offline)[0]
    assert np.abs(got - torch_scores(model, offline)).max() <= 1e-5


def test_cold_start_user_is_scored_masked(world):
    scorer = LiberScorer.load(world["model_dir"], world["repo"].root, store=world["store"])
    res = scorer.score("brand-new-user", ["1", "3"])
    assert res.cold_start and not res.degraded and res.encoder_version is None
    assert res.scores.shape == (2,) and np.all((res.scores > 0) & (res.scores < 1))


def test_card_mismatch_is_refused_naming_both_sides(world, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(world["model_dir"], bad)
    card = ModelCard.load(bad)
    card.memory_slots = 8
    card.save(bad)
    with pytest.raises(ConfigError, match=r"model card has \{'M': 8, 'D': 4, 'L': 6\}, the applied repo's "
                                          r"user_long_term_memory has \{'M': 3, 'D': 4, 'L': 6\}"):
        LiberScorer.load(bad, world["repo"].root, store=world["store"])
    # L: the card's history length against the repo's (LIBER_HISTORY_LENGTH = 6 here, or `shape`).
    card.memory_slots, card.history_length = 3, 9
    card.save(bad)
    with pytest.raises(ConfigError, match=r"model card has \{'M': 3, 'D': 4, 'L': 9\}, the applied repo's "
                                          r"user_long_term_memory has \{'M': 3, 'D': 4, 'L': 6\}"):
        LiberScorer.load(bad, world["repo"].root, store=world["store"])
    with pytest.raises(ConfigError, match=r"model card has \{'M': 3, 'D': 4, 'L': 6\}.*'L': 12\}"):
        LiberScorer.load(world["model_dir"], world["repo"].root, store=world["store"],
                         shape=LiberFeatureConfig(memory_slots=3, vector_dim=4, history_length=12))
    # A model trained at another D′ (a projection, `liber project --dim 2`): refused by its D.
    card.history_length, card.vector_dim = 6, 2
    card.save(bad)
    with pytest.raises(ConfigError, match=r"model card has \{'M': 3, 'D': 2, 'L': 6\}, the applied repo's "
                                          r"user_long_term_memory has \{'M': 3, 'D': 4, 'L': 6\}"):
        LiberScorer.load(bad, world["repo"].root, store=world["store"])
    card.vector_dim, card.encoder_version = 4, "0123456789ab"
    card.save(bad)
    with pytest.raises(ConfigError, match="encoder_version '0123456789ab'"):
        LiberScorer.load(bad, world["repo"].root, store=world["store"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def own_redis(world):
    """A private redis-server holding user 1's hash, so the test can pause and stop it."""
    import redis

    from liber_features.features.repo import open_store

    port = _free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    env = {**os.environ, **world["repo"].env, "LIBER_REDIS_URL": f"redis://127.0.0.1:{port}/0",
           "LIBER_REDIS_CONNECTION": f"127.0.0.1:{port},db=0"}
    store = open_store(world["repo"].root, environ=env)
    shared = RedisFetcher(world["store"])
    key = shared.key("1")
    redis.Redis(port=port).hset(key, mapping=shared.client.hgetall(key))
    yield proc, store
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
    proc.wait()


def test_store_down_raises_or_degrades(world, own_redis):
    proc, store = own_redis
    raising = LiberScorer.load(world["model_dir"], world["repo"].root, store=store)
    degrading = LiberScorer.load(world["model_dir"], world["repo"].root, store=store,
                                 config=ScorerConfig(on_store_error="degrade"))
    ok = raising.score("1", ["1", "3"])
    assert not ok.degraded and ok.encoder_version is not None
    os.kill(proc.pid, signal.SIGSTOP)  # paused: every read times out
    with pytest.raises(OnlineStoreError, match=r"Redis at 127\.0\.0\.1:\d+: TimeoutError"):
        raising.score("1", ["1", "3"])
    slow = degrading.score("1", ["1", "3"])
    assert slow.degraded and "Timeout" in slow.reason and slow.encoder_version is None
    masked = degrading.user_side("1", None)  # no memory, no history: the masked model
    masked["item_idx"] = np.array([degrading.card.item_vocab["1"], degrading.card.item_vocab["3"]])
    assert np.array_equal(slow.scores, degrading.session.run(None, masked)[0])
    os.kill(proc.pid, signal.SIGCONT)
    proc.kill()
    proc.wait()
    with pytest.raises(OnlineStoreError, match=r"Redis at 127\.0\.0\.1:\d+: ConnectionError"):
        raising.score("1", ["1", "3"])
    down = degrading.score("1", ["1", "3"])
    assert down.degraded and "ConnectionError" in down.reason


def test_a_late_reply_is_never_read_as_the_next_answer(world, own_redis):
    """After a timeout the reply still arrives on that socket: the next request must not read it."""
    proc, store = own_redis
    fetch = RedisFetcher(store, timeout_ms=50)
    from feast.protos.feast.types.Value_pb2 import Value

    client = fetch.client
    client.hset(fetch.key("2"), mapping=client.hgetall(fetch.key("1")))  # a second user, same values
    client.hset(fetch.key("2"), fetch.fields[2], Value(int64_val=7).SerializeToString())  # but 7 partitions
    first = fetch.fetch(["1"])[0]
    os.kill(proc.pid, signal.SIGSTOP)
    with pytest.raises(OnlineStoreError, match="TimeoutError"):
        fetch.fetch(["1"])  # sent, unanswered; Redis answers it once it runs again
    os.kill(proc.pid, signal.SIGCONT)
    time.sleep(0.1)
    again = fetch.fetch(["2", "1"])
    assert again[0]["partition_count"] == 7 and again[1]["partition_count"] == first["partition_count"]
    assert np.array_equal(again[1]["summary_vectors"], first["summary_vectors"])


@pytest.mark.parametrize("user_id", ["1", "", "用户-42", "a" * 1000, "tab\tand\nnewline", "0" * 3])
def test_keys_are_feasts_keys(world, user_id):
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    store = world["store"]
    fetch = RedisFetcher(store)
    ek = EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=user_id)])
    assert fetch.keys.templated  # the template matched Feast's helper at start-up
    assert fetch.key(user_id) == _redis_key(store.config.project, ek, store.config.entity_key_serialization_version)


def test_wrong_shaped_value_is_an_error_or_degrades(world, own_redis):
    _, store = own_redis
    fetch = RedisFetcher(store)
    from feast.infra.online_stores.helpers import _mmh3
    from feast.protos.feast.types.Value_pb2 import FloatList, Value

    fetch.client.hset(fetch.key("1"), _mmh3(f"{LONG_TERM_VIEW}:summary_vectors"),
                      Value(float_list_val=FloatList(val=[1.0, 2.0])).SerializeToString())
    raising = LiberScorer.load(world["model_dir"], world["repo"].root, store=store)
    with pytest.raises(OnlineStoreError,
                       match=r"wrong-shaped value.*2 floats, expected min\(partition_count, M\)×D = 3×4 = 12"):
        raising.score("1", ["1"])
    degrading = LiberScorer.load(world["model_dir"], world["repo"].root, store=store,
                                 config=ScorerConfig(on_store_error="degrade"))
    res = degrading.score("1", ["1"])
    assert res.degraded and "wrong-shaped" in res.reason


def test_scorer_runs_with_torch_blocked(world):
    code = f"""
import sys
sys.modules["torch"] = None  # any import of torch now fails
from liber_features.serving.scorer import LiberScorer
s = LiberScorer.load({str(world['model_dir'])!r}, {str(world['repo'].root)!r})
r = s.score("1", ["1", "3", "6"])
assert r.scores.shape == (3,) and not r.degraded and not r.cold_start
assert "torch" not in sys.modules or sys.modules["torch"] is None
print("ok", r.fetch_ms >= 0)
"""
    env = {**os.environ, **world["repo"].env, **ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok True"
