"""``liber report``: a static HTML page (+ PNGs) of what the ledger, Feast, the model and the benchmarks hold;
``liber status``: the ledger's totals and runs in the terminal. Both count what the online store holds
*for this ledger* (``features/census.py``): rows another ledger wrote over this ledger's users, rows of
users it has no partitions for, and its rows of another encoder version are named, never added."""

from __future__ import annotations

import time
from pathlib import Path

import click

from liber_features.cli.common import IdList, emit, fail, ledger_option, open_ledger, schema_option, use_ledger

__all__ = ["COMMANDS"]


@click.command("report")
@ledger_option
@schema_option
@click.option("--repo", default="feature_repo", show_default=True, type=click.Path(),
              help="Feast repo whose online store is read (partition_count, encoder_version)")
@click.option("--no-online", is_flag=True, help="do not read the online store")
@click.option("--model", "model_dir", default="models/liber", show_default=True, type=click.Path(),
              help="exported model (model_card.json)")
# No defaults: a file the working directory happens to hold (this checkout's docs/evaluation.json,
# another ledger's benchmark) would be shown as this ledger's results.
@click.option("--evaluation", default=None, type=click.Path(),
              help="the grid written by `liber evaluate` (evaluation.json); not shown unless given")
@click.option("--bench", "bench_dir", default=None, type=click.Path(),
              help="folder of benchmark outputs (bench_online.json); not shown unless given")
@click.option("--users", type=IdList(), default=None,
              help="users whose interests over time are shown (default: the three with the most "
                   "encoded partitions)")
@click.option("--out", "out_dir", default="report", show_default=True, type=click.Path(),
              help="folder receiving index.html and its PNGs")
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON line")
def report_cmd(ledger_url, ledger_schema, repo, no_online, model_dir, evaluation, bench_dir, users,
               out_dir, as_json) -> None:
    """Write OUT/index.html: data, LLM cost, interests over time, model, serving."""
    from liber_features.errors import LedgerError
    from liber_features.report.gather import gather, write_report

    t0 = time.perf_counter()
    use_ledger(ledger_url, ledger_schema)
    ledger = open_ledger(ledger_url, ledger_schema)
    if not ledger.counts()["ledger_events"]:  # before reading Feast: a wrong URL fails fast
        raise LedgerError(f"ledger {ledger.safe_url()} holds no events: run `liber ingest` first")
    rd = gather(ledger, repo=None if no_online else Path(repo), model_dir=Path(model_dir),
                evaluation=Path(evaluation) if evaluation else None,
                bench_dir=Path(bench_dir) if bench_dir else None,
                users=users)
    result = write_report(rd, Path(out_dir))
    not_counted = rd.notes.pop("online_not_counted", None)  # found online, another ledger's: named apart
    emit({"ledger": ledger.safe_url(), "repo": "not read (--no-online)" if no_online else str(repo),
          **result, "missing": "; ".join(rd.notes.values()) or "nothing",
          "online_not_counted": not_counted or "nothing",
          "seconds": round(time.perf_counter() - t0, 1)}, as_json, "report written")


@click.command()
@ledger_option
@schema_option
@click.option("--online", is_flag=True, help="also count what the online store of --repo holds for this ledger")
@click.option("--repo", default="feature_repo", show_default=True, type=click.Path(), help="read by --online")
@click.option("--lag", "lag_urls", multiple=True, metavar="URL",
              help="also ask this broker (the URL given to `liber stream --from`) how far its consumer is "
                   "behind: messages not yet committed, age of the oldest (repeatable; read-only)")
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON line")
def status(ledger_url, ledger_schema, online, repo, lag_urls, as_json) -> None:
    """Ledger totals, encoder progress and backlog, and runs: live, finished, failed, stale (dead workers).

    The encode backlog counts the sealed partitions still without an output for the version being
    encoded now (the newest live or finished encode run's prompt version and LLM); ready: those
    the cascade allows now (partition 0, or its predecessor done).
    """
    from liber_features.ledger.runs import encode_domains, run_report, stream_report
    from liber_features.ledger.store import encode_progress
    from liber_features.uil.backlog import encode_backlog
    from liber_features.uil.prompts import preset_prompt_versions

    use_ledger(ledger_url, ledger_schema)
    ledger = open_ledger(ledger_url, ledger_schema)
    report = run_report(ledger)
    streams = stream_report(ledger)
    backlog = encode_backlog(ledger)  # of the version being encoded now: what `encode --follow` has to do
    summary = {"ledger": ledger.safe_url(), "ledger_id": ledger.ledger_id, **ledger.counts(), **encode_progress(ledger),
               "encode_backlog": backlog.partitions, "encode_backlog_ready": backlog.ready,
               "encode_backlog_llm": backlog.llm_id or "- (nothing encoded yet)",
               # which prompt domain(s) encoded this ledger, newest first (uil/domain.py, Domain.label)
               "encoded_with_domain": ", ".join(encode_domains(ledger, preset_prompt_versions())) or "none",
               **report, "streams": streams}
    if online:  # this ledger's rows counted, other ledgers' and versions' named (features/census.py)
        from liber_features.features.census import census_of_ledger
        from liber_features.features.repo import open_store

        summary |= {"repo": str(repo), **census_of_ledger(open_store(repo), ledger).summary()}
    if lag_urls:  # asked of each broker (stream/lag.py): the ledger knows what it committed, not what came since
        from liber_features.errors import LiberError
        from liber_features.stream.lag import broker_lag

        try:
            summary["lag"] = [broker_lag(u, ledger).as_dict() for u in lag_urls]
        except LiberError as exc:
            fail(exc, debug=False)
    if as_json:
        emit(summary, as_json, "")
    else:
        emit({k: v for k, v in summary.items() if k not in ("ledger", "runs", "workers", "streams", "lag")},
             as_json, f"ledger {ledger.safe_url()}")
        for lag in summary.get("lag", []):
            age = "-" if lag["oldest_age_s"] is None else f"{lag['oldest_age_s']} s"
            click.echo(f"  lag {lag['source']}: {lag['messages']} messages not committed, oldest {age}")
        for st in streams:  # liber stream: where each broker source is committed up to
            click.echo(f"  stream {st['source']}: {st['events']} events, {st['quarantined']} quarantined, "
                       f"at {st['position'] or '-'} (newest event {st['newest_event_at'] or '-'}, "
                       f"last commit {st['last_commit_age_s']} s ago)")
            for m in st["online"]:  # the flusher of each consumer that writes caches online
                last = "never" if m["last_write_age_s"] is None else f"{m['last_write_age_s']} s ago"
                pending = ("none pending" if m["oldest_unflushed_age_s"] is None else
                           f"oldest unflushed change committed {m['oldest_unflushed_age_s']} s ago "
                           f"({m['pending_users']} users waiting)")
                click.echo(f"    online, run {m['run_id']} ({m['state']}): {pending}; last complete write {last}")
        click.echo("  runs                   " + ", ".join(f"{n} {k}" for k, n in report["runs"].items()))
        click.echo(f"  {'run':>6} {'kind':<7} {'state':<9} {'worker':<28} {'beat_s':>8} {'parts':>6} "
                   f"{'calls':>6} {'uncommitted':>11} {'rejected':>8}")
        for w in report["workers"]:
            click.echo(f"  {w['run_id']:>6} {w['kind']:<7} {w['state']:<9} {str(w['worker'])[:28]:<28} "
                       f"{w['heartbeat_age_s']:>8} {w['partitions_done']:>6} {w['llm_calls']:>6} "
                       f"{w['llm_calls_uncommitted']:>11} {w['rejected_commits']:>8}")


COMMANDS = [report_cmd, status]
