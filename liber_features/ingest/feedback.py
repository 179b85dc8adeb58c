"""Implicit feedback on an event row: its optional event type and optional explicit label.

Most logs are not star ratings but views, clicks, carts, purchases and impressions. A plain
CSV/Parquet log may carry an ``event_type`` column (alias ``event``) and a ``label`` column:

* ``event_type``: text, compared case-insensitively after stripping; it must be one of the
  configured set (``LoadConfig.event_types``, default :data:`EVENT_TYPES`), else the row is
  quarantined naming the set. An empty cell means "untyped" (None), as in a log without the column.
* ``label``: an explicit training label, 0 or 1 (``1.0``, ``true`` and ``false`` read as such);
  anything else is quarantined. An empty cell is NaN: no explicit label.

The type travels with the event into the UBSP cache and the partitions, where the prompts of a
domain that words event types read it (a purchase reads differently from a view); the label and
the type are kept in the ledger's ``events`` table for the training label rules
(``training.labels``). GroupLens layouts have neither column.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from liber_features.ingest.catalog import id_text
from liber_features.ingest.quarantine import RowChecks

__all__ = ["EVENT_TYPES", "EVENT_TYPE_CHARS", "event_types", "labels"]

#: The default set of event types; ``--event-types`` replaces it.
EVENT_TYPES = ("view", "click", "cart", "purchase", "rating", "impression")
EVENT_TYPE_CHARS = 32  # the ledger's column width
_TRUE, _FALSE = ("1", "1.0", "true"), ("0", "0.0", "false")


def event_types(checks: RowChecks, values: pd.Series | None, allowed: tuple[str, ...]) -> pd.Series:
    """The rows' event types (lower-case text, None where empty or absent); others quarantined."""
    if values is None:
        return pd.Series(None, index=checks.reason.index, dtype=object)
    text = id_text(values).str.lower()
    unknown = (text != "") & ~text.isin(allowed)
    checks.fail(unknown, "event_type", f"event_type '{{}}' is not one of {', '.join(allowed)}", text)
    return text.where(text != "", None).astype(object)


def labels(checks: RowChecks, values: pd.Series | None) -> pd.Series:
    """The rows' explicit labels as float64 1.0 / 0.0 (NaN where empty or absent); others quarantined."""
    index = checks.reason.index
    if values is None:
        return pd.Series(np.nan, index=index, dtype="float64")
    if pd.api.types.is_bool_dtype(values):
        return values.astype("float64")
    text = id_text(values).str.lower()
    out = pd.Series(np.nan, index=index, dtype="float64")
    out[text.isin(_TRUE)] = 1.0
    out[text.isin(_FALSE)] = 0.0
    checks.fail((text != "") & out.isna(), "label", "label '{}' is not 0 or 1", text)
    return out
