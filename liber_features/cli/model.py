"""``liber train``, ``liber export``, ``liber evaluate``: the model half (torch, from ``encoders``).

Each command first makes the Feast repo current for the ledger (long-term table rewritten from the
ledger, ``feast apply``), so a training set is always built from what Feast would serve.
"""

from __future__ import annotations

from pathlib import Path

import click

from liber_features.cli.common import (
    emit,
    ledger_option,
    replace_option,
    require_ledger,
    schema_option,
    use_ledger,
)
from liber_features.cli.serve import COMMANDS as SCORING_COMMANDS
from liber_features.cli.serve import repo_option
from liber_features.training.prepare import checkpoint_meta, prepare_training_set

__all__ = ["COMMANDS"]


def _item_vectors(ts, device):
    from encoders.ctr.items import item_vectors
    from encoders.uil.text import TextEncoder

    return item_vectors(ts.item_vocab, ts.catalog, TextEncoder(device=device))



label_rule_option = click.option(
    "--label-rule", default="rating>=4", show_default=True,
    help="which events are samples: rating>=X | events:click,purchase/impression (unclicked impressions "
         "negative) | sampled:purchase:4 (4 negatives drawn per positive) | label")


@click.command("train")
@ledger_option
@schema_option
@repo_option
@click.option("--backbone", type=click.Choice(["din", "dcnv2", "lgbm"]), default="din", show_default=True,
              help="lgbm: LightGBM over the side features, LIBER as affinity features (no torch to serve)")
@click.option("--liber", "variant", type=click.Choice(["none", "both", "summary"]), default="both",
              show_default=True, help="which LIBER vectors the model reads")
@click.option("--epochs", type=click.IntRange(1, 200), default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dim", type=click.IntRange(4, 512), default=32, show_default=True)
@click.option("--max-train-samples", type=click.IntRange(min=1), default=None,
              help="train on a random subset (a quick smoke model)")
@click.option("--side/--no-side", default=True, show_default=True,
              help="DIN / DCNv2 also read the point-in-time side row (statistics, genres, history overlap)")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="DIN / DCNv2 MLP dropout (default: TrainConfig's, chosen on validation, docs/model.md)")
@click.option("--embedding-l2", type=click.FloatRange(min=0), default=None,
              help="L2 penalty on the batch's user and item-id embedding rows (default: TrainConfig's)")
@click.option("--device", default=None, help="cuda / cpu (default: cuda when available)")
@label_rule_option
@click.option("--out", "out_dir", default="models/liber", show_default=True, type=click.Path())
@replace_option
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON line")
def train_cmd(ledger_url, ledger_schema, repo, backbone, variant, epochs, seed, dim,
              max_train_samples, side, dropout, embedding_l2, device, label_rule, out_dir, replace,
              as_json) -> None:
    """Train one backbone (+ LIBER) on the ledger's leak-free training set; save a checkpoint."""
    from encoders.ctr.export import save_checkpoint
    from encoders.ctr.train import TrainConfig, train
    from liber_features.training.labels import LabelRule

    say = (lambda _m: None) if as_json else click.echo
    rule = LabelRule.parse(label_rule)  # a malformed rule fails before the ledger is opened
    use_ledger(ledger_url, ledger_schema)
    ledger, ts, versions = prepare_training_set(require_ledger(ledger_url), ledger_schema, repo, say=say,
                                                label_rule=rule, replace=replace)
    if backbone == "lgbm":
        result, path = _train_gbdt(ts, _item_vectors(ts, device), variant, seed, versions, ledger, out_dir)
    else:
        cfg = TrainConfig(backbone=backbone, liber=variant, epochs=epochs, seed=seed, dim=dim,
                          device=device, max_train_samples=max_train_samples, side=side,
                          **{k: v for k, v in (("dropout", dropout), ("embedding_l2", embedding_l2)) if v is not None})
        result = train(ts, _item_vectors(ts, device), cfg, log=say)
        path = save_checkpoint(result.model, checkpoint_meta(ts, result, versions, ledger), out_dir)
    emit({"ledger": ledger.safe_url(), "repo": str(repo), "checkpoint": str(path),
          "test_auc": round(result.test["auc"], 4),
          "test_gauc": round(result.test["gauc"], 4), "test_logloss": round(result.test["logloss"], 4),
          "validation_auc": round(result.validation["auc"], 4), "epochs": result.epochs_run,
          "best_epoch": result.best_epoch, "seconds": round(result.seconds, 1),
          "samples_per_s": round(result.samples_per_s), "peak_rss_mb": round(result.peak_rss_mb),
          "label_rule": rule.describe()}, as_json, f"trained {backbone} (LIBER: {variant})")


def _train_gbdt(ts, item_text, variant, seed, versions, ledger, out_dir):
    """LightGBM on the same training set: (result, path of its saved metadata)."""
    import numpy as np

    from encoders.ctr.gbdt import GbdtConfig, GbdtResult, fit_gbdt
    from encoders.ctr.gbdt_export import save_gbdt
    from liber_features.model.ranker_features import RankerItems

    items = RankerItems.from_catalog(ts.item_vocab, ts.catalog, item_text)
    tables = {"none": None, "both": (ts.summary_table, ts.shift_table),
              "summary": (ts.summary_table, np.zeros_like(ts.shift_table))}[variant]
    cfg = GbdtConfig(liber=variant, seed=seed)
    booster, res, _ = fit_gbdt(ts, item_text, tables, cfg, items=items)
    result = GbdtResult.of(res, cfg, len(ts.label))
    meta = checkpoint_meta(ts, result, versions, ledger) | {"features": res["features"]}
    return result, save_gbdt(booster, meta, items, out_dir)


@click.command("export")
@click.argument("model_dir", type=click.Path(), default="models/liber")
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON line")
def export_cmd(model_dir, as_json) -> None:
    """Export a trained checkpoint to MODEL_DIR/model.onnx + model_card.json."""
    from encoders.ctr.gbdt_export import GBDT_META, export_gbdt

    if (Path(model_dir) / GBDT_META).is_file():  # a LightGBM ranker: no torch needed
        card = export_gbdt(model_dir)
    else:
        from encoders.ctr.export import export_onnx, load_checkpoint

        model, meta = load_checkpoint(model_dir)
        card = export_onnx(model, meta, model_dir)
    emit({"model": str(Path(model_dir) / "model.onnx"), "backbone": card.backbone, "liber": card.liber,
          "opset": card.opset, "items": len(card.item_vocab), "users": len(card.user_vocab),
          "encoder_version": card.encoder_version}, as_json, "exported")


@click.command("evaluate")
@ledger_option
@schema_option
@repo_option
@click.option("--backbones", default="din,dcnv2,lgbm", show_default=True,
              help="lgbm: LightGBM with LIBER as affinity features (evaluation only, not exported)")
@click.option("--variants", default="none,both,summary,nollm,shuffled,random", show_default=True,
              help="shuffled / random: placebos of LIBER's shape (another user's vectors; random ones)")
@click.option("--seeds", default="0,1,2,3,4", show_default=True)
@click.option("--bootstrap", type=click.IntRange(min=0), default=1000, show_default=True,
              help="user resamples for the paired intervals (0: none)")
@click.option("--epochs", type=click.IntRange(1, 200), default=10, show_default=True)
@click.option("--max-train-samples", type=click.IntRange(min=1), default=None)
@click.option("--device", default=None, help="cuda / cpu (default: cuda when available)")
@label_rule_option
@click.option("--save-set", type=click.Path(), default=None,
              help="also save the built training set + item vectors (.npz) to train elsewhere")
@click.option("--training-set", type=click.Path(exists=True, dir_okay=False), default=None,
              help="use a set saved with --save-set instead of the ledger and Feast repo")
@click.option("--out", "out_dir", default="docs", show_default=True, type=click.Path())
@replace_option
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON line")
def evaluate_cmd(ledger_url, ledger_schema, repo, backbones, variants, seeds, bootstrap, epochs,
                 max_train_samples, device, label_rule, save_set, training_set, out_dir, replace,
                 as_json) -> None:
    """The evaluation grid: backbones × LIBER variants × seeds → docs/evaluation.{md,json,png}."""
    from pydantic import ValidationError

    from encoders.ctr.evaluate import GridConfig, run_grid, write_reports
    from liber_features.training.prepare import ledger_facts, load_set
    from liber_features.training.prepare import save_set as save

    say = (lambda _m: None) if as_json else click.echo
    try:  # checked before the training set is built: a typo must not cost minutes
        grid = GridConfig(backbones=backbones.split(","), variants=variants.split(","),
                          seeds=[int(s) for s in seeds.split(",")], epochs=epochs, bootstrap=bootstrap,
                          max_train_samples=max_train_samples, device=device)
    except (ValidationError, ValueError) as exc:
        errs = exc.errors() if isinstance(exc, ValidationError) else [{"loc": ("seeds",), "msg": str(exc)}]
        raise click.UsageError("; ".join(f"{e['loc'][0]}: {e['msg']}" for e in errs)) from None
    if training_set:
        ts, item_text, versions, facts = load_set(training_set)
    else:
        from liber_features.training.labels import LabelRule

        use_ledger(ledger_url, ledger_schema)
        ledger, ts, versions = prepare_training_set(require_ledger(ledger_url), ledger_schema, repo, say=say,
                                                    label_rule=LabelRule.parse(label_rule), replace=replace)
        item_text, facts = _item_vectors(ts, device), ledger_facts(ledger)
    if save_set:
        save(save_set, ts, item_text, versions, facts)
    results = run_grid(ts, item_text, grid, log=say)
    paths = write_reports(results, ts, facts, versions, grid, out_dir)
    source = {"training_set": str(training_set)} if training_set else {"ledger": ledger.safe_url(), "repo": str(repo)}
    emit({**source, "rows": len(results["rows"]), **{k: str(v) for k, v in paths.items()}}, as_json,
         "evaluation written")


COMMANDS = [train_cmd, export_cmd, evaluate_cmd, *SCORING_COMMANDS]
