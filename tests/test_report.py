"""``liber report`` on a tiny ledger: every section and image, exact counts, escaped LLM text,
missing parts and missing times stated on the page, and online figures read through a real
(SQLite) Feast store."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from liber_features.cli.main import cli
from liber_features.ingest.events import LoadedEvents
from liber_features.ingest.job import ingest
from liber_features.ingest.partition import PartitionRule
from liber_features.model.card import ModelCard
from liber_features.report.data import ReportData, Timeline
from liber_features.report.gather import default_timeline_users, gather, write_report
from liber_features.report.html import render, when
from liber_features.testing import HashEncoder, ScriptedLLM
from liber_features.uil.interest import EncodeConfig, run_encode

SCRIPT = "<script>alert('x')</script>"
SECTIONS = ["1. Data and partitions", "2. LLM cost, coverage and lag", "3. Interests over time",
            "4. Model", "5. Serving"]
ALL_IMAGES = {"partitions_per_user.png", "seal_times.png", "llm_calls.png", "coverage.png",
              "vector_age_cdf.png", "evaluation_auc.png", "auc_by_partitions.png", "serving_latency.png"}


ENCODER_ID = "fake-enc@1"


class ScriptLLM(ScriptedLLM):
    """Replies carry raw HTML, as an LLM may."""

    llm_id = "fake:script@1"

    def reply(self, kind: str, n: int, body: str) -> str:
        return f"{SCRIPT} {kind} & more"

    def tokens(self, body: str) -> tuple[int, int]:
        return 10, 3


def tiny_log() -> LoadedEvents:
    # user a: 7 events → 3 partitions of 2 + 1 cached; b: 2 → 1 partition; c: 1 cached.
    rows = [(f"a{i}", "a", f"i{i}", 1_500_000_000 + 86400 * i, 4.0) for i in range(7)]
    rows += [(f"b{i}", "b", f"i3{i}", 1_500_000_000 + 3600 * i, 2.0) for i in range(2)]
    rows += [("c0", "c", "i0", 1_500_000_000, 5.0)]
    df = pd.DataFrame(rows, columns=["event_id", "user_id", "item_id", "ts", "rating"])
    df["ts"] = pd.to_datetime(df["ts"], unit="s", utc=True).astype("datetime64[us, UTC]")
    df["row"] = range(len(df))
    cat = pd.DataFrame({"item_id": [f"i{i}" for i in range(40)],
                        "title": [f"Movie {i}" for i in range(40)], "categories": ["Drama"] * 40})
    q = pd.DataFrame({"source": ["mem"] * 3, "row": [11, 12, 13], "field": ["rating", "rating", "ts"],
                      "reason": ["out of range", "out of range", "not a time"], "raw": ["x", "y", "z"]})
    return LoadedEvents("mem", "csv", df, cat, q, read=len(df) + 1 + 3, duplicates=1)


def fill(ledger):
    ingest(tiny_log(), ledger, PartitionRule(k=2), progress=False)
    enc, cfg = HashEncoder(ENCODER_ID, dim=4), EncodeConfig(batch_size=1)
    run_encode(ledger, ScriptLLM(fail_on="Movie 30"), enc, cfg, progress=False)  # b fails once
    run_encode(ledger, ScriptLLM(), enc, cfg, progress=False)  # and is retried
    return ledger


@pytest.fixture
def tiny(ledger):
    return fill(ledger)


CARD_METRICS = {"validation": {"auc": 0.61, "gauc": 0.55, "logloss": 0.68, "samples": 32},
                "test": {"auc": 0.7125, "gauc": 0.6, "logloss": 0.59, "samples": 34}, "best_epoch": 2,
                "samples": {"label_rule": "rating >= 4"}}


def write_inputs(tmp: Path) -> dict[str, Path]:
    row = {"seeds": 3, "auc_std": 0.002, "gauc_mean": 0.6, "logloss_mean": 0.62, "auc_rel_change_pct": 0.0,
           "by_partitions": {"0": {"samples": 9, "auc": 0.66}, "1+": {"samples": 30, "auc": 0.72}}}
    (tmp / "evaluation.json").write_text(json.dumps({"header": {"dataset": "tiny", "split": "80/10/10"},
        "summary": [{**row, "backbone": "din", "variant": "none", "auc_mean": 0.70},
                    {**row, "backbone": "din", "variant": "both", "auc_mean": 0.72}], "runs": []}))
    (tmp / "bench").mkdir()
    (tmp / "bench" / "bench_online.json").write_text(json.dumps({"created_at": "2026-11-26", "rows": [
        {"variant": "a  Feast get_online_features", "p50_ms": 1.0, "p99_ms": 2.0},
        {"variant": "b  liber fast fetch", "p50_ms": 0.25, "p99_ms": 0.6}]}))
    (tmp / "model").mkdir()
    ModelCard(backbone="din", liber="both", inputs=[], outputs=[], opset=17, memory_slots=8, vector_dim=4,
              history_length=50, item_vocab={}, user_vocab={}, item_vectors="items.npy",
              feature_service="liber_ranker_v1", prompt_version="p1", llm_id=ScriptLLM.llm_id,
              text_encoder_id=ENCODER_ID, encoder_version="0123456789ab", metrics=CARD_METRICS,
              train_time_range=[], train_config={}, created_at="2026-11-26T00:00:00+00:00").save(tmp / "model")
    return {"evaluation": tmp / "evaluation.json", "bench_dir": tmp / "bench", "model_dir": tmp / "model"}


def test_report_has_every_section_image_and_escapes_llm_text(tiny, tmp_path):
    rd = gather(tiny, repo=tmp_path / "no-repo", users=None, **write_inputs(tmp_path))
    assert rd.data == {"events_accepted": 10, "duplicates": 1, "quarantined": 3, "users": 3,
                       "partitions_sealed": 4, "events_in_caches": 2, "ingest_runs": 1}
    assert rd.top_reasons == [("rating", "out of range", 2), ("ts", "not a time", 1)]
    assert rd.partitions_per_user.tolist() == [0, 1, 3]
    assert {k: rd.cost[k] for k in ("summaries", "shifts", "failed_tries", "retried", "still_failed",
                                    "llm_calls", "naive_calls", "prompt_tokens", "completion_tokens",
                                    "partitions_done", "encode_runs", "encode_runs_failed")} == {
        "summaries": 4, "shifts": 2, "failed_tries": 1, "retried": 1, "still_failed": 0, "llm_calls": 6,
        "naive_calls": 8, "prompt_tokens": 60, "completion_tokens": 18, "partitions_done": 4,
        "encode_runs": 2, "encode_runs_failed": 0}
    assert rd.coverage == {"sealed": 4, "encoded": 4, "online": None, "users_online": None}
    assert len(rd.encoded_age_s) == 2 and rd.online_age_s is None
    assert [(t.user_id, t.partitions, [r["seq"] for r in t.rows]) for t in rd.timelines] == [
        ("a", 3, [0, 1, 2]), ("b", 1, [0])]
    assert set(rd.notes) == {"online"} and "no Feast repo at" in rd.notes["online"]

    out = tmp_path / "report"
    assert write_report(rd, out)["images"] == 8
    page = (out / "index.html").read_text()
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page
    assert page.count('<p class="caption">Look for: ') == 5
    srcs = set(re.findall(r'<img src="([^"]+)"', page))
    assert srcs == ALL_IMAGES and all((out / s).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for s in srcs)
    assert "<script" not in page.lower()  # the LLM's markup is shown, never executed
    # Jinja's autoescape (markupsafe) writes ' as &#39;: the exact text, so a lost escape fails here.
    assert page.count("<td class=text>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; summary &amp; more</td>") == 4
    assert page.count("<td class=text>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; shift &amp; more</td>") == 2
    assert "First period: there are no earlier interests to compare with." in page
    assert "0123456789ab" in page  # the card's encoder_version
    assert "<tr><td>b  liber fast fetch</td><td class=num>0.250</td><td class=num>0.600</td></tr>" in page
    # naive: the 8 events of the 4 encoded partitions (a: 3 × 2, b: 1 × 2), not the 10 accepted
    # (2 wait in caches); LIBER: 4 summaries + 2 shifts.
    assert "<tr><th>LIBER vs naive</th><td class=num>1.3× fewer</td></tr>" in page
    assert rd.cost["domains"] == "movies"
    assert "<tr><th>prompt domain of the encode runs (newest first)</th><td class=num>movies</td></tr>" in page
    # the model card's own metrics, as liber train wrote them
    assert ("<tr><td>validation</td><td class=num>0.610</td><td class=num>0.550</td><td class=num>0.680</td>"
            "<td class=num>32</td></tr>") in page
    assert ("<tr><td>test</td><td class=num>0.713</td><td class=num>0.600</td><td class=num>0.590</td>"
            "<td class=num>34</td></tr>") in page
    assert "best epoch 2; label rule rating &gt;= 4</p>" in page
    assert "<tr><th>partitions sealed / encoded / online</th><td class=num>4 / 4 / n/a</td></tr>" in page
    assert "<h3>user a — all 3 partitions</h3>" in page
    assert "<tr><td class=num>0</td><td>2017-07-15 02:40</td><td class=num>2</td>" in page
    # evaluation.json's header has no created_at: the page says so instead of a blank or "None".
    assert '<p class="meta">tiny; split 80/10/10; created —</p>' in page
    assert '<p class="meta">bench_online.json: 2026-11-26, ? requests per variant, model ?</p>' in page
    assert "<tr><th>created</th><td class=num>2026-11-26T00:00:00+00:00</td></tr>" in page


def test_missing_parts_are_stated_not_crashes(tiny, tmp_path):
    rd = gather(tiny, repo=None, model_dir=None, evaluation=tmp_path / "none.json",
                bench_dir=None, users=["b", "zz"])
    assert sorted(rd.notes) == ["bench", "evaluation", "model", "online"]
    assert [(t.user_id, t.partitions) for t in rd.timelines] == [("b", 1), ("zz", 0)]
    out = tmp_path / "r"
    write_report(rd, out)
    page = (out / "index.html").read_text()
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page
    assert set(re.findall(r'<img src="([^"]+)"', page)) == ALL_IMAGES - {
        "evaluation_auc.png", "auc_by_partitions.png", "serving_latency.png"}
    assert rd.notes["bench"] == "no online benchmark (bench/bench_online.py): no file given"
    assert rd.notes["model"] == "no model card: no model folder given (liber train + liber export)"
    for text in ("no Feast repo given (--repo): online figures not shown",
                 f"no evaluation (liber evaluate) at {tmp_path / 'none.json'}",
                 rd.notes["bench"], rd.notes["model"]):
        assert f'<p class="note">{escape(text)}</p>' in page
    assert "<h3>user zz — all 0 partitions</h3>" in page
    assert "None" not in page  # neither "at None" nor a None time


def escape(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))


def test_missing_times_read_as_a_dash_not_none():
    """The page once read "created None" / "at None": a time not recorded is shown as "—"."""
    assert when(None) == when("") == "—"
    assert when(1_500_000_000_000_000) == "2017-07-14 02:40" and when("2026-11-26") == "2026-11-26"
    rd = ReportData(
        generated_us=1_500_000_000_000_000, ledger_url="sqlite:///x.db", top_reasons=[],
        data=dict.fromkeys(("events_accepted", "duplicates", "quarantined", "users", "partitions_sealed",
                            "events_in_caches", "ingest_runs"), 0),
        partitions_per_user=np.zeros(0, np.int64), seal_times_us=np.zeros(0, np.int64),
        cost={"domains": "none", "summaries": 0, "shifts": 0, "llm_calls": 0, "failed_tries": 0, "retried": 0,
              "still_failed": 0,
              "naive_calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "seconds_llm": 0.0,
              "seconds_per_partition": None, "encode_runs": 0, "encode_runs_failed": 0},
        coverage={"sealed": 0, "encoded": 0, "online": None, "users_online": None},
        encoded_age_s=np.zeros(0), online_age_s=None,
        timelines=[Timeline("u<1>", 2, [{"seq": 1, "sealed_at_us": None, "n_events": 3, "status": None,
                                         "summary": None, "shift": None}])],
        evaluation={"header": {"dataset": "d", "split": "s", "created_at": None}, "summary": []},
        bench_online={"rows": []})
    page = render(rd, {})
    assert '<p class=meta>ledger sqlite:///x.db · generated 2017-07-14 02:40 UTC</p>' in page
    assert '<p class="meta">d; split s; created —</p>' in page
    assert '<p class="meta">bench_online.json: —, ? requests per variant, model ?</p>' in page
    assert "<h3>user u&lt;1&gt; — newest 1 of 2 partitions</h3>" in page
    assert ("<tr><td class=num>1</td><td>—</td><td class=num>3</td>\n<td class=text>not encoded yet</td>\n"
            "<td class=text></td></tr>") in page
    assert "<tr><th>LIBER vs naive</th><td class=num>n/a</td></tr>" in page
    assert "None" not in page


def test_cli_report_and_empty_ledger_error(tmp_path):
    from liber_features.ledger.store import Ledger

    tiny = fill(Ledger(f"sqlite:///{tmp_path / 'ledger.db'}"))
    paths = write_inputs(tmp_path)
    res = CliRunner().invoke(cli, ["report", "--ledger", tiny.url, "--no-online", "--out", str(tmp_path / "o"),
                                   "--model", str(paths["model_dir"]), "--evaluation", str(paths["evaluation"]),
                                   "--bench", str(paths["bench_dir"]), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["images"] == 8 and summary["missing"].startswith("no Feast repo given")
    missing = CliRunner().invoke(cli, ["report", "--ledger", f"sqlite:///{tmp_path / 'empty.db'}",
                                       "--out", str(tmp_path / "e")])
    assert missing.exit_code == 2 and f"no ledger at {tmp_path / 'empty.db'}" in missing.output
    Ledger(f"sqlite:///{tmp_path / 'empty.db'}")  # created, and empty
    empty = CliRunner().invoke(cli, ["report", "--ledger", f"sqlite:///{tmp_path / 'empty.db'}",
                                     "--out", str(tmp_path / "e")])
    assert empty.exit_code == 2 and "holds no events: run `liber ingest` first" in empty.output


def test_duplicates_are_shown_per_run_as_each_run_skipped_them(ledger, tmp_path):
    first = ingest(tiny_log(), ledger, PartitionRule(k=2), progress=False)
    again = ingest(tiny_log(), ledger, PartitionRule(k=2), progress=False)  # every event already held
    assert (first.duplicates, again.duplicates) == (1, 11)  # 1 repeated in the file; then 10 + 1
    rd = gather(ledger, repo=None, model_dir=None, evaluation=None, bench_dir=None)
    assert [{k: r[k] for k in ("run_id", "kind", "status", "source", "read", "accepted", "duplicates",
                               "quarantined")} for r in rd.intake_runs] == [
        {"run_id": first.run_id, "kind": "ingest", "status": "ok", "source": "mem", "read": 14, "accepted": 10,
         "duplicates": 1, "quarantined": 3},
        {"run_id": again.run_id, "kind": "ingest", "status": "ok", "source": "mem", "read": 14, "accepted": 0,
         "duplicates": 11, "quarantined": 3}]
    assert rd.data["duplicates"] == 12  # the total still shown above the table
    write_report(rd, tmp_path / "r")
    page = (tmp_path / "r" / "index.html").read_text()
    started = when(rd.intake_runs[1]["started_us"])
    assert (f"<tr><td>{again.run_id}</td><td>ingest</td><td>ok</td><td>{started}</td><td>mem</td>"
            "<td class=num>14</td><td class=num>0</td><td class=num>11</td><td class=num>3</td></tr>") in page


def test_default_timelines_are_of_encoded_users_in_a_set_order(ledger):
    ingest(tiny_log(), ledger, PartitionRule(k=2), progress=False)
    enc, cfg = HashEncoder(ENCODER_ID, dim=4), EncodeConfig(batch_size=1, users=["b"])
    run_encode(ledger, ScriptLLM(), enc, cfg, progress=False)
    # a has 3 sealed partitions, b 1; only b's is encoded: b alone is shown, not the most active.
    rd = gather(ledger, repo=None, model_dir=None, evaluation=None, bench_dir=None)
    assert [(t.user_id, t.partitions, [r["status"] for r in t.rows]) for t in rd.timelines] == [("b", 1, ["done"])]
    # the order: most encoded partitions, then most sealed, then id; the first n_users
    encoded = {"x": [1, 2], "y": [1, 2], "z": [1]}
    sealed = {"w": 20, "x": 2, "y": 5, "z": 9}
    assert default_timeline_users(encoded, sealed, 3) == ["y", "x", "z"]
    assert default_timeline_users(encoded, sealed, 2) == ["y", "x"]
    assert default_timeline_users({}, sealed, 2) == ["w", "z"]  # nobody encoded yet: the most sealed


def test_cli_report_reads_no_evaluation_or_benchmark_unless_given(tmp_path, monkeypatch):
    """A checkout's docs/evaluation.json and bench/results/ sit in the working directory: the report
    of another ledger must not show them as its own."""
    from liber_features.ledger.store import Ledger

    ledger = fill(Ledger(f"sqlite:///{tmp_path / 'ledger.db'}"))
    paths = write_inputs(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "evaluation.json").write_text(paths["evaluation"].read_text())
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "bench_online.json").write_text(
        (paths["bench_dir"] / "bench_online.json").read_text())
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["report", "--ledger", ledger.url, "--no-online", "--model", "none",
                                   "--out", "o", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert (summary["ledger"], summary["repo"], summary["images"]) == (ledger.url, "not read (--no-online)", 5)
    assert summary["missing"] == ("no Feast repo given (--repo): online figures not shown; "
                                  "no evaluation (liber evaluate): no file given; "
                                  "no online benchmark (bench/bench_online.py): no file given; "
                                  "no model card at none (liber train + liber export)")
    page = (tmp_path / "o" / "index.html").read_text()
    assert "liber fast fetch" not in page and '<p class="meta">tiny; split' not in page


@pytest.mark.slow  # Feast import + apply: ~15 s here
def test_online_figures_are_read_through_feast(tmp_path, monkeypatch):
    """Encoded 4, online 3 (user a's newest partition not yet written): the lag shows."""
    from feastrepo import Repo

    from liber_features.features.memory import memory_table, to_frame, write_memory_table
    from liber_features.features.online import write_online
    from liber_features.features.repo import LONG_TERM_VIEW, data_file
    from liber_features.ledger.store import Ledger

    monkeypatch.setenv("LIBER_VECTOR_DIM", "4")
    ledger = fill(Ledger(f"sqlite:///{tmp_path / 'ledger.db'}"))
    table = memory_table(ledger, memory_slots=8, vector_dim=4)
    (tmp_path / "repo").mkdir()
    repo = Repo(tmp_path / "repo", "sqlite")
    write_memory_table(table, data_file(f"{LONG_TERM_VIEW}.parquet", repo_dir=repo.root), ledger)
    store = repo.apply()
    df = to_frame(table)
    assert write_online(store, LONG_TERM_VIEW, df[df.partition_count < 3]) == 2
    rd = gather(ledger, repo=repo.root, model_dir=None, evaluation=None, bench_dir=None)
    assert "online" not in rd.notes
    assert rd.coverage == {"sealed": 4, "encoded": 4, "online": 3, "users_online": 2}
    assert list(rd.online_versions.values()) == [2] and len(rd.online_age_s) == 2
    write_report(rd, tmp_path / "out")
    page = (tmp_path / "out" / "index.html").read_text()
    assert "4 / 4 / 3" in page and "encoder_version online" in page
