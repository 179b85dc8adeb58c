"""A gradient-boosted backbone (LightGBM): the ranker most teams already run, with LIBER as features.

Many production rankers are boosted trees; for them LIBER enters as dense *affinity* features, not
as an attention module. Each sample's features are computed from the training set's own
point-in-time inputs (``TrainingSet``: nothing at or after the sample's time):

- ids: the user as a categorical (and the item, when ``GbdtConfig.categorical`` names it);
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

The row itself is ``liber_features.model.ranker_features`` — the definition the online scorer
uses too, so an exported booster (``gbdt_export.py``) scores online what it was trained on.
Early stopping on validation AUC; the test split is scored once, like the neural backbones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from liber_features.errors import ConfigError
from liber_features.model.inputs import STAT_NAMES
from liber_features.model.ranker_features import BASE, LIBER, RankerItems, feature_names, ranker_features
from liber_features.training.samples import TrainingSet

__all__ = ["BASE", "LIBER", "GbdtConfig", "GbdtResult", "fit_gbdt", "gbdt_features", "train_gbdt"]

CHUNK = 2048  # samples per step: the (chunk, M, D) memory gathered from the tables


class GbdtConfig(BaseModel):
    """What a saved LightGBM ranker was trained with (its card's ``train_config``)."""

    model_config = ConfigDict(extra="forbid")

    backbone: Literal["lgbm"] = "lgbm"
    liber: Literal["none", "both", "summary"] = "both"
    seed: int = 0
    rounds: int = Field(2000, ge=1, description="at most; early stopping on validation AUC")
    # Categorical splits cost at serving time: onnxruntime's tree ensemble has no set-membership
    # node, so each split on a categorical becomes a chain of equality nodes. On the K = 50 ledger
    # (docs/model.md) user + item with LightGBM's default 32 categories per split had the best
    # validation AUC (0.8007) at 28 ms per 100 candidates; user alone with at most 4 categories per
    # split had 0.7978 at 1.4 ms, and no categorical 0.7920 at 0.5 ms.
    categorical: list[Literal["user", "item"]] = Field(default_factory=lambda: ["user"])
    max_cat_threshold: int = Field(4, ge=1, description="categories on one side of a categorical split")


@dataclass
class GbdtResult:
    """A trained ranker's figures, in the shape ``liber train`` and ``checkpoint_meta`` read."""

    config: GbdtConfig
    validation: dict[str, float]
    test: dict[str, float]
    best_epoch: int
    epochs_run: int
    seconds: float
    samples_per_s: float
    peak_rss_mb: float

    @classmethod
    def of(cls, res: dict[str, Any], config: GbdtConfig, samples: int) -> GbdtResult:
        import resource

        return cls(config, res["validation"], res["test"], res["best_epoch"],
                   res["epochs_run"], res["seconds"], samples / max(res["seconds"], 1e-9),
                   resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def gbdt_features(ts: TrainingSet, item_text: np.ndarray, tables: tuple[np.ndarray, np.ndarray] | None,
                  items: RankerItems | None = None) -> tuple[np.ndarray, list[str]]:
    """``(N, F)`` float32 features and their names; ``tables`` None: no LIBER features."""
    if tables is not None and tables[0].shape[1] != item_text.shape[1]:
        # A cosine needs one space: the item texts and the summaries through the same text encoder
        # (a D′ projection would have to project the item texts too; not done here).
        raise ConfigError(f"LIBER affinity features need the memory vectors (D={tables[0].shape[1]}) in the "
                          f"item text vectors' space (D={item_text.shape[1]}): run lgbm at the text encoder's D")
    if ts.stats.shape != (len(ts.label), len(STAT_NAMES)):  # a set saved before the statistics views existed
        raise ConfigError("this training set has no user/item statistics: rebuild it (liber train / "
                          "liber evaluate rebuild it from the ledger; an old --save-set file cannot)")
    items = items or RankerItems.from_catalog(ts.item_vocab, ts.catalog, item_text)
    parts = []
    for lo in range(0, len(ts.label), CHUNK):  # bounded memory: the slots' vectors a chunk at a time
        sl = slice(lo, lo + CHUNK)
        liber = {}
        if tables is not None:
            rows = ts.slot_rows[sl]
            liber = {"summary": tables[0][rows], "shift": tables[1][rows], "slots_used": rows > 0,
                     "partition_count": ts.partition_count[sl]}
        parts.append(ranker_features(items, user_idx=ts.user_idx[sl], item_idx=ts.item_idx[sl],
                                     hist_idx=ts.hist_idx[sl], stats=ts.stats[sl], **liber))
    return np.concatenate(parts), feature_names(items, tables is not None)


def fit_gbdt(ts: TrainingSet, item_text: np.ndarray, tables: tuple[np.ndarray, np.ndarray] | None,
             config: GbdtConfig | None = None, items: RankerItems | None = None):
    """Train on the train split, stop on validation AUC; (booster, result dict, test predictions)."""
    import lightgbm as lgb

    from encoders.ctr.metrics import metrics

    cfg = config or GbdtConfig()
    x, names = gbdt_features(ts, item_text, tables, items)
    tr, va, te = (np.flatnonzero(ts.split == s) for s in (0, 1, 2))
    params = {"objective": "binary", "metric": "auc", "learning_rate": 0.05, "num_leaves": 63,
              "min_data_in_leaf": 50, "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1,
              "lambda_l2": 1.0, "cat_smooth": 20, "max_cat_threshold": cfg.max_cat_threshold,
              "seed": cfg.seed, "num_threads": 2, "verbose": -1}
    t0 = time.perf_counter()
    train_set = lgb.Dataset(x[tr], ts.label[tr], feature_name=names, categorical_feature=list(cfg.categorical),
                            free_raw_data=False)
    valid = lgb.Dataset(x[va], ts.label[va], reference=train_set)
    booster = lgb.train(params, train_set, cfg.rounds, valid_sets=[valid],
                        callbacks=[lgb.early_stopping(50, verbose=False)])
    seconds = time.perf_counter() - t0
    p_va = booster.predict(x[va], num_iteration=booster.best_iteration)
    p_te = booster.predict(x[te], num_iteration=booster.best_iteration)
    return booster, {"validation": metrics(ts.label[va], p_va, ts.user_ids[va]),
                     "test": metrics(ts.label[te], p_te, ts.user_ids[te]), "best_epoch": booster.best_iteration,
                     "epochs_run": booster.current_iteration(), "seconds": round(seconds, 1), "features": names,
                     "importance": dict(zip(names, booster.feature_importance("gain").round(1).tolist()))}, p_te


def train_gbdt(ts: TrainingSet, item_text: np.ndarray, tables: tuple[np.ndarray, np.ndarray] | None,
               seed: int = 0, rounds: int = 2000) -> tuple[dict, np.ndarray]:
    """:func:`fit_gbdt` for the evaluation grid: (result dict, test predictions)."""
    _, result, p_te = fit_gbdt(ts, item_text, tables, GbdtConfig(seed=seed, rounds=rounds))
    return result, p_te
