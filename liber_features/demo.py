"""``liber demo``: the main job end to end on the embedded defaults, on real data and models.

events (ml-latest-small) → UBSP partitions in a SQLite ledger → SmolLM2 summaries and shifts for a
few users → MiniLM vectors → long-term memory + short-term cache tables → ``feast apply`` →
materialize + cache push into the SQLite online store → one fetch by ``user_id`` through the
``liber_ranker_v1`` FeatureService, checked against the offline point-in-time join (no skew).
Rerunning it does no LLM work twice.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

__all__ = ["run_demo", "default_data_dir"]


def default_data_dir() -> Path:
    """../shared/data/ml-latest-small beside the checkout, else $LIBER_ML_LATEST_SMALL."""
    import os

    env = os.environ.get("LIBER_ML_LATEST_SMALL")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[1]
    return here.parent / "shared" / "data" / "ml-latest-small"


def run_demo(*, data: Path, workdir: Path, repo: Path, users: list[str], k: int,
             max_new_tokens: int, say: Callable[[str], None]) -> dict[str, Any]:
    from .events import load_events
    from .featurestore import (LONG_TERM_VIEW, RANKER_SERVICE, SHORT_TERM_VIEW,
                               LiberFeatureConfig, apply_repo, data_file, open_store)
    from .ingest import append_cache_history, current_caches, ingest
    from .interest import EncodeConfig, run_encode
    from .ledger import Ledger
    from .memory import memory_table, write_memory_table
    from .online import push_short_term_cache
    from .sync import sync_view
    from .partition import PartitionRule

    import warnings

    # ibis (under Feast's DuckDB store) warns about its own use of duckdb; not ours to fix.
    warnings.filterwarnings("ignore", message=r"fetch_arrow_table\(\) is deprecated",
                            category=DeprecationWarning)
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    ledger = Ledger(f"sqlite:///{(workdir / 'ledger.db').resolve()}")
    say(f"1/6 ingest {data} (K={k}) into {ledger.safe_url()}")
    caches: list[pd.DataFrame] = []
    s = ingest(load_events(data), ledger, PartitionRule(k=k), progress=False,
               on_caches=caches.append)
    out["ingest"] = {key: getattr(s, key) for key in (
        "read", "accepted", "duplicates", "quarantined", "late", "partitions_sealed",
        "cached_events", "events_per_s")}
    say(f"    {s.accepted} new events, {s.partitions_sealed} partitions sealed, "
        f"{s.cached_events} events in short-term caches")

    say(f"2/6 encode users {','.join(users)}: SmolLM2-135M summaries + shifts, MiniLM vectors")
    from encoders.llm import DecodingConfig, load_llm
    from encoders.text import TextEncoder

    llm = load_llm(None, decoding=DecodingConfig(max_new_tokens=max_new_tokens))
    enc = TextEncoder()
    e = run_encode(ledger, llm, enc, EncodeConfig(users=users), progress=False)
    out["encode"] = {key: getattr(e, key) for key in (
        "partitions_done", "llm_calls", "skipped_already_done", "failed", "seconds_llm",
        "seconds_total", "tokens_per_s")}
    say(f"    {e.partitions_done} partitions encoded with {e.llm_calls} LLM calls "
        f"({e.skipped_already_done} already done), {e.failed} failed")

    say("3/6 offline tables for Feast")
    shape = LiberFeatureConfig.from_env()
    table = memory_table(ledger, memory_slots=shape.memory_slots, vector_dim=shape.vector_dim,
                         versions=(e.prompt_version, llm.llm_id, enc.encoder_id))
    write_memory_table(table, data_file(f"{LONG_TERM_VIEW}.parquet", repo_dir=repo))
    history = Path(data_file(f"{SHORT_TERM_VIEW}.parquet", repo_dir=repo))
    current = current_caches(ledger)
    if caches or not history.exists():
        append_cache_history(current, history)
    say(f"    {table.num_rows} long-term rows, {len(current)} short-term caches")

    say(f"4/6 feast apply ({repo})")
    store = open_store(repo)
    out["applied"] = apply_repo(store, repo)

    say("5/6 materialize long-term memory, push short-term caches online")
    synced = sync_view(store, ledger, LONG_TERM_VIEW)  # what `liber materialize` does
    pushed = push_short_term_cache(store, current)
    out["online"] = {"store": store.config.online_store.type, "caches_pushed": pushed,
                     "users_written": synced.users_written}

    user = users[0]
    say(f"6/6 ranker fetch by user_id={user} through FeatureService {RANKER_SERVICE}")
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
        "filled_slots": int(np.count_nonzero(np.abs(on_vec.reshape(shape.memory_slots, -1)).sum(1))),
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
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out
