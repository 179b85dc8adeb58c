"""``liber project --dim D′``: fit a PCA projection of the text vectors and store its vectors.

The fit sees training-period partitions only (``training/fit_projection.py``); the projection and
its D′ vectors go into the ledger (``uil/projection.py``), no LLM call, and the repo's long-term
table is rewritten at D′. The views' D is part of the applied repo and of every model card, so
``LIBER_VECTOR_DIM=D′`` must then be the setting of ``feast apply``, ``liber materialize`` and
``liber train``: the command prints those steps.
"""

from __future__ import annotations

import click

from liber_features.cli.common import (
    emit,
    fail,
    ledger_option,
    open_ledger,
    own_data_dir,
    schema_option,
    use_ledger,
)
from liber_features.errors import LiberError

__all__ = ["COMMANDS"]


@click.command("project")
# 32 by default: the one D′ at which every goal of the compact memory held in bench_memory and
# bench_dprime (docs/memory.md): Redis bytes per user ≤ 1/10 of the padded layout, AUC inside the
# bootstrap interval of D = 384, the fast read not slower.
@click.option("--dim", type=click.IntRange(min=1), default=32, show_default=True,
              help="D′: the stored vector dimension")
@ledger_option
@schema_option
@click.option("--train-frac", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.8,
              show_default=True, help="the training split of `liber train` (the fit never sees later data)")
@click.option("--validation-frac", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True)
@click.option("--repo", default="feature_repo", show_default=True, type=click.Path(),
              help="Feast repo whose long-term table is rewritten at D′ (LIBER_DATA_DIR, else REPO/data)")
@click.option("--table/--no-table", default=True, help="rewrite the long-term memory Parquet table at D′")
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON line")
def project_cmd(dim: int, ledger_url: str | None, ledger_schema: str | None, train_frac: float,
                validation_frac: float, repo: str, table: bool, as_json: bool) -> None:
    """Fit a D′ projection of the text vectors (PCA on training-period partitions) and store it."""
    from pydantic import ValidationError

    from liber_features.features.memory import refresh_memory_table
    from liber_features.features.repo import LONG_TERM_VIEW, LiberFeatureConfig, data_file
    from liber_features.training.fit_projection import fit_projection
    from liber_features.training.samples import SampleConfig
    from liber_features.uil.projection import project_new, save_projection

    try:
        cfg = SampleConfig(train_frac=train_frac, validation_frac=validation_frac)
    except ValidationError as exc:
        raise click.UsageError(exc.errors()[0]["msg"]) from None
    use_ledger(ledger_url, ledger_schema)  # the data dir is the ledger's (settings.data_dir_for)
    try:
        ledger = open_ledger(ledger_url, ledger_schema)
        if table:  # another ledger's data dir is refused before anything is fitted
            own_data_dir(repo, ledger)
        p = fit_projection(ledger, dim, cfg=cfg)
        new = save_projection(ledger, p)
        written = project_new(ledger)
        summary = {"ledger": ledger.safe_url(), "encoder_id": p.encoder_id, "new": new,
                   "from_dim": p.in_dim, "to_dim": p.out_dim, **p.fitted_on, "vectors_written": written}
        if table:
            shape = LiberFeatureConfig.from_env()
            path = data_file(f"{LONG_TERM_VIEW}.parquet", repo_dir=repo)
            t = refresh_memory_table(ledger, path, memory_slots=shape.memory_slots, vector_dim=dim,
                                     history_length=shape.history_length)
            summary.update(table=str(path), table_rows=t.num_rows)
    except LiberError as exc:
        fail(exc, debug=False)
    summary["next"] = (f"export LIBER_VECTOR_DIM={dim}; feast -c {repo} apply && liber materialize "
                       f"--repo {repo}; liber train (models trained at another D are refused by the scorer)")
    emit(summary, as_json, f"projected the text vectors to D′ = {dim}")


COMMANDS = [project_cmd]
