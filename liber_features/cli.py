"""The ``liber`` command line (click).

Every command ends with a human summary, or with ``--json`` one JSON object as the last line of
stdout. A ``LiberError`` becomes ``error: <message>`` on stderr and a non-zero exit, never a
traceback; row-level problems are quarantined and reported in the counts instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .errors import LiberError

__all__ = ["main", "cli"]


class _LiberGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LiberError as exc:
            from .redact import redact_text

            click.echo(f"error: {redact_text(str(exc))}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=_LiberGroup)
@click.version_option(package_name="liber-features")
def cli() -> None:
    """LIBER lifelong user-behaviour features for Feast-backed recommenders."""


def emit(summary: dict[str, Any], as_json: bool, title: str) -> None:
    """Print a summary: aligned lines for people, one JSON line for machines."""
    if as_json:
        click.echo(json.dumps(summary, default=str, sort_keys=True))
        return
    click.echo(title)
    for key, value in summary.items():
        if not isinstance(value, dict):
            click.echo(f"  {key:<22} {value}")


ledger_option = click.option(
    "--ledger", "ledger_url", envvar="LIBER_LEDGER_URL", default=None,
    help="SQLAlchemy URL of the ledger [env LIBER_LEDGER_URL; default sqlite:///.liber/ledger.db]")
schema_option = click.option(
    "--ledger-schema", envvar="LIBER_LEDGER_SCHEMA", default=None,
    help="PostgreSQL schema holding the ledger tables [env LIBER_LEDGER_SCHEMA]")


@cli.command()
@click.option("--events", "events_path", required=True, type=click.Path(),
              help="GroupLens directory (ml-latest[-small], ml-100k, ml-1m) or a CSV/Parquet event log")
@click.option("--catalog", "catalog_path", type=click.Path(), default=None,
              help="item catalog (item_id,title[,categories]); a GroupLens directory brings its own")
@ledger_option
@schema_option
@click.option("--k", type=click.IntRange(min=1), default=20, show_default=True,
              help="seal a partition when a user's cache holds K events")
@click.option("--max-span", "max_span_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="also seal when an event arrives this many seconds after the cache's oldest")
@click.option("--rating-range", default=None, metavar="MIN,MAX",
              help="valid rating range (default: the layout's, e.g. 0.5,5 for ml-latest)")
@click.option("--push/--no-push", default=False,
              help="push changed short-term caches to the Feast online store (--repo)")
@click.option("--repo", default="feature_repo", show_default=True, type=click.Path(),
              help="Feast feature repo used by --push")
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON line")
def ingest(events_path: str, catalog_path: str | None, ledger_url: str | None,
           ledger_schema: str | None, k: int, max_span_s: float | None,
           rating_range: str | None, push: bool, repo: str, as_json: bool) -> None:
    """Validate events, partition them (UBSP) and record everything in the ledger."""
    from .errors import ConfigError
    from .events import LoadConfig, load_events
    from .ingest import ingest as run_ingest
    from .ledger import Ledger
    from .partition import PartitionRule

    cfg = {}
    if rating_range:
        try:
            lo, hi = (float(x) for x in rating_range.split(","))
        except ValueError:
            raise ConfigError(f"--rating-range must be MIN,MAX, got {rating_range!r}") from None
        cfg = {"rating_min": lo, "rating_max": hi}
    loaded = load_events(events_path, catalog_path, LoadConfig(**cfg))
    from .featurestore import SHORT_TERM_VIEW
    from .ingest import append_cache_history

    history = _table_path(repo, f"{SHORT_TERM_VIEW}.parquet")
    store = None
    if push:
        from .featurestore import open_store

        store = open_store(repo)

    def on_caches(df) -> None:
        # The ledger has committed by now: a failure here loses nothing, and
        # `liber push-caches` re-sends every cache from the ledger.
        append_cache_history(df, history)
        if store is not None:
            from .online import push_short_term_cache

            push_short_term_cache(store, df)
    ledger = Ledger(ledger_url, schema=ledger_schema)
    summary = run_ingest(loaded, ledger, PartitionRule(k=k, max_span_s=max_span_s),
                         progress=False if as_json else None, on_caches=on_caches)
    emit(summary.as_dict(), as_json, f"ingested {loaded.source} ({loaded.layout})")


@cli.command("push-caches")
@ledger_option
@schema_option
@click.option("--users", default=None, metavar="ID,ID,...", help="only these users (default: all)")
@click.option("--repo", default="feature_repo", show_default=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON line")
def push_caches(ledger_url, ledger_schema, users, repo, as_json) -> None:
    """Push the ledger's current short-term caches online (repairs a failed `ingest --push`)."""
    from .featurestore import open_store
    from .ingest import current_caches
    from .ledger import Ledger
    from .online import push_short_term_cache

    df = current_caches(Ledger(ledger_url, schema=ledger_schema),
                        [u.strip() for u in users.split(",")] if users else None)
    pushed = push_short_term_cache(open_store(repo), df)
    emit({"caches_pushed": pushed}, as_json, "pushed short-term caches")


@cli.command()
@ledger_option
@schema_option
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON line")
def status(ledger_url, ledger_schema, as_json) -> None:
    """Ledger totals and encoder progress."""
    from .ledger import Ledger, encode_progress

    ledger = Ledger(ledger_url, schema=ledger_schema)
    emit({**ledger.counts(), **encode_progress(ledger)}, as_json, f"ledger {ledger.safe_url()}")


def _table_path(repo: str, name: str) -> Path:
    """Where an offline table lives on disk: LIBER_DATA_DIR, else ``<repo>/data``."""
    from .featurestore import data_file

    return Path(data_file(name, repo_dir=repo))


@cli.command()
@ledger_option
@schema_option
@click.option("--users", default=None, metavar="ID,ID,...", help="only these users' partitions")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="stop after this many partitions (a rerun continues)")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--llm", "llm_spec", default=None, envvar="LIBER_LLM",
              help="'smollm2' (default, packaged), a checkpoint dir, a .gguf file, or "
                   "openai:http://host:port#model [env LIBER_LLM]")
@click.option("--text-encoder", "encoder_path", default=None, envvar="LIBER_TEXT_ENCODER",
              help="transformers encoder folder (default: packaged all-MiniLM-L6-v2)")
@click.option("--device", default=None, help="cuda / cpu (default: cuda when available)")
@click.option("--max-new-tokens", type=click.IntRange(1, 512), default=64, show_default=True)
@click.option("--repo", default="feature_repo", show_default=True, type=click.Path(),
              help="Feast repo whose data dir receives the long-term memory table")
@click.option("--table/--no-table", default=True, help="write the long-term memory Parquet table")
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON line")
def encode(ledger_url, ledger_schema, users, limit, batch_size, llm_spec, encoder_path, device,
           max_new_tokens, repo, table, as_json) -> None:
    """UIL: summary then shift for every sealed partition not yet encoded (exactly once)."""
    from encoders.llm import DecodingConfig, load_llm
    from encoders.text import TextEncoder

    from .featurestore import LONG_TERM_VIEW, LiberFeatureConfig
    from .interest import EncodeConfig, run_encode
    from .ledger import Ledger
    from .memory import memory_table, write_memory_table

    import signal

    # A plain `kill` (SIGTERM) should end the run like Ctrl-C: the ledger then records the run
    # as failed instead of leaving it "running" forever. Committed batches are kept either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ledger = Ledger(ledger_url, schema=ledger_schema)
    cfg = EncodeConfig(batch_size=batch_size, limit=limit,
                       users=[u.strip() for u in users.split(",") if u.strip()] if users else None)
    llm = load_llm(llm_spec, device=device,
                   decoding=DecodingConfig(max_new_tokens=max_new_tokens, batch_size=batch_size))
    enc = TextEncoder(encoder_path, device=device)
    summary = run_encode(ledger, llm, enc, cfg, progress=False if as_json else None).as_dict()
    if table:
        shape = LiberFeatureConfig.from_env()
        t = memory_table(ledger, memory_slots=shape.memory_slots, vector_dim=shape.vector_dim,
                         versions=(summary["prompt_version"], llm.llm_id, enc.encoder_id))
        summary["table"] = str(write_memory_table(t, _table_path(repo, f"{LONG_TERM_VIEW}.parquet")))
        summary["table_rows"] = t.num_rows
    emit(summary, as_json, "encoded sealed partitions")
    if summary["failed"]:
        sys.exit(1)


@cli.command()
@click.option("--data", type=click.Path(), default=None,
              help="GroupLens directory [default: ../shared/data/ml-latest-small or "
                   "$LIBER_ML_LATEST_SMALL]")
@click.option("--workdir", type=click.Path(), default=".liber/demo", show_default=True,
              help="where the demo's SQLite ledger lives")
@click.option("--repo", default="feature_repo", show_default=True, type=click.Path())
@click.option("--users", default="5,8,9", show_default=True, metavar="ID,ID,...",
              help="users whose partitions the LLM encodes (the whole log is ingested)")
@click.option("--k", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(1, 512), default=48, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON line")
def demo(data, workdir, repo, users, k, max_new_tokens, as_json) -> None:
    """Run the whole pipeline end to end on the embedded defaults (SQLite ledger + online store)."""
    from .demo import default_data_dir, run_demo

    result = run_demo(data=Path(data) if data else default_data_dir(), workdir=Path(workdir),
                      repo=Path(repo), users=[u.strip() for u in users.split(",") if u.strip()],
                      k=k, max_new_tokens=max_new_tokens,
                      say=(lambda _m: None) if as_json else click.echo)
    if as_json:
        click.echo(json.dumps(result, default=str, sort_keys=True))


from .cli_feast import COMMANDS as _FEAST_COMMANDS  # noqa: E402 - registered after the group

for _command in _FEAST_COMMANDS:
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="liber")


if __name__ == "__main__":
    main()
