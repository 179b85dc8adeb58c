"""Runs in the ledger: stale runs are told from live ones, and the partition rule is fixed on
first use — a crashed first ingest fixes it too."""

from __future__ import annotations

import json
import os
import socket

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update
from test_concurrency import events

from liber_features.cli.main import cli
from liber_features.errors import ConfigError
from liber_features.ingest.job import ingest
from liber_features.ingest.partition import PartitionRule
from liber_features.ledger.runs import run_report
from liber_features.ledger.store import runs


def test_crashed_first_ingest_still_fixes_k(ledger):
    def boom(_df):
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        ingest(events(users=2), ledger, PartitionRule(k=2), progress=False, on_caches=boom)
    with pytest.raises(ConfigError, match=r"partitioned with \{'k': 2"):
        ingest(events(users=3), ledger, PartitionRule(k=3), progress=False)
    assert ingest(events(users=3), ledger, PartitionRule(k=2), progress=False).accepted == 7


def test_run_starts_with_its_heartbeat_lease_and_zero_counters(ledger):
    run_id = ledger.start_run("encode", {"token": "secret"}, lease_s=42)
    with ledger.engine.connect() as conn:
        row = conn.execute(select(runs).where(runs.c.id == run_id)).one()
    assert (row.status, row.lease_us, row.heartbeat_us) == ("running", 42_000_000, row.started_us)
    assert row.worker == f"{socket.gethostname()}:{os.getpid()}"
    assert (row.partitions_done, row.llm_calls, row.llm_calls_committed, row.rejected_commits) == (0, 0, 0, 0)
    with ledger.begin() as conn:  # its lease ran out long ago: stale
        conn.execute(update(runs).where(runs.c.id == run_id).values(heartbeat_us=row.started_us - 43_000_000))
    assert run_report(ledger)["runs"] == {"live": 0, "finished": 0, "failed": 0, "stale": 1}


def test_status_shows_live_finished_failed_and_stale_runs(ledger):
    ingest(events(users=2), ledger, PartitionRule(k=2), progress=False)  # finished
    failed = ledger.start_run("encode", {})
    ledger.finish_run(failed, "failed", {})
    live = ledger.start_run("encode", {}, lease_s=60)
    dead = ledger.start_run("encode", {}, lease_s=1)
    with ledger.begin() as conn:
        conn.execute(update(runs).where(runs.c.id == dead)
                     .values(heartbeat_us=1, llm_calls=6, llm_calls_committed=2))
    args = ["status", "--ledger", ledger.url] + (["--ledger-schema", ledger.schema] if ledger.schema else [])
    r = CliRunner().invoke(cli, args + ["--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output.strip().splitlines()[-1])
    assert got["runs"] == {"live": 1, "finished": 1, "failed": 1, "stale": 1}
    assert got["llm_calls_uncommitted"] == 4
    states = {w["run_id"]: w["state"] for w in got["workers"]}
    assert (states[live], states[dead], states[failed]) == ("live", "stale", "failed")
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "1 live, 1 finished, 1 failed, 1 stale" in r.output
    assert [line.split()[2] for line in r.output.splitlines() if line.split()[:1] == [str(dead)]] == ["stale"]


def test_encode_runs_record_their_domain_and_status_names_it(ledger, tmp_path):
    from liber_features.ledger.runs import encode_domains
    from liber_features.testing import HashEncoder, ScriptedLLM
    from liber_features.uil.domain import load_domain
    from liber_features.uil.interest import EncodeConfig, run_encode
    from liber_features.uil.prompts import PromptConfig, preset_prompt_versions, prompt_version

    ingest(events(users=2), ledger, PartitionRule(k=2), progress=False)
    old = ledger.start_run("encode", {})  # a run from before runs recorded their domain
    ledger.finish_run(old, "ok", {})
    movies_pv = prompt_version(PromptConfig())  # ... whose prompt version names the preset it used
    ledger.finish_run(ledger.start_run("encode", {"prompt_version": movies_pv}), "ok", {})
    enc = HashEncoder("fake-enc@1", dim=4)
    products = EncodeConfig(prompts=PromptConfig(domain=load_domain("products")))
    run_encode(ledger, ScriptedLLM(), enc, products, progress=False)
    path = tmp_path / "courses.toml"
    path.write_text('base = "products"\nname = "courses"\nnoun = "online courses"\n')
    courses = load_domain(str(path))
    run_encode(ledger, ScriptedLLM(), enc, EncodeConfig(prompts=PromptConfig(domain=courses)), progress=False)
    with ledger.engine.connect() as conn:
        params = [json.loads(p) for p in conn.execute(select(runs.c.params).where(runs.c.kind == "encode")
                                                      .order_by(runs.c.id)).scalars()]
    assert [(p.get("domain"), p.get("domain_sha256")) for p in params] == [
        (None, None), (None, None), ("products", load_domain("products").fingerprint),
        (f"courses@{courses.fingerprint}", courses.fingerprint)]
    assert encode_domains(ledger) == [f"courses@{courses.fingerprint}", "products", "unrecorded"]
    assert encode_domains(ledger, preset_prompt_versions()) == [
        f"courses@{courses.fingerprint}", "products", "movies", "unrecorded"]
    args = ["status", "--ledger", ledger.url] + (["--ledger-schema", ledger.schema] if ledger.schema else [])
    got = json.loads(CliRunner().invoke(cli, args + ["--json"]).output.strip().splitlines()[-1])
    assert got["encoded_with_domain"] == f"courses@{courses.fingerprint}, products, movies, unrecorded"
    assert got["ledger"] == ledger.safe_url()  # the summary names the ledger it read
    text = CliRunner().invoke(cli, args).output
    assert f"  encoded_with_domain    courses@{courses.fingerprint}, products, movies, unrecorded\n" in text
