"""The ``liber`` entry point: a missing MovieLens download explained, library deprecation noise hidden,
an unexpected error one line (the traceback only with --debug), bad option values click's usage errors."""

from __future__ import annotations

import io
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from liber_features.cli import main as cli_mod
from liber_features.cli.common import IdList, RatingRange, SinceTime
from liber_features.cli.main import cli


def test_demo_without_movielens_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LIBER_ML_LATEST_SMALL", str(tmp_path / "nowhere"))
    res = CliRunner().invoke(cli, ["demo", "--workdir", str(tmp_path / "w"), "--repo", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert res.output == (
        f"error: MovieLens data not found ({tmp_path / 'nowhere'}: no such file or directory). The demo "
        "needs ml-latest-small: download ml-latest-small.zip from "
        "https://grouplens.org/datasets/movielens/latest/, unzip it, and point the demo at the folder "
        "holding ratings.csv and movies.csv with --data DIR or LIBER_ML_LATEST_SMALL=DIR\n")
    assert not (tmp_path / "w").exists()  # nothing was written before the check


def test_demo_data_flag_pointing_at_an_empty_folder(tmp_path):
    res = CliRunner().invoke(cli, ["demo", "--data", str(tmp_path), "--workdir", str(tmp_path / "w")])
    assert res.exit_code == 2
    assert res.output.startswith(f"error: MovieLens data not found ({tmp_path}: unknown directory layout")


def test_library_deprecations_are_hidden_ours_and_others_shown(monkeypatch):
    shown = io.StringIO()
    monkeypatch.setattr(warnings, "showwarning",
                        lambda m, c, f, n, file=None, line=None: shown.write(f"{c.__name__}:{m}\n"))
    cli_mod.quiet_library_warnings()
    lib = str(Path(cli_mod._LIBRARY_DIRS[0]) / "ibis" / "backends" / "duckdb" / "__init__.py")
    ours = str(Path(cli_mod.__file__))
    for message, category, filename in [("ibis noise", DeprecationWarning, lib),
                                        ("future noise", FutureWarning, lib),
                                        ("a real problem", UserWarning, lib),
                                        ("we call a deprecated API", DeprecationWarning, ours)]:
        warnings.showwarning(message, category, filename, 1)
    assert shown.getvalue() == "UserWarning:a real problem\nDeprecationWarning:we call a deprecated API\n"


# --- an unexpected error: one line and exit 1; the traceback only on request ---------------------


def broken_ledger(*_args, **_kwargs):
    raise RuntimeError("cannot reach postgresql+psycopg://liber:hunter2@db:5432/x: the disk is on fire")


# Not a SQLite file, so the missing-ledger check (cli/common.require_ledger) lets it through.
BROKEN_URL = "postgresql+psycopg://liber:hunter2@db:5432/x"
ERROR_LINE = ("error: RuntimeError: cannot reach postgresql+psycopg://liber:***@db:5432/x: "
              "the disk is on fire\n")


def test_an_unexpected_error_is_one_line_and_exit_1(monkeypatch):
    import liber_features.ledger.store as store

    monkeypatch.delenv("LIBER_DEBUG", raising=False)
    monkeypatch.setattr(store, "Ledger", broken_ledger)  # `liber status` builds a Ledger first
    res = CliRunner().invoke(cli, ["status", "--ledger", BROKEN_URL])
    assert res.exit_code == 1
    assert res.stderr == ERROR_LINE
    assert res.stdout == ""
    assert "Traceback" not in res.output
    assert "hunter2" not in res.output


@pytest.mark.parametrize("args, env", [(["--debug", "status", "--ledger", "postgresql+psycopg://db/x"], {}),
                                       (["status", "--ledger", "postgresql+psycopg://db/x"], {"LIBER_DEBUG": "1"})])
def test_debug_shows_the_traceback(monkeypatch, args, env):
    import liber_features.ledger.store as store

    monkeypatch.setattr(store, "Ledger", broken_ledger)
    res = CliRunner().invoke(cli, args, env=env)
    assert res.exit_code == 1
    assert res.stderr.startswith("Traceback (most recent call last):\n")
    assert 'in broken_ledger\n    raise RuntimeError("cannot reach' in res.stderr
    assert res.stderr.endswith("\n" + ERROR_LINE)
    assert "hunter2" not in res.stderr


def test_a_liber_error_stays_one_line_with_exit_2_even_with_debug(tmp_path, monkeypatch):
    monkeypatch.setenv("LIBER_ML_LATEST_SMALL", str(tmp_path / "nowhere"))
    res = CliRunner().invoke(cli, ["--debug", "demo", "--workdir", str(tmp_path / "w")])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: MovieLens data not found (")
    assert len(res.stderr.splitlines()) == 1


def test_a_bad_setting_is_one_config_error(monkeypatch):
    monkeypatch.delenv("LIBER_LEDGER_URL", raising=False)
    res = CliRunner().invoke(cli, ["status"], env={"LIBER_MEMORY_SLOTS": "abc"})
    assert res.exit_code == 2
    assert res.stderr == ("error: bad setting LIBER_MEMORY_SLOTS='abc': Input should be a valid integer, "
                          "unable to parse string as an integer\n")


# --- click parameter types: a bad value is click's usage error (exit 2) naming the option ---------


@pytest.mark.parametrize("command", [["push-caches"], ["encode"], ["demo"], ["report"]])
@pytest.mark.parametrize("value", ["", " , ,"])
def test_users_without_ids_is_a_usage_error(command, value):
    res = CliRunner().invoke(cli, [*command, "--users", value])
    assert res.exit_code == 2
    assert res.stderr.endswith(f"Error: Invalid value for '--users': expected comma-separated ids, "
                               f"got {value!r}\n")


def test_users_reach_the_command_as_a_list(tmp_path, monkeypatch):
    import liber_features.cli.demo as demo_mod

    seen = []
    monkeypatch.setattr(demo_mod, "run_demo", lambda **kw: seen.append(kw) or {"ok": 1})
    monkeypatch.setenv("LIBER_ML_LATEST_SMALL", str(tmp_path / "ml"))
    runner = CliRunner()
    assert runner.invoke(cli, ["demo", "--json", "--users", " 5, 8,,9 "]).stdout == '{"ok": 1}\n'
    assert runner.invoke(cli, ["demo", "--json"]).exit_code == 0
    assert [kw["users"] for kw in seen] == [["5", "8", "9"], ["5", "8", "9"]]
    assert seen[0]["data"] == tmp_path / "ml"  # LIBER_ML_LATEST_SMALL, through the settings


def test_id_list_type():
    assert IdList().convert(" 5, 8,,9 ", None, None) == ["5", "8", "9"]
    assert IdList().convert("u1", None, None) == ["u1"]


@pytest.mark.parametrize("value", ["abc", "1", "1,2,3", "5,0.5", "3,3", "nan,5"])
def test_a_bad_rating_range_is_a_usage_error(tmp_path, value):
    res = CliRunner().invoke(cli, ["ingest", "--events", str(tmp_path), "--rating-range", value])
    assert res.exit_code == 2
    assert "Error: Invalid value for '--rating-range': " in res.stderr
    assert res.stderr.endswith(f"got {value!r}\n")


def test_rating_range_type():
    assert RatingRange().convert("0.5, 5", None, None) == (0.5, 5.0)
    assert RatingRange().convert("-1,1", None, None) == (-1.0, 1.0)


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01", "6 weeks", "-2h"])
def test_a_bad_late_since_is_a_usage_error(value):
    res = CliRunner().invoke(cli, ["materialize", "--late-since", value])
    assert res.exit_code == 2
    assert res.stderr.endswith("Error: Invalid value for '--late-since': expected an ISO-8601 time "
                               f"(2026-01-31T12:00:00Z) or a duration (15m, 6h, 2d), got {value!r}\n")


def test_late_since_type():
    t = SinceTime()
    assert t.convert("2026-01-31T12:00:00", None, None) == datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert t.convert("2026-01-31T13:30:00+01:30", None, None) == datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert t.convert("2026-01-31T12:00:00Z", None, None) == datetime(2026, 1, 31, 12, tzinfo=UTC)
    for text, back in [("6h", timedelta(hours=6)), ("2d", timedelta(days=2)), ("90s", timedelta(seconds=90)),
                       ("1.5m", timedelta(seconds=90))]:
        before = datetime.now(UTC)
        got = t.convert(text, None, None)
        after = datetime.now(UTC)
        assert before - back <= got <= after - back, text
