"""Where a quarantined row came from, in the input's own terms: its file line and column name.

The ledger's ``quarantine`` table keeps ``row``, the 0-based *data* row of the source (the header
and blank lines not counted, see ``delimited``), and ``field``, the canonical name (``ts``,
``item_id``, …) — stable keys, but not what a person finds in the file: line 102 of a CSV with a
header was ``row 100`` and its ``timestamp`` column ``ts``. This module turns them back:

* a text file's data row → its 1-based physical line (header = line 1). The file is read again,
  when it is still there, to skip the blank lines the reader skipped; GroupLens ``u.data``,
  ``ratings.dat``, ``u.item`` and ``movies.dat`` have no header line. A file no longer at its
  path is assumed to have no blank lines.
* a Parquet row has no line: it is ``row N``, counted from 1 like lines.
* a canonical field → the input's column: the first of its accepted names (``events.PLAIN_ALIASES``
  and the GroupLens headers) present in the row's stored ``raw`` cells, else in the file's header,
  else the plain layout's name. ``row`` (the line as a whole) has no column: None.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from liber_features.ingest.events import PLAIN_ALIASES

__all__ = ["HEADERLESS_FILES", "InputPosition", "Provenance"]

#: GroupLens files without a header line, and the column names the loaders give them.
HEADERLESS_FILES = {
    "u.data": ("user_id", "item_id", "rating", "timestamp"),
    "ratings.dat": ("UserID", "MovieID", "Rating", "Timestamp"),
    "u.item": ("item_id", "title"),
    "movies.dat": ("MovieID", "Title", "Genres"),
}
#: canonical field → the names an input may give it, plain names first.
_NAMES = {**PLAIN_ALIASES, "title": ("title",), "categories": ("categories",)}
_GROUPLENS = {"user_id": ("userId", "UserID"), "item_id": ("movieId", "MovieID"), "ts": ("Timestamp",),
              "rating": ("Rating",), "title": ("Title",), "categories": ("genres", "Genres")}  # fmt: skip


@dataclass(frozen=True)
class InputPosition:
    """A quarantined row's place in its file: ``line`` for text files, else ``row`` (Parquet)."""

    line: int | None
    row: int | None

    def __str__(self) -> str:
        return f"line {self.line}" if self.line is not None else f"row {self.row}"


class Provenance:
    """Positions and column names of quarantined rows; each source file is read at most once."""

    def __init__(self) -> None:
        self._lines: dict[str, tuple[int, ...] | None] = {}
        self._headers: dict[str, tuple[str, ...]] = {}

    def position(self, source: str, row: int) -> InputPosition:
        """The file line (or Parquet row) of data row ``row`` of ``source`` (both 1-based)."""
        path = Path(source)
        if path.suffix == ".parquet":
            return InputPosition(line=None, row=row + 1)
        header = 0 if path.name in HEADERLESS_FILES else 1
        if source not in self._lines:
            self._lines[source] = _filled_lines(path)
        lines, index = self._lines[source], row + header
        if lines is not None and index < len(lines):
            return InputPosition(line=lines[index], row=None)
        return InputPosition(line=index + 1, row=None)

    def column(self, source: str, field: str, raw: str) -> str | None:
        """The input's name for the canonical ``field`` of a quarantined row (None: the whole line)."""
        if field == "row":
            return None
        candidates = (*_NAMES.get(field, (field,)), *_GROUPLENS.get(field, ()))
        try:
            cells = json.loads(raw)
        except ValueError:
            cells = None
        if isinstance(cells, dict) and "line" not in cells:
            present = set(cells)
        else:  # the reader stored the line, not cells: ask the file
            if source not in self._headers:
                self._headers[source] = _header(Path(source))
            present = set(self._headers[source])
        return next((name for name in candidates if name in present), candidates[0])


def _filled_lines(path: Path) -> tuple[int, ...] | None:
    """1-based numbers of the non-blank lines of a text file (None: not readable any more).

    Blank means empty once the line end is removed, split as ``delimited`` splits (``\\n``,
    ``\\r\\n``, ``\\r``): the lines its reader skips without counting.
    """
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return tuple(i for i, line in enumerate(data.splitlines(), 1) if line)


def _header(path: Path) -> tuple[str, ...]:
    """The column names of ``path``: a GroupLens file's given names, else its first filled line."""
    if path.name in HEADERLESS_FILES:
        return HEADERLESS_FILES[path.name]
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            return tuple(pq.read_schema(path).names)
        except (OSError, ValueError):
            return ()
    try:
        with path.open(encoding="utf-8", errors="replace", newline="") as f:
            first = next((line for line in f if line.strip("\r\n")), "")
    except OSError:
        return ()
    return tuple(c.strip() for c in next(csv.reader([first.lstrip("\ufeff")]), []))
