"""Claims in one process, both backends: a commit after a takeover is rejected and counted, never
written twice; a failed row is replaced in place (its id, and so its vectors, never renumbered)."""

from __future__ import annotations

from sqlalchemy import func, select, update
from test_concurrency import assert_exactly_once, events

from liber_features.errors import EncoderError
from liber_features.ingest.job import ingest
from liber_features.ingest.partition import PartitionRule
from liber_features.ledger.store import claims, interests, runs, vectors
from liber_features.testing import CountingLLM, HashEncoder
from liber_features.uil.interest import EncodeConfig, run_encode


def test_commit_after_takeover_is_rejected_and_counted(ledger):
    ingest(events(), ledger, PartitionRule(k=2), progress=False)
    inner: dict = {}

    class Slow(CountingLLM):
        """Its worker 'stalls' on the first batch: the lease expires, another worker takes over."""

        def generate(self, prompts):
            if not inner:
                with ledger.begin() as conn:
                    conn.execute(update(claims).values(lease_until_us=0))
                inner["summary"] = run_encode(ledger, CountingLLM(), HashEncoder(),
                                              EncodeConfig(batch_size=5), progress=False)
            return super().generate(prompts)

    stalled = run_encode(ledger, Slow(), HashEncoder(), EncodeConfig(batch_size=3), progress=False)
    assert (stalled.partitions_done, stalled.rejected_commits) == (0, 3)
    assert inner["summary"].partitions_done == 24
    assert_exactly_once(ledger)
    with ledger.engine.connect() as conn:
        assert conn.execute(select(func.sum(claims.c.takeovers))).scalar() == 3
        hb = dict(conn.execute(select(runs.c.id, runs.c.rejected_commits)).all())
    assert sorted(hb.values()) == [0, 0, 3]  # the ingest run, the taker, the stalled worker


def test_failed_row_is_replaced_in_place_and_keeps_its_id(ledger):
    ingest(events(users=1), ledger, PartitionRule(k=2), progress=False)

    class Failing(CountingLLM):
        def generate(self, prompts):
            raise EncoderError("backend exploded")

    s = run_encode(ledger, Failing(), HashEncoder(), EncodeConfig(batch_size=1), progress=False)
    assert s.failed == 1
    with ledger.engine.connect() as conn:
        failed_id = conn.execute(select(interests.c.id).where(interests.c.status == "failed")).scalar_one()
        assert conn.execute(select(func.count()).select_from(claims)).scalar() == 0  # released
    s = run_encode(ledger, CountingLLM(), HashEncoder(), progress=False)
    assert s.partitions_done == 3
    with ledger.engine.connect() as conn:
        row = conn.execute(select(interests).where(interests.c.id == failed_id)).one()
        # ``attempts`` counts tries (record_failure): the failed one, then the one that succeeded.
        assert (row.status, row.attempts) == ("done", 2)
        kept = conn.execute(select(vectors.c.interest_id).where(vectors.c.interest_id == failed_id)).scalar()
        assert kept == failed_id
