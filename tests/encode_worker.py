"""One encoder worker process for the concurrency tests and bench/bench_faults.py.

Runs ``run_encode`` with the deterministic counting LLM (liber_features.testing) and then
rewrites the long-term memory table, as ``liber encode`` does; prints the summary as JSON.
SIGTERM ends it as it ends ``liber encode``: exit 143, between ledger writes (ledger/stopping.py).

    python tests/encode_worker.py LEDGER_URL CALLS_FILE [--schema S] [--llm-id ID] [--lease S]
        [--batch-size N] [--delay S] [--table PATH] [--start-at EPOCH_S]
        [--ray ADDRESS [--actors N] [--actor-cpus C]]

With ``--ray`` it is a Ray driver (``run_ray_encode``) whose actors each hold a counting LLM.
"""

from __future__ import annotations

import argparse
import faulthandler
import functools
import json
import signal
import time

from liber_features.features.memory import refresh_memory_table
from liber_features.ledger.stopping import exit_on_sigterm
from liber_features.ledger.store import Ledger
from liber_features.testing import CountingLLM, HashEncoder, fake_backends
from liber_features.uil.interest import EncodeConfig, run_encode


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("ledger")
    p.add_argument("calls_file")
    p.add_argument("--schema")
    p.add_argument("--llm-id", default="fake:counting@1")
    p.add_argument("--lease", type=float, default=30.0)
    p.add_argument("--batch-size", type=int, default=3)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--table")
    p.add_argument("--start-at", type=float, default=0.0, help="wait until this time: start together")
    p.add_argument("--ray", help="Ray address: run as a Ray driver")
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--actor-cpus", type=float, default=1.0)
    a = p.parse_args()
    exit_on_sigterm()  # as liber_features.cli.main.encode
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a test that sees it hang asks where
    ledger = Ledger(a.ledger, schema=a.schema)
    time.sleep(max(0.0, a.start_at - time.time()))
    cfg = EncodeConfig(batch_size=a.batch_size, lease_s=a.lease)
    enc = HashEncoder()
    if a.ray:
        from liber_features.uil.rayjob import RayEncodeConfig, run_ray_encode

        backends = functools.partial(fake_backends, a.llm_id, calls_file=a.calls_file, delay_s=a.delay)
        s = run_ray_encode(ledger, backends, cfg, RayEncodeConfig(address=a.ray, actors=a.actors,
                                                                  actor_cpus=a.actor_cpus), progress=False)
    else:
        llm = CountingLLM(a.llm_id, calls_file=a.calls_file, delay_s=a.delay)
        s = run_encode(ledger, llm, enc, cfg, progress=False)
    out = s.as_dict()
    if a.table:
        t = refresh_memory_table(ledger, a.table, memory_slots=2, vector_dim=enc.dim)
        out["table_rows"] = t.num_rows
    print(json.dumps(out))


if __name__ == "__main__":
    main()
