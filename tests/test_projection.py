"""D′ projections: fitted on training-period partitions only, stored, applied once to every vector,
and chosen by the views' D (uil/projection.py, training/fit_projection.py)."""

from __future__ import annotations

import numpy as np
import pytest
from modelkit import hash_llm, movielens_users, write_log
from sqlalchemy import select, update

from liber_features.errors import ConfigError, VectorShapeError
from liber_features.features.memory import encoder_version, latest_versions, memory_table, to_frame
from liber_features.ingest.events import load_events
from liber_features.ingest.job import ingest
from liber_features.ingest.partition import PartitionRule
from liber_features.ledger.store import Ledger, interests, partitions, projections, vectors
from liber_features.testing import HashEncoder
from liber_features.training.fit_projection import fit_projection
from liber_features.training.samples import SampleConfig, train_period_ends
from liber_features.uil.interest import run_encode
from liber_features.uil.projection import load_projections, project_new, save_projection

D, D2 = 16, 4


@pytest.fixture
def ledger(tmp_path):
    events, catalog = movielens_users(["1", "5", "8"])
    led = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ev, cat = write_log(tmp_path / "in", events, catalog)
    ingest(load_events(ev, cat), led, PartitionRule(k=10), progress=False)
    run_encode(led, hash_llm(), HashEncoder("fake-hash-enc@1", dim=D), progress=False)
    return led


def _vectors(led: Ledger, encoder_id: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    with led.engine.connect() as conn:
        rows = conn.execute(select(vectors.c.interest_id, vectors.c.summary_vec, vectors.c.shift_vec)
                            .where(vectors.c.encoder_id == encoder_id)).all()
    return {r.interest_id: (np.frombuffer(r.summary_vec, "<f4"), np.frombuffer(r.shift_vec, "<f4"))
            for r in rows}


def _sealed(led: Ledger) -> list[tuple[str, int, int]]:
    with led.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(
            partitions.c.user_id, partitions.c.sealed_at_us, interests.c.id).select_from(
            partitions.join(interests, interests.c.partition_id == partitions.c.id)))]


def test_fit_sees_training_period_partitions_only(ledger):
    ends = train_period_ends(ledger, SampleConfig())
    sealed = _sealed(ledger)
    inside = [i for u, at, i in sealed if at < ends[u]]
    outside = [i for u, at, i in sealed if at >= ends[u]]
    assert len(inside) == 24 and len(outside) == 7  # the three users' 31 partitions, split by time
    p = fit_projection(ledger, D2)
    assert (p.fitted_on["partitions"], p.fitted_on["users"]) == (24, 3)
    # Overwrite every later partition's vectors with noise: the fit must not change at all.
    rng = np.random.default_rng(7)
    with ledger.begin() as conn:
        for i in outside:
            conn.execute(update(vectors).where(vectors.c.interest_id == i).values(
                summary_vec=rng.standard_normal(D).astype("<f4").tobytes(),
                shift_vec=rng.standard_normal(D).astype("<f4").tobytes()))
    again = fit_projection(ledger, D2)
    assert again.projection_id == p.projection_id
    assert np.array_equal(again.components, p.components) and np.array_equal(again.mean, p.mean)
    # ...while a change inside the training period is a different fit.
    with ledger.begin() as conn:
        conn.execute(update(vectors).where(vectors.c.interest_id == inside[0]).values(
            summary_vec=rng.standard_normal(D).astype("<f4").tobytes()))
    assert fit_projection(ledger, D2).projection_id != p.projection_id


def test_projection_is_pca_and_its_vectors_are_written_once(ledger):
    p = fit_projection(ledger, D2)
    assert p.components.shape == (D, D2) and p.out_dim == D2
    # Orthonormal columns, in order of decreasing variance on the fitted vectors.
    assert np.allclose(p.components.T @ p.components, np.eye(D2), atol=1e-5)
    assert save_projection(ledger, p) is True and save_projection(ledger, p) is False
    assert project_new(ledger) == 31 and project_new(ledger) == 0
    src, out = _vectors(ledger, "fake-hash-enc@1"), _vectors(ledger, p.encoder_id)
    assert sorted(out) == sorted(src)
    # (to float32 rounding: a batched matmul may sum in another order than one row's)
    for i, (s, h) in src.items():
        assert np.allclose(out[i][0], (s - p.mean) @ p.components, rtol=0, atol=1e-6)
        assert np.allclose(out[i][1], (h - p.mean) @ p.components, rtol=0, atol=1e-6)
    (back,) = load_projections(ledger)
    assert back.encoder_id == p.encoder_id == f"fake-hash-enc@1+pca{D2}.{p.projection_id}"
    assert back.fitted_on == p.fitted_on


def test_table_at_d_prime_is_the_projections_own_version(ledger):
    p = fit_projection(ledger, D2)
    save_projection(ledger, p)
    with pytest.raises(VectorShapeError, match=rf"holds vectors of D=16: .*liber project --dim {D2}"):
        memory_table(ledger, memory_slots=3, vector_dim=D2)  # fitted, but its vectors not yet written
    project_new(ledger)
    full = to_frame(memory_table(ledger, memory_slots=3, vector_dim=D))
    small = to_frame(memory_table(ledger, memory_slots=3, vector_dim=D2))
    assert list(small.partition_count) == list(full.partition_count) and len(small) == 31
    for a, b in zip(full.summary_vectors, small.summary_vectors):
        assert len(b) == len(a) // D * D2
        assert np.allclose(b, ((a.reshape(-1, D) - p.mean) @ p.components).reshape(-1), rtol=0, atol=1e-6)
    pv, llm_id, _ = latest_versions(ledger)
    assert set(small.encoder_version) == {encoder_version(pv, llm_id, p.encoder_id)}
    assert set(full.encoder_version) == {encoder_version(pv, llm_id, "fake-hash-enc@1")}
    assert latest_versions(ledger, dim=D2) == (pv, llm_id, p.encoder_id)
    assert latest_versions(ledger, dim=D) == (pv, llm_id, "fake-hash-enc@1")


def test_a_changed_matrix_and_impossible_dims_are_refused(ledger):
    with pytest.raises(ConfigError, match="between 1 and the text vectors' D - 1 = 15, not 16"):
        fit_projection(ledger, D)
    p = fit_projection(ledger, D2)
    save_projection(ledger, p)
    with ledger.begin() as conn:
        conn.execute(update(projections).values(components=(p.components * 2).astype("<f4").tobytes()))
    with pytest.raises(ConfigError, match="does not match its stored matrix"):
        project_new(ledger)


def test_switching_an_online_store_to_d_prime_rewrites_every_user(tmp_path, monkeypatch):
    """D → D′: the D′ rows are new, so the next plain materialize writes every user at D′."""
    from modelkit import encoded_repo

    from liber_features.features.memory import write_memory_table
    from liber_features.features.repo import LONG_TERM_VIEW, LiberFeatureConfig, data_file
    from liber_features.features.sync import sync_view

    monkeypatch.setenv("LIBER_MEMORY_SLOTS", "3")
    monkeypatch.setenv("LIBER_VECTOR_DIM", "8")
    monkeypatch.setenv("LIBER_HISTORY_LENGTH", "5")
    events, catalog = movielens_users(["1", "5", "8"])
    led, repo, store = encoded_repo(tmp_path, events, catalog, k=10,
                                    shape=LiberFeatureConfig(memory_slots=3, vector_dim=8, history_length=5))
    first = sync_view(store, led, LONG_TERM_VIEW)
    assert first.users_written == 3
    p = fit_projection(led, 2)
    save_projection(led, p)
    project_new(led)
    table = memory_table(led, memory_slots=3, vector_dim=2, history_length=5)
    write_memory_table(table, data_file(f"{LONG_TERM_VIEW}.parquet", repo_dir=repo.root), led)
    monkeypatch.setenv("LIBER_VECTOR_DIM", "2")
    store = repo.apply()  # `feast apply` at the new D: the view's vector length is 3×2
    again = sync_view(store, led, LONG_TERM_VIEW)  # no --rebuild
    assert again.users_written == 3
    newest = to_frame(table).sort_values("sealed_at").drop_duplicates("user_id", keep="last").set_index("user_id")
    got = store.get_online_features(features=[f"{LONG_TERM_VIEW}:summary_vectors", f"{LONG_TERM_VIEW}:encoder_version"],
                                    entity_rows=[{"user_id": u} for u in ("1", "5", "8")]).to_dict()
    for u, vec, version in zip(("1", "5", "8"), got["summary_vectors"], got["encoder_version"]):
        assert np.array_equal(np.asarray(vec, np.float32), newest.at[u, "summary_vectors"])
        assert len(vec) == 3 * 2 and version == newest.at[u, "encoder_version"]


def test_cli_projects_to_32_by_default_and_refuses_a_dimension_the_vectors_lack(ledger):
    """`liber project` without --dim asks for D′ = 32 (the default chosen in docs/memory.md): on these
    D = 16 vectors that is one error line naming both, and nothing is stored."""
    from click.testing import CliRunner

    from liber_features.cli.main import cli

    r = CliRunner().invoke(cli, ["project", "--ledger", ledger.url, "--no-table"])
    assert (r.exit_code, r.output.strip().splitlines()[-1]) == (
        2, "error: D′ must be between 1 and the text vectors' D - 1 = 15, not 32")
    with ledger.engine.connect() as conn:
        assert conn.execute(select(projections.c.encoder_id)).all() == []
    ok = CliRunner().invoke(cli, ["project", "--ledger", ledger.url, "--no-table", "--dim", "4", "--json"])
    assert ok.exit_code == 0, ok.output
    with ledger.engine.connect() as conn:
        assert conn.execute(select(projections.c.in_dim, projections.c.out_dim)).all() == [(16, 4)]
