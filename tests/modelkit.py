"""Small real ledgers for the model tests: MovieLens users → ledger → fake-LLM encode → Feast repo.

The shipped fakes (``liber_features.testing``) answer and encode as functions of the text alone
(never of call order), so two ledgers built from the same events hold bit-identical vectors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from conftest import ml_latest_small
from feastrepo import Repo

from liber_features.features.caches import append_cache_history, current_caches
from liber_features.features.memory import memory_table, write_memory_table
from liber_features.features.repo import (
    LONG_TERM_VIEW,
    SHORT_TERM_VIEW,
    LiberFeatureConfig,
    data_file,
)
from liber_features.ingest.events import load_events
from liber_features.ingest.job import ingest
from liber_features.ingest.partition import PartitionRule
from liber_features.ledger.store import Ledger
from liber_features.testing import CountingLLM, HashEncoder
from liber_features.training.statistics import refresh_stats_tables
from liber_features.uil.interest import run_encode


def hash_llm() -> CountingLLM:
    return CountingLLM("fake:hash@1")


def movielens_users(users: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Real events (user_id, item_id, timestamp, rating) of these users, and their catalog."""
    root = ml_latest_small()
    r = pd.read_csv(root / "ratings.csv", dtype={"userId": str, "movieId": str})
    r = r[r.userId.isin(users)].rename(columns={"userId": "user_id", "movieId": "item_id"})
    m = pd.read_csv(root / "movies.csv", dtype={"movieId": str})
    m = m[m.movieId.isin(set(r.item_id))].rename(columns={"movieId": "item_id", "genres": "categories"})
    return r[["user_id", "item_id", "timestamp", "rating"]], m[["item_id", "title", "categories"]]


def write_log(tmp: Path, events: pd.DataFrame, catalog: pd.DataFrame, name: str = "log") -> tuple[Path, Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    ev, cat = tmp / f"{name}.csv", tmp / f"{name}-catalog.csv"
    events.to_csv(ev, index=False)
    catalog.to_csv(cat, index=False)
    return ev, cat


def encoded_repo(tmp: Path, events: pd.DataFrame, catalog: pd.DataFrame, *, k: int,
                 shape: LiberFeatureConfig, backend: str = "sqlite",
                 projection=None) -> tuple[Ledger, Repo, object]:
    """Ingest + encode (fake LLM) + long-term and statistics tables + ``feast apply`` on the embedded store.

    ``projection``: the text encoder gives 2·D vectors and the table holds their D′ = D projection
    — ``"fit"`` fits one on this ledger, a :class:`Projection` (fitted on another) is stored here.
    """
    from liber_features.training.fit_projection import fit_projection
    from liber_features.uil.projection import project_new, save_projection

    ledger = Ledger(f"sqlite:///{tmp / 'ledger.db'}")
    ev, cat = write_log(tmp / "in", events, catalog)
    ingest(load_events(ev, cat), ledger, PartitionRule(k=k), progress=False)
    dim = shape.vector_dim * (2 if projection is not None else 1)
    enc, llm = HashEncoder("fake-hash-enc@1", dim=dim), hash_llm()
    s = run_encode(ledger, llm, enc, progress=False)
    versions = (s.prompt_version, llm.llm_id, enc.encoder_id)
    if projection is not None:
        if projection == "fit":
            projection = fit_projection(ledger, shape.vector_dim, versions=versions)
        save_projection(ledger, projection)
        project_new(ledger)
        versions = (*versions[:2], projection.encoder_id)
    repo_dir = tmp / "repo"
    repo_dir.mkdir(exist_ok=True)
    repo = Repo(repo_dir, backend)
    table = memory_table(ledger, memory_slots=shape.memory_slots, vector_dim=shape.vector_dim,
                         history_length=shape.history_length, versions=versions)
    write_memory_table(table, data_file(f"{LONG_TERM_VIEW}.parquet", repo_dir=repo_dir), ledger)
    append_cache_history(current_caches(ledger), data_file(f"{SHORT_TERM_VIEW}.parquet", repo_dir=repo_dir),
                         ledger)
    refresh_stats_tables(ledger, repo_dir)  # the user/item statistics views the training set joins
    store = repo.apply()
    return ledger, repo, store


def online_caches(ledger: Ledger) -> pd.DataFrame:
    return current_caches(ledger)


def replay_until(tmp: Path, events, catalog, ts, user: str, moment_rank: int, shape, k: int = 7):
    """A live repo of ``events`` strictly before ``user``'s ``moment_rank``-th distinct event time,
    materialized as ``liber materialize`` does (long-term memory, user and item statistics) with the
    short-term caches pushed. Returns ``(t seconds, sample index of user at t, ledger, repo, store)``."""
    from liber_features.features.online import push_short_term_cache
    from liber_features.features.repo import LONG_TERM_VIEW
    from liber_features.features.stats import ITEM_STATS_VIEW, USER_STATS_VIEW
    from liber_features.features.sync import sync_view

    times = np.sort(np.unique(events[events.user_id == user].timestamp))
    t = int(times[moment_rank])
    sample = int(np.flatnonzero((ts.user_ids == user) & (ts.ts_us == t * 1_000_000))[0])
    ledger, repo, store = encoded_repo(tmp, events[events.timestamp < t], catalog, k=k, shape=shape)
    for view in (LONG_TERM_VIEW, USER_STATS_VIEW, ITEM_STATS_VIEW):
        sync_view(store, ledger, view)
    push_short_term_cache(store, online_caches(ledger))
    return t, sample, ledger, repo, store


def random_item_text(ts) -> np.ndarray:
    """Item text vectors without an encoder, ``(items, 8)``, seeded: rows 0 and 1 (padding, OOV) zero."""
    text = np.random.default_rng(0).standard_normal((ts.item_vocab.size, 8)).astype(np.float32)
    text[:2] = 0
    return text


def export_model(model_dir: Path, ts, versions, *, backbone: str = "din", liber: str = "both",
                 epochs: int = 2, side: bool = False):
    """Train a small model on ``ts`` (random item text vectors) and export it; return the result.

    ``side`` False by default: the serving worlds have no statistics views, and a card without the
    side row must keep being served (the side row's own tests are tests/test_side.py)."""
    from encoders.ctr.export import export_onnx
    from encoders.ctr.train import TrainConfig, train
    from liber_features.training.prepare import checkpoint_meta

    text = random_item_text(ts)
    r = train(ts, text, TrainConfig(backbone=backbone, liber=liber, epochs=epochs, batch_size=64,
                                    device="cpu", side=side), log=lambda _m: None)

    class _L:
        def safe_url(self):
            return "sqlite:///test"

    export_onnx(r.model, checkpoint_meta(ts, r, versions, _L()),
                model_dir)
    return r


def small_world(tmp: Path, shape: LiberFeatureConfig, users: tuple[str, ...] = ("1", "5", "8"), k: int = 10):
    """Users' real MovieLens events → encoded repo → training set, with ``shape`` as the
    environment's LIBER_MEMORY_SLOTS / _VECTOR_DIM / _HISTORY_LENGTH while it is built (what the
    Feast definitions read), restored after. Returns ``(events, catalog, ledger, training set)``."""
    import pytest

    from liber_features.training.samples import SampleConfig, build_training_set

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIBER_MEMORY_SLOTS", str(shape.memory_slots))
        mp.setenv("LIBER_VECTOR_DIM", str(shape.vector_dim))
        mp.setenv("LIBER_HISTORY_LENGTH", str(shape.history_length))
        events, catalog = movielens_users(list(users))
        ledger, _, store = encoded_repo(tmp, events, catalog, k=k, shape=shape)
        return events, catalog, ledger, build_training_set(ledger, store, SampleConfig(), shape)


def small_training_set(tmp: Path, shape: LiberFeatureConfig, users: tuple[str, ...] = ("1", "5", "8"), k: int = 10):
    """:func:`small_world`'s ``(ledger, training set)``."""
    return small_world(tmp, shape, users, k)[2:]
