"""Two ledgers, one Feast repo (issue 22): nothing is ever mixed silently.

Ledger A holds users u0..u3, ledger B users u2..u5 — ids that overlap, as two datasets' do, with
other items behind them. With one data directory (LIBER_DATA_DIR shared) B's ingest, materialize
and training-set build are refused with one line naming both ledgers; with the default per-ledger
data directories both work and neither sees the other's rows; and the online counts of A ignore
the rows B wrote over A's users, and name them. The LLM and the text encoder are the fakes of
``liber_features.testing``; Feast is the embedded SQLite store.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from feastrepo import Repo

from liber_features.cli.main import cli
from liber_features.errors import LedgerMismatch
from liber_features.features import ownership
from liber_features.features.memory import refresh_memory_table
from liber_features.features.repo import LONG_TERM_VIEW, SHORT_TERM_VIEW, data_file
from liber_features.ledger.store import Ledger
from liber_features.settings import ledger_key
from liber_features.testing import HashEncoder, ScriptedLLM, event_log
from liber_features.training.samples import SampleConfig, build_training_set
from liber_features.uil.interest import EncodeConfig, run_encode

A_USERS, B_USERS = ["u0", "u1", "u2", "u3"], ["u2", "u3", "u4", "u5"]


class BodyLLM(ScriptedLLM):
    """Its summary depends on what the partition holds: two ledgers' users differ in text."""

    def reply(self, kind: str, n: int, body: str) -> str:
        return f"{kind} {hashlib.sha256(body.encode()).hexdigest()[:8]}"


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    for name in ("LIBER_DATA_DIR", "LIBER_LEDGER_URL", "LIBER_LEDGER_SCHEMA", "FEAST_FS_YAML_FILE_PATH",
                 "LIBER_REDIS_URL", "LIBER_REDIS_CONNECTION", "LIBER_REGISTRY_URL", "LIBER_FEAST_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LIBER_MEMORY_SLOTS", "2")
    monkeypatch.setenv("LIBER_VECTOR_DIM", "4")


def write_log(tmp: Path, name: str, first_user: int, item_stride: int) -> tuple[Path, Path]:
    """A CSV event log of 4 users × 4 events (u{first_user}..) and its catalog."""
    log = event_log(users=4, per_user=4, item_stride=item_stride)
    df = log.events.assign(user_id=lambda d: "u" + (d.user_id.str[1:].astype(int) + first_user).astype(str),
                           timestamp=lambda d: d.ts.astype("int64") // 10**6)
    events, catalog = tmp / f"{name}.csv", tmp / f"{name}-catalog.csv"
    df[["user_id", "item_id", "timestamp", "rating"]].to_csv(events, index=False)
    log.catalog.to_csv(catalog, index=False)
    return events, catalog


def liber(*args: str):
    return CliRunner().invoke(cli, [*args])


def ingest(tmp: Path, name: str, url: str, repo: Repo, *extra: str, first_user=0, stride=1):
    events, catalog = write_log(tmp, name, first_user, stride)
    return liber("ingest", "--events", str(events), "--catalog", str(catalog), "--ledger", url,
                 "--k", "2", "--repo", str(repo.root), "--json", *extra)


def encode(url: str, repo: Repo, monkeypatch) -> Ledger:
    """What `liber encode` does, with the fakes: every partition, then the long-term table."""
    monkeypatch.setenv("LIBER_LEDGER_URL", url)
    ledger = Ledger(url)
    run_encode(ledger, BodyLLM(), HashEncoder("fake:hash@1", dim=4), EncodeConfig(), progress=False)
    refresh_memory_table(ledger, data_file(f"{LONG_TERM_VIEW}.parquet", repo_dir=repo.root),
                         memory_slots=2, vector_dim=4)
    return ledger


def apply_for(url: str, repo: Repo, monkeypatch):
    """`feast apply` with this ledger's environment: the registry reads its data directory."""
    monkeypatch.setenv("LIBER_LEDGER_URL", url)
    return repo.apply()


def users_in(path: Path) -> list[str]:
    return sorted(set(pq.read_table(path, columns=["user_id"])["user_id"].to_pylist()))


def refusal(where: Path, name: str, found: Ledger | None, ledger: Ledger) -> str:
    other = (f"ledger {found.ledger_id[:8]} ({found.url})" if found else
             "a ledger of unknown identity (a file without a ledger stamp, e.g. from release 0.1.0)")
    return (f"{where} holds {name} of {other}, not of ledger {ledger.ledger_id[:8]} ({ledger.url}): "
            f"nothing was mixed; use a fresh data directory for this ledger (unset LIBER_DATA_DIR for "
            f"its own data/{ledger_key(ledger.url, None)}, or set LIBER_DATA_DIR=<new dir>), or pass "
            f"--replace to drop the other ledger's files first")


@pytest.fixture
def two(tmp_path):
    (tmp_path / "repo").mkdir()
    return (tmp_path, Repo(tmp_path / "repo", "sqlite"), f"sqlite:///{tmp_path / 'a.db'}",
            f"sqlite:///{tmp_path / 'b.db'}")


@pytest.mark.slow  # Feast apply and point-in-time joins: ~20 s here
def test_one_shared_data_directory_refuses_the_second_ledger(two, monkeypatch):
    tmp, repo, a_url, b_url = two
    shared = tmp / "shared"
    monkeypatch.setenv("LIBER_DATA_DIR", str(shared))
    assert ingest(tmp, "a", a_url, repo).exit_code == 0
    a = encode(a_url, repo, monkeypatch)
    store = apply_for(a_url, repo, monkeypatch)
    first = liber("materialize", "--repo", str(repo.root), "--ledger", a_url, "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout.splitlines()[-1])["users_written"] == {LONG_TERM_VIEW: 4, SHORT_TERM_VIEW: 4}
    monkeypatch.delenv("LIBER_LEDGER_URL")
    before = {p.name: p.read_bytes() for p in shared.glob("*.parquet")}

    got = ingest(tmp, "b", b_url, repo, first_user=2, stride=7)
    b = Ledger(b_url)
    line = refusal(shared, "item_stats.parquet", a, b)  # the first of A's files, by name
    assert (got.exit_code, got.stderr) == (2, f"error: {line}\n")
    assert b.counts()["ledger_events"] == 0  # refused before anything was committed
    got = liber("materialize", "--repo", str(repo.root), "--ledger", b_url, "--json")
    assert (got.exit_code, got.stderr) == (2, f"error: {line}\n")
    with pytest.raises(LedgerMismatch) as err:
        build_training_set(b, store, SampleConfig())
    assert str(err.value) == line
    assert {p.name: p.read_bytes() for p in shared.glob("*.parquet")} == before  # A's files untouched

    # --replace drops A's files first; what is there afterwards is B's alone.
    got = ingest(tmp, "b", b_url, repo, "--replace", first_user=2, stride=7)
    assert got.exit_code == 0, got.output
    history = shared / f"{SHORT_TERM_VIEW}.parquet"
    names = sorted(p.name for p in shared.glob("*.parquet"))  # ingest also rebuilt the statistics tables
    assert names == ["item_stats.parquet", "item_text.parquet", history.name, "user_stats.parquet"]
    assert users_in(history) == B_USERS and ownership.owner(history).ledger_id == b.ledger_id
    got = liber("materialize", "--repo", str(repo.root), "--ledger", a_url, "--json")  # now A is refused
    assert (got.exit_code, got.stderr) == (2, f"error: {refusal(shared, 'item_stats.parquet', b, a)}\n")


@pytest.mark.slow  # two Feast applies, materializes and training sets: ~30 s here
def test_per_ledger_default_directories_keep_both_apart(two, monkeypatch):
    tmp, repo, a_url, b_url = two
    assert ingest(tmp, "a", a_url, repo).exit_code == 0
    got = ingest(tmp, "b", b_url, repo, first_user=2, stride=7)
    assert got.exit_code == 0, got.output
    a, b = encode(a_url, repo, monkeypatch), encode(b_url, repo, monkeypatch)
    dirs = {x: repo.root / "data" / ledger_key(x.url, None) for x in (a, b)}
    for x, users in ((a, A_USERS), (b, B_USERS)):
        for view in (LONG_TERM_VIEW, SHORT_TERM_VIEW):
            path = dirs[x] / f"{view}.parquet"
            assert users_in(path) == users and ownership.owner(path).ledger_id == x.ledger_id

    for x, url, users in ((a, a_url, A_USERS), (b, b_url, B_USERS)):
        store = apply_for(url, repo, monkeypatch)
        ts = build_training_set(x, store, SampleConfig())
        assert sorted(set(ts.user_ids)) == users
        got = liber("materialize", "--repo", str(repo.root), "--ledger", url, "--json")
        assert got.exit_code == 0, got.output
        assert json.loads(got.stdout.splitlines()[-1])["users_written"] == {LONG_TERM_VIEW: 4, SHORT_TERM_VIEW: 4}
    # The registry now reads B's folder: A is sent to `feast apply`, never to --replace.
    got = liber("materialize", "--repo", str(repo.root), "--ledger", a_url, "--replace", "--json")
    assert got.exit_code == 2
    assert got.stderr == (
        f"error: the Feast registry of project {repo.project!r} reads {LONG_TERM_VIEW} from {dirs[b]}, "
        f"but ledger {a.ledger_id[:8]} ({a_url}) keeps its tables in {dirs[a]}: run `feast apply` for this "
        f"ledger first (with LIBER_LEDGER_URL / LIBER_LEDGER_SCHEMA naming it), or give it a Feast project "
        f"of its own (LIBER_FEAST_PROJECT)\n")
    assert users_in(dirs[b] / f"{LONG_TERM_VIEW}.parquet") == B_USERS  # nothing dropped

    # One online store for both: B's materialize overwrote u2, u3. A's counts ignore them, by name.
    from liber_features.report.gather import gather

    monkeypatch.setenv("LIBER_LEDGER_URL", a_url)
    rd = gather(a, repo=repo.root, model_dir=None, evaluation=None, bench_dir=None)
    assert rd.coverage == {"sealed": 8, "encoded": 8, "online": 4, "users_online": 2}
    assert rd.notes["online_not_counted"] == ("online but not counted for this ledger: 2 rows written from "
                                              "another ledger (versions or texts this ledger never made)")
    assert sum(rd.online_versions.values()) == 2 and len(rd.online_age_s) == 2
    got = liber("status", "--ledger", a_url, "--online", "--repo", str(repo.root), "--json")
    assert got.exit_code == 0, got.output
    status = json.loads(got.stdout.splitlines()[-1])
    assert {k: status[k] for k in ("ledger_id", "users_online", "partitions_online", "online_other_ledger",
                                   "online_unknown_users", "online_other_version")} == {
        "ledger_id": a.ledger_id, "users_online": 2, "partitions_online": 4, "online_other_ledger": 2,
        "online_unknown_users": 0, "online_other_version": 0}
    monkeypatch.setenv("LIBER_LEDGER_URL", b_url)
    rd = gather(b, repo=repo.root, model_dir=None, evaluation=None, bench_dir=None)
    assert rd.coverage["users_online"] == 4 and "online_not_counted" not in rd.notes


def test_a_file_without_a_stamp_is_a_ledger_of_unknown_identity(tmp_path):
    """Release 0.1.0 wrote no stamp: writing over its files is refused the same way; --replace drops them."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    data = tmp_path / "data"
    data.mkdir()
    old = data / f"{SHORT_TERM_VIEW}.parquet"
    pd.DataFrame({"user_id": ["x"]}).to_parquet(old)
    assert ownership.owner(old) == ownership.Owner(None, None)
    assert ownership.owner(data / "none.parquet") is None
    with pytest.raises(LedgerMismatch) as err:
        ownership.check(data, ledger)
    assert str(err.value) == refusal(data, old.name, None, ledger)
    assert ownership.check(data, ledger, replace=True) == [old] and not old.exists()
    assert ownership.check(data, ledger) == []
