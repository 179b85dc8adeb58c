"""The model half's data preparation, shared by ``liber train`` / ``evaluate`` / ``demo`` and tests.

``prepare_training_set`` makes the Feast repo current for the ledger (long-term table rewritten
from the ledger, ``feast apply``) and builds the leak-free :class:`~liber_features.training.samples.TrainingSet`
from it, so a model is always trained on what Feast would serve. ``checkpoint_meta`` is what a
trained model carries into its checkpoint and, later, its model card.
"""

from __future__ import annotations

from typing import Any

__all__ = ["checkpoint_meta", "ledger_facts", "load_set", "prepare_training_set", "save_set"]


def prepare_training_set(ledger_url: str | None, ledger_schema: str | None, repo: str,
                         label_rule=None, say=print, replace: bool = False):
    """Ledger → long-term offline table → ``feast apply`` → :class:`TrainingSet` (+ versions).

    A data directory holding another ledger's files is refused (``replace``: dropped first);
    ``label_rule`` (a ``training.labels.LabelRule``) defaults to rating >= 4.
    """
    from liber_features.features.memory import latest_versions, refresh_memory_table, versions_of
    from liber_features.features.repo import (
        LONG_TERM_VIEW,
        LiberFeatureConfig,
        apply_repo,
        data_file,
        open_store,
    )
    from liber_features.ledger.store import Ledger
    from liber_features.training.labels import LabelRule
    from liber_features.training.samples import SampleConfig, build_training_set
    from liber_features.training.statistics import refresh_stats_tables

    ledger = Ledger(ledger_url, schema=ledger_schema)
    shape = LiberFeatureConfig.from_env()
    # Every user in their newest complete version, as `liber encode` writes it (the builder refuses
    # a table that mixes versions mid-migration: one model, one vector space).
    refresh_memory_table(ledger, data_file(f"{LONG_TERM_VIEW}.parquet", repo_dir=repo),
                         memory_slots=shape.memory_slots, vector_dim=shape.vector_dim,
                         history_length=shape.history_length, replace=replace)
    # The statistics views' tables under this training set's label rule (recorded in them, so a
    # later ingest or materialize keeps counting the same labels).
    refresh_stats_tables(ledger, repo, label_rule or LabelRule())
    store = open_store(repo)
    apply_repo(store, repo)
    ts = build_training_set(ledger, store, SampleConfig(labels=label_rule or LabelRule()), shape)
    # The versions of the vectors trained on, not of the newest encode run: after a partial
    # migration run (--limit, or --users that completes nobody) the two differ, and a card naming
    # the newer one would describe vectors the model never saw (the scorer then refuses it).
    versions = versions_of(ledger, ts.encoder_version) if ts.encoder_version else latest_versions(ledger)
    c = ts.counts
    say(f"training set: {c['samples']} samples of {c['users']} users "
        + ", ".join(f"{s} {c[s]['samples']} ({c[s]['positives']} positive)" for s in
                    ("train", "validation", "test")))
    say(f"  {c['users_with_0_partitions']} users / {c['samples_with_0_partitions']} samples with 0 "
        f"partitions (masked), {c['samples_with_empty_history']} samples with an empty history, "
        f"{c['unlabelled']} events without a "
        + ("rating" if ts.counts["label_rule"].startswith("rating") else f"label under the rule {c['label_rule']}"))
    return ledger, ts, versions


def checkpoint_meta(ts, result, versions, ledger) -> dict[str, Any]:
    import numpy as np

    from liber_features.errors import ConfigError
    from liber_features.features.memory import encoder_version
    from liber_features.features.repo import RANKER_SERVICE

    if ts.encoder_version and encoder_version(*versions) != ts.encoder_version:
        raise ConfigError(f"versions {versions} are not those of the training set's vectors "
                          f"({ts.encoder_version}): take them from versions_of(ledger, ts.encoder_version)")

    train_ts = ts.ts_us[ts.mask("train")]

    def iso(us: int) -> str:
        return np.datetime64(int(us), "us").astype(str) + "Z"

    return {
        "config": result.config.model_dump(), "user_vocab": ts.user_vocab.to_json(),
        "item_vocab": ts.item_vocab.to_json(),
        "memory_slots": ts.shape.memory_slots, "vector_dim": ts.shape.vector_dim,
        "history_length": ts.shape.history_length, "feature_service": RANKER_SERVICE,
        "prompt_version": versions[0], "llm_id": versions[1], "text_encoder_id": versions[2],
        "encoder_version": encoder_version(*versions),
        "metrics": {"validation": result.validation, "test": result.test,
                    "best_epoch": result.best_epoch, "samples": ts.counts},
        "train_time_range": [iso(train_ts.min()), iso(train_ts.max())],
        "ledger": ledger.safe_url(),
        # A neural backbone's side row (encoders/ctr/side.py); a boosted ranker's caller sets its own.
        "features": list(getattr(result, "features", None) or []),
    }


def ledger_facts(ledger) -> dict[str, Any]:
    """K and the encode cost, read from the ledger's runs: what made the vectors."""
    import json

    from sqlalchemy import select

    from liber_features.ledger.store import runs

    with ledger.engine.connect() as conn:
        rs = conn.execute(select(runs.c.kind, runs.c.params, runs.c.summary, runs.c.started_us,
                                 runs.c.finished_us)).all()
    k = next((json.loads(r.params).get("rule", {}).get("k") for r in rs if r.kind == "ingest"), None)
    enc = [r for r in rs if r.kind == "encode" and r.summary]
    calls = sum(json.loads(r.summary).get("llm_calls", 0) for r in enc)
    secs = sum((r.finished_us - r.started_us) / 1e6 for r in enc if r.finished_us)
    return {"k": k, "encode_runs": len(enc), "encode_llm_calls": calls, "encode_seconds": round(secs),
            "ledger": ledger.safe_url()}


_ARRAYS = ("user_ids", "item_ids", "ts_us", "label", "split", "user_idx", "item_idx", "hist_idx",
           "partition_count", "slot_rows", "summary_table", "shift_table", "stats")


def save_set(path, ts, item_text, versions, facts) -> None:
    """A built training set + item vectors in one ``.npz`` (to train elsewhere, e.g. on a GPU host
    without the ledger, Feast or the text encoder); plain JSON beside the arrays, no pickle."""
    import json

    import numpy as np

    meta = {"user_vocab": ts.user_vocab.to_json(), "item_vocab": ts.item_vocab.to_json(), "part_items": ts.part_items,
            "part_users": ts.part_users, "catalog": ts.catalog.to_dict(orient="list"),
            "shape": ts.shape.model_dump(), "encoder_version": ts.encoder_version, "counts": ts.counts,
            "versions": list(versions), "facts": facts}
    def packed(k: str) -> np.ndarray:
        a = np.asarray(getattr(ts, k))
        if k in ("user_ids", "item_ids"):
            return a.astype(str)
        # Indices fit in int32: halves the file (it must travel to a GPU host).
        return a.astype(np.int32) if a.dtype == np.int64 and k != "ts_us" else a

    np.savez_compressed(path, item_text=item_text, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                        **{k: packed(k) for k in _ARRAYS})


def load_set(path):
    """→ (TrainingSet, item_text, versions, facts), as :func:`save_set` wrote them."""
    import json

    import numpy as np
    import pandas as pd

    from liber_features.features.repo import LiberFeatureConfig
    from liber_features.model.vocab import ItemVocab, UserVocab
    from liber_features.training.samples import TrainingSet

    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes())
        # A set saved before the statistics views has no "stats": lgbm then asks for a rebuild.
        arrays = {k: z[k].astype(np.int64) if z[k].dtype == np.int32 else z[k] for k in _ARRAYS if k in z}
        item_text = z["item_text"]
    ts = TrainingSet(**arrays, part_items=meta["part_items"], part_users=meta["part_users"],
                     user_vocab=UserVocab.from_json(meta["user_vocab"]),
                     item_vocab=ItemVocab.from_json(meta["item_vocab"]),
                     catalog=pd.DataFrame(meta["catalog"]), shape=LiberFeatureConfig(**meta["shape"]),
                     encoder_version=meta["encoder_version"], counts=meta["counts"])
    return ts, item_text, tuple(meta["versions"]), meta["facts"]
