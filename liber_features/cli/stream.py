"""``liber stream`` (a broker → the ledger, exactly once, caches online) and ``liber produce``
(an event file → a broker). Broker URLs: ``stream/brokers.py``; the loop: ``stream/consumer.py``.

An unreachable broker is one ``error:`` line naming it (password masked) and exit 2, like every
``LiberError``; a broker that goes away mid-run is retried and reported, never a traceback.
"""

from __future__ import annotations

import click

from liber_features.cli.common import emit, ledger_option, open_ledger, own_data_dir, schema_option, use_ledger

__all__ = ["COMMANDS"]


@click.command("stream")
@click.option("--from", "url", required=True,
              help="broker URL: nats://HOST:PORT/STREAM?subject=SUBJ&durable=NAME or "
                   "redis://HOST:PORT/DB?stream=KEY&group=NAME[&consumer=NAME] or "
                   "kafka://HOST:PORT/TOPIC?group=NAME")
@ledger_option
@schema_option
@click.option("--k", type=click.IntRange(min=1), default=20, show_default=True,
              help="seal a partition when a user's cache holds K events (the ledger's rule must match)")
@click.option("--max-span", "max_span_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="also seal when a cache's oldest event is this many seconds old (quiet users too)")
@click.option("--repo", type=click.Path(), default=None,
              help="Feast repo: push changed short-term caches online every --flush-ms (default: no push)")
@click.option("--batch", type=click.IntRange(min=1), default=500, show_default=True,
              help="messages per fetch and per ledger transaction")
@click.option("--flush-ms", type=click.IntRange(min=1), default=200, show_default=True,
              help="with --repo: longest delay before a changed cache is written online")
@click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="stop after this many seconds (default: until SIGTERM)")
@click.option("--until-idle", "until_idle_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="stop once no message arrived for this many seconds")
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON line")
def stream(url, ledger_url, ledger_schema, k, max_span_s, repo, batch, flush_ms, max_seconds,
           until_idle_s, as_json) -> None:
    """Consume events from a broker into the ledger (UBSP), exactly once; ack after each commit."""
    from liber_features.ingest.partition import PartitionRule
    from liber_features.ledger.stopping import exit_on_sigterm
    from liber_features.stream.brokers import parse_broker_url
    from liber_features.stream.connect import open_source
    from liber_features.stream.consumer import Consumer, StreamConfig

    exit_on_sigterm()  # `kill` ends the loop between batches; the run is recorded
    parse_broker_url(url)  # a malformed URL is refused before anything is opened
    # The broker first: an unreachable one must not leave a new empty ledger behind.
    source = open_source(url, batch)
    try:
        use_ledger(ledger_url, ledger_schema)
        # Like ingest, the stream may create its ledger: it is where events first enter one.
        ledger = open_ledger(ledger_url, ledger_schema, must_exist=False)
        flusher = None
        if repo is not None:
            from liber_features.features.online import push_short_term_cache
            from liber_features.features.repo import open_store
            from liber_features.stream.flusher import Flusher

            own_data_dir(repo, ledger)
            store = open_store(repo)
            flusher = Flusher(lambda df: push_short_term_cache(store, df), flush_ms / 1000,
                              say=lambda line: click.echo(line, err=True))
        cfg = StreamConfig(batch=batch, max_seconds=max_seconds, until_idle_s=until_idle_s)
        summary = Consumer(source, ledger, PartitionRule(k=k, max_span_s=max_span_s), cfg,
                           flusher=flusher).run()
    finally:
        source.close()
    emit({**summary.as_dict(), "source": source.url, "ledger": ledger.safe_url()}, as_json,
         f"streamed {source.url}")


@click.command("produce")
@click.option("--events", "events_path", required=True, type=click.Path(),
              help="GroupLens directory or CSV/Parquet event log (read as `liber ingest` reads it)")
@click.option("--catalog", "catalog_path", type=click.Path(), default=None, help="item catalog")
@click.option("--to", "url", required=True, help="broker URL (see `liber stream --from`)")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="events per second (default: as fast as the broker takes them)")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="publish at most this many events")
@click.option("--skip", type=click.IntRange(min=0), default=0, show_default=True,
              help="skip the first N events (in time order)")
@click.option("--shards", type=click.IntRange(min=1), default=1, show_default=True,
              help="spread users over SUBJECT.<n> / KEY.<n> (one consumer per shard keeps per-user order)")
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON line")
def produce(events_path, catalog_path, url, rate, limit, skip, shards, as_json) -> None:
    """Publish an event file's rows to a broker, in event-time order, one JSON message per event."""
    from liber_features.ingest.events import load_events
    from liber_features.stream.brokers import parse_broker_url
    from liber_features.stream.connect import open_publisher
    from liber_features.stream.producer import produce as run_produce

    parse_broker_url(url)
    loaded = load_events(events_path, catalog_path)
    publisher = open_publisher(url)
    try:
        summary = run_produce(loaded, publisher, rate=rate, limit=limit, skip=skip, shards=shards)
    finally:
        publisher.close()
    emit({**summary.as_dict(), "to": parse_broker_url(url).safe_url, "quarantined": len(loaded.quarantine)},
         as_json, f"published {loaded.source}")


COMMANDS = [stream, produce]
