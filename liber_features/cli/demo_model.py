"""Steps 7-9 of ``liber demo``: two rankers on the leak-free training set, exported, scored online.

A small DIN + LIBER (attention fusion over the memory slots) and a LightGBM ranker over the side
features — the point-in-time user and item statistics views, genres, history — with LIBER as
affinity features. Both are exported to ONNX and score user ``user``'s unrated items through
``LiberScorer``, which reads the user's features once by ``user_id``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["model_steps"]


def _top(scorer, user: str, candidates: list[str], titles: dict, say: Callable[[str], None]):
    res, best = scorer.top(user, 5, candidates)
    say(f"    {len(candidates)} unrated candidates scored in {res.score_ms:.1f} ms "
        f"(features read in {res.fetch_ms:.1f} ms via {scorer.fetcher.name}; LIBER vectors "
        f"{res.encoder_version or 'none'}), top 5:")
    for item, p in best:
        say(f"      {p:.3f}  {titles.get(item, item)}")
    return res, best


def model_steps(ledger, repo: Path, workdir: Path, user: str, enc, say: Callable[[str], None],
                n: int = 9) -> tuple[dict[str, Any], dict[str, Any]]:
    """Steps 7-9; (the DIN model's figures, the LightGBM ranker's)."""
    import numpy as np
    from sqlalchemy import select

    from encoders.ctr.export import export_onnx, save_checkpoint
    from encoders.ctr.gbdt import GbdtConfig, GbdtResult, fit_gbdt
    from encoders.ctr.gbdt_export import export_gbdt, save_gbdt
    from encoders.ctr.items import item_vectors
    from encoders.ctr.train import TrainConfig, train
    from liber_features.features.repo import open_store
    from liber_features.features.stats import ITEM_STATS_VIEW, USER_STATS_VIEW
    from liber_features.features.sync import sync_view
    from liber_features.ledger.store import events
    from liber_features.model.ranker_features import RankerItems
    from liber_features.serving.scorer import LiberScorer
    from liber_features.training.prepare import checkpoint_meta, prepare_training_set

    say(f"7/{n} train DIN + LIBER (a small demo model: 20k samples, 2 epochs) and a LightGBM ranker, both "
        "over the point-in-time side features (LIBER: UIF in DIN, affinities in LightGBM), on the leak-free "
        "training set")
    _, ts, versions = prepare_training_set(ledger.url, None, str(repo), say=lambda m: say("    " + m))
    text = item_vectors(ts.item_vocab, ts.catalog, enc)  # once per catalog; cached on disk
    r = train(ts, text, TrainConfig(backbone="din", liber="both", epochs=2, max_train_samples=20_000,
                                    device="cpu"), log=lambda m: say("  " + m))
    say(f"    DIN      test AUC {r.test['auc']:.4f}, GAUC {r.test['gauc']:.4f}, LogLoss {r.test['logloss']:.4f} "
        f"({r.seconds:.0f} s; `liber evaluate` runs the full grid)")
    items = RankerItems.from_catalog(ts.item_vocab, ts.catalog, text)
    cfg = GbdtConfig(liber="both")
    booster, res, _ = fit_gbdt(ts, text, (ts.summary_table, ts.shift_table), cfg, items=items)
    g = GbdtResult.of(res, cfg, len(ts.label))
    say(f"    LightGBM test AUC {g.test['auc']:.4f}, GAUC {g.test['gauc']:.4f}, LogLoss {g.test['logloss']:.4f} "
        f"({g.seconds:.0f} s, {g.best_epoch} trees)")

    model_dir, ranker_dir = workdir / "model", workdir / "ranker"
    meta = checkpoint_meta(ts, r, versions, ledger)
    save_checkpoint(r.model, meta, model_dir)
    save_gbdt(booster, checkpoint_meta(ts, g, versions, ledger) | {"features": res["features"]}, items, ranker_dir)
    say(f"8/{n} export {model_dir}/ and {ranker_dir}/: model.onnx + model_card.json")
    card = export_onnx(r.model, meta, model_dir)
    export_gbdt(ranker_dir)

    say(f"9/{n} score user {user} online: one read of {card.feature_service} + user_stats (the side "
        "features), one onnxruntime call")
    store = open_store(repo)
    for view in (USER_STATS_VIEW, ITEM_STATS_VIEW):
        sync_view(store, ledger, view)  # what `liber materialize` does: the ranker reads them online
    with ledger.engine.connect() as conn:
        seen = set(conn.execute(select(events.c.item_id).where(events.c.user_id == user)).scalars())
    candidates = [i for i in card.item_vocab if i not in seen]
    titles = dict(zip(ts.catalog.item_id, ts.catalog.title))
    say("    DIN + LIBER:")
    din, best = _top(LiberScorer.load(model_dir, repo, store=store), user, candidates, titles, say)
    say("    LightGBM ranker:")
    lgb, lgb_best = _top(LiberScorer.load(ranker_dir, repo, store=store), user, candidates, titles, say)
    model = {"test_auc": r.test["auc"], "model_dir": str(model_dir), "top": best,
             "cold_start": din.cold_start, "encoder_version": din.encoder_version}
    ranker = {"test_auc": g.test["auc"], "test_gauc": g.test["gauc"], "test_logloss": g.test["logloss"],
              "model_dir": str(ranker_dir), "top": lgb_best, "cold_start": lgb.cold_start,
              "encoder_version": lgb.encoder_version, "score_ms": round(lgb.score_ms, 1),
              "scores_finite": bool(np.isfinite(lgb.scores).all())}
    return model, ranker
