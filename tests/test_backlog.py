"""The encode backlog (``uil/backlog.py``) and ``liber status`` showing it, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

from click.testing import CliRunner

from liber_features.cli.main import cli
from liber_features.ingest.job import ingest
from liber_features.ingest.partition import PartitionRule
from liber_features.testing import CountingLLM, HashEncoder, ScriptedLLM, event_log
from liber_features.uil.backlog import Backlog, encode_backlog, unencoded
from liber_features.uil.interest import EncodeConfig, prompt_version, run_encode

PV = prompt_version(EncodeConfig().prompts)


def status(ledger) -> dict:
    args = ["status", "--ledger", ledger.url] + (["--ledger-schema", ledger.schema] if ledger.schema else [])
    r = CliRunner().invoke(cli, args + ["--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output.strip().splitlines()[-1])


def test_backlog_of_the_version_being_encoded(ledger):
    ingest(event_log(3, 6), ledger, PartitionRule(k=2), progress=False)  # 3 partitions each: 9
    assert encode_backlog(ledger) == Backlog(9, 3, None, None)  # nothing encoded: every partition 0 ready
    run_encode(ledger, CountingLLM(), HashEncoder(), EncodeConfig(users=["u0"], limit=2), progress=False)
    # u0's partitions 0 and 1 done: 7 owed, ready u0's 2, u1's 0, u2's 0.
    assert encode_backlog(ledger) == Backlog(7, 3, PV, "fake:counting@1")
    assert sorted(unencoded(ledger, PV, "fake:counting@1", ["u0"]).values()) == [("u0", 2)]

    # A run that failed at once (a typo'd backend) does not make every partition backlog.
    failed = ledger.start_run("encode", {"prompt_version": PV, "llm_id": "openai:typo"})
    ledger.finish_run(failed, "failed", {})
    assert encode_backlog(ledger).llm_id == "fake:counting@1"

    # A newer LLM being rolled out: its backlog is everything, and a failed partition is still owed.
    run_encode(ledger, ScriptedLLM(fail_on="Movie 1"), HashEncoder(), EncodeConfig(users=["u1"]), progress=False)
    got = status(ledger)
    assert (got["encode_backlog"], got["encode_backlog_ready"], got["encode_backlog_llm"]) == (9, 3, "fake:scripted@1")


def test_status_says_when_nothing_was_encoded(ledger):
    ingest(event_log(2, 4), ledger, PartitionRule(k=2), progress=False)
    got = status(ledger)
    assert (got["encode_backlog"], got["encode_backlog_ready"], got["encode_backlog_llm"]) == (
        4, 2, "- (nothing encoded yet)")
    args = ["status", "--ledger", ledger.url] + (["--ledger-schema", ledger.schema] if ledger.schema else [])
    lines = CliRunner().invoke(cli, args).output.splitlines()
    assert "  encode_backlog         4" in lines and "  encode_backlog_ready   2" in lines
