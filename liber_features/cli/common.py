"""What every ``liber`` command module shares: the summary printer and the ledger options.

Its own module (not ``cli.py``) so that the command modules ``cli.py`` registers can import it
without importing ``cli.py`` back — which breaks ``python -m liber_features.cli.main``.
"""

from __future__ import annotations

import json
from typing import Any

import click

__all__ = ["emit", "ledger_option", "schema_option"]


def emit(summary: dict[str, Any], as_json: bool, title: str) -> None:
    """Print a summary: aligned lines for people, one JSON line for machines."""
    if as_json:
        click.echo(json.dumps(summary, default=str, sort_keys=True))
        return
    click.echo(title)
    for key, value in summary.items():
        if not isinstance(value, dict):
            click.echo(f"  {key:<22} {value}")


ledger_option = click.option(
    "--ledger", "ledger_url", envvar="LIBER_LEDGER_URL", default=None,
    help="SQLAlchemy URL of the ledger [env LIBER_LEDGER_URL; default sqlite:///.liber/ledger.db]")
schema_option = click.option(
    "--ledger-schema", envvar="LIBER_LEDGER_SCHEMA", default=None,
    help="PostgreSQL schema holding the ledger tables [env LIBER_LEDGER_SCHEMA]")
