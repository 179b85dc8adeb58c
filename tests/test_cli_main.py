"""The ``liber`` entry point: a missing MovieLens download explained, library deprecation noise hidden."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from click.testing import CliRunner

from liber_features.cli import main as cli_mod
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
