"""``liber score`` and ``liber serve``: a model scored online after one read of the user's features.

Torch-free: both load the exported ONNX model and its card (``serving.scorer``), never ``encoders``.
"""

from __future__ import annotations

import click

from liber_features.cli.common import (
    IdList,
    emit,
    ledger_option,
    open_ledger,
    schema_option,
    setting_default,
)

__all__ = ["COMMANDS", "repo_option"]

repo_option = click.option("--repo", default="feature_repo", show_default=True, type=click.Path(),
                           help="Feast feature repo (its data dir receives the long-term table)")


def _scorer(model_dir, repo, fetch, timeout_ms, on_store_error):
    from liber_features.serving.scorer import LiberScorer, ScorerConfig

    return LiberScorer.load(model_dir, repo, config=ScorerConfig(
        fetch=fetch, timeout_ms=timeout_ms, on_store_error=on_store_error))


scorer_options = [
    click.option("--model", "model_dir", default="models/liber", show_default=True, type=click.Path()),
    repo_option,
    click.option("--fetch", type=click.Choice(["auto", "redis", "feast"]), default="auto", show_default=True,
                 help="auto: Redis fast path on a Redis online store, Feast's path otherwise"),
    click.option("--timeout-ms", type=click.FloatRange(min=0, min_open=True), default=50.0, show_default=True),
    click.option("--on-store-error", type=click.Choice(["raise", "degrade"]), default="degrade",
                 show_default=True, help="when the online store fails: error, or score without LIBER"),
]


def _with_scorer_options(f):
    for opt in reversed(scorer_options):
        f = opt(f)
    return f


def _score_ledger(ledger_url, ledger_schema):
    """The ledger ``liber score`` reads titles and seen items from; None, with a ``warning:`` line
    on stderr, when there is none to read (scoring goes on without them)."""
    from liber_features.errors import LedgerError

    try:
        return open_ledger(ledger_url, ledger_schema)
    except LedgerError as exc:
        click.echo(f"warning: {exc} (no titles; the user's seen items are not excluded)", err=True)
        return None


def _seen_items(ledger, user_id: str) -> set[str]:
    from sqlalchemy import select

    from liber_features.ledger.store import events

    with ledger.engine.connect() as conn:
        return set(conn.execute(select(events.c.item_id).where(events.c.user_id == user_id)
                                .distinct()).scalars())


def _titles(ledger, item_ids: list[str]) -> dict[str, str]:
    from sqlalchemy import select

    from liber_features.ledger.store import items

    if ledger is None or not item_ids:
        return {}
    with ledger.engine.connect() as conn:
        return dict(conn.execute(select(items.c.item_id, items.c.title)
                                 .where(items.c.item_id.in_(item_ids))).tuples().all())


@click.command("score")
@_with_scorer_options
@ledger_option
@schema_option
@click.option("--user", "user_id", required=True)
@click.option("--items", type=IdList(), default=None, help="candidates (default: every item)")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--include-seen", is_flag=True,
              help="also rank items the user already has events for in the ledger (excluded by default)")
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON line")
def score_cmd(model_dir, repo, fetch, timeout_ms, on_store_error, ledger_url, ledger_schema, user_id,
              items, top, include_seen, as_json) -> None:
    """Score one user's candidates online and print the top ones, with titles from the ledger's catalog.

    Items the user already has events for are left out unless --include-seen; an item the model
    was not trained on is scored as unknown (its own embedding is missing) and marked so.
    """
    from liber_features.errors import InputError

    scorer = _scorer(model_dir, repo, fetch, timeout_ms, on_store_error)
    ledger = _score_ledger(ledger_url, ledger_schema)
    seen = _seen_items(ledger, user_id) if ledger is not None and not include_seen else set()
    candidates = list(items) if items is not None else list(scorer.items)
    kept = [i for i in candidates if i not in seen]
    if not kept:
        raise InputError(f"user {user_id} has events for every candidate ({len(candidates)}): "
                         "pass --include-seen to rank them anyway")
    res, best = scorer.top(user_id, top, kept)
    titles = _titles(ledger, [i for i, _ in best])
    ranked = [{"item_id": i, "score": s, "title": titles.get(i), "unknown": i not in scorer.items}
              for i, s in best]
    summary = {"user_id": user_id, "top": best, "ranked": ranked,
               "unknown_items": [i for i in kept if i not in scorer.items],
               "excluded_seen": len(candidates) - len(kept),
               "ledger": ledger.safe_url() if ledger is not None else None,
               "cold_start": res.cold_start, "degraded": res.degraded,
               "encoder_version": res.encoder_version, "fetch_ms": round(res.fetch_ms, 3),
               "score_ms": round(res.score_ms, 3)}
    if as_json:
        emit(summary, as_json, "")
        return
    click.echo(f"top {len(ranked)} of {len(kept)} candidates for user {user_id}")
    for rank, r in enumerate(ranked, 1):
        name = r["title"] if r["title"] is not None else "(no title)"
        mark = "  [unknown to the model]" if r["unknown"] else ""
        click.echo(f"  {rank:>3}. {r['score']:.4f}  {r['item_id']}  {name}{mark}")
    for key in ("excluded_seen", "ledger", "cold_start", "degraded", "encoder_version", "fetch_ms",
                "score_ms"):
        click.echo(f"  {key:<22} {summary[key]}")
    click.echo(f"  {'unknown_items':<22} {len(summary['unknown_items'])}")


@click.command("serve")
@_with_scorer_options
@ledger_option
@schema_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="one stderr line per request: method, path, status, milliseconds")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="worker processes, each with its own scorer  [default: the number of cores]")
@click.option("--deadline-ms", type=click.FloatRange(min=0, min_open=True), default=100.0, show_default=True,
              help="longest a request may take, queueing included (X-Request-Timeout may shorten it); "
                   "later: 503 + Retry-After")
@click.option("--max-in-flight", type=click.IntRange(min=1), default=4, show_default=True,
              help="requests running at once per worker")
@click.option("--max-queue", type=click.IntRange(min=0), default=256, show_default=True,
              help="requests waiting for a slot per worker, each until its deadline; more: 503 + Retry-After at once")
@click.option("--store-retry-ms", type=click.FloatRange(min=0), default=250.0, show_default=True,
              help="after a failed online read, answer without the store this long, then probe it (0: off)")
@click.option("--admin-token", default=setting_default("admin_token"),
              help="bearer token of POST /admin/reload [env LIBER_ADMIN_TOKEN; unset: reload is off]")
@click.option("--token", default=setting_default("serve_token"),
              help="bearer token required by POST /score and GET /users/... [env LIBER_SERVE_TOKEN; "
                   "unset: open]; /healthz and /metrics stay open")
def serve_cmd(model_dir, repo, fetch, timeout_ms, on_store_error, ledger_url, ledger_schema, host, port,
              access_log, workers, deadline_ms, max_in_flight, max_queue, store_retry_ms, admin_token,
              token) -> None:
    """Serve POST /score, GET /users/{id}/interests, /healthz, /metrics and POST /admin/reload over HTTP.

    Logs to stderr: where it listens, one line per request (unless --no-access-log) and errors.
    """
    import gc
    import os
    import signal

    import uvicorn

    from liber_features.serving.admission import Limits
    from liber_features.serving.logs import configure_logging, listening_line, log
    from liber_features.serving.reload import reload_in_background
    from liber_features.serving.server import ServeConfig, build_app, load_scorer, serve

    workers = workers or os.cpu_count() or 1
    config = ServeConfig(model_dir=str(model_dir), repo=str(repo), fetch=fetch, timeout_ms=timeout_ms,
                         on_store_error=on_store_error, store_retry_ms=store_retry_ms,
                         limits=Limits(deadline_ms=deadline_ms, max_in_flight=max_in_flight, max_queue=max_queue),
                         ledger_schema=ledger_schema, admin_token=admin_token, token=token,
                         access_log=access_log)
    scorer = load_scorer(config)  # a bad model or repo fails here, before any worker starts
    ledger = open_ledger(ledger_url, ledger_schema) if ledger_url else None
    config = config.model_copy(update={"ledger_url": ledger.url if ledger is not None else None})
    configure_logging(access=access_log)
    log.info("%s", listening_line(host, port, model_dir, f"{scorer.card.backbone}+liber:{scorer.card.liber}",
                                  repo, ledger.safe_url() if ledger is not None else None))
    if workers > 1:
        del scorer
        log.info("%d worker processes, deadline %g ms, at most %d in flight + %d waiting each", workers,
                 deadline_ms, max_in_flight, max_queue)
        serve(config, host, port, workers)
        return
    app = build_app(config, scorer)
    # Everything loaded so far (Feast, the registry, onnxruntime) lives as long as the process:
    # moved out of the collector's generations, a full collection no longer walks it. Measured
    # here: a full collection over these ~285k objects took ~190 ms (a request that triggers one
    # waits that long); after gc.freeze() it takes 0.01 ms.
    gc.collect()
    gc.freeze()
    # `kill -HUP`: reload the model directory off to the side and swap (serving/reload.py).
    signal.signal(signal.SIGHUP, lambda *_: reload_in_background(app.state.slot))
    # uvloop + httptools when installed (uvicorn's "auto" picks them; they come with Feast).
    # uvicorn's own access log stays off: ours (serving.logs.AccessLog) has the time taken.
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


COMMANDS = [score_cmd, serve_cmd]
