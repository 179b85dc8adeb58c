"""Placebo memories: LIBER's tables with the information taken out, and the shape kept.

A lift from adding LIBER could come from *any* extra vector per user (more parameters, a per-user
bias the fusion learns, the partition count) rather than from what the LLM wrote. Two controls of
the same shape separate those (issue 19's grid):

- ``shuffled``: each user's vectors are another user's with the same number of partitions, slot for
  slot — real LLM text, the wrong person. Users are grouped by partition count and each group is
  rotated by one; a user alone in their count takes the first rows of the next user with more
  partitions (the user with the most takes the previous user's, cycled), so no user keeps their own.
- ``random``: random unit vectors, one per partition row (fixed seed).

Both are inputs to the same UIF + backbone as the ``both`` variant, replacing its tables exactly as
the ``nollm`` tables do. Row 0 (the empty slot) stays zeros.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

__all__ = ["random_tables", "shuffled_tables"]


def _blocks(owners: list[str]) -> dict[str, np.ndarray]:
    """user → their table rows, in partition order (rows of one user are consecutive)."""
    rows: dict[str, list[int]] = defaultdict(list)
    for r in range(1, len(owners)):
        rows[owners[r]].append(r)
    return {u: np.asarray(v, np.int64) for u, v in rows.items()}


def donors(owners: list[str]) -> dict[str, str]:
    """user → the user whose vectors they get (never themselves while two users exist)."""
    blocks = _blocks(owners)
    users = sorted(blocks, key=lambda u: (len(blocks[u]), u))
    by_count: dict[int, list[str]] = defaultdict(list)
    for u in users:
        by_count[len(blocks[u])].append(u)
    out = {}
    for group in by_count.values():
        if len(group) > 1:
            out.update({u: group[(i + 1) % len(group)] for i, u in enumerate(group)})
    for i, u in enumerate(users):
        if u not in out and len(users) > 1:
            out[u] = users[i + 1] if i + 1 < len(users) else users[i - 1]
    return out


def shuffled_tables(tables: tuple[np.ndarray, np.ndarray], owners: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(P + 1, D)`` tables whose user rows hold another user's vectors (module docstring)."""
    blocks = _blocks(owners)
    src = np.arange(len(owners))
    for u, donor in donors(owners).items():
        mine, theirs = blocks[u], blocks[donor]
        src[mine] = theirs[np.arange(len(mine)) % len(theirs)]
    return tables[0][src].copy(), tables[1][src].copy()


def random_tables(shape: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random unit vectors of ``shape`` = ``(P + 1, D)``, row 0 zeros."""
    rng = np.random.default_rng(seed)

    def unit() -> np.ndarray:
        v = rng.standard_normal(shape).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        v[0] = 0
        return v

    return unit(), unit()
