"""Across modules: ingest → caches online (real Redis), and the README's demo end to end."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import ml_latest_small
from feastrepo import Repo, cleanup, redis_client

from liber_features.cli.main import cli
from liber_features.features.repo import SHORT_TERM_VIEW
from liber_features.settings import ledger_key


def cache_online(store, users):
    rows = store.get_online_features(
        features=[f"{SHORT_TERM_VIEW}:cache_length", f"{SHORT_TERM_VIEW}:cache_item_ids"],
        entity_rows=[{"user_id": u} for u in users]).to_dict()
    return dict(zip(users, zip(rows["cache_length"], rows["cache_item_ids"])))


@pytest.mark.redis
@pytest.mark.postgres
def test_ingest_push_keeps_online_caches_current_and_clears_them_on_seal(tmp_path, monkeypatch):
    redis_client()
    repo = Repo(tmp_path, "redis")
    for name, value in repo.env.items():
        monkeypatch.setenv(name, value)
    store = repo.apply()
    try:
        log = tmp_path / "events.csv"
        log.write_text("user_id,item_id,timestamp,rating\n"
                       "u1,10,1000000000,4\nu1,11,1000000001,5\nu1,12,1000000002,3\n"
                       "u2,10,1000000000,4\n")
        ledger = f"sqlite:///{tmp_path / 'l.db'}"
        args = ["ingest", "--events", str(log), "--ledger", ledger, "--k", "3", "--push",
                "--repo", str(tmp_path), "--json"]
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, r.output
        assert json.loads(r.output.strip().splitlines()[-1])["partitions_sealed"] == 1
        got = cache_online(store, ["u1", "u2"])
        assert got["u1"][0] == 0  # sealed: the cache is empty online too
        assert got["u2"] == (1, ["10"])

        log.write_text("user_id,item_id,timestamp,rating\nu1,13,1000000003,4\n")
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, r.output
        got = cache_online(store, ["u1", "u2"])
        assert got["u1"] == (1, ["13"]) and got["u2"] == (1, ["10"])
        # The history lives in this ledger's own data directory (issue 22): data/ledger-<key of its URL>.
        history = pq.read_table(tmp_path / "data" / ledger_key(ledger, None) / f"{SHORT_TERM_VIEW}.parquet").to_pandas()
        assert sorted(history.user_id) == ["u1", "u1", "u2"]

        # A lost push (Redis flushed, a failed --push) is repaired from the ledger.
        client = redis_client()
        client.delete(*client.scan_iter(match=b"*" + repo.project.encode()))
        assert cache_online(store, ["u1"])["u1"][0] is None
        r = CliRunner().invoke(cli, ["push-caches", "--ledger", ledger, "--repo", str(tmp_path),
                                     "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.output.strip().splitlines()[-1]) == {"caches_pushed": 2, "ledger": ledger,
                                                                   "repo": str(tmp_path)}
        assert cache_online(store, ["u1", "u2"]) == {"u1": (1, ["13"]), "u2": (1, ["10"])}
    finally:
        cleanup(repo)


@pytest.mark.models
@pytest.mark.slow
def test_demo_runs_end_to_end_and_reruns_without_llm_calls(tmp_path):
    (tmp_path / "repo").mkdir()
    repo = Repo(tmp_path / "repo", "sqlite")  # a copy with its own project: the demo applies it
    args = ["demo", "--workdir", str(tmp_path / "work"), "--repo", str(repo.root),
            "--users", "5", "--max-new-tokens", "16", "--json"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    out = json.loads(first.output.strip().splitlines()[-1])
    assert out["ingest"]["partitions_sealed"] == 4_769
    assert (out["encode"]["partitions_done"], out["encode"]["llm_calls"]) == (2, 3)
    fetch = out["fetch"]
    assert fetch["user_id"] == "5" and fetch["partition_count"] == 2 and fetch["filled_slots"] == 2
    assert fetch["online_equals_offline"] and fetch["latest_summary"].strip()
    assert fetch["cache_length"] == 4  # 44 ratings, K=20
    model = out["model"]  # steps 7-9: train, export, score user 5 online
    assert (tmp_path / "work/model/model.onnx").is_file() and (tmp_path / "work/model/model_card.json").is_file()
    top = model["top"]
    assert len(top) == 5 and [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    assert not model["cold_start"] and len(model["encoder_version"]) == 12
    rated = set(pd.read_csv(ml_latest_small() / "ratings.csv", dtype=str).query("userId == '5'").movieId)
    assert not {item for item, _ in top} & rated  # only unrated candidates are ranked
    ranker = out["ranker"]  # the LightGBM ranker over the statistics views, exported and served too
    assert (tmp_path / "work/ranker/model.onnx").is_file() and (tmp_path / "work/ranker/ranker_items.npz").is_file()
    assert ranker["test_auc"] > 0.75 and ranker["scores_finite"] and not ranker["cold_start"]
    assert ranker["encoder_version"] == model["encoder_version"]  # user 5's memory is read by both
    lgb_top = ranker["top"]
    assert len(lgb_top) == 5 and not {item for item, _ in lgb_top} & rated
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    out2 = json.loads(again.output.strip().splitlines()[-1])
    assert out2["encode"]["llm_calls"] == 0 and out2["ingest"]["accepted"] == 0
    assert out2["fetch"]["online_equals_offline"]
