"""The ledger's events → the ``user_stats`` / ``item_stats`` offline tables, under a label rule.

The tables themselves (rows, stamps, smoothing) are ``features/stats.py``'s; this module supplies
what that stage cannot import: the label rule (``labels.py``) deciding which events are samples.
Samples here are exactly the training set's (``samples._samples``), so the statistics count the
same labels the model learns from. Called by ``liber ingest`` (after each ingest), ``liber
materialize`` (before the online sync) and ``prepare_training_set``: the tables are rebuilt whole
from the ledger, the source of truth, so a missed call loses nothing the next one does not restore.

:func:`point_in_time_stats` is the training set's read of them: one Feast point-in-time join of
both views at each sample's ``t`` (rows are stamped 1 µs after their events, so the inclusive join
sees only events strictly before ``t``), turned into inputs by ``model.inputs.stats_inputs`` — the
function the scorer applies to an online read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import select

from liber_features.errors import LedgerError
from liber_features.features.item_text import ensure_item_text
from liber_features.features.repo import data_file
from liber_features.features.stats import (
    ITEM_STATS_VIEW,
    USER_STATS_VIEW,
    StatsConfig,
    StatsTables,
    genre_hot,
    genre_vocab,
    stats_tables,
    write_stats_tables,
)
from liber_features.ledger.store import Ledger
from liber_features.ledger.store import events as events_t
from liber_features.ledger.store import items as items_t
from liber_features.ledger.store import runs as runs_t
from liber_features.model.inputs import ITEM_STAT_FIELDS, USER_STAT_FIELDS, stats_inputs
from liber_features.training.labels import LabelRule, label_samples

__all__ = ["RULE_KEY", "ledger_stats", "point_in_time_stats", "recorded_rule", "refresh_stats_tables"]

RULE_KEY = b"liber.label_rule"


def _events(ledger: Ledger) -> pd.DataFrame:
    """Every event, sorted as the label rules expect, with the start of the run that brought it."""
    q = (select(events_t.c.event_id, events_t.c.user_id, events_t.c.item_id, events_t.c.ts_us,
                events_t.c.rating, events_t.c.event_type, events_t.c.label,
                runs_t.c.started_us.label("created_us"))
         .select_from(events_t.join(runs_t, runs_t.c.id == events_t.c.run_id)))
    with ledger.engine.connect() as conn:
        rows = conn.execute(q).all()
    df = pd.DataFrame(rows, columns=["event_id", "user_id", "item_id", "ts_us", "rating", "event_type", "label",
                                     "created_us"])
    df["rating"], df["label"] = df.rating.astype("float64"), df.label.astype("float64")
    return df.sort_values(["user_id", "ts_us", "event_id"], kind="stable").reset_index(drop=True)


def ledger_stats(ledger: Ledger, rule: LabelRule | None = None, cfg: StatsConfig | None = None) -> StatsTables:
    """Both statistics tables of ``ledger``'s events under ``rule`` (default rating >= 4).

    A ledger without labels under the rule gives counts of events only (every rate at its prior).
    """
    ev = _events(ledger)
    rule = rule or LabelRule()
    try:
        got = label_samples(ev, rule) if len(ev) else None
    except LedgerError:  # the rule labels nothing here: event counts still hold, rates at their priors
        got = None
    if got is None:
        samples = pd.DataFrame({"user_id": [], "item_id": [], "ts_us": np.array([], np.int64),
                                "label": np.array([], float), "rating": np.array([], float),
                                "created_us": np.array([], np.int64)})
    else:
        rows = got.rows
        own_item = got.item_id == ev.item_id.to_numpy()[rows]  # a sampled negative's candidate has no rating
        samples = pd.DataFrame({"user_id": ev.user_id.to_numpy()[rows], "item_id": got.item_id,
                                "ts_us": ev.ts_us.to_numpy()[rows], "label": got.label.astype(float),
                                "rating": np.where(own_item, ev.rating.to_numpy()[rows], np.nan),
                                "created_us": ev.created_us.to_numpy()[rows]})
    with ledger.engine.connect() as conn:
        cats = dict(conn.execute(select(items_t.c.item_id, items_t.c.categories)).all())
    return stats_tables(ev, samples, cfg, pd.Series(cats, dtype=object))


def recorded_rule(repo: str | Path) -> LabelRule | None:
    """The label rule the repo's statistics tables were last built under, or None (no table yet)."""
    import pyarrow.parquet as pq

    path = Path(data_file(f"{USER_STATS_VIEW}.parquet", repo_dir=repo))
    if not path.exists():
        return None
    spec = (pq.read_schema(path).metadata or {}).get(RULE_KEY)
    return LabelRule.model_validate_json(spec) if spec else None


def refresh_stats_tables(ledger: Ledger, repo: str | Path, rule: LabelRule | None = None,
                         cfg: StatsConfig | None = None) -> StatsTables:
    """Rebuild both tables from ``ledger`` and write them into the repo's data directory.

    ``rule`` None: the rule the tables were last built under (``liber train --label-rule`` records
    it), else rating >= 4 — so an ingest or a materialize between two trainings keeps the
    statistics counting the labels the model was trained on.
    """
    rule = rule or recorded_rule(repo) or LabelRule()
    tables = ledger_stats(ledger, rule, cfg)
    data_dir = Path(data_file("_", repo_dir=repo)).parent
    write_stats_tables(tables, data_dir, ledger, {RULE_KEY: rule.model_dump_json().encode()})
    # Every per-item view then has a source, so a plain `feast materialize` runs before `liber items`.
    ensure_item_text(data_dir, ledger)
    return tables


def point_in_time_stats(store, samples: pd.DataFrame, catalog: pd.DataFrame, chunk: int = 20_000) -> np.ndarray:
    """``(N, len(STAT_NAMES))`` statistics inputs of samples (``user_id, item_id, ts_us``), in order;
    ``catalog`` (``item_id, categories``) gives each candidate's genres."""
    from liber_features.features.online import store_errors
    from liber_features.features.sync import source_path

    entity = pd.DataFrame({"user_id": samples.user_id.to_numpy(), "item_id": samples.item_id.to_numpy(),
                           "event_timestamp": pd.to_datetime(samples.ts_us.to_numpy(), unit="us", utc=True),
                           "row": np.arange(len(samples))})
    features = [f"{USER_STATS_VIEW}:{f}" for f in USER_STAT_FIELDS] + \
        [f"{ITEM_STATS_VIEW}:{f}" for f in ITEM_STAT_FIELDS]
    # In blocks of samples: Feast's DuckDB join pairs each sample with every earlier row of its
    # user before keeping the newest, so its memory grows with block size × history length.
    with store_errors("point-in-time join of the statistics views"):
        out = pd.concat([store.get_historical_features(entity_df=entity.iloc[lo:lo + chunk], features=features)
                         .to_df() for lo in range(0, len(entity), chunk)] or [entity], ignore_index=True)
    if len(out) != len(samples):  # every sample must come back: a lost row would shift the rest
        raise LedgerError(f"Feast returned {len(out)} statistics rows for {len(samples)} samples")
    out = out.sort_values("row")
    genres = genre_vocab(source_path(store, USER_STATS_VIEW))
    cats = catalog.set_index("item_id").categories
    hot = genre_hot(list(cats.reindex(samples.item_id.to_numpy()).to_numpy()), genres)
    return stats_inputs({f: out[f].to_numpy(dtype=object) for f in USER_STAT_FIELDS},
                        {f: out[f].to_numpy(dtype=object) for f in ITEM_STAT_FIELDS}, samples.ts_us.to_numpy(),
                        item_genres=hot)
