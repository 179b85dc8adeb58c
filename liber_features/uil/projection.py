"""D′ projections of the text vectors: fitted once, stored in the ledger, applied to every vector.

Why: the text encoder's D = 384 floats per vector cost most of a user's online bytes, while a
user's few partitions span a low-dimensional part of that space. A linear map to D′ (PCA,
fitted by ``training.fit_projection`` on training-period partitions only) keeps most of it.

A projection is a *derived text encoder*: its vectors are ``vectors`` rows under the encoder id
``<source>+pca<D′>.<hash>`` on the same interest rows, written without an LLM call or a model. So
everything that keeps each user in one version (``features.memory``) works unchanged, a projected
table has its own ``encoder_version`` (the model card names it, the scorer refuses a model trained
at another D′), and the full vectors stay in the ledger as the source of truth: changing D′ is a new
projection, never a new LLM call. The hash covers the matrix, so a refit is a new version too.

:func:`project_new` is idempotent (insert-or-nothing, like every vector write): the long-term table
refresh calls it first, so partitions encoded after the fit get their D′ vectors before any read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
from sqlalchemy import and_, select
from sqlalchemy.orm import aliased

from liber_features.errors import ConfigError
from liber_features.ledger.store import Ledger, now_us
from liber_features.ledger.store import projections as proj_t
from liber_features.ledger.store import vectors as vec_t

__all__ = ["Projection", "load_projections", "project_new", "save_projection"]

_CHUNK = 2000  # vectors per read/insert: bounded memory on a ledger of millions of partitions


@dataclass(frozen=True)
class Projection:
    """``y = (x - mean) @ components`` for ``x`` of ``source_encoder_id``'s vectors.

    ``mean`` is ``(D,)`` and ``components`` ``(D, D′)`` float32. ``fitted_on`` says which vectors
    it was fitted on (kept with it: the no-test-data rule must be checkable afterwards).
    """

    source_encoder_id: str
    mean: np.ndarray  # (D,)
    components: np.ndarray  # (D, D′)
    fitted_on: dict

    @property
    def in_dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def projection_id(self) -> str:
        h = hashlib.sha256(self.source_encoder_id.encode())
        h.update(np.ascontiguousarray(self.mean, dtype="<f4").tobytes())
        h.update(np.ascontiguousarray(self.components, dtype="<f4").tobytes())
        return h.hexdigest()[:10]

    @property
    def encoder_id(self) -> str:
        return f"{self.source_encoder_id}+pca{self.out_dim}.{self.projection_id}"

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``(N, D)`` → ``(N, D′)`` float32."""
        if x.shape[-1] != self.in_dim:
            raise ConfigError(f"projection {self.encoder_id} takes D={self.in_dim}, got {x.shape[-1]}")
        return ((x - self.mean) @ self.components).astype(np.float32)


def save_projection(ledger: Ledger, p: Projection) -> bool:
    """Store ``p`` (insert-or-nothing: the same fit twice is one row). True when it is new."""
    if len(p.encoder_id) > vec_t.c.encoder_id.type.length:
        raise ConfigError(f"encoder id {p.encoder_id!r} is longer than the ledger's "
                          f"{vec_t.c.encoder_id.type.length} characters")
    with ledger.begin() as conn:
        had = conn.execute(select(proj_t.c.encoder_id).where(
            proj_t.c.encoder_id == p.encoder_id)).first() is not None
        ledger.insert_ignore(conn, proj_t, [{
            "encoder_id": p.encoder_id, "source_encoder_id": p.source_encoder_id,
            "in_dim": p.in_dim, "out_dim": p.out_dim,
            "mean": np.ascontiguousarray(p.mean, dtype="<f4").tobytes(),
            "components": np.ascontiguousarray(p.components, dtype="<f4").tobytes(),
            "fitted_on": json.dumps(p.fitted_on, sort_keys=True), "created_us": now_us()}],
            ["encoder_id"])
    return not had


def load_projections(ledger: Ledger) -> list[Projection]:
    """Every stored projection, oldest first."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(proj_t).order_by(proj_t.c.created_us, proj_t.c.encoder_id)).all()
    out = []
    for r in rows:
        comps = np.frombuffer(r.components, dtype="<f4").reshape(r.in_dim, r.out_dim)
        p = Projection(r.source_encoder_id, np.frombuffer(r.mean, dtype="<f4"), comps,
                       json.loads(r.fitted_on))
        if p.encoder_id != r.encoder_id:  # a matrix edited in place would silently change vectors
            raise ConfigError(f"projection {r.encoder_id} in {ledger.describe()} does not match its "
                              "stored matrix (its hash differs): refit it with `liber project`")
        out.append(p)
    return out


def project_new(ledger: Ledger) -> int:
    """Write the D′ vectors of every source vector that lacks them, for every projection; the
    number written. Pure arithmetic on the ledger's own vectors: no LLM, no text encoder."""
    written = 0
    for p in load_projections(ledger):
        mine = aliased(vec_t)
        q = (select(vec_t.c.interest_id, vec_t.c.summary_vec, vec_t.c.shift_vec)
             .select_from(vec_t.outerjoin(mine, and_(mine.c.interest_id == vec_t.c.interest_id,
                                                     mine.c.encoder_id == p.encoder_id)))
             .where(vec_t.c.encoder_id == p.source_encoder_id, mine.c.id.is_(None))
             .order_by(vec_t.c.interest_id))
        with ledger.engine.connect() as conn:
            todo = conn.execute(q).all()
        for lo in range(0, len(todo), _CHUNK):
            rows = todo[lo:lo + _CHUNK]
            summ = p.apply(np.stack([np.frombuffer(r.summary_vec, dtype="<f4") for r in rows]))
            shift = p.apply(np.stack([np.frombuffer(r.shift_vec, dtype="<f4") for r in rows]))
            stamp = now_us()
            with ledger.begin() as conn:
                # Stamped now, not with the source's time: a user whose rows move to a new D′
                # then reads as changed, so the next plain materialize rewrites every such user
                # and an online store never keeps rows of the old D′ beside the new.
                ledger.insert_ignore(conn, vec_t, [{
                    "interest_id": r.interest_id, "encoder_id": p.encoder_id, "dim": p.out_dim,
                    "summary_vec": summ[i].tobytes(), "shift_vec": shift[i].tobytes(),
                    "created_us": stamp} for i, r in enumerate(rows)], ["interest_id", "encoder_id"])
            written += len(rows)
    return written
