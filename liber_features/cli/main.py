"""The ``liber`` command line (click).

Every command ends with a human summary, or with ``--json`` one JSON object as the last line of
stdout. A ``LiberError`` becomes ``error: <message>`` on stderr and a non-zero exit, any other
exception ``error: <Type>: <message>`` and exit 1, never a traceback unless ``--debug`` (see
cli/common.py); row-level problems are quarantined and reported in the counts instead.
"""

from __future__ import annotations

import functools
import sys
import sysconfig
import warnings
from pathlib import Path

import click

from liber_features.cli.common import (
    EventTypes,
    IdList,
    LiberGroup,
    RatingRange,
    emit,
    ledger_option,
    open_ledger,
    own_data_dir,
    replace_option,
    schema_option,
    setting_default,
    use_ledger,
)
from liber_features.cli.demo import COMMANDS as _DEMO_COMMANDS
from liber_features.cli.follow import follow_options, run_follow
from liber_features.cli.items import COMMANDS as _ITEM_COMMANDS
from liber_features.cli.model import COMMANDS as _MODEL_COMMANDS
from liber_features.cli.project import COMMANDS as _PROJECT_COMMANDS
from liber_features.cli.quarantine import COMMANDS as _QUARANTINE_COMMANDS
from liber_features.cli.repo import COMMANDS as _FEAST_COMMANDS
from liber_features.cli.report import COMMANDS as _REPORT_COMMANDS
from liber_features.cli.stream import COMMANDS as _STREAM_COMMANDS

__all__ = ["cli", "main"]


@click.group(cls=LiberGroup)
@click.version_option(package_name="liber-features")
@click.option("--debug", is_flag=True,
              help="print the traceback of an unexpected error instead of one line [env LIBER_DEBUG=1]")
def cli(debug: bool) -> None:
    """LIBER lifelong user-behaviour features for Feast-backed recommenders."""


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
@click.option("--rating-range", type=RatingRange(), default=None,
              help="valid ratings; others are quarantined (default: 0.5,5 for plain CSV/Parquet "
                   "logs and ml-latest, 1,5 for ml-100k and ml-1m)")
@click.option("--event-types", type=EventTypes(), default=None, help="valid values of an event_type column "
              "(default: view,click,cart,purchase,rating,impression); others are quarantined")
@click.option("--push/--no-push", default=False,
              help="push changed short-term caches to the Feast online store (--repo)")
@click.option("--repo", default="feature_repo", show_default=True, type=click.Path(),
              help="Feast feature repo used by --push")
@replace_option
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON line")
def ingest(events_path: str, catalog_path: str | None, ledger_url: str | None,
           ledger_schema: str | None, k: int, max_span_s: float | None,
           rating_range: tuple[float, float] | None, event_types: tuple[str, ...] | None, push: bool, repo: str,
           replace: bool, as_json: bool) -> None:
    """Validate events, partition them (UBSP) and record everything in the ledger."""
    from liber_features.ingest.events import LoadConfig, load_events
    from liber_features.ingest.job import ingest as run_ingest
    from liber_features.ingest.partition import PartitionRule
    from liber_features.ledger.store import Ledger

    cfg = {"rating_min": rating_range[0], "rating_max": rating_range[1]} if rating_range else {}
    if event_types:
        cfg["event_types"] = event_types
    loaded = load_events(events_path, catalog_path, LoadConfig(**cfg))
    if loaded.catalog is None:
        click.echo("warning: no catalog (--catalog): item ids are not checked against one, and "
                   "items have no titles or categories", err=True)
    from liber_features.features.caches import append_cache_history, cache_frame
    from liber_features.features.repo import SHORT_TERM_VIEW

    use_ledger(ledger_url, ledger_schema)
    history = _table_path(repo, f"{SHORT_TERM_VIEW}.parquet")
    ledger = Ledger(ledger_url, schema=ledger_schema)
    own_data_dir(repo, ledger, replace)  # before the ledger commits anything
    store = None
    if push:
        from liber_features.features.repo import open_store

        store = open_store(repo)

    def on_caches(states) -> None:
        df = cache_frame(states)
        # The ledger has committed by now: a failure here loses nothing, and
        # `liber push-caches` re-sends every cache from the ledger.
        append_cache_history(df, history, ledger)
        if store is not None:
            from liber_features.features.online import push_short_term_cache

            push_short_term_cache(store, df)
    summary = run_ingest(loaded, ledger, PartitionRule(k=k, max_span_s=max_span_s),
                         progress=False if as_json else None, on_caches=on_caches)
    from liber_features.training.statistics import refresh_stats_tables

    # The user/item statistics views' tables, rebuilt from the ledger now that it holds this log
    # (under the label rule the tables were last built with); `liber materialize` puts them online.
    refresh_stats_tables(ledger, repo)
    # repo: where the cache history went (and, with --push, whose online store was written)
    emit({**summary.as_dict(), "ledger": ledger.safe_url(), "repo": str(repo)}, as_json,
         f"ingested {loaded.source} ({loaded.layout})")


@cli.command("push-caches")
@ledger_option
@schema_option
@click.option("--users", type=IdList(), default=None, help="only these users (default: all)")
@click.option("--repo", default="feature_repo", show_default=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON line")
def push_caches(ledger_url, ledger_schema, users, repo, as_json) -> None:
    """Push the ledger's current short-term caches online (repairs a failed `ingest --push`)."""
    from liber_features.features.caches import current_caches
    from liber_features.features.online import push_short_term_cache
    from liber_features.features.repo import open_store

    use_ledger(ledger_url, ledger_schema)
    ledger = open_ledger(ledger_url, ledger_schema)
    own_data_dir(repo, ledger)
    df = current_caches(ledger, users)
    pushed = push_short_term_cache(open_store(repo), df)
    emit({"caches_pushed": pushed, "ledger": ledger.safe_url(), "repo": str(repo)}, as_json,
         "pushed short-term caches")


def _table_path(repo: str, name: str) -> Path:
    """Where an offline table lives on disk: LIBER_DATA_DIR, else ``<repo>/data``."""
    from liber_features.features.repo import data_file

    return Path(data_file(name, repo_dir=repo))


@cli.command()
@ledger_option
@schema_option
@click.option("--users", type=IdList(), default=None, help="only these users' partitions")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="stop after this many partitions (a rerun continues)")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--llm", "llm_spec", default=setting_default("llm"),
              help="'smollm2' (default, packaged), a checkpoint dir, a .gguf file, or "
                   "openai:http://host:port#model [env LIBER_LLM]")
@click.option("--text-encoder", "encoder_path", default=setting_default("text_encoder"),
              help="transformers encoder folder (default: packaged all-MiniLM-L6-v2) [env LIBER_TEXT_ENCODER]")
@click.option("--device", default=None, help="cuda / cpu (default: cuda when available)")
@click.option("--max-new-tokens", type=click.IntRange(1, 512), default=64, show_default=True)
@click.option("--domain", default=setting_default("domain"), metavar="movies|products|FILE.toml",
              help="what the prompts call items and events (default: movies) [env LIBER_DOMAIN]")
@click.option("--repo", default="feature_repo", show_default=True, type=click.Path(),
              help="Feast repo whose data dir receives the long-term memory table")
@click.option("--table/--no-table", default=True, help="write the long-term memory Parquet table")
@replace_option
@click.option("--lease", "lease_s", type=click.FloatRange(min=1), default=300, show_default=True,
              help="seconds a dead worker's claimed partitions wait before another worker takes them")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              metavar="[ADDRESS]", help="generate on Ray actors: alone, a local Ray instance; or "
              "'auto', host:6379, ray://host:10001 (needs the 'scale' extra)")
@click.option("--actors", type=click.IntRange(min=1), default=2, show_default=True,
              help="with --ray: actors, each loading one LLM and text encoder (1 GPU each if any)")
@click.option("--actor-cpus", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="with --ray: CPUs per actor (its torch threads)")
@follow_options
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON line")
def encode(ledger_url, ledger_schema, users, limit, batch_size, llm_spec, encoder_path, device,
           max_new_tokens, domain, repo, table, replace, lease_s, ray_address, actors, actor_cpus, follow,
           until_idle, max_seconds, poll_s, as_json) -> None:
    """UIL: summary then shift for every sealed partition not yet encoded (exactly once).

    With --follow it keeps running and encodes partitions as they are sealed (docs/encoding.md).
    """
    from liber_features.cli.progress import EncodeProgress
    from liber_features.features.memory import refresh_memory_table
    from liber_features.features.repo import LONG_TERM_VIEW, LiberFeatureConfig
    from liber_features.ledger.stopping import exit_on_sigterm
    from liber_features.uil.domain import load_domain
    from liber_features.uil.interest import EncodeConfig
    from liber_features.uil.prompts import PromptConfig

    # A plain `kill` (SIGTERM) should end the run like Ctrl-C: the ledger then records the run
    # as failed instead of leaving it "running" forever. Committed batches are kept either way;
    # a signal that arrives inside a ledger write waits for it (ledger/stopping.py).
    exit_on_sigterm()
    if not follow and (until_idle or max_seconds is not None):
        raise click.UsageError("--until-idle and --max-seconds go with --follow")
    if follow and (ray_address is not None or limit is not None):
        raise click.UsageError("--follow encodes in this process, without --ray or --limit")
    prompts = PromptConfig(domain=load_domain(domain))  # a bad template fails now, before any model loads
    use_ledger(ledger_url, ledger_schema)
    ledger = open_ledger(ledger_url, ledger_schema)
    if table:  # a data dir of another ledger is refused now, not after hours of encoding
        own_data_dir(repo, ledger, replace)
    cfg = EncodeConfig(batch_size=batch_size, limit=limit, lease_s=lease_s, users=users, prompts=prompts)
    # Our own reporter instead of the loop's bar: it also counts calls/s, and writes plain lines
    # when stderr is not a terminal (cli/progress.py).
    shown = None if as_json or follow else EncodeProgress()
    spec = (llm_spec, encoder_path, device, max_new_tokens, batch_size)
    try:
        if follow:
            summary = run_follow(ledger, cfg, spec, repo=repo, table=table, poll_s=poll_s, until_idle=until_idle,
                                 max_seconds=max_seconds, quiet=as_json)
        else:
            summary = _run_encode(ledger, cfg, shown, spec, ray_address, actors, actor_cpus)
    finally:
        if shown is not None:
            shown.close()
    summary["ledger"], summary["domain"] = ledger.safe_url(), prompts.domain.label
    if table:
        # Every user in their newest complete version (not only this run's): users not yet
        # re-encoded under a new LLM/prompt/encoder keep their rows. Locked: workers may race.
        shape = LiberFeatureConfig.from_env()
        path = _table_path(repo, f"{LONG_TERM_VIEW}.parquet")
        t = refresh_memory_table(ledger, path, memory_slots=shape.memory_slots,
                                 vector_dim=shape.vector_dim,
                                 history_length=shape.history_length, replace=replace)
        summary["table"], summary["repo"] = str(path), str(repo)
        summary["table_rows"] = t.num_rows
    emit(summary, as_json, "encoded sealed partitions")
    if summary["failed"]:
        sys.exit(1)


def _run_encode(ledger, cfg, on_progress, spec: tuple, ray_address, actors, actor_cpus) -> dict:
    """The encode job in this process, or on Ray actors with ``ray_address``; its summary."""
    from encoders.uil.backends import model_backends
    from liber_features.uil.interest import run_encode
    from liber_features.uil.rayjob import RayEncodeConfig, run_ray_encode

    if ray_address is None:
        return run_encode(ledger, *model_backends(*spec), cfg, progress=False,
                          on_progress=on_progress).as_dict()
    # The models load in the actors, never here. An openai: backend is a client of vLLM
    # servers that hold the GPUs, so its actors ask Ray for none.
    remote = (spec[0] or "").startswith("openai:")
    rc = RayEncodeConfig(address=ray_address, actors=actors, actor_cpus=actor_cpus,
                         gpus_per_actor=0 if remote else None)
    backends = functools.partial(model_backends, *spec)
    return run_ray_encode(ledger, backends, cfg, rc, progress=False, on_progress=on_progress).as_dict()


for _command in (*_DEMO_COMMANDS, *_FEAST_COMMANDS, *_MODEL_COMMANDS, *_REPORT_COMMANDS, *_QUARANTINE_COMMANDS,
                 *_PROJECT_COMMANDS, *_STREAM_COMMANDS, *_ITEM_COMMANDS):
    cli.add_command(_command)


_LIBRARY_DIRS = tuple({str(Path(sysconfig.get_paths()[k]).resolve()) for k in ("purelib", "platlib")})
_OWN_DIRS = tuple(str(Path(__file__).resolve().parents[2] / pkg) for pkg in ("liber_features", "encoders"))
_LIBRARY_NOISE = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def quiet_library_warnings() -> None:
    """Stop showing deprecation notices that installed libraries raise about each other.

    ibis warns about its own use of duckdb, Feast about its own internals, and so on: nothing a
    user of ``liber`` can act on. A warning filter cannot hold them back, because importing
    Feast (lazily, mid-command) runs ``warnings.simplefilter("once", DeprecationWarning)``, which
    goes to the front of the filter list. So this drops them where they are displayed, by the
    file they are attributed to; a deprecation attributed to our own code (a library API that
    *we* call) still shows, and so does every other warning.
    """
    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        where = str(Path(filename).resolve())
        if issubclass(category, _LIBRARY_NOISE) and where.startswith(_LIBRARY_DIRS) \
                and not where.startswith(_OWN_DIRS):  # a non-editable install puts us there too
            return
        show(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning


def main() -> None:
    quiet_library_warnings()  # here, not at import: importing liber_features changes no global state
    cli(prog_name="liber")


if __name__ == "__main__":
    main()
