"""Item catalogs: what an item is called and which categories it has.

Catalog frame, one row per item (``item_id`` unique, first occurrence wins)::

    item_id     str   ids are strings everywhere: GroupLens ints become their decimal strings
    title       str
    categories  str   joined with '|', '' when the item has none

Inputs, recognised by file name and then by header:

* ``movies.csv`` (ml-latest, ml-latest-small): ``movieId,title,genres``, utf-8, '|'-joined genres,
  ``(no genres listed)`` → ''.
* ``u.item`` (ml-100k): latin-1, '|'-separated ``id|title|release date|video date|url|19 genre
  flags``; genre names come from the sibling ``u.genre`` file, else the standard list. The
  ``unknown`` genre maps to no category, as ``(no genres listed)`` does for ml-latest.
* ``movies.dat`` (ml-1m): ``MovieID::Title::Genres``, latin-1.
* any other ``.csv`` / ``.parquet`` with ``item_id``, ``title`` and optionally ``categories``
  (a list column is joined with '|').

A directory is searched for ``movies.csv``, ``u.item``, ``movies.dat`` in that order.
Catalog rows without an item id carry nothing to join on and are dropped. Rows that cannot be
read or break the id rule are quarantined (``read_catalog``), the others load.

Encodings: GroupLens ``u.item`` and ``movies.dat`` are read as Latin-1 (every byte decodes, so
nothing is rejected for its encoding); every other text catalog must be UTF-8 (a leading BOM is
fine). A line that is not valid UTF-8 — say one Latin-1 title in ``movies.csv`` — is quarantined
with its row number and the offending byte; the events of that item are then quarantined as
"not in catalog". Re-encode such a file to UTF-8 to keep the item.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from liber_features.errors import InputError
from liber_features.ingest.delimited import Delimited, read_delimited
from liber_features.ingest.quarantine import RowChecks
from liber_features.ledger.fieldrules import id_problems, show

__all__ = ["CATALOG_COLUMNS", "CATALOG_FILES", "ML100K_GENRES", "load_catalog", "read_catalog"]

CATALOG_COLUMNS = ("item_id", "title", "categories")
CATALOG_FILES = ("movies.csv", "u.item", "movies.dat")
#: ml-100k's ``u.genre`` in flag order; used when the file is missing.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_NO_GENRES = {"(no genres listed)", "unknown"}
_CANONICAL = {"movieId": "item_id", "MovieID": "item_id", "title": "title", "Title": "title",
              "genres": "categories", "Genres": "categories"}  # fmt: skip


def read_parquet(path: Path) -> pa.Table:
    """Read a parquet file as an arrow table, or raise ``InputError`` naming it."""
    try:
        return pq.read_table(path)
    except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
        raise InputError(f"cannot read {path}: {exc}") from exc


def require_columns(frame: pd.DataFrame, path: Path, required: list[str]) -> None:
    """Raise ``InputError`` naming the file and the first missing column."""
    for column in required:
        if column not in frame.columns:
            found = ", ".join(map(str, frame.columns))
            raise InputError(f"{path}: required column {column!r} is missing (found: {found})")


def load_catalog(path: str | Path) -> pd.DataFrame:
    """Load an item catalog (see the module docstring for the formats) as a catalog frame."""
    return read_catalog(path)[0]


def read_catalog(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(catalog frame, quarantine frame of the catalog rows that were rejected).

    A row is rejected when it cannot be read (bad bytes for the file's encoding, a NUL byte,
    the wrong number of fields), when its item id breaks the id rule (``fieldrules``), or when
    its title or categories hold a NUL (kept intact it could not be stored in PostgreSQL; cut,
    it would be another title).
    """
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in CATALOG_FILES if (path / name).is_file()]
        if not found:
            raise InputError(f"{path}: no catalog file ({', '.join(CATALOG_FILES)}) in directory")
        path = found[0]
    if not path.is_file():
        raise InputError(f"{path}: no such catalog file")
    read: Delimited | None = None
    if path.name == "u.item":
        frame, read = _from_u_item(path)
    elif path.suffix == ".dat":
        read = read_delimited(path, sep="::", names=["MovieID", "Title", "Genres"],
                              encoding="latin-1", quoted=False)  # fmt: skip
        frame = _from_genre_strings(read.frame, "MovieID", "Title", "Genres")
    elif path.suffix == ".parquet":
        frame = _from_plain(read_parquet(path).to_pandas(), path)
    elif path.suffix == ".csv":
        read = read_delimited(path)
        if "movieId" in read.frame.columns:
            require_columns(read.frame, path, ["movieId", "title", "genres"])
            frame = _from_genre_strings(read.frame, "movieId", "title", "genres")
        else:
            frame = _from_plain(read.frame, path)
    else:
        raise InputError(f"{path}: unknown catalog format (expected {', '.join(CATALOG_FILES)}, "
                         ".csv or .parquet)")  # fmt: skip
    checks = RowChecks(frame.index)
    if read is not None:
        checks.fail_rows(read.problems, _CANONICAL)
    named = frame["item_id"] != ""
    too_long, bad_chars = id_problems(frame["item_id"], "item_id")
    checks.fail(named & too_long, "item_id", "item_id of {} characters is longer than 128",
                frame["item_id"].str.len())
    checks.fail(named & bad_chars, "item_id", "item_id '{}' contains a control character",
                frame["item_id"].map(show))
    for column in ("title", "categories"):
        checks.fail(frame[column].str.contains("\x00", regex=False), column,
                    f"{column} '{{}}' contains a NUL byte", frame[column].map(show))
    quarantine = checks.frame(read.frame if read is not None else frame, str(path))
    frame = frame[checks.ok & named]
    return frame.drop_duplicates("item_id", keep="first").reset_index(drop=True), quarantine


def _from_genre_strings(raw: pd.DataFrame, id_col: str, title_col: str, genre_col: str
                        ) -> pd.DataFrame:  # fmt: skip
    genres = raw[genre_col].str.strip()
    return pd.DataFrame({
        "item_id": raw[id_col].str.strip(),
        "title": raw[title_col],
        "categories": genres.where(~genres.isin(_NO_GENRES), ""),
    })  # fmt: skip


def _from_u_item(path: Path) -> tuple[pd.DataFrame, Delimited]:
    names = _ml100k_genre_names(path.with_name("u.genre"))
    columns = ["item_id", "title", "release_date", "video_date", "url", *names]
    read = read_delimited(path, sep="|", names=columns, encoding="latin-1", quoted=False)
    raw = read.frame
    # Vectorised join of the flag columns: 19 column operations instead of a loop over items.
    joined = pd.Series("", index=raw.index, dtype=object)
    for name in names:
        if name not in _NO_GENRES:
            joined = joined + np.where(raw[name].str.strip() == "1", name + "|", "")
    return pd.DataFrame({
        "item_id": raw["item_id"].str.strip(),
        "title": raw["title"],
        "categories": joined.str.rstrip("|"),
    }), read  # fmt: skip


def _ml100k_genre_names(genre_file: Path) -> list[str]:
    if not genre_file.is_file():
        return list(ML100K_GENRES)
    raw = read_delimited(genre_file, sep="|", names=["name", "index"], encoding="latin-1",
                         quoted=False).frame  # fmt: skip
    raw = raw[raw["name"].str.strip() != ""]
    ordered = raw.assign(index=pd.to_numeric(raw["index"], errors="coerce")).sort_values("index")
    names = ordered["name"].str.strip().tolist()
    # A u.genre that disagrees with the 19 flag columns is worse than the standard list.
    return names if len(names) == len(ML100K_GENRES) else list(ML100K_GENRES)


def _from_plain(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    require_columns(raw, path, ["item_id", "title"])
    if "categories" in raw.columns:
        categories = raw["categories"].map(_join_categories)
    else:
        categories = pd.Series("", index=raw.index, dtype=object)
    return pd.DataFrame({
        "item_id": id_text(raw["item_id"]),
        "title": raw["title"].map(lambda t: "" if _missing(t) else str(t)),
        "categories": categories,
    })  # fmt: skip


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def id_text(values: pd.Series) -> pd.Series:
    """Ids as stripped ``str``, '' for null: ints (GroupLens, parquet) become decimal strings.

    Vectorised; floats appear when pandas widened an int column holding nulls, and ``3.0`` must
    read back as ``'3'``. Stripping makes ``' 12'`` and ``'12'`` the same id.
    """
    if pd.api.types.is_integer_dtype(values):
        return values.astype(str)
    if pd.api.types.is_float_dtype(values):
        text = values.astype(str)
        integral = values.notna() & (values % 1 == 0)
        text[integral] = values[integral].astype("int64").astype(str)
        text[values.isna()] = ""
        return text
    return values.where(values.notna(), "").astype(str).str.strip()


def _join_categories(value: object) -> str:
    if isinstance(value, (list, tuple, np.ndarray)):
        return "|".join(str(v) for v in value)
    return "" if _missing(value) else str(value)
