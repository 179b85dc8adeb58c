"""A gradient-boosted backbone (LightGBM): the ranker most teams already run, with LIBER as features.

Many production rankers are boosted trees; for them LIBER enters as dense *affinity* features, not
as an attention module. Each sample's features are computed from the training set's own
point-in-time inputs (``TrainingSet``: nothing at or after the sample's time):

- ids: user and item as categoricals;
- history: its length, the cosine between the candidate's text vector and the mean text vector of
  the history, how many history items share a genre with the candidate;
- the candidate's genres (multi-hot) and point-in-time statistics of the user and of the item
  (``TrainingSet.stats``: the ``user_stats`` / ``item_stats`` Feast views joined at t, strictly
  before t, through ``model.inputs.stats_inputs`` — the definition the online read uses): event
  and label counts, smoothed positive rate and mean rating, seconds since the user's previous
  event, the item's "unseen before t" flag;
- LIBER (variants other than ``none``): the partition count, and for the summary and the shift
  vectors the cosine between the candidate's text vector and the newest slot, the max and the mean
  over filled slots (text vectors and LIBER vectors come from the same text encoder).

Early stopping on validation AUC; the test split is scored once, like the neural backbones.
"""

from __future__ import annotations

import time

import numpy as np

from liber_features.model.inputs import STAT_NAMES
from liber_features.model.vocab import PAD
from liber_features.training.samples import TrainingSet

__all__ = ["FEATURE_NAMES", "gbdt_features", "train_gbdt"]

BASE = ["user", "item", "hist_len", "hist_cos_mean", "hist_same_genre", *STAT_NAMES]
LIBER = ["partition_count", *(f"{v}_cos_{s}" for v in ("summary", "shift") for s in ("newest", "max", "mean"))]
FEATURE_NAMES = BASE + LIBER  # then the candidate's genres, named by the catalog


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def _genres(ts: TrainingSet) -> tuple[list[str], np.ndarray]:
    """(genre names, ``(items, G)`` multi-hot by item index)."""
    cats = ts.catalog.set_index("item_id").categories.astype(str)
    names = sorted({g for c in cats for g in c.split("|") if g and g != "(no genres listed)"})
    col = {g: j for j, g in enumerate(names)}
    hot = np.zeros((ts.item_vocab.size, len(names)), np.float32)
    for item, c in cats.items():
        i = ts.item_vocab.index(np.array([item]))[0]
        for g in c.split("|"):
            if g in col:
                hot[i, col[g]] = 1
    return names, hot


def gbdt_features(ts: TrainingSet, item_text: np.ndarray, tables: tuple[np.ndarray, np.ndarray] | None,
                  chunk: int = 2048) -> tuple[np.ndarray, list[str]]:
    """``(N, F)`` float32 features and their names; ``tables`` None: no LIBER features."""
    from liber_features.errors import ConfigError

    if tables is not None and tables[0].shape[1] != item_text.shape[1]:
        # A cosine needs one space: the item texts and the summaries through the same text encoder
        # (a D′ projection would have to project the item texts too; not done here).
        raise ConfigError(f"LIBER affinity features need the memory vectors (D={tables[0].shape[1]}) in the "
                          f"item text vectors' space (D={item_text.shape[1]}): run lgbm at the text encoder's D")
    n = len(ts.label)
    text = _unit(item_text.astype(np.float32))
    genre_names, hot = _genres(ts)
    if ts.stats.shape != (n, len(STAT_NAMES)):  # a set saved before the statistics views existed
        raise ConfigError("this training set has no user/item statistics: rebuild it (liber train / "
                          "liber evaluate rebuild it from the ledger; an old --save-set file cannot)")
    cols = {"user": ts.user_idx.astype(np.float32), "item": ts.item_idx.astype(np.float32),
            **{name: ts.stats[:, j] for j, name in enumerate(STAT_NAMES)}}
    hist_len, hist_cos, same = np.zeros(n), np.zeros(n), np.zeros(n)
    aff = {name: np.zeros(n) for name in LIBER[1:]}
    for lo in range(0, n, chunk):  # bounded memory: (chunk, L, D) at a time
        sl = slice(lo, lo + chunk)
        cand, hist = ts.item_idx[sl], ts.hist_idx[sl]
        filled = hist != PAD
        hist_len[sl] = filled.sum(1)
        mean = _unit((text[hist] * filled[..., None]).sum(1))
        hist_cos[sl] = (mean * text[cand]).sum(1)
        same[sl] = ((hot[hist] @ hot[cand][..., None])[..., 0] > 0).sum(1)  # PAD/OOV rows: no genre
        if tables is not None:
            rows = ts.slot_rows[sl]
            used = rows > 0
            for name, table in (("summary", tables[0]), ("shift", tables[1])):
                cos = (_unit(table[rows]) * text[cand][:, None, :]).sum(-1)  # (chunk, M)
                aff[f"{name}_cos_newest"][sl] = np.where(used[:, 0], cos[:, 0], 0)
                aff[f"{name}_cos_max"][sl] = np.where(used.any(1), np.where(used, cos, -2).max(1), 0)
                aff[f"{name}_cos_mean"][sl] = (cos * used).sum(1) / np.maximum(used.sum(1), 1)
    cols |= {"hist_len": hist_len, "hist_cos_mean": hist_cos, "hist_same_genre": same}
    names = list(BASE)
    if tables is not None:
        cols |= {"partition_count": ts.partition_count.astype(np.float64), **aff}
        names += LIBER
    x = np.column_stack([cols[c] for c in names] + [hot[ts.item_idx]]).astype(np.float32)
    return x, names + [f"genre={g}" for g in genre_names]


def train_gbdt(ts: TrainingSet, item_text: np.ndarray, tables: tuple[np.ndarray, np.ndarray] | None,
               seed: int = 0, rounds: int = 2000) -> tuple[dict, np.ndarray]:
    """Train on the train split, stop on validation AUC; (result dict, test predictions)."""
    import lightgbm as lgb

    from encoders.ctr.train import metrics

    x, names = gbdt_features(ts, item_text, tables)
    tr, va, te = (np.flatnonzero(ts.split == s) for s in (0, 1, 2))
    params = {"objective": "binary", "metric": "auc", "learning_rate": 0.05, "num_leaves": 63,
              "min_data_in_leaf": 50, "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1,
              "lambda_l2": 1.0, "cat_smooth": 20, "seed": seed, "num_threads": 2, "verbose": -1}
    t0 = time.perf_counter()
    train_set = lgb.Dataset(x[tr], ts.label[tr], feature_name=names, categorical_feature=["user", "item"],
                            free_raw_data=False)
    valid = lgb.Dataset(x[va], ts.label[va], reference=train_set)
    booster = lgb.train(params, train_set, rounds, valid_sets=[valid],
                        callbacks=[lgb.early_stopping(50, verbose=False)])
    seconds = time.perf_counter() - t0
    p_va = booster.predict(x[va], num_iteration=booster.best_iteration)
    p_te = booster.predict(x[te], num_iteration=booster.best_iteration)
    return {"validation": metrics(ts.label[va], p_va, ts.user_ids[va]),
            "test": metrics(ts.label[te], p_te, ts.user_ids[te]), "best_epoch": booster.best_iteration,
            "epochs_run": booster.current_iteration(), "seconds": round(seconds, 1), "features": names,
            "importance": dict(zip(names, booster.feature_importance("gain").round(1).tolist()))}, p_te
