"""The encoder on Ray (a local Ray with 2 CPUs, the real PostgreSQL ledger): the same outputs as
one process, and exactly once with a killed actor and with two drivers at once.

The actors' counting LLM (liber_features.testing) appends every call of every process to one file,
so the call counts below are exact, a killed actor's calls included.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import ray
from conftest import PG_URL, REPO
from sqlalchemy import func, select
from test_concurrency import NEEDED, PARTS, K, assert_exactly_once, call_lines, events, finish, spawn

from liber_features.errors import ConfigError, EncoderError
from liber_features.ingest.job import ingest
from liber_features.ingest.partition import PartitionRule
from liber_features.ledger.store import Ledger, claims, interests, partitions, prompt_audit, vectors
from liber_features.testing import fake_backends
from liber_features.uil.interest import EncodeConfig, run_encode
from liber_features.uil.rayjob import RayEncodeConfig, actor_gpus, run_ray_encode

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_address():
    # Ray's workers inherit this process's environment: they must import this checkout.
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), old) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = old


def filled(schema: str) -> Ledger:
    led = Ledger(PG_URL, schema=schema)
    ingest(events(), led, PartitionRule(k=K), progress=False)
    return led


@pytest.fixture
def pg(unique_name):
    led = filled(unique_name)
    yield led
    led.drop_schema()


def outputs(ledger: Ledger) -> dict:
    """(user, seq) → texts, token counts, vector bytes and prompt hashes: all a run writes."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(
            partitions.c.user_id, partitions.c.seq, interests.c.summary, interests.c.shift,
            interests.c.prompt_tokens, interests.c.completion_tokens, vectors.c.summary_vec,
            vectors.c.shift_vec)
            .join(interests, interests.c.partition_id == partitions.c.id)
            .join(vectors, vectors.c.interest_id == interests.c.id)).all()
        audit = conn.execute(select(partitions.c.user_id, partitions.c.seq, prompt_audit.c.kind,
                                    prompt_audit.c.prompt_sha256)
                             .join(prompt_audit, prompt_audit.c.partition_id == partitions.c.id)).all()
    out = {(r[0], r[1]): tuple(r[2:]) for r in rows}
    for user, seq, kind, sha in audit:
        out[(user, seq)] += (kind, sha)
    return out


def claim_counts(ledger: Ledger) -> dict:
    with ledger.engine.connect() as conn:
        return dict(conn.execute(select(claims.c.status, func.count()).group_by(claims.c.status)).all())


def test_ray_run_writes_what_one_process_writes(ray_address, pg, unique_name, tmp_path):
    alone = filled(unique_name + "_one")
    try:
        one = run_encode(alone, *fake_backends(), EncodeConfig(batch_size=3), progress=False)
        calls = tmp_path / "calls.txt"
        backends = functools.partial(fake_backends, calls_file=str(calls))
        s = run_ray_encode(pg, backends, EncodeConfig(batch_size=3), RayEncodeConfig(actors=2),
                           progress=False)
        assert len(outputs(pg)) == PARTS
        assert outputs(pg) == outputs(alone)
    finally:
        alone.drop_schema()
    lines = call_lines(calls)
    assert len(lines) == NEEDED and len({tuple(x[1:]) for x in lines}) == NEEDED
    assert len({x[0] for x in lines}) == 2  # both actors generated
    assert (one.partitions_done, one.llm_calls) == (s.partitions_done, s.llm_calls) == (PARTS, NEEDED)
    assert (s.failed, s.rejected_commits, s.partitions_lost, s.actor_deaths) == (0, 0, 0, 0)
    assert (s.actors, s.gpus_per_actor) == (2, 0.0)  # a CPU-only cluster: no GPU asked for
    assert (s.prompt_tokens, s.completion_tokens) == (one.prompt_tokens, one.completion_tokens)
    assert_exactly_once(pg)
    again = run_ray_encode(pg, backends, EncodeConfig(batch_size=3), RayEncodeConfig(actors=1),
                           progress=False)
    assert (again.llm_calls, again.skipped_already_done) == (0, PARTS)
    # One process finds the actors' work under the same keys (prompt version, LLM id).
    plain = run_encode(pg, *backends(), EncodeConfig(batch_size=3), progress=False)
    assert (plain.llm_calls, plain.skipped_already_done, plain.vectors_written, plain.vectors_backfilled) == \
        (0, PARTS, 0, 0)
    assert len(call_lines(calls)) == NEEDED


@pytest.mark.parametrize("retry_lost", [1, 0])
def test_killed_actor_costs_at_most_its_batch(ray_address, pg, tmp_path, retry_lost):
    calls = tmp_path / "calls.txt"
    backends = functools.partial(fake_backends, calls_file=str(calls), delay_s=0.15)
    # One batch per actor at a time, so the victim holds exactly one batch (3 first partitions).
    rc = RayEncodeConfig(actors=2, in_flight=1, retry_lost=retry_lost)
    result = {}
    job = threading.Thread(target=lambda: result.update(s=run_ray_encode(
        pg, backends, EncodeConfig(batch_size=3), rc, progress=False)))
    job.start()
    deadline = time.time() + 60
    while not call_lines(calls) and time.time() < deadline:
        time.sleep(0.01)
    victim = int(call_lines(calls)[0][0])  # an actor process, one call into its first batch
    os.kill(victim, signal.SIGKILL)
    job.join(timeout=60)
    s = result["s"]
    wasted = [x for x in call_lines(calls) if int(x[0]) == victim]
    assert len(wasted) in (1, 2)  # killed mid-batch: 3 summaries due, no shifts in a first batch
    assert s.actor_deaths == 1 and s.failed == 0 and s.rejected_commits == 0
    if retry_lost:  # the batch went to another actor: this run finishes everything
        assert (s.batches_resent, s.partitions_lost, s.partitions_done) == (1, 0, PARTS)
    else:  # left for the rerun, claims released: the lost 3 and their 2 successors each wait
        assert (s.batches_resent, s.partitions_lost, s.partitions_done) == (0, 3, PARTS - 9)
        assert claim_counts(pg) == {"done": PARTS - 9}
        rerun = run_ray_encode(pg, backends, EncodeConfig(batch_size=3), rc, progress=False)
        assert (rerun.partitions_done, rerun.actor_deaths) == (9, 0)
    lines = call_lines(calls)
    assert len(lines) == NEEDED + len(wasted)  # only the killed actor's calls were paid twice
    assert len({tuple(x[1:]) for x in lines}) == NEEDED
    assert_exactly_once(pg)


def test_two_drivers_at_once_generate_each_partition_once(ray_address, pg, tmp_path):
    calls = tmp_path / "calls.txt"
    start = f"{time.time() + 5:.3f}"  # both past imports and Ray connection, then together
    # Half a CPU per actor: both fit even while an earlier test's killed actors free theirs.
    drivers = [spawn(pg, calls, "--ray", ray_address, "--actors", "1", "--actor-cpus", "0.5",
                     "--start-at", start, "--delay", "0.2") for _ in range(2)]
    summaries = finish(drivers)
    lines = call_lines(calls)
    assert len(lines) == NEEDED and len({tuple(x[1:]) for x in lines}) == NEEDED
    assert [s["partitions_done"] > 0 for s in summaries] == [True, True]  # both took part
    assert sum(s["partitions_done"] for s in summaries) == PARTS
    assert sum(s["llm_calls"] for s in summaries) == NEEDED
    assert sum(s["rejected_commits"] for s in summaries) == 0
    assert_exactly_once(pg)


def test_actors_that_do_not_fit_the_cluster_are_refused(ray_address, pg):
    with pytest.raises(ConfigError, match="3 actors × 1 CPU do not fit"):
        run_ray_encode(pg, fake_backends, rc=RayEncodeConfig(actors=3), progress=False)
    assert claim_counts(pg) == {}


def test_one_gpu_per_actor_when_the_cluster_has_gpus():
    gpu_node = {"CPU": 16.0, "GPU": 2.0}
    assert actor_gpus(RayEncodeConfig(actors=2), gpu_node) == 1.0
    assert actor_gpus(RayEncodeConfig(actors=2), {"CPU": 2.0}) == 0.0
    assert actor_gpus(RayEncodeConfig(actors=8, gpus_per_actor=0), gpu_node) == 0.0  # openai: clients
    assert actor_gpus(RayEncodeConfig(actors=4, gpus_per_actor=0.5), gpu_node) == 0.5
    with pytest.raises(ConfigError, match=r"3 actors × 1 GPU do not fit the Ray cluster \(2 GPU in all\)"):
        actor_gpus(RayEncodeConfig(actors=3), gpu_node)


def test_an_actor_that_cannot_load_its_backends_fails_the_run(ray_address, pg):
    broken = functools.partial(int, "not a model")  # raises ValueError inside the actor
    with pytest.raises(EncoderError, match=r"could not load its backends: ValueError: .*'not a model'$"):
        run_ray_encode(pg, broken, rc=RayEncodeConfig(actors=1), progress=False)
    assert claim_counts(pg) == {}


def test_without_ray_the_package_imports_and_names_the_extra():
    code = ("import sys; sys.modules['ray'] = None\n"
            "import liber_features.cli.main, liber_features.uil.rayjob as r\n"
            "from liber_features.errors import MissingDependency\n"
            "try:\n    r.run_ray_encode(None, lambda: None)\n"
            "except MissingDependency as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pip install 'liber-features[scale]'" in out.stdout
