"""``liber quarantine``: the rows ``liber ingest`` set aside, readable without ``sqlite3``.

Each row is shown where it is in its file — the 1-based line (header = line 1), or ``row N`` for
Parquet — and under the input's own column name (``timestamp``, not the ledger's ``ts``):
``ingest.provenance`` turns the ledger's stable keys back into the input's terms. ``--json``
prints one object, ``--csv PATH`` writes one line per row (UTF-8, with a header).
"""

from __future__ import annotations

import csv
import json
from typing import Any

import click

from liber_features.cli.common import ledger_option, open_ledger, schema_option

__all__ = ["COMMANDS", "CSV_COLUMNS", "quarantined_rows"]

#: the columns of ``--csv`` and the keys of each ``--json`` row, in this order.
CSV_COLUMNS = ("source", "line", "row", "column", "field", "reason", "raw", "run_id")


def quarantined_rows(ledger, limit: int | None = None) -> tuple[int, list[dict[str, Any]]]:
    """(how many rows the ledger holds in quarantine, the first ``limit`` of them in ingest order)."""
    from sqlalchemy import func, select

    from liber_features.ingest.provenance import Provenance
    from liber_features.ledger.store import quarantine

    q = quarantine.c
    stmt = select(q.run_id, q.source, q.row, q.field, q.reason, q.raw).order_by(q.id)
    with ledger.engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(quarantine)).scalar_one()
        rows = conn.execute(stmt if limit is None else stmt.limit(limit)).all()
    where = Provenance()
    out = []
    for r in rows:
        pos = where.position(r.source, r.row)
        out.append({"source": r.source, "line": pos.line, "row": pos.row,
                    "column": where.column(r.source, r.field, r.raw), "field": r.field,
                    "reason": r.reason, "raw": r.raw, "run_id": r.run_id})
    return total, out


@click.command("quarantine")
@ledger_option
@schema_option
@click.option("--limit", type=click.IntRange(min=1), default=None, help="only the first N rows (default: all)")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="write the rows to this CSV file instead of listing them")
@click.option("--json", "as_json", is_flag=True, help="print the rows as one JSON line")
def quarantine_cmd(ledger_url, ledger_schema, limit, csv_path, as_json) -> None:
    """List (or export) the rows ingest quarantined: file, line, column and reason.

    LINE is the file's own line number (header = line 1); a Parquet file has no lines, its rows
    are ROW N (first row = 1). COLUMN is the input's column name; a line that could not be read
    as a whole has none.
    """
    if csv_path and as_json:
        raise click.UsageError("--csv and --json are exclusive: --csv writes a file, --json prints")
    ledger = open_ledger(ledger_url, ledger_schema)
    total, rows = quarantined_rows(ledger, limit)
    if csv_path:
        import io

        from liber_features.features.files import atomic_write

        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        with atomic_write(csv_path) as f:
            f.write(text.getvalue().encode("utf-8"))
        click.echo(f"wrote {len(rows)} of {total} quarantined rows of ledger {ledger.safe_url()} to {csv_path}")
        return
    if as_json:
        click.echo(json.dumps({"ledger": ledger.safe_url(), "total": total, "rows": rows}, sort_keys=True))
        return
    click.echo(f"{total} quarantined rows in ledger {ledger.safe_url()}"
               + (f" (showing {len(rows)})" if len(rows) < total else ""))
    for r in rows:
        where = f"line {r['line']}" if r["line"] is not None else f"row {r['row']}"
        column = r["column"] if r["column"] is not None else "(whole line)"
        click.echo(f"  {r['source']}:{where}  {column}: {r['reason']}")
        click.echo(f"      {r['raw']}")


COMMANDS = [quarantine_cmd]
