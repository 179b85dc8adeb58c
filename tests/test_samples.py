"""The training set: no leak through same-second events, and the same inputs the online path builds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from modelkit import encoded_repo, movielens_users, online_caches
from sqlalchemy import select

from liber_features.features.online import push_short_term_cache
from liber_features.features.repo import (
    LONG_TERM_VIEW,
    RANKER_SERVICE,
    SHORT_TERM_VIEW,
    LiberFeatureConfig,
)
from liber_features.features.stats import ITEM_STATS_VIEW, USER_STATS_VIEW, genre_hot, genre_vocab
from liber_features.features.sync import source_path, sync_view
from liber_features.ledger.store import partitions
from liber_features.model.inputs import (
    ITEM_STAT_FIELDS,
    PAD,
    STAT_NAMES,
    USER_STAT_FIELDS,
    history_items,
    pad_history,
    stats_inputs,
    user_inputs,
)
from liber_features.training.samples import SampleConfig, build_training_set

SHAPE = LiberFeatureConfig(memory_slots=2, vector_dim=4, history_length=5)


@pytest.fixture(autouse=True)
def small_shape(monkeypatch):
    monkeypatch.setenv("LIBER_MEMORY_SLOTS", "2")
    monkeypatch.setenv("LIBER_VECTOR_DIM", "4")
    monkeypatch.setenv("LIBER_HISTORY_LENGTH", "5")


def test_history_items_and_padding():
    assert history_items(["a", "b"], ["c"], 2) == ["b", "c"]
    assert history_items(None, None, 3) == []
    assert list(pad_history(np.array([7, 8]), 4)) == [PAD, PAD, 7, 8]
    assert list(pad_history(np.array([5, 6, 7, 8, 9]), 3)) == [7, 8, 9]


def test_same_second_events_never_see_their_own_partition(tmp_path):
    # K=2; three ratings in second 100, two in 200, one in 300. Feast's join is inclusive: a
    # plain join at t would hand the t=100 samples the partition sealed at 100 — holding them.
    events = pd.DataFrame({
        "user_id": ["u"] * 6, "item_id": ["a", "b", "c", "d", "e", "f"],
        "timestamp": [100, 100, 100, 200, 200, 300], "rating": [5, 4, 2, 5, 1, 4]})
    catalog = pd.DataFrame({"item_id": list("abcdef"), "title": list("ABCDEF"), "categories": "Drama"})
    ledger, repo, store = encoded_repo(tmp_path, events, catalog, k=2, shape=SHAPE)
    ts = build_training_set(ledger, store, SampleConfig(), SHAPE)
    order = np.argsort(ts.item_ids)
    # a, b, c at 100: nothing sealed before 100. d, e at 200: only P0 (two of a, b, c; sealed at
    # 100). f at 300: P0 and P1 (sealed at 200); P2 is sealed at 300, by f itself.
    assert list(ts.partition_count[order]) == [0, 0, 0, 1, 1, 2]
    with ledger.engine.connect() as conn:
        parts = conn.execute(select(partitions.c.seq, partitions.c.events_json)).all()
    members = {seq: json.loads(ev) for seq, ev in parts}
    for i in range(len(ts.label)):
        for seq in range(int(ts.partition_count[i])):
            assert all(e[2] < ts.ts_us[i] for e in members[seq])  # every event strictly before t
            assert ts.item_ids[i] not in [e[1] for e in members[seq]]
    # Histories: only events strictly before t (the other t=100 ratings are not visible to c).
    vocab = ts.item_vocab
    assert vocab.to_json() == {x: n + 2 for n, x in enumerate("abcdef")} and vocab.size == 8
    assert ts.user_vocab.to_json() == {"u": 1} and ts.user_vocab.size == 2  # u has training samples
    assert ts.item_idx[order].tolist() == [2, 3, 4, 5, 6, 7] and ts.user_idx.tolist() == [1] * 6
    hist = {ts.item_ids[i]: [x for x in ts.hist_idx[i] if x != PAD] for i in range(6)}
    # (same-second events are ordered by event id, so compare those as sets)
    assert hist["a"] == hist["b"] == hist["c"] == [] and sorted(hist["d"]) == [vocab[x] for x in "abc"]
    assert sorted(hist["f"][:3]) == [vocab[x] for x in "abc"] and sorted(hist["f"][3:]) == [vocab["d"], vocab["e"]]
    # Labels (rating >= 4) and slot rows: f's slot 0 is P1, slot 1 is P0; c's slots are empty.
    assert list(ts.label[order]) == [1, 1, 0, 1, 0, 1]
    f, c = order[5], order[2]
    assert ts.slot_rows[c].tolist() == [0, 0]
    summ, _ = ts.vectors(ts.slot_rows[f][None])
    assert np.count_nonzero(np.abs(summ[0]).sum(1)) == 2
    assert ts.counts["samples_with_0_partitions"] == 3 and ts.counts["samples"] == 6


def _online_inputs(store, ledger, ts, u: str, sample: int | None = None) -> dict:
    """Materialize and push as the CLI does, read ``u`` through the ranker's FeatureService, and
    turn the row into model inputs with the scorer's code. With ``sample``: also the statistics
    inputs of its candidate at its time, from one online read of each statistics view."""
    for view in (LONG_TERM_VIEW, USER_STATS_VIEW, ITEM_STATS_VIEW):
        sync_view(store, ledger, view)  # what `liber materialize` does
    push_short_term_cache(store, online_caches(ledger))
    row = store.get_online_features(features=store.get_feature_service(RANKER_SERVICE),
                                    entity_rows=[{"user_id": u}], full_feature_names=True).to_dict()
    lt, st = f"{LONG_TERM_VIEW}__", f"{SHORT_TERM_VIEW}__"
    stats = {}
    if sample is not None:
        user = store.get_online_features(features=[f"{USER_STATS_VIEW}:{f}" for f in USER_STAT_FIELDS],
                                         entity_rows=[{"user_id": u}]).to_dict()
        item = store.get_online_features(features=[f"{ITEM_STATS_VIEW}:{f}" for f in ITEM_STAT_FIELDS],
                                         entity_rows=[{"item_id": ts.item_ids[sample]}]).to_dict()
        genres = genre_vocab(source_path(store, USER_STATS_VIEW))
        hot = genre_hot(list(ts.catalog.set_index("item_id").categories.reindex([ts.item_ids[sample]])), genres)
        stats = {"stats": stats_inputs(user, item, int(ts.ts_us[sample]), item_genres=hot)}
    return stats | user_inputs(
        user_id=u, user_vocab=ts.user_vocab, item_vocab=ts.item_vocab, memory_slots=2, vector_dim=4,
        history_length=5, summary_vectors=row[lt + "summary_vectors"][0],
        shift_vectors=row[lt + "shift_vectors"][0], partition_count=row[lt + "partition_count"][0],
        recent_item_ids=row[lt + "recent_item_ids"][0], cache_item_ids=row[st + "cache_item_ids"][0])


@pytest.mark.parametrize("moment_rank,projected", [(3, False), (40, False), (75, False), (120, False),
                                                   (3, True), (120, True)])
def test_training_inputs_equal_online_inputs_at_the_same_moment(tmp_path, moment_rank, projected):
    """Replay real MovieLens events up to a moment; what the online store serves then, turned
    into model inputs by the scorer's code, equals the training builder's inputs for a sample at
    that moment. ``projected``: the text vectors are D = 8 and the views hold their D′ = 4 PCA
    projection, fitted once on the full ledger and applied to the live one's partitions."""
    from liber_features.uil.projection import load_projections

    events, catalog = movielens_users(["1", "5"])
    full_ledger, _, full_store = encoded_repo(tmp_path / "full", events, catalog, k=7, shape=SHAPE,
                                              projection="fit" if projected else None)
    (fitted,) = load_projections(full_ledger) if projected else (None,)
    ts = build_training_set(full_ledger, full_store, SampleConfig(), SHAPE)
    u = "1"
    times = np.sort(np.unique(events[events.user_id == u].timestamp))
    t = int(times[min(moment_rank, len(times) - 1)])
    sample = int(np.flatnonzero((ts.user_ids == u) & (ts.ts_us == t * 1_000_000))[0])

    # The streaming side: only the events before the moment have happened.
    ledger, _, store = encoded_repo(tmp_path / "live", events[events.timestamp < t], catalog, k=7,
                                    shape=SHAPE, projection=fitted)
    online = _online_inputs(store, ledger, ts, u, sample)
    summ, shift = ts.vectors(ts.slot_rows[sample][None])
    assert np.array_equal(online["stats"][0], ts.stats[sample])  # bit-equal, every statistic
    before = events[(events.user_id == u) & (events.timestamp < t)]  # the ratings strictly before t
    assert ts.stats[sample][STAT_NAMES.index("user_label_count")] == len(before) > 0
    assert ts.stats[sample][STAT_NAMES.index("user_genre_label_count")] > 0  # genres are exercised too
    assert online["partition_count"][0] == ts.partition_count[sample]
    assert online["hist_idx"][0].tolist() == ts.hist_idx[sample].tolist()
    assert online["user_idx"][0] == ts.user_idx[sample]
    assert np.array_equal(online["summary"], summ) and np.array_equal(online["shift"], shift)
    assert ts.partition_count[sample] > 0 or moment_rank == 3  # the moments do exercise memory
    if projected:  # the table is the projection's, not the 8-d vectors cut to 4
        assert ts.encoder_version != build_training_set(
            *encoded_repo(tmp_path / "plain", events, catalog, k=7, shape=SHAPE)[::2]).encoder_version


def test_implicit_feedback_samples_see_every_event_and_equal_online_inputs(tmp_path):
    """Purchases positive with sampled negatives on a views-and-purchases log: the histories hold the
    unlabelled views (the online cache holds them too), and a sample's inputs equal what the online
    store gives the scorer at that moment; a sampled negative shares its positive's inputs and split."""
    from shoplog import shop_log

    from liber_features.training.labels import LabelRule

    events, catalog = shop_log(users=3)
    rule = LabelRule.parse("sampled:purchase:2")
    full_ledger, _, full_store = encoded_repo(tmp_path / "full", events, catalog, k=7, shape=SHAPE)
    ts = build_training_set(full_ledger, full_store, SampleConfig(labels=rule), SHAPE)
    pos = np.flatnonzero(ts.label == 1)
    assert len(pos) == (events.event_type == "purchase").sum() and ts.counts["label_rule"] == rule.describe()
    assert ts.counts["sampled_negatives"] == len(ts.label) - len(pos) > len(pos)
    # Negatives stand at their positive's moment, with its inputs, in its split.
    sizes = []
    for i in pos[:30]:
        same = np.flatnonzero((ts.user_ids == ts.user_ids[i]) & (ts.ts_us == ts.ts_us[i]))
        sizes.append(len(same))
        assert len(set(ts.split[same])) == 1 and len(set(ts.label[same])) == (len(same) > 1) + 1
        assert all(ts.hist_idx[j].tolist() == ts.hist_idx[i].tolist() for j in same)
    assert sizes.count(3) >= 25  # a user's first purchases may find a pool too small
    views = {ts.item_vocab[x] for x in events.item_id[events.event_type == "view"]}
    bought = {ts.item_vocab[x] for x in events.item_id[events.event_type == "purchase"]}
    assert set(ts.hist_idx[pos].ravel()) & (views - bought)  # unlabelled views are in the histories

    u = "u01"
    i = int(pos[np.flatnonzero(ts.user_ids[pos] == u)[-2]])
    t_s = ts.ts_us[i] / 1e6
    seconds = events.timestamp.map(lambda x: int(x) if x.isdigit() else int(pd.Timestamp(x).timestamp()))
    live = events[seconds < t_s]
    ledger, _, store = encoded_repo(tmp_path / "live", live, catalog, k=7, shape=SHAPE)
    online = _online_inputs(store, ledger, ts, u, i)
    summ, shift = ts.vectors(ts.slot_rows[i][None])
    assert np.array_equal(online["stats"][0], ts.stats[i])
    assert online["partition_count"][0] == ts.partition_count[i] > 0
    assert online["hist_idx"][0].tolist() == ts.hist_idx[i].tolist()
    assert np.array_equal(online["summary"], summ) and np.array_equal(online["shift"], shift)
