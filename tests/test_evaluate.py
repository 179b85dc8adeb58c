"""``liber train / evaluate / export`` end to end on a tiny real ledger (fake LLM, real text encoder)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from modelkit import encoded_repo, movielens_users

from liber_features.cli.main import cli
from liber_features.features.repo import LiberFeatureConfig

SHAPE = LiberFeatureConfig(memory_slots=2, vector_dim=4, history_length=5)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    # LIBER_DATA_DIR: encoded_repo writes the tables with no ledger in the environment, and
    # `liber train --ledger` must find them there (the default data dir is per ledger).
    for k, v in {"LIBER_MEMORY_SLOTS": "2", "LIBER_VECTOR_DIM": "4", "LIBER_HISTORY_LENGTH": "5",
                 "LIBER_DATA_DIR": "data"}.items():
        monkeypatch.setenv(k, v)
    events, catalog = movielens_users(["1", "5", "8"])
    ledger, repo, _ = encoded_repo(tmp_path, events, catalog, k=10, shape=SHAPE)
    return ledger, repo, tmp_path


@pytest.mark.models
@pytest.mark.slow  # trains twelve models
def test_evaluate_grid_writes_the_report_and_replays_from_a_saved_set(tiny):
    ledger, repo, tmp = tiny
    args = ["evaluate", "--ledger", ledger.url, "--repo", str(repo.root), "--backbones", "din,dcnv2",
            "--variants", "none,both,summary,nollm,shuffled,random", "--seeds", "0", "--epochs", "1",
            "--device", "cpu", "--bootstrap", "50"]
    r = CliRunner().invoke(cli, [*args, "--out", str(tmp / "docs"), "--save-set", str(tmp / "set.npz"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp / "docs/evaluation.json").read_text())
    assert len(doc["runs"]) == 12 and len(doc["summary"]) == 12
    assert doc["header"]["k"] == 10 and doc["header"]["m"] == 2 and doc["header"]["llm"] == "fake:hash@1"
    assert doc["header"]["samples"]["samples"] == len(movielens_users(["1", "5", "8"])[0])
    assert {s["variant"] for s in doc["summary"]} == {"none", "both", "summary", "nollm", "shuffled", "random"}
    # Every variant against the backbone alone, each LIBER variant against each placebo.
    assert set(doc["intervals"]["din"]) == {
        "both - none", "summary - none", "nollm - none", "shuffled - none", "random - none",
        "both - shuffled", "both - random", "summary - shuffled", "summary - random"}
    iv = doc["intervals"]["dcnv2"]["both - none"]["auc"]
    assert iv["lo"] <= iv["delta"] <= iv["hi"]
    assert all(s["auc_rel_change_pct"] == 0.0 for s in doc["summary"] if s["variant"] == "none")
    md = (tmp / "docs/evaluation.md").read_text()
    assert "K = 10; memory slots M = 2; history L = 5" in md and md.count("| din |") == 6 * 2 + 9
    assert "## Is the difference more than noise?" in md and "- din, LIBER summary + shift: " in md
    for png in ("evaluation.png", "evaluation_by_partitions.png"):
        assert (tmp / "docs" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The saved set replays the same grid without the ledger or Feast: same numbers on CPU.
    r = CliRunner().invoke(cli, ["evaluate", "--training-set", str(tmp / "set.npz"), "--backbones", "din",
                                 "--variants", "both", "--seeds", "0", "--epochs", "1", "--device", "cpu",
                                 "--out", str(tmp / "again"), "--json"])
    assert r.exit_code == 0, r.output
    again = json.loads((tmp / "again/evaluation.json").read_text())["runs"][0]
    first = next(x for x in doc["runs"] if x["backbone"] == "din" and x["variant"] == "both")
    assert again["test"] == first["test"]


@pytest.mark.models
@pytest.mark.slow  # trains a model through the CLI
def test_train_then_export_writes_model_and_card(tiny):
    ledger, repo, tmp = tiny
    out = tmp / "model"
    r = CliRunner().invoke(cli, ["train", "--ledger", ledger.url, "--repo", str(repo.root), "--backbone", "dcnv2",
                                 "--epochs", "1", "--device", "cpu", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["epochs"] == 1
    r = CliRunner().invoke(cli, ["export", str(out), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    assert summary["backbone"] == "dcnv2" and summary["opset"] == 17 and summary["users"] == 3
    card = json.loads((out / "model_card.json").read_text())
    assert card["llm_id"] == "fake:hash@1" and card["train_time_range"][0] < card["train_time_range"][1]


def test_export_without_a_checkpoint_is_one_clear_error(tmp_path):
    r = CliRunner().invoke(cli, ["export", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "run `liber train --out" in r.output and "Traceback" not in r.output
