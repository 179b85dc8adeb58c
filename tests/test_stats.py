"""User and item statistics views: Feast's point-in-time join returns exactly the statistics of the
events strictly before each sample's time, computed here by brute force from the raw events."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from feastrepo import Repo, cleanup
from modelkit import write_log

from liber_features.cli.repo import materialize as materialize_cmd
from liber_features.features.repo import (
    LONG_TERM_SCHEMA,
    LONG_TERM_VIEW,
    LiberFeatureConfig,
    data_file,
    sample_long_term,
    write_parquet,
)
from liber_features.features.stats import (
    ITEM_STATS_VIEW,
    USER_STATS_VIEW,
    StatsConfig,
    genre_hot,
    genre_vocab,
    stats_tables,
)
from liber_features.ingest.events import load_events
from liber_features.ingest.job import ingest
from liber_features.ingest.partition import PartitionRule
from liber_features.ledger.store import Ledger
from liber_features.training.labels import LabelRule
from liber_features.training.statistics import ledger_stats, refresh_stats_tables

S = 1_000_000  # µs per second
SHAPE = LiberFeatureConfig()
# Same-second ties (u1 at 100, item a twice at 200), an unrated event (u2's c: history only, but an
# event), a user and an item first seen late, and ids that never appear.
EVENTS = pd.DataFrame({
    "user_id": ["u1", "u1", "u1", "u1", "u2", "u2", "u2", "u3"],
    "item_id": ["a", "b", "c", "a", "a", "c", "b", "d"],
    "timestamp": [100, 100, 150, 200, 200, 250, 300, 400],
    "rating": [5.0, 2.0, 4.0, 3.5, 4.5, np.nan, 1.0, 4.0],
})  # fmt: skip
CATALOG = pd.DataFrame({"item_id": list("abcde"), "title": list("ABCDE"),
                        "categories": ["Drama|Comedy", "Comedy", "(no genres listed)", "Drama", "Horror"]})
GENRES = ("Comedy", "Drama", "Horror")  # sorted; MovieLens' placeholder is no genre
USER_FEATURES = ["event_count", "label_count", "positive_count", "rated_count", "positive_rate", "mean_rating"]


def brute_force(ev: pd.DataFrame, key: str, entity: str, t_us: int, cfg: StatsConfig) -> dict:
    """Statistics of ``entity``'s events strictly before ``t_us``, straight from the definition."""
    mine = ev[(ev[key] == entity) & (ev.timestamp * S < t_us)]
    rated = mine.rating.dropna()
    pos = int((rated >= 4).sum())
    return {"event_count": len(mine), "label_count": len(rated), "positive_count": pos, "rated_count": len(rated),
            "positive_rate": (pos + cfg.smoothing * cfg.prior_rate) / (len(rated) + cfg.smoothing),
            "mean_rating": (rated.sum() + cfg.smoothing * cfg.prior_rating) / (len(rated) + cfg.smoothing),
            "last_event_at": int(mine.timestamp.max()) * S if len(mine) else None,
            "genre_labels": [int(sum(g in _cats(x) for x in mine[mine.rating.notna()].item_id)) for g in GENRES],
            "genre_positives": [int(sum(g in _cats(x) for x in mine[mine.rating >= 4].item_id)) for g in GENRES]}


def _cats(item: str) -> list[str]:
    return CATALOG.set_index("item_id").categories[item].split("|")


@pytest.fixture
def stats_repo(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ingest(load_events(*write_log(tmp_path / "in", EVENTS, CATALOG)), ledger, PartitionRule(k=50), progress=False)
    repo_dir = tmp_path / "repo"
    repo_dir.mkdir()
    repo = Repo(repo_dir, "sqlite")
    refresh_stats_tables(ledger, repo_dir)
    return ledger, repo, repo.apply()


# (entity, t in µs): before anything, exactly at an event (not visible), 1 µs later (visible), between
# events, at a same-second tie, after everything, and entities with no events at all.
USER_MOMENTS = [("u1", 50 * S), ("u1", 100 * S), ("u1", 100 * S + 1), ("u1", 150 * S), ("u1", 150 * S + 1),
                ("u1", 999 * S), ("u2", 250 * S), ("u2", 250 * S + 1), ("u2", 300 * S + 1), ("u3", 400 * S),
                ("u3", 400 * S + 1), ("ghost", 500 * S)]
ITEM_MOMENTS = [("a", 100 * S), ("a", 100 * S + 1), ("a", 200 * S), ("a", 200 * S + 1), ("c", 250 * S + 1),
                ("b", 300 * S + 1), ("d", 400 * S), ("d", 400 * S + 1), ("e", 999 * S), ("zzz", 999 * S)]


def _historical(store, key: str, view: str, prefix: str, moments, extra=()) -> pd.DataFrame:
    entity = pd.DataFrame({key: [m[0] for m in moments],
                           "event_timestamp": pd.to_datetime([m[1] for m in moments], unit="us", utc=True),
                           "row": np.arange(len(moments))})
    names = [f"{prefix}_{f}" for f in (*USER_FEATURES, *extra)]
    out = store.get_historical_features(entity_df=entity, features=[f"{view}:{n}" for n in names]).to_df()
    return out.sort_values("row").reset_index(drop=True)


def test_point_in_time_user_stats_are_those_of_events_strictly_before_t(stats_repo):
    _, _, store = stats_repo
    cfg = StatsConfig()
    out = _historical(store, "user_id", USER_STATS_VIEW, "user", USER_MOMENTS,
                      extra=("last_event_at", "genre_label_counts", "genre_positive_counts"))
    assert genre_vocab(data_file(f"{USER_STATS_VIEW}.parquet", repo_dir=stats_repo[1].root)) == GENRES
    for i, (user, t) in enumerate(USER_MOMENTS):
        want = brute_force(EVENTS, "user_id", user, t, cfg)
        row = out.iloc[i]
        if want["event_count"] == 0:  # no row before the first event: Feast gives nulls (the model reads 0)
            assert row[[f"user_{f}" for f in USER_FEATURES]].isna().all(), (user, t)
            assert pd.isna(row.user_last_event_at)
            continue
        got = {f: row[f"user_{f}"] for f in USER_FEATURES}
        assert got == pytest.approx({f: want[f] for f in USER_FEATURES}, abs=0, rel=1e-15), (user, t)
        assert pd.Timestamp(row.user_last_event_at).value // 1000 == want["last_event_at"], (user, t)
        assert list(row.user_genre_label_counts) == want["genre_labels"], (user, t)
        assert list(row.user_genre_positive_counts) == want["genre_positives"], (user, t)
    # Spot values, by hand: u1 at 150 s sees the two same-second ratings at 100 (5 → positive, 2).
    u1 = out.iloc[3]
    assert (u1.user_event_count, u1.user_label_count, u1.user_positive_count) == (2, 2, 1)
    assert u1.user_positive_rate == (1 + 5) / (2 + 10) and u1.user_mean_rating == (7 + 35) / (2 + 10)
    # u2 just after 250 s: its unrated event counts as an event, not as a label.
    u2 = out.iloc[7]
    assert (u2.user_event_count, u2.user_label_count) == (2, 1)
    # u1 at 150 s: a (Drama|Comedy, 5: positive) and b (Comedy, 2) → Comedy 2 labels 1 positive, Drama 1 / 1.
    assert (list(u1.user_genre_label_counts), list(u1.user_genre_positive_counts)) == ([2, 1, 0], [1, 1, 0])


def test_genre_conditional_rate_pools_the_candidates_genres():
    from liber_features.model.inputs import STAT_NAMES, stats_inputs

    user = {"user_event_count": [5], "user_label_count": [4], "user_positive_rate": [0.6], "user_mean_rating": [4.0],
            "user_last_event_at": [None], "user_genre_label_counts": [[2, 1, 0]],
            "user_genre_positive_counts": [[1, 1, 0]]}
    items = {f: [1, 1, 1] for f in ("item_event_count", "item_label_count")} | {
        "item_positive_rate": [0.5] * 3, "item_mean_rating": [3.0] * 3}
    hot = genre_hot(["Drama|Comedy", "Horror", "Western"], GENRES)  # Western: not in the vocabulary
    x = stats_inputs(user, items, 10**6, StatsConfig(smoothing=0), item_genres=hot)
    col = {n: x[:, i] for i, n in enumerate(STAT_NAMES)}
    assert col["user_genre_label_count"].tolist() == [3, 0, 0]
    assert col["user_genre_positive_rate"].tolist() == pytest.approx([2 / 3, 0.5, 0.5])  # none seen: the prior
    assert col["seconds_since_previous"].tolist() == [-1, -1, -1]


def test_point_in_time_item_stats_and_the_unseen_flag(stats_repo):
    _, _, store = stats_repo
    cfg = StatsConfig()
    out = _historical(store, "item_id", ITEM_STATS_VIEW, "item", ITEM_MOMENTS)
    for i, (item, t) in enumerate(ITEM_MOMENTS):
        want = brute_force(EVENTS, "item_id", item, t, cfg)
        row = out.iloc[i]
        if want["event_count"] == 0:  # unseen before t: no row yet
            assert row[[f"item_{f}" for f in USER_FEATURES]].isna().all(), (item, t)
            continue
        got = {f: row[f"item_{f}"] for f in USER_FEATURES}
        assert got == pytest.approx({f: want[f] for f in USER_FEATURES}, abs=0, rel=1e-15), (item, t)
    # a at 200 s + 1 µs: u1's 5 and 3.5 and u2's 4.5 (two of them in that very second).
    a = out.iloc[3]
    assert (a.item_event_count, a.item_label_count, a.item_positive_count) == (3, 3, 2)
    assert out.iloc[2].item_event_count == 1  # exactly at 200 s: only the rating at 100 s


def test_tables_have_one_row_per_entity_per_change_and_stable_created_at(stats_repo):
    ledger, repo, _ = stats_repo
    path = data_file(f"{USER_STATS_VIEW}.parquet", repo_dir=repo.root)
    user = pq.read_table(path).to_pandas()
    # u1 has events at 100, 150, 200: three rows, stamped 1 µs after each.
    u1 = user[user.user_id == "u1"].sort_values("event_timestamp")
    assert [t.value // 1000 for t in u1.event_timestamp] == [100 * S + 1, 150 * S + 1, 200 * S + 1]
    assert len(user) == 3 + 3 + 1
    # A rebuild from an unchanged ledger changes no created_at: the online sync rewrites nothing.
    again = ledger_stats(ledger)
    assert again.user.column("created_at").equals(pq.read_table(path).column("created_at"))
    assert again.user.column("created_at").to_pylist() == user.created_at.tolist()


def test_sampled_negatives_count_as_labels_without_a_rating():
    ev = pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "ts_us": [10], "created_us": [1]})
    samples = pd.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "x"], "ts_us": [10, 10], "label": [1.0, 0.0],
                            "rating": [np.nan, np.nan], "created_us": [1, 1]})
    t = stats_tables(ev, samples, StatsConfig(smoothing=0))
    assert t.user.to_pylist()[0]["user_label_count"] == 2 and t.user.to_pylist()[0]["user_positive_rate"] == 0.5
    items = {r["item_id"]: r for r in t.item.to_pylist()}
    x = items["x"]
    assert (x["item_event_count"], x["item_label_count"], x["item_positive_count"]) == (0, 1, 0)
    assert items["a"]["item_mean_rating"] == 3.5  # no rating: the prior, not a division by zero


def test_a_rule_that_labels_nothing_still_counts_events(stats_repo):
    ledger, _, _ = stats_repo
    t = ledger_stats(ledger, LabelRule.parse("label"))  # no explicit labels in this log
    last_u1 = max((r for r in t.user.to_pylist() if r["user_id"] == "u1"), key=lambda r: r["event_timestamp"])
    assert (last_u1["user_event_count"], last_u1["user_label_count"], last_u1["user_positive_rate"]) == (4, 0, 0.5)
    assert t.user.num_rows == 7 and t.item.column("item_label_count").to_pylist() == [0] * t.item.num_rows


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("redis", marks=[pytest.mark.redis, pytest.mark.postgres])])
def test_liber_materialize_puts_the_latest_stats_online(tmp_path, monkeypatch, backend):
    # Tables in <repo>/data whatever --ledger says (LIBER_DATA_DIR), as `liber` commands find them.
    monkeypatch.setenv("LIBER_DATA_DIR", "data")
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ingest(load_events(*write_log(tmp_path / "in", EVENTS, CATALOG)), ledger, PartitionRule(k=50), progress=False)
    repo_dir = tmp_path / "repo"
    repo_dir.mkdir()
    repo = Repo(repo_dir, backend)
    for name, value in repo.env.items():
        monkeypatch.setenv(name, value)
    try:
        # Nothing encoded here: a sample long-term row stands in (materialize needs that table).
        write_parquet(sample_long_term(["u1"], datetime(2000, 1, 1, tzinfo=UTC), shape=SHAPE),
                      data_file(f"{LONG_TERM_VIEW}.parquet", repo_dir=repo_dir), LONG_TERM_SCHEMA, ledger)
        store = repo.apply()
        runner = CliRunner()
        args = ["--repo", str(repo_dir), "--ledger", ledger.url, "--json"]
        first = runner.invoke(materialize_cmd, args)
        assert first.exit_code == 0, first.output
        written = json.loads(first.stdout.strip().splitlines()[-1])["stats_written"]
        assert (written[USER_STATS_VIEW], written[ITEM_STATS_VIEW]) == (3, 4)  # u1-u3; items a-d
        cfg, now = StatsConfig(), 10**6 * S
        users = ["u1", "u2", "u3", "ghost"]
        got = store.get_online_features(features=[f"{USER_STATS_VIEW}:user_{f}" for f in USER_FEATURES],
                                        entity_rows=[{"user_id": u} for u in users]).to_dict()
        for i, u in enumerate(users):
            want = brute_force(EVENTS, "user_id", u, now, cfg)
            if u == "ghost":
                assert all(got[f"user_{f}"][i] is None for f in USER_FEATURES)
                continue
            assert {f: got[f"user_{f}"][i] for f in USER_FEATURES} == {f: want[f] for f in USER_FEATURES}, u
        items = ["a", "b", "c", "d", "e"]
        got = store.get_online_features(features=[f"{ITEM_STATS_VIEW}:item_{f}" for f in USER_FEATURES],
                                        entity_rows=[{"item_id": x} for x in items]).to_dict()
        for i, x in enumerate(items[:4]):
            want = brute_force(EVENTS, "item_id", x, now, cfg)
            assert {f: got[f"item_{f}"][i] for f in USER_FEATURES} == {f: want[f] for f in USER_FEATURES}, x
        assert got["item_event_count"][4] is None  # e: in the catalog, never seen
        # Nothing changed in the ledger: the rebuilt tables carry the same created_at, so the mark
        # stays where it was (rows within SYNC_OVERLAP of it are rewritten, idempotently, by design).
        marks = json.loads(first.stdout.strip().splitlines()[-1])["synced_to"]
        second = json.loads(runner.invoke(materialize_cmd, args).stdout.strip().splitlines()[-1])
        for view in (USER_STATS_VIEW, ITEM_STATS_VIEW):
            assert second["previously_synced_to"][view] == second["synced_to"][view] == marks[view]
    finally:
        cleanup(repo)


def test_the_training_join_in_blocks_equals_one_join(stats_repo):
    from liber_features.training.statistics import point_in_time_stats

    _, _, store = stats_repo
    samples = pd.DataFrame({"user_id": [m[0] for m in USER_MOMENTS],
                            "item_id": [m[0] for m in ITEM_MOMENTS] + ["a", "b"],
                            "ts_us": [m[1] for m in USER_MOMENTS]})
    whole = point_in_time_stats(store, samples, CATALOG)
    assert np.array_equal(point_in_time_stats(store, samples, CATALOG, chunk=5), whole)
    assert whole.shape == (len(samples), 12) and whole[:, 0].tolist()[:3] == [0, 0, 2]  # u1: 50 s, 100 s, +1 µs
