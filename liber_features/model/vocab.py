"""Vocabularies: ids → embedding rows, with the reserved rows defined once.

A model's item table has ``n + 2`` rows: row 0 is PAD (history padding, never a real item), row 1
is OOV (any item the model has not seen: one learned embedding, no text vector), and the n known
items follow in sorted id order. Its user table has ``n + 1`` rows: row 0 is the unknown user.
Those offsets used to be written out as ``n + 2`` / ``len(vocab) + 1`` wherever a vocabulary or a
table was made or read (the training builder, the checkpoint loader, the item text vectors, the
scorer); here they are one type, so a change to the layout cannot reach one side only.

The JSON form stored in checkpoints, ``.npz`` training sets and ``model_card.json`` is unchanged:
a plain ``{id: row}`` object (:meth:`Vocab.to_json`, :meth:`Vocab.from_json`). A vocabulary read
back is checked — rows exactly ``reserved .. size - 1``, each once — because the model's tables
are sized from it and a gap or a collision with PAD/OOV would silently score the wrong embedding.

A ``Vocab`` is a read-only ``Mapping[str, int]``, so ``len``, ``in``, iteration in row order and
``==`` against a plain dict work as they did when vocabularies were dicts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from itertools import repeat
from typing import ClassVar, Self

import numpy as np

from liber_features.errors import ConfigError

__all__ = ["OOV", "PAD", "UNKNOWN_USER", "ItemVocab", "UserVocab", "Vocab"]

PAD = 0  # history padding: item row 0 is never a real item
OOV = 1  # an item the model has not seen: its own learned embedding, no text vector
UNKNOWN_USER = 0  # a user who had no training sample


class Vocab(Mapping[str, int]):
    """Ids (always compared as strings) → table rows; rows below :attr:`RESERVED` are special."""

    RESERVED: ClassVar[int]  # rows before the first id
    FALLBACK: ClassVar[int]  # the row of an id the vocabulary does not hold
    KIND: ClassVar[str]

    __slots__ = ("_rows",)

    def __init__(self, rows: Mapping[str, int]) -> None:
        """``rows`` as :meth:`to_json` writes them; anything else is a :class:`ConfigError`."""
        self._rows = {str(k): int(v) for k, v in rows.items()}
        want = range(self.RESERVED, self.RESERVED + len(self._rows))
        if sorted(self._rows.values()) != list(want):
            bad = sorted(set(self._rows.values()).symmetric_difference(want))[:5]
            raise ConfigError(f"{self.KIND} vocabulary of {len(self._rows)} ids must use rows "
                              f"{want.start}..{want.stop - 1} once each (0..{self.RESERVED - 1} are "
                              f"reserved); wrong or missing rows: {bad}")

    @classmethod
    def build(cls, ids: Iterable[object]) -> Self:
        """The distinct ids, sorted as strings, on rows ``RESERVED, RESERVED + 1, …``."""
        return cls({i: n + cls.RESERVED for n, i in enumerate(sorted({str(i) for i in ids}))})

    @classmethod
    def from_json(cls, data: Mapping[str, int]) -> Self:
        return cls(data)

    def to_json(self) -> dict[str, int]:
        """The on-disk form: ``{id: row}`` in row order (a copy)."""
        return dict(self._rows)

    @property
    def size(self) -> int:
        """Rows of the embedding table this vocabulary indexes (reserved rows included)."""
        return self.RESERVED + len(self._rows)

    def row(self, id_: object) -> int:
        """One id's row; :attr:`FALLBACK` when unknown."""
        return self._rows.get(str(id_), self.FALLBACK)

    def index(self, ids: Iterable[object]) -> np.ndarray:
        """Ids → int64 rows, unknown ids → :attr:`FALLBACK`."""
        ids = ids if isinstance(ids, (list, tuple, np.ndarray)) else list(ids)
        # map() keeps the per-id loop in C: this runs for every candidate of every online request.
        return np.fromiter(map(self._rows.get, map(str, ids), repeat(self.FALLBACK)), dtype=np.int64,
                           count=len(ids))

    # -- Mapping ---------------------------------------------------------------------------
    def __getitem__(self, id_: str) -> int:
        return self._rows[id_]

    def get(self, id_, default=None):
        return self._rows.get(id_, default)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._rows

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self._rows)} ids, size {self.size})"


class ItemVocab(Vocab):
    """Items: row 0 PAD, row 1 OOV, then the known items (table of ``n + 2`` rows)."""

    RESERVED, FALLBACK, KIND = 2, OOV, "item"


class UserVocab(Vocab):
    """Users: row 0 the unknown user, then the users with training samples (``n + 1`` rows)."""

    RESERVED, FALLBACK, KIND = 1, UNKNOWN_USER, "user"
