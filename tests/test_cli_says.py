"""Commands that say what they did (issue 23): ``liber quarantine`` in the input's own lines and
columns, a default rating range and a no-catalog warning at ingest, a missing ledger refused, encode
progress on stderr, ``liber score`` with titles / unknown / seen items, ``liber serve``'s log lines."""

from __future__ import annotations

import io
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from servekit import unconfigure

from liber_features.cli.main import cli

EVENTS = ("user_id,item_id,timestamp,rating\n"
          "1,10,1000000000,4\n"
          "\n"                              # line 3: blank, skipped by the reader and not counted
          "1,11,1000000001,11\n"            # line 4: rating out of the default 0.5–5
          "1,99,1000000002,3\n"             # line 5: not in the catalog
          "2,10,not-a-time,4\n"             # line 6: bad timestamp (the ledger's field: ts)
          "2,11,1000000003,4,extra\n"       # line 7: a line that cannot be read as a row
          "2,11,1000000004,0.4\n")          # line 8: rating below the range
CATALOG = ("item_id,title,categories\n10,Pixelon 4K Monitor,Electronics|Computing\n"
           "11,Maison Café Espresso Machine,Home|Kitchen\n")
MISSING = "run `liber ingest` first, or name the ledger with --ledger / LIBER_LEDGER_URL"


def ingest(tmp_path: Path, *extra: str, events: str = EVENTS, catalog: bool = True):
    (tmp_path / "events.csv").write_text(events)
    (tmp_path / "items.csv").write_text(CATALOG)
    url = f"sqlite:///{tmp_path / 'l.db'}"
    args = ["ingest", "--events", str(tmp_path / "events.csv"), "--ledger", url, "--k", "1",
            "--repo", str(tmp_path / "repo"), "--json", *extra]
    res = CliRunner().invoke(cli, args + (["--catalog", str(tmp_path / "items.csv")] if catalog else []))
    assert res.exit_code == 0, res.output
    return url, res


def test_quarantine_lists_rows_at_their_file_lines_under_the_input_columns(tmp_path):
    url, _ = ingest(tmp_path)
    src = str(tmp_path / "events.csv")
    res = CliRunner().invoke(cli, ["quarantine", "--ledger", url])
    assert res.exit_code == 0, res.output
    assert res.stdout == (
        f"5 quarantined rows in ledger {url}\n"
        f"  {src}:line 4  rating: rating 11.0 outside [0.5, 5.0]\n"
        '      {"user_id":"1","item_id":"11","timestamp":"1000000001","rating":"11"}\n'
        f"  {src}:line 5  item_id: item '99' not in catalog\n"
        '      {"user_id":"1","item_id":"99","timestamp":"1000000002","rating":"3"}\n'
        f"  {src}:line 6  timestamp: timestamp 'not-a-time' is neither epoch seconds nor ISO-8601\n"
        '      {"user_id":"2","item_id":"10","timestamp":"not-a-time","rating":"4"}\n'
        f"  {src}:line 7  (whole line): expected 4 fields, found 5\n"
        '      {"line": "2,11,1000000003,4,extra"}\n'
        f"  {src}:line 8  rating: rating 0.4 outside [0.5, 5.0]\n"
        '      {"user_id":"2","item_id":"11","timestamp":"1000000004","rating":"0.4"}\n')


def test_quarantine_json_csv_and_limit(tmp_path):
    url, _ = ingest(tmp_path)
    src = str(tmp_path / "events.csv")
    res = CliRunner().invoke(cli, ["quarantine", "--ledger", url, "--json", "--limit", "3"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["ledger"], out["total"]) == (url, 5)
    assert [(r["source"], r["line"], r["row"], r["column"], r["field"], r["run_id"]) for r in out["rows"]] == [
        (src, 4, None, "rating", "rating", 1), (src, 5, None, "item_id", "item_id", 1),
        (src, 6, None, "timestamp", "ts", 1)]
    path = tmp_path / "out" / "q.csv"
    res = CliRunner().invoke(cli, ["quarantine", "--ledger", url, "--csv", str(path), "--limit", "2"])
    assert res.exit_code == 0, res.output
    assert res.stdout == f"wrote 2 of 5 quarantined rows of ledger {url} to {path}\n"
    assert path.read_text(encoding="utf-8").splitlines() == [
        "source,line,row,column,field,reason,raw,run_id",
        f'{src},4,,rating,rating,"rating 11.0 outside [0.5, 5.0]",'
        '"{""user_id"":""1"",""item_id"":""11"",""timestamp"":""1000000001"",""rating"":""11""}",1',
        f"{src},5,,item_id,item_id,item '99' not in catalog,"
        '"{""user_id"":""1"",""item_id"":""99"",""timestamp"":""1000000002"",""rating"":""3""}",1']


def test_quarantine_parquet_rows_and_grouplens_lines(tmp_path):
    pd.DataFrame({"user_id": ["1", "2", "3"], "item_id": ["a", "b", "c"],
                  "ts": [1_000_000_000, 1_000_000_001, 1_000_000_002], "weight": [1.0, 6.0, 2.0]}
                 ).to_parquet(tmp_path / "e.parquet")
    url = f"sqlite:///{tmp_path / 'p.db'}"
    res = CliRunner().invoke(cli, ["ingest", "--events", str(tmp_path / "e.parquet"), "--ledger", url,
                                   "--repo", str(tmp_path / "repo"), "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(CliRunner().invoke(cli, ["quarantine", "--ledger", url, "--json"]).stdout)["rows"]
    assert [(r["line"], r["row"], r["column"], r["reason"]) for r in rows] == [
        (None, 2, "weight", "rating 6.0 outside [0.5, 5.0]")]  # the 2nd row, under the file's name

    ml = tmp_path / "ml-100k"
    ml.mkdir()
    (ml / "u.data").write_text("1\t10\t4\t1000000000\n1\t11\t7\t1000000001\n\n2\t10\t3\tx\n")  # no header
    url = f"sqlite:///{tmp_path / 'm.db'}"
    res = CliRunner().invoke(cli, ["ingest", "--events", str(ml), "--ledger", url,
                                   "--repo", str(tmp_path / "repo"), "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(CliRunner().invoke(cli, ["quarantine", "--ledger", url, "--json"]).stdout)["rows"]
    assert [(r["line"], r["column"], r["reason"]) for r in rows] == [
        (2, "rating", "rating 7.0 outside [1.0, 5.0]"),
        (4, "timestamp", "timestamp 'x' is neither epoch seconds nor ISO-8601")]


def test_plain_files_get_the_grouplens_rating_range_unless_one_is_given(tmp_path):
    _, res = ingest(tmp_path)
    out = json.loads(res.stdout.splitlines()[-1])
    assert (out["read"], out["accepted"], out["quarantined"]) == (6, 1, 5)
    (tmp_path / "wide").mkdir()
    _, res = ingest(tmp_path / "wide", "--rating-range", "0,11")
    out = json.loads(res.stdout.splitlines()[-1])
    assert (out["read"], out["accepted"], out["quarantined"]) == (6, 3, 3)  # 11 and 0.4 now valid


def test_ingest_without_a_catalog_warns_once_on_stderr(tmp_path):
    _, res = ingest(tmp_path, catalog=False)
    assert res.stderr == ("warning: no catalog (--catalog): item ids are not checked against one, "
                          "and items have no titles or categories\n")
    out = json.loads(res.stdout.splitlines()[-1])
    assert (out["accepted"], out["quarantined"]) == (2, 4)  # item 99 is accepted: nothing to check it by
    (tmp_path / "with").mkdir()
    _, res = ingest(tmp_path / "with")
    assert res.stderr == ""


# Every `liber` command, by what it does with a ledger that does not exist (walked once: a new
# command must be placed here, test_every_command_is_placed says so).
READS_LEDGER = [["status"], ["materialize", "--repo", "nowhere"], ["quarantine"], ["push-caches"], ["report"],
                ["encode"], ["evaluate"], ["train"], ["project", "--dim", "4"], ["items"]]
CREATES_LEDGER = {"ingest", "stream", "demo"}  # demo: a ledger of its own in its work folder
NO_LEDGER = {"export": "reads the checkpoint only", "produce": "an event file to a broker",
             "score": "scores without titles, with a warning line (test_score_without_a_ledger_...)",
             "serve": "reads a ledger only when --ledger is given (then refused if missing, below)"}


def test_every_command_is_placed():
    placed = {c[0] for c in READS_LEDGER} | CREATES_LEDGER | set(NO_LEDGER)
    assert sorted(cli.commands) == sorted(placed)


def test_serve_refuses_a_named_missing_ledger(tmp_path, monkeypatch):
    from liber_features.serving import server

    monkeypatch.setattr(server, "load_scorer", lambda config: None)  # the model is not the point here
    named = tmp_path / "other.db"
    res = CliRunner().invoke(cli, ["serve", "--ledger", f"sqlite:///{named}"])
    assert (res.exit_code, res.stderr) == (2, f"error: no ledger at {named}: {MISSING}\n")
    assert not named.exists()


@pytest.mark.parametrize("command", READS_LEDGER, ids=lambda c: c[0])
def test_commands_but_ingest_refuse_a_missing_ledger_and_create_none(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LIBER_LEDGER_URL", raising=False)
    res = CliRunner().invoke(cli, command)
    assert res.exit_code == 2
    assert res.stderr == f"error: no ledger at {tmp_path / '.liber' / 'ledger.db'}: {MISSING}\n"
    assert not (tmp_path / ".liber").exists()
    named = tmp_path / "other.db"
    res = CliRunner().invoke(cli, [*command, "--ledger", f"sqlite:///{named}"])
    assert (res.exit_code, res.stderr) == (2, f"error: no ledger at {named}: {MISSING}\n")
    assert not named.exists()


def test_materialize_names_the_ledger_and_repo_it_used(tmp_path):
    url, _ = ingest(tmp_path)
    res = CliRunner().invoke(cli, ["materialize", "--ledger", url, "--repo", str(tmp_path / "nowhere")])
    assert res.exit_code == 2  # no Feast repo there: the ledger check passed, Feast's came next
    assert "no ledger" not in res.stderr and str(tmp_path / "nowhere") in res.stderr


# --- encode progress ---------------------------------------------------------------------------

@pytest.fixture
def fake_models(monkeypatch):
    """``encoders.uil.backends`` replaced by the shipped fakes (no torch, no model files)."""
    from liber_features.testing import fake_backends

    module = types.ModuleType("encoders.uil.backends")
    module.model_backends = lambda *spec: fake_backends()
    monkeypatch.setitem(sys.modules, "encoders.uil.backends", module)


def test_encode_prints_one_progress_line_per_batch_when_not_a_terminal(tmp_path, fake_models, monkeypatch):
    from liber_features.cli import progress
    from liber_features.ingest.job import ingest as run_ingest
    from liber_features.ingest.partition import PartitionRule
    from liber_features.ledger.store import Ledger
    from liber_features.testing import event_log

    url = f"sqlite:///{tmp_path / 'l.db'}"
    run_ingest(event_log(2, 6), Ledger(url), PartitionRule(k=3), progress=False)  # 2 users × 2 partitions
    ticks = iter([100.0, 110.0, 130.0])  # the start, then each of the two batches
    monkeypatch.setattr(progress, "_clock", lambda: next(ticks))
    res = CliRunner().invoke(cli, ["encode", "--ledger", url, "--batch-size", "2", "--no-table"])
    assert res.exit_code == 0, res.output
    # Each user's first partition: a summary (1 call); the second: summary then shift (2 calls).
    assert res.stderr.splitlines() == [
        "encode: 0/4 partitions, 0 LLM calls, 0.00 calls/s, eta -",
        "encode: 2/4 partitions, 2 LLM calls, 0.20 calls/s, eta 0:00:10",
        "encode: 4/4 partitions, 6 LLM calls, 0.20 calls/s, eta 0:00:00",
    ]
    assert f"  ledger                 {url}\n" in res.stdout


def test_progress_line():
    from liber_features.cli.progress import progress_line

    assert progress_line(3, 9, 12, 60.0) == "encode: 3/9 partitions, 12 LLM calls, 0.20 calls/s, eta 0:02:00"


# --- score ----------------------------------------------------------------------------------------

class TableScorer:
    """Stands in for ``LiberScorer`` in ``liber score``: fixed scores, the same ``top`` contract."""

    def __init__(self, scores: dict[str, float], known: list[str]) -> None:
        from liber_features.model.vocab import ItemVocab

        self.scores, self.items = scores, ItemVocab.build(known)

    def top(self, user_id, k, candidates):
        from liber_features.serving.scorer import ScoreResult

        ids = list(candidates)
        res = ScoreResult(user_id, np.array([self.scores[i] for i in ids], dtype=np.float32),
                          unknown_items=[n for n, i in enumerate(ids) if i not in self.items])
        best = sorted(zip(ids, res.scores.tolist(), strict=True), key=lambda p: -p[1])[:k]
        return res, best


@pytest.fixture
def table_scorer(monkeypatch):
    from liber_features.cli import serve as serve_cli

    scorer = TableScorer({"10": 0.5, "11": 0.75, "12": 0.25, "new": 0.875}, known=["10", "11", "12"])
    monkeypatch.setattr(serve_cli, "_scorer", lambda *a: scorer)
    return scorer


def test_score_shows_titles_marks_unknown_items_and_leaves_out_seen_ones(tmp_path, table_scorer):
    url, _ = ingest(tmp_path)  # user 1 has events for item 10 only (11 and 99 were quarantined)
    res = CliRunner().invoke(cli, ["score", "--user", "1", "--items", "10,11,12,new", "--ledger", url])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[:4] == [
        "top 3 of 3 candidates for user 1",
        "    1. 0.8750  new  (no title)  [unknown to the model]",
        "    2. 0.7500  11  Maison Café Espresso Machine",
        "    3. 0.2500  12  (no title)",
    ]
    assert "  excluded_seen          1" in res.stdout.splitlines()
    res = CliRunner().invoke(cli, ["score", "--user", "1", "--items", "10,11,12,new", "--ledger", url,
                                   "--include-seen", "--top", "2", "--json"])
    out = json.loads(res.stdout)
    assert out["top"] == [["new", 0.875], ["11", 0.75]]  # the keys it always had, unchanged
    assert out["ranked"] == [{"item_id": "new", "score": 0.875, "title": None, "unknown": True},
                             {"item_id": "11", "score": 0.75, "title": "Maison Café Espresso Machine",
                              "unknown": False}]
    assert (out["unknown_items"], out["excluded_seen"], out["ledger"]) == (["new"], 0, url)


def test_score_without_a_ledger_says_so_and_scores_everything(tmp_path, table_scorer):
    missing = tmp_path / "none.db"
    res = CliRunner().invoke(cli, ["score", "--user", "1", "--items", "10,11", "--ledger",
                                   f"sqlite:///{missing}", "--json"])
    assert res.exit_code == 0, res.output
    assert res.stderr == (f"warning: no ledger at {missing}: {MISSING} (no titles; the user's seen "
                          "items are not excluded)\n")
    out = json.loads(res.stdout)
    assert (out["top"], out["excluded_seen"], out["ledger"]) == ([["11", 0.75], ["10", 0.5]], 0, None)
    assert not missing.exists()


def test_score_with_only_seen_candidates_says_to_include_them(tmp_path, table_scorer):
    url, _ = ingest(tmp_path)
    res = CliRunner().invoke(cli, ["score", "--user", "1", "--items", "10", "--ledger", url])
    assert (res.exit_code, res.stderr) == (
        2, "error: user 1 has events for every candidate (1): pass --include-seen to rank them anyway\n")


# --- serve logging ------------------------------------------------------------------------------

LINE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "


def test_serve_logs_an_access_line_per_request_and_errors(monkeypatch):
    from fastapi.testclient import TestClient

    from liber_features.errors import OnlineStoreError
    from liber_features.serving import logs, service

    outcomes = iter([None, OnlineStoreError("redis://127.0.0.1:1: refused"), RuntimeError("boom")])

    def fetch(_ids):
        if (exc := next(outcomes)) is not None:
            raise exc

    fetcher = types.SimpleNamespace(fetch=fetch, where="redis://127.0.0.1:1")
    card = types.SimpleNamespace(backbone="din", liber="both")
    scorer = types.SimpleNamespace(card=card, fetcher=fetcher, providers=["CPUExecutionProvider"])
    stream = io.StringIO()
    handler = logs.configure_logging(stream=stream)
    try:
        client = TestClient(service.create_app(scorer), raise_server_exceptions=False)
        assert client.get("/healthz").status_code == 200
        assert client.get("/healthz").status_code == 503
        assert client.get("/healthz").status_code == 500
        assert client.post("/score?debug=1", json={"user_id": ""}).status_code == 422
        assert client.get("/nowhere").status_code == 404
    finally:
        unconfigure(handler)
    lines = [line for line in stream.getvalue().splitlines() if re.match(LINE, line)]
    shapes = [re.sub(r"\d+\.\d ms$", "<ms> ms", line[24:]) for line in lines]
    assert shapes == [
        "INFO liber.serve.access: GET /healthz 200 <ms> ms",
        "INFO liber.serve.access: GET /healthz 503 <ms> ms",
        "INFO liber.serve.access: GET /healthz 500 <ms> ms",
        "ERROR liber.serve: unhandled error on /healthz",  # Starlette's error handler runs outside
        "INFO liber.serve.access: POST /score 422 <ms> ms",
        "INFO liber.serve.access: GET /nowhere 404 <ms> ms",
    ]
    assert "RuntimeError: boom" in stream.getvalue()  # the 500's traceback, in the log only


def test_serve_start_line():
    from liber_features.serving.logs import listening_line

    assert listening_line("0.0.0.0", 8080, "models/liber", "din+liber:both", "feature_repo", None) == (
        "listening on http://0.0.0.0:8080 (model models/liber: din+liber:both; repo feature_repo; ledger none)")
    assert listening_line("::1", 80, "m", "dcnv2+liber:none", "r", "sqlite:////x/l.db").startswith(
        "listening on http://[::1]:80 (model m: ")


def test_serve_without_access_log_still_logs_errors():
    from fastapi.testclient import TestClient

    from liber_features.serving import logs, service

    def fetch(_ids):
        raise RuntimeError("boom")

    scorer = types.SimpleNamespace(card=types.SimpleNamespace(backbone="din", liber="both"),
                                   fetcher=types.SimpleNamespace(fetch=fetch, where="x"), providers=[])
    stream = io.StringIO()
    handler = logs.configure_logging(stream=stream, access=False)
    try:
        client = TestClient(service.create_app(scorer), raise_server_exceptions=False)
        assert client.get("/healthz").status_code == 500
        assert client.get("/metrics").status_code == 200
    finally:
        unconfigure(handler)
    assert [line[24:] for line in stream.getvalue().splitlines() if re.match(LINE, line)] == [
        "ERROR liber.serve: unhandled error on /healthz"]
