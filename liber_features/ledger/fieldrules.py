"""Field rules shared by every loader and both ledger backends: ids, and caps on stored text.

Ids (user, item, event) are text. The rule is checked once, when rows are read, so SQLite (which
does not enforce ``VARCHAR(n)``) and PostgreSQL (which raises on the whole batch) store exactly
the same rows:

* ``user_id`` and ``item_id``: 1–128 characters; ``event_id``: 1–64 (the ledger's columns);
  lengths count characters (code points), as PostgreSQL's ``varchar(n)`` does;
* no control, format, surrogate or unassigned characters (Unicode category C: NUL, tabs, line
  breaks, bidi overrides, zero-width joiners …): an id must print as what it is. Ids are
  stripped of surrounding whitespace before the check, so ``' 12'`` is ``'12'``.

Quarantine rows cap what they store (``REASON_CHARS``, ``RAW_CHARS``, a cell quoted in a reason at
``QUOTE_CHARS``): a megabyte of garbage in one cell must not become a megabyte per ledger row.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

__all__ = ["ID_MAX_CHARS", "QUOTE_CHARS", "RAW_CHARS", "REASON_CHARS", "cap_text", "id_problems",
           "show"]

ID_MAX_CHARS = {"user_id": 128, "item_id": 128, "event_id": 64}
REASON_CHARS = 500
RAW_CHARS = 2000
QUOTE_CHARS = 80
# Category C: Cc control, Cf format (bidi, zero-width), Cs surrogate, Co private use, Cn unassigned.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u180e"
                      r"\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]")


_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")


def cap_text(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    marker = f"…[+{len(text) - limit} chars]"
    return text[: max(limit - len(marker), 0)] + marker


def show(value: object, limit: int = QUOTE_CHARS) -> str:
    """A cell as quoted in a reason: control characters escaped (``\\x00``), capped."""
    text = str(value)
    text = _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape", "backslashreplace")
                        .decode("ascii"), text)  # fmt: skip
    return cap_text(text, limit)


def _has_control(text: str) -> bool:
    import unicodedata

    if _CONTROL.search(text):
        return True
    # The regex covers the common cases fast; rare categories (Co, Cn) need the full table.
    return not text.isascii() and any(unicodedata.category(ch).startswith("C") for ch in text)


def id_problems(values: pd.Series, field: str) -> tuple[pd.Series, pd.Series]:
    """(too long mask, bad character mask) for stripped, non-empty id strings of ``field``."""
    limit = ID_MAX_CHARS[field]
    too_long = pd.Series(np.fromiter(map(len, values), np.int64, len(values)) > limit,
                         index=values.index)  # fmt: skip
    bad = pd.Series(False, index=values.index)
    # Almost always every id is printable ASCII: one C-speed scan of all of them decides that.
    if not _PRINTABLE_ASCII.fullmatch("".join(values)):
        bad[:] = [_has_control(v) for v in values]
    return too_long, bad
