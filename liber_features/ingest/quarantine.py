"""Row checks that end in a quarantine frame: the first failing check per row wins.

Quarantine frame (one row per rejected input row, in row order)::

    source str (file path) | row int64 | field str | reason str | raw str (the input row as JSON)

``reason`` is capped at ``REASON_CHARS`` and ``raw`` at ``RAW_CHARS`` characters (each cell is cut
before the row is serialised, so ``raw`` stays valid JSON). A row the reader could not split or
decode (``delimited.Delimited.problems``) stores its line, ``{"line": …}``, as ``raw``.
"""

from __future__ import annotations

import json

import pandas as pd

from liber_features.ledger.fieldrules import RAW_CHARS, REASON_CHARS, cap_text, show

__all__ = ["QUARANTINE_COLUMNS", "RowChecks"]

QUARANTINE_COLUMNS = ("source", "row", "field", "reason", "raw")


class RowChecks:
    """Accumulates the first failing check per row (field + reason)."""

    def __init__(self, index: pd.Index) -> None:
        self.field = pd.Series(None, index=index, dtype=object)
        self.reason = pd.Series(None, index=index, dtype=object)
        self.raw_override: dict[int, str] = {}

    @property
    def ok(self) -> pd.Series:
        return self.reason.isna()

    def fail(self, mask: pd.Series, field: str, reason: str, values: pd.Series | None = None) -> None:
        """Mark the rows of ``mask`` that no earlier check failed; ``reason`` is a template whose
        ``{}`` takes the row's entry of ``values`` (formatted for the failing rows only; text is
        quoted through ``fieldrules.show``: control characters escaped, capped)."""
        new = mask & self.reason.isna()
        if not new.any():
            return
        self.field[new] = field
        if values is None:
            self.reason[new] = cap_text(reason, REASON_CHARS)
        else:
            self.reason[new] = [cap_text(reason.format(show(v) if isinstance(v, str) else v),
                                         REASON_CHARS) for v in values[new].tolist()]  # fmt: skip

    def fail_rows(self, problems: pd.DataFrame, field_of: dict[str, str]) -> None:
        """Quarantine the rows a reader could not read cleanly (``Delimited.problems``);
        ``field_of`` maps source columns to canonical field names (else the column's name)."""
        for row, column, reason, line in problems.itertuples(index=False, name=None):
            if self.reason.at[row] is None or pd.isna(self.reason.at[row]):
                self.field.at[row] = field_of.get(column, column) if column is not None else "row"
                self.reason.at[row] = cap_text(reason, REASON_CHARS)
                self.raw_override[int(row)] = json.dumps({"line": line}, ensure_ascii=False)

    def frame(self, raw: pd.DataFrame, source: str) -> pd.DataFrame:
        bad = self.reason.notna()
        rows = raw[bad]
        raw_json = pd.Series(self.raw_override, dtype=object).reindex(rows.index)
        # Rows the reader could not decode store their line instead: their cells may hold
        # undecodable bytes that no JSON encoder accepts.
        cells = rows[raw_json.isna()]
        if len(cells):
            # Cut each cell before serialising: the JSON stays parseable and bounded.
            per_cell = max(RAW_CHARS // max(len(raw.columns), 1) - 8, 16)
            cells = cells.apply(lambda col: col.map(
                lambda v: cap_text(v, per_cell) if isinstance(v, str) else v))
            # to_json is vectorised and turns NaN into null and timestamps into ISO text; JSON
            # escapes newlines and NUL inside values, so one line per row.
            text = cells.to_json(orient="records", lines=True, force_ascii=False,
                                 date_format="iso", date_unit="us")  # fmt: skip
            raw_json[cells.index] = text.split("\n")[: len(cells)]
        return pd.DataFrame({
            "source": pd.Series(source, index=rows.index, dtype=object),
            "row": rows.index.to_numpy(dtype="int64"),
            "field": self.field[bad], "reason": self.reason[bad],
            "raw": raw_json.map(lambda t: cap_text(t, RAW_CHARS)),
        }).reset_index(drop=True)  # fmt: skip
