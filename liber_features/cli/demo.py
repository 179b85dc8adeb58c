"""``liber demo``: the main job end to end on the embedded defaults, on real data and models.

events (ml-latest-small) → UBSP partitions in a SQLite ledger → SmolLM2 summaries and shifts for a
few users → MiniLM vectors → long-term memory + short-term cache tables → ``feast apply`` →
materialize + cache push into the SQLite online store → one fetch by ``user_id`` through the
``liber_ranker_v1`` FeatureService, checked against the offline point-in-time join (no skew).
Rerunning it does no LLM work twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from liber_features.cli.common import IdList

__all__ = ["COMMANDS", "run_demo", "default_data_dir", "check_data", "MOVIELENS_URL"]

MOVIELENS_URL = "https://grouplens.org/datasets/movielens/latest/"


def default_data_dir() -> Path:
    """../shared/data/ml-latest-small beside the checkout, else $LIBER_ML_LATEST_SMALL."""
    from liber_features.settings import get_settings

    env = get_settings().ml_latest_small
    if env is not None:
        return env
    here = Path(__file__).resolve().parents[2]
    return here.parent / "shared" / "data" / "ml-latest-small"


def check_data(data: Path) -> None:
    """Fail before any work when the MovieLens data is not there, saying where to get it."""
    from liber_features.errors import InputError
    from liber_features.ingest.events import detect_layout

    try:
        detect_layout(data)
    except InputError as exc:
        raise InputError(
            f"MovieLens data not found ({exc}). The demo needs ml-latest-small: download "
            f"ml-latest-small.zip from {MOVIELENS_URL}, unzip it, and point the demo at the "
            "folder holding ratings.csv and movies.csv with --data DIR or "
            "LIBER_ML_LATEST_SMALL=DIR") from None


def run_demo(*, data: Path, workdir: Path, repo: Path, users: list[str], k: int,
             max_new_tokens: int, say: Callable[[str], None], stream: str | None = None) -> dict[str, Any]:
    check_data(data)  # before any import or write: a missing download is the likeliest failure
    import warnings

    import numpy as np
    import pandas as pd

    from liber_features.cli.common import use_ledger
    from liber_features.features.caches import append_cache_history, cache_frame, current_caches
    from liber_features.features.memory import refresh_memory_table
    from liber_features.features.online import push_short_term_cache
    from liber_features.features.repo import (
        LONG_TERM_VIEW,
        RANKER_SERVICE,
        SHORT_TERM_VIEW,
        LiberFeatureConfig,
        apply_repo,
        data_file,
        open_store,
    )
    from liber_features.features.sync import sync_view
    from liber_features.ingest.events import load_events
    from liber_features.ingest.job import ingest
    from liber_features.ingest.partition import PartitionRule
    from liber_features.ledger.store import Ledger
    from liber_features.uil.interest import EncodeConfig, run_encode

    # ibis (under Feast's DuckDB store) warns about its own use of duckdb; not ours to fix.
    warnings.filterwarnings("ignore", message=r"fetch_arrow_table\(\) is deprecated",
                            category=DeprecationWarning)
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    ledger = Ledger(f"sqlite:///{(workdir / 'ledger.db').resolve()}")
    # The demo's ledger is not the environment's: its tables go to its own data directory
    # (settings.data_dir_for), and the Feast definitions apply_repo loads must compute the same one.
    use_ledger(ledger.url, None)
    n = 10 if stream else 9  # --stream adds step 10: the newest events through a broker
    loaded, tail = load_events(data), None
    if stream:
        from liber_features.cli.demo_stream import HELD, demo_broker_url, split_tail

        stream = demo_broker_url(stream, ledger.ledger_id)
        loaded, tail = split_tail(loaded, HELD)
    say(f"1/{n} ingest {data} (K={k}) into {ledger.safe_url()}"
        + (f", all but the newest {len(tail.events):,} events (streamed in step 10)" if tail else ""))
    caches: list[pd.DataFrame] = []
    s = ingest(loaded, ledger, PartitionRule(k=k), progress=False,
               on_caches=lambda states: caches.append(cache_frame(states)))
    out["ingest"] = {key: getattr(s, key) for key in (
        "read", "accepted", "duplicates", "quarantined", "late", "partitions_sealed",
        "cached_events", "events_per_s")}
    say(f"    {s.accepted} new events, {s.partitions_sealed} partitions sealed, "
        f"{s.cached_events} events in short-term caches")

    say(f"2/{n} encode users {','.join(users)}: SmolLM2-135M summaries + shifts, MiniLM vectors")
    from encoders.uil.llm import DecodingConfig, load_llm
    from encoders.uil.text import TextEncoder

    llm = load_llm(None, decoding=DecodingConfig(max_new_tokens=max_new_tokens))
    enc = TextEncoder()
    e = run_encode(ledger, llm, enc, EncodeConfig(users=users), progress=False)
    out["encode"] = {key: getattr(e, key) for key in (
        "partitions_done", "llm_calls", "skipped_already_done", "failed", "seconds_llm",
        "seconds_total", "tokens_per_s")}
    say(f"    {e.partitions_done} partitions encoded with {e.llm_calls} LLM calls "
        f"({e.skipped_already_done} already done), {e.failed} failed")

    say(f"3/{n} offline tables for Feast")
    shape = LiberFeatureConfig.from_env()
    table = refresh_memory_table(ledger, data_file(f"{LONG_TERM_VIEW}.parquet", repo_dir=repo),
                                 memory_slots=shape.memory_slots, vector_dim=shape.vector_dim,
                                 history_length=shape.history_length)
    history = Path(data_file(f"{SHORT_TERM_VIEW}.parquet", repo_dir=repo))
    current = current_caches(ledger)
    if caches or not history.exists():
        append_cache_history(current, history, ledger)
    say(f"    {table.num_rows} long-term rows, {len(current)} short-term caches")

    say(f"4/{n} feast apply ({repo})")
    store = open_store(repo)
    out["applied"] = apply_repo(store, repo)

    say(f"5/{n} materialize long-term memory, push short-term caches online")
    synced = sync_view(store, ledger, LONG_TERM_VIEW)  # what `liber materialize` does
    pushed = push_short_term_cache(store, current)
    out["online"] = {"store": store.config.online_store.type, "caches_pushed": pushed,
                     "users_written": synced.users_written}

    user = users[0]
    say(f"6/{n} ranker fetch by user_id={user} through FeatureService {RANKER_SERVICE}")
    service = store.get_feature_service(RANKER_SERVICE)
    online = store.get_online_features(features=service, entity_rows=[{"user_id": user}],
                                       full_feature_names=True).to_dict()
    when = pd.Timestamp.now(tz="UTC")
    offline = store.get_historical_features(
        entity_df=pd.DataFrame({"user_id": [user], "event_timestamp": [when]}),
        features=service, full_feature_names=True).to_df()
    col = f"{LONG_TERM_VIEW}__summary_vectors"
    on_vec = np.asarray(online[col][0], dtype=np.float32)
    off_vec = np.asarray(offline[col].iloc[0], dtype=np.float32)
    count = online[f"{LONG_TERM_VIEW}__partition_count"][0]
    out["fetch"] = {
        "user_id": user,
        "partition_count": count,
        "summary_vectors_shape": [shape.memory_slots, shape.vector_dim],
        "filled_slots": int(np.count_nonzero(np.abs(on_vec.reshape(-1, shape.vector_dim)).sum(1))),
        "latest_summary": online[f"{LONG_TERM_VIEW}__latest_summary"][0],
        "latest_shift": online[f"{LONG_TERM_VIEW}__latest_shift"][0],
        "cache_length": online[f"{SHORT_TERM_VIEW}__cache_length"][0],
        "online_equals_offline": bool(np.array_equal(on_vec, off_vec)),
    }
    f = out["fetch"]
    say(f"    partitions: {count}, vectors {shape.memory_slots}x{shape.vector_dim} "
        f"({f['filled_slots']} filled), short-term cache: {f['cache_length']} events")
    say(f"    latest summary: {f['latest_summary']}")
    say(f"    latest shift:   {f['latest_shift']}")
    say(f"    online == offline point-in-time vectors: {f['online_equals_offline']}")
    from liber_features.cli.demo_model import model_steps

    out["model"], out["ranker"] = model_steps(ledger, repo, workdir, user, enc, say, n)
    if tail is not None:
        from liber_features.cli.demo_stream import stream_tail

        say(f"10/10 stream the newest {len(tail.events):,} events through {stream}: consume exactly once, "
            "caches online, encode what they sealed")
        out["stream"] = stream_tail(stream, tail, ledger, repo, k=k, llm=llm, enc=enc, say=say)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


@click.command()
@click.option("--data", type=click.Path(), default=None,
              help="GroupLens directory [default: ../shared/data/ml-latest-small or "
                   "$LIBER_ML_LATEST_SMALL]")
@click.option("--workdir", type=click.Path(), default=None,
              help="where the demo's SQLite ledger lives [default: .liber/demo, with --stream .liber/demo-stream]")
@click.option("--repo", default="feature_repo", show_default=True, type=click.Path())
@click.option("--users", type=IdList(), default="5,8,9", show_default=True,
              help="users whose partitions the LLM encodes (the whole log is ingested)")
@click.option("--k", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(1, 512), default=48, show_default=True)
@click.option("--stream", "stream_url", default=None, metavar="URL",
              help="also stream the newest events through this broker (nats://HOST:PORT, redis://HOST:PORT) "
                   "into the ledger, caches online, and encode what they seal (docs/streaming.md)")
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON line")
def demo(data, workdir, repo, users, k, max_new_tokens, stream_url, as_json) -> None:
    """Run the whole pipeline end to end on the embedded defaults (SQLite ledger + online store)."""
    if stream_url is not None:  # a bad URL, or an unreachable broker, before any work
        from liber_features.cli.demo_stream import demo_broker_url
        from liber_features.stream.brokers import parse_broker_url
        from liber_features.stream.nats_source import probe

        cfg = parse_broker_url(demo_broker_url(stream_url, "00000000"))
        probe(cfg.host, cfg.port, f"{cfg.scheme}://{cfg.host}:{cfg.port}")
    workdir = workdir or (".liber/demo-stream" if stream_url else ".liber/demo")
    result = run_demo(data=Path(data) if data else default_data_dir(), workdir=Path(workdir),
                      repo=Path(repo), users=users,
                      k=k, max_new_tokens=max_new_tokens,
                      say=(lambda _m: None) if as_json else click.echo, stream=stream_url)
    if as_json:
        click.echo(json.dumps(result, default=str, sort_keys=True))


COMMANDS = [demo]
