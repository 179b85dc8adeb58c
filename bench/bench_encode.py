"""UIL encoder job on ~50 real partitions with the real SmolLM2 + MiniLM.

    python bench/bench_encode.py [--partitions 50] [--k 20] [--batch-size 8]
    python bench/bench_encode.py --checkpoint-load


Prints the wall time split into LLM vs everything else (model loading shown apart; goal:
everything else ≤ 10 % of the job), and the LLM calls LIBER makes against what re-summarising
each user's whole history on every new event would need. ``--checkpoint-load`` instead times
SmolLM2's first load (GGUF converted into the cache, then loaded) against a load from that cache.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get(
        "LIBER_ML_LATEST_SMALL", str(REPO.parent / "shared/data/ml-latest-small")))
    ap.add_argument("--partitions", type=int, default=50)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--checkpoint-load", action="store_true",
                    help="only time the packaged SmolLM2's first load against a cached one")
    args = ap.parse_args()
    if args.checkpoint_load:
        checkpoint_load()
        return

    from liber_features.ingest.events import load_events
    from liber_features.ingest.job import ingest
    from liber_features.ingest.partition import PartitionRule
    from liber_features.ledger.store import Ledger, partitions
    from liber_features.uil.interest import EncodeConfig, run_encode

    ledger = Ledger(f"sqlite:///{tempfile.mkdtemp(prefix='liber-bench-')}/ledger.db")
    ingest(load_events(args.data), ledger, PartitionRule(k=args.k), progress=False)
    # Whole users, in id order, until ~N partitions: a realistic mix of first and later partitions.
    with ledger.engine.connect() as conn:
        per_user = conn.execute(select(partitions.c.user_id, func.count())
                                .group_by(partitions.c.user_id).order_by(partitions.c.user_id)).all()
    users, n = [], 0
    for user, count in per_user:
        if n >= args.partitions:
            break
        users.append(user)
        n += count

    t0 = time.perf_counter()
    from encoders.uil.llm import DecodingConfig, load_llm
    from encoders.uil.text import TextEncoder

    llm = load_llm(None, decoding=DecodingConfig(max_new_tokens=args.max_new_tokens,
                                                 batch_size=args.batch_size))
    enc = TextEncoder()
    load_s = time.perf_counter() - t0
    s = run_encode(ledger, llm, enc, EncodeConfig(batch_size=args.batch_size, users=users),
                   progress=False)
    again = run_encode(ledger, llm, enc, EncodeConfig(batch_size=args.batch_size, users=users),
                       progress=False)

    # Baseline: an LLM call per new event, each re-reading the user's whole history so far.
    ev = load_events(args.data).events
    ev = ev[ev.user_id.isin(users)]
    covered = s.partitions_done * args.k
    naive_calls = covered  # one re-summary per event that LIBER covers with its partitions
    other = s.seconds_total - s.seconds_llm
    print(f"{s.partitions_done} partitions of {len(users)} users (K={args.k}, "
          f"batch {args.batch_size}, max_new_tokens {args.max_new_tokens}), CPU, "
          f"{os.cpu_count()} cores")
    print(f"model load (once per job)   {load_s:8.1f} s")
    print(f"job wall time               {s.seconds_total:8.1f} s")
    print(f"  LLM generation            {s.seconds_llm:8.1f} s  ({s.seconds_llm / s.seconds_total:5.1%})")
    print(f"  text encoder              {s.seconds_encoder:8.1f} s  "
          f"({s.seconds_encoder / s.seconds_total:5.1%})")
    print(f"  everything else (non-LLM) {other:8.1f} s  ({other / s.seconds_total:5.1%})  goal ≤ 10 %")
    print(f"  incl. model load          {other + load_s:8.1f} s  "
          f"({(other + load_s) / (s.seconds_total + load_s):5.1%})")
    print(f"throughput                  {s.partitions_done / s.seconds_total:8.2f} partitions/s, "
          f"{s.tokens_per_s:.1f} generated tokens/s, {s.failed} failed")
    print(f"LLM calls: LIBER {s.llm_calls} (summary + shift per partition, none for first shifts); "
          f"re-summarise on every event: {naive_calls} "
          f"({naive_calls / max(s.llm_calls, 1):.1f}x more, each prompt the whole history; "
          f"these users have {len(ev)} events)")
    print(f"rerun: {again.llm_calls} LLM calls, {again.skipped_already_done} partitions skipped")
    print(json.dumps({"partitions": s.partitions_done, "llm_calls": s.llm_calls,
                      "naive_calls": naive_calls, "seconds_llm": s.seconds_llm,
                      "seconds_total": s.seconds_total, "load_s": round(load_s, 2),
                      "non_llm_share": round(other / s.seconds_total, 4),
                      "rerun_llm_calls": again.llm_calls}))


def checkpoint_load() -> None:
    """First load (converts the packaged GGUF into an empty cache) vs a load from that cache."""
    os.environ["LIBER_CACHE_DIR"] = tempfile.mkdtemp(prefix="liber-bench-cache-")
    from encoders.uil.llm import DecodingConfig, load_llm

    decoding = DecodingConfig(max_new_tokens=24)
    t0 = time.perf_counter()
    load_llm("smollm2", device="cpu", decoding=decoding)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    load_llm(None, device="cpu", decoding=decoding)
    cached = time.perf_counter() - t0
    print(f"SmolLM2 load: first (GGUF converted) {first:6.2f} s, cached copy {cached:6.2f} s "
          f"({first / cached:.1f}x), {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
