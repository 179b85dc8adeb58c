"""training/prepare.py: the model card names the versions of the vectors it was trained on.

After a partial migration run (a new LLM encoded with --limit, completing nobody) the newest
successful encode run names the new LLM while every user's table rows keep the old one. The card
must name the old one, or the scorer refuses the model it describes."""

from __future__ import annotations

import pytest
from feastrepo import cleanup
from modelkit import encoded_repo, export_model, hash_llm, movielens_users

from liber_features.errors import ConfigError
from liber_features.features.memory import encoder_version, latest_versions, versions_of
from liber_features.features.repo import LiberFeatureConfig
from liber_features.serving.scorer import LiberScorer
from liber_features.testing import CountingLLM, HashEncoder
from liber_features.training.prepare import checkpoint_meta, prepare_training_set
from liber_features.uil.interest import EncodeConfig, run_encode

SHAPE = LiberFeatureConfig(memory_slots=3, vector_dim=4, history_length=6)


@pytest.fixture
def migrated(tmp_path, monkeypatch):
    for k, v in {"LIBER_MEMORY_SLOTS": "3", "LIBER_VECTOR_DIM": "4", "LIBER_HISTORY_LENGTH": "6"}.items():
        monkeypatch.setenv(k, v)
    events, catalog = movielens_users(["1", "5", "8"])
    ledger, repo, _ = encoded_repo(tmp_path, events, catalog, k=10, shape=SHAPE)
    old = latest_versions(ledger)
    # The migration starts: one partition under a new LLM, nobody complete in it.
    run_encode(ledger, CountingLLM("fake:next@2"), HashEncoder("fake-hash-enc@1", dim=4),
               EncodeConfig(limit=1), progress=False)
    yield ledger, repo, old
    cleanup(repo)


def test_the_card_names_the_trained_versions_not_the_newest_run(migrated, tmp_path):
    ledger, repo, old = migrated
    newest = latest_versions(ledger)
    assert (old[1], newest[1]) == (hash_llm().llm_id, "fake:next@2")
    _, ts, versions = prepare_training_set(ledger.url, None, str(repo.root), say=lambda _m: None)
    assert ts.encoder_version == encoder_version(*old)
    assert versions == old
    export_model(tmp_path / "model", ts, versions)
    scorer = LiberScorer.load(tmp_path / "model", repo.root, store=repo.store())
    assert (scorer.card.llm_id, scorer.card.encoder_version) == (old[1], encoder_version(*old))
    assert scorer.score("1", ["1", "3"]).scores.shape == (2,)


def test_checkpoint_meta_refuses_versions_that_are_not_the_sets(migrated):
    ledger, repo, old = migrated
    _, ts, _ = prepare_training_set(ledger.url, None, str(repo.root), say=lambda _m: None)
    with pytest.raises(ConfigError, match=r"are not those of the training set's vectors \(" + ts.encoder_version):
        checkpoint_meta(ts, None, latest_versions(ledger), ledger)


def test_versions_of_finds_each_encoded_version_and_refuses_a_foreign_one(migrated):
    from liber_features.errors import LedgerError

    ledger, _, old = migrated
    new = latest_versions(ledger)
    assert versions_of(ledger, encoder_version(*old)) == old
    assert versions_of(ledger, encoder_version(*new)) == new
    with pytest.raises(LedgerError, match="encoder version 0123456789ab is not in ledger "):
        versions_of(ledger, "0123456789ab")
