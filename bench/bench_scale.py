"""Scale-out benchmarks (issue 12), one section per engine; each writes its own key of
bench/results/bench_scale.json and leaves the others' keys alone.

    python bench/bench_scale.py [--only encoder] [--ledger postgresql+psycopg://...|sqlite]

Sections:
- ``encoder``: partitions/s of the UIL job on a CPU-bound fake LLM (a fixed CPU time per call,
  liber_features.testing.CountingLLM(cpu_s=...)): one process (``run_encode``), then Ray with 1 and
  2 actors (``run_ray_encode``), each on a fresh ledger holding the same synthetic partitions.
- Feast materialization (Ray compute engine vs local): add its function to ``SECTIONS``.

``job s`` is the job itself (actors already up); ``+start s`` adds starting the actors; ``load``
is the machine's 1-minute load average as the run started.
``LLM wall/CPU`` is the wall time the fake LLM calls took over the CPU time they burn: 1.0 means
each call had a core to itself; above 1, the cores were shared (with the driver, PostgreSQL, or
other processes on the machine) and a speed-up is capped by that, not by the job.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "bench_scale.json"
PG_URL = os.environ.get("LIBER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


# --- section: encoder ---------------------------------------------------------------------------

def _fresh_ledger(kind: str, loaded, k: int):
    from liber_features.ingest.job import ingest
    from liber_features.ingest.partition import PartitionRule
    from liber_features.ledger.store import Ledger

    if kind == "sqlite":
        led = Ledger(f"sqlite:///{tempfile.mkdtemp(prefix='liber-bench-scale-')}/ledger.db")
    else:
        led = Ledger(kind, schema=f"bench_scale_{uuid.uuid4().hex[:8]}")
    ingest(loaded, led, PartitionRule(k=k), progress=False)
    return led


def encoder_section(args: argparse.Namespace) -> dict:
    import ray

    from liber_features.testing import event_log, fake_backends
    from liber_features.uil.interest import EncodeConfig, run_encode
    from liber_features.uil.rayjob import RayEncodeConfig, run_ray_encode

    load_before = os.getloadavg()[0]  # other processes on the machine compete for its cores
    parts = args.users * args.parts_per_user
    calls = parts + args.users * (args.parts_per_user - 1)  # no shift for partition 0
    loaded = event_log(args.users, args.parts_per_user * args.k, items=500, item_stride=7, user_spacing_s=1000,
                       source="synthetic")
    cfg = EncodeConfig(batch_size=args.batch_size)
    backends = functools.partial(fake_backends, cpu_s=args.cpu_s)
    # Actors must import this checkout: Ray's workers inherit the driver's environment.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
    rows = []
    # 1 and 2 actors alternate, so a change in the machine's load hits both alike; the ratio is
    # taken per pair and its median reported.
    plan = [0] + [1, 2] * args.repeat
    try:
        for actors in plan:
            label = f"Ray, {actors} actor{'s' if actors > 1 else ''}" if actors else "one process (run_encode)"
            led = _fresh_ledger(args.ledger, loaded, args.k)
            try:
                load, wall0, cpu0 = os.getloadavg()[0], time.perf_counter(), time.process_time()
                if actors:
                    s = run_ray_encode(led, backends, cfg, RayEncodeConfig(actors=actors, actor_cpus=1),
                                       progress=False)
                else:
                    s = run_encode(led, *backends(), cfg, progress=False)
                wall, driver_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            finally:
                led.drop_schema()
            if (s.partitions_done, s.llm_calls, s.failed) != (parts, calls, 0):
                raise SystemExit(f"{label}: wrong result {s.as_dict()}")
            rows.append({"run": label, "actors": actors, "load_avg": round(load, 2),
                         "seconds_job": s.seconds_total, "seconds_with_actor_start": round(wall, 3),
                         "partitions_per_s": round(parts / s.seconds_total, 2),
                         "driver_cpu_s": round(driver_cpu, 2),
                         # > 1: the LLM calls got less than a whole core each (others' load)
                         "llm_wall_per_cpu": round(s.seconds_llm / (calls * args.cpu_s), 2)})
    finally:
        ray.shutdown()
    ratios = [round(rows[i + 1]["partitions_per_s"] / rows[i]["partitions_per_s"], 2)
              for i in range(1, len(rows), 2)]
    print(f"encoder: {parts} partitions ({args.users} users × {args.parts_per_user}, K={args.k}), "
          f"{calls} LLM calls × {args.cpu_s * 1000:g} ms CPU each (= {calls * args.cpu_s:.1f} CPU s), "
          f"batch {args.batch_size}, ledger {args.ledger.split(':')[0]}, Ray num_cpus={args.ray_cpus}, "
          f"{os.cpu_count()} cores, load avg before {load_before:.2f}")
    print(f"  {'run':<26} {'load':>5} {'job s':>7} {'+start s':>8} {'part/s':>7} {'driver CPU s':>12} "
          f"{'LLM wall/CPU':>12}")
    for r in rows:
        print(f"  {r['run']:<26} {r['load_avg']:>5.2f} {r['seconds_job']:>7.2f} "
              f"{r['seconds_with_actor_start']:>8.2f} {r['partitions_per_s']:>7.2f} "
              f"{r['driver_cpu_s']:>12.2f} {r['llm_wall_per_cpu']:>12.2f}")
    print(f"  2 actors / 1 actor, per pair: {ratios}; median {statistics.median(ratios):.2f}")
    return {"partitions": parts, "llm_calls": calls, "cpu_s_per_call": args.cpu_s, "k": args.k,
            "batch_size": args.batch_size, "ledger": args.ledger.split(":")[0],
            "ray_num_cpus": args.ray_cpus, "cores": os.cpu_count(),
            "load_avg_before": round(load_before, 2), "runs": rows, "ratios_2_vs_1_actor": ratios,
            "speedup_2_vs_1_actor": statistics.median(ratios)}


def _encoder_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("encoder")
    g.add_argument("--users", type=int, default=48)
    g.add_argument("--parts-per-user", type=int, default=5)
    g.add_argument("--k", type=int, default=4)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--cpu-s", type=float, default=0.02, help="CPU seconds per fake LLM call")
    g.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 2)
    g.add_argument("--repeat", type=int, default=3, help="pairs of 1- and 2-actor runs")


# --- sections -----------------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[argparse.Namespace], dict]] = {"encoder": encoder_section}
ADD_ARGS = [_encoder_args]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(SECTIONS), action="append",
                    help="run only this section (repeatable; default: all)")
    ap.add_argument("--ledger", default=PG_URL, help="a PostgreSQL URL, or 'sqlite' (a temp file)")
    for add in ADD_ARGS:
        add(ap)
    args = ap.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in args.only or sorted(SECTIONS):
        results[name] = SECTIONS[name](args)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
