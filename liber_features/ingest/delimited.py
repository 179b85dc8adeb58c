"""Tolerant reading of delimited text: one bad line is one bad row, never a lost file.

Real exports carry the odd corrupt line (a Latin-1 title in a UTF-8 file, a NUL byte, a line cut
short or run together with the next). A whole-file decoder fails on the first such byte with a
byte offset, losing every good row, so this reader works line by line:

* the file is split into physical lines on bytes (``\\n``, ``\\r\\n``, ``\\r``) and each line is
  decoded on its own: a line that is not valid ``encoding`` becomes a *problem* row whose reason
  names the byte, and the column holding it when the rest of the line parses;
* a NUL byte makes its row a problem (PostgreSQL cannot store it; pandas' parser silently cuts
  the value there);
* a record is one line: a quoted field may not contain a line break. A quote left open would
  otherwise swallow every following line into one field, so the lines of such a record are
  re-read one by one and only the line that opened the quote is a problem;
* a row with the wrong number of fields is a problem naming both counts.

A leading UTF-8 byte-order mark is dropped; blank lines are skipped and not counted. Problem rows
keep their place in the data-row numbering (``frame`` has a row for them, cells padded or cut to
the header's width), so row numbers match the file whatever goes wrong. Only an unreadable file,
an empty one, or an undecodable header raises ``InputError``.

Python's ``csv`` module does the splitting (pandas' C parser cannot report a bad line and go on),
about 3x slower than pandas. A file that provably has none of these problems (decodes cleanly, no
NUL, no quote character, every line with the header's number of separators) is read by pandas'
C parser instead, which then gives the same cells.
"""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from liber_features.errors import InputError
from liber_features.ledger.fieldrules import cap_text

__all__ = ["Delimited", "read_delimited"]

_BOM = b"\xef\xbb\xbf"
# Python's csv refuses fields over 128 KiB with an error that would end the whole read; an
# over-long field is a per-row problem for the validators instead.
csv.field_size_limit(sys.maxsize)


@dataclass
class Delimited:
    """A delimited file as text cells plus the rows that could not be read cleanly.

    ``frame``: every data row, str cells ('' when empty), index 0..n-1. ``problems``: one row per
    bad data row — ``row`` (int), ``column`` (the header name of the bad cell, or None when the
    line as a whole is bad), ``reason`` (str), ``line`` (the line as text; undecodable bytes as
    ``\\xNN`` escapes, capped).
    """

    frame: pd.DataFrame
    problems: pd.DataFrame


def read_delimited(
    path: Path,
    *,
    sep: str = ",",
    names: list[str] | None = None,
    encoding: str = "utf-8",
    quoted: bool = True,
    nrows: int | None = None,
) -> Delimited:
    """Read ``path`` (see the module docstring). ``names`` means the file has no header;
    ``quoted=False`` for GroupLens files (not CSV-quoted, titles contain '"'); ``nrows=0`` reads
    just the header."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    if len(sep) > 1:
        # csv takes one-character separators; '::' becomes the unit separator, which data never holds.
        data = data.replace(sep.encode(), b"\x1f")
        sep = "\x1f"
    lines = data.splitlines(keepends=True)
    if nrows is None:
        clean = _read_clean(data, lines, sep, names, encoding, quoted)
        if clean is not None:
            return Delimited(clean, pd.DataFrame({"row": pd.Series([], dtype="int64"), "column": [],
                                                  "reason": [], "line": []}))  # fmt: skip
    texts: list[str] = []  # decoded lines, as far as the reader has pulled them
    bad: dict[int, str] = {}  # line number → why it is bad

    def decoded():
        # Lazy, so that reading just the header (nrows=0) decodes one line, not the file.
        for i, line in enumerate(lines):
            try:
                texts.append(line.decode(encoding))
            except UnicodeDecodeError as exc:
                # surrogateescape keeps the bad bytes findable, so the reason can name their column.
                texts.append(line.decode(encoding, "surrogateescape"))
                bad[i] = f"invalid {encoding} byte 0x{line[exc.start]:02x}"
            else:
                if "\x00" in texts[-1]:
                    bad[i] = "NUL byte in the line"
            yield texts[-1]
    quoting = csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE
    header = list(names) if names else None
    rows: list[list[str]] = []
    problems: list[tuple[int, str | None, str, str]] = []

    def add(cells: list[str], span: range, reason: str | None = None) -> None:
        nonlocal header
        if not cells or cells == [""] and not texts[span[0]].strip():
            return  # a blank line
        reason = reason or next((bad[i] for i in span if i in bad), None)
        if header is None:
            if reason is not None:
                raise InputError(f"cannot read {path}: header line: {reason}")
            header = [c.strip() for c in cells]
            return
        column = None
        if reason is not None and reason.startswith("invalid "):
            column = next((header[j] for j, c in enumerate(cells[: len(header)])
                           if any("\udc80" <= ch <= "\udcff" for ch in c)), None)  # fmt: skip
            # No undecodable byte goes further than this reader: cells show it as '\xNN'.
            cells = [c.encode(encoding, "surrogateescape").decode(encoding, "backslashreplace")
                     for c in cells]  # fmt: skip
        elif reason is not None:
            column = next((header[j] for j, c in enumerate(cells[: len(header)]) if "\x00" in c), None)
        elif len(cells) != len(header):
            reason = f"expected {len(header)} fields, found {len(cells)}"
        if reason is not None:
            line = "".join(texts[i] for i in span).rstrip("\r\n")
            line = line.encode(encoding, "surrogateescape").decode(encoding, "backslashreplace")
            problems.append((len(rows), column, reason, cap_text(line.replace("\x00", "\\x00"), 2000)))
        rows.append((cells + [""] * len(header))[: len(header)])

    source = decoded()
    if nrows is None and b"\x00" not in data:
        try:  # the common case, a clean file: one comprehension instead of a generator step per line
            texts[:] = [line.decode(encoding) for line in lines]
            source = iter(texts)
        except UnicodeDecodeError:
            texts.clear()
    reader = csv.reader(source, delimiter=sep, quoting=quoting, strict=False)
    done = 0
    while nrows is None or header is None or len(rows) < nrows:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # not seen with strict=False; kept so a csv quirk costs one row
            add([""], range(done, max(reader.line_num, done + 1)), f"malformed line: {exc}")
            done = reader.line_num
            continue
        if header is not None and reader.line_num == done + 1 and len(cells) == len(header) \
                and done not in bad:
            rows.append(cells)  # the common case, without a call per row
            done += 1
            continue
        span = range(done, reader.line_num)
        done = reader.line_num
        if len(span) > 1:
            # A quote left open pulled in the next lines: the opener is the bad row, the others
            # are read again on their own.
            add(next(csv.reader([texts[span[0]]], delimiter=sep, quoting=quoting, strict=False), []),
                span[:1], "unterminated quoted field")
            for i in span[1:]:
                add(next(csv.reader([texts[i]], delimiter=sep, quoting=quoting, strict=False), []),
                    range(i, i + 1))
            continue
        add(cells, span)
    if header is None:
        raise InputError(f"cannot read {path}: the file is empty (no header line)")
    frame = pd.DataFrame(rows, columns=header, dtype=object) if rows else \
        pd.DataFrame({c: pd.Series([], dtype=object) for c in header})
    problem_frame = pd.DataFrame(problems, columns=["row", "column", "reason", "line"])
    problem_frame["row"] = problem_frame["row"].astype("int64")
    return Delimited(frame, problem_frame)


def _read_clean(data: bytes, lines: list[bytes], sep: str, names: list[str] | None, encoding: str,
                quoted: bool) -> pd.DataFrame | None:  # fmt: skip
    """pandas' C parser for a file that has none of the problems above, else None.

    Without quote characters, NUL or lone '\\r', and with the header's count of separators on
    every non-blank line, a line is exactly its separator-split cells for both parsers.
    """
    if b"\x00" in data or (quoted and b'"' in data) or data.count(b"\r") != data.count(b"\r\n"):
        return None
    sep_bytes = sep.encode()
    filled = [line for line in lines if line.strip(b"\r\n")]
    if not filled:
        return None
    width = len(names) if names else filled[0].count(sep_bytes) + 1
    if width < 2 or any(line.count(sep_bytes) != width - 1 for line in filled):
        return None
    try:
        data.decode(encoding)
    except UnicodeDecodeError:
        return None
    frame = pd.read_csv(io.BytesIO(data), sep=sep, header=None if names else 0, names=names,
                        dtype=str, keep_default_na=False, encoding=encoding,
                        quoting=csv.QUOTE_NONE)  # fmt: skip
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.fillna("")
