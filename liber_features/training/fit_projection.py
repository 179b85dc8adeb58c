"""Fit a D′ projection (PCA) of the text vectors on training-period partitions only.

Only partitions sealed strictly before their user's first validation/test sample
(:func:`~liber_features.training.samples.train_period_ends`) are used: every event such a
partition holds is earlier than anything the model is evaluated on, so the basis carries no
information from the test period (a PCA fitted on all vectors would). Summary and shift vectors
share one basis (one text-encoder space), stored with what it was fitted on (``fitted_on``).

The fitted projection is stored in the ledger and its vectors written at once
(``uil/projection.py``); the table is then built at ``LIBER_VECTOR_DIM = D′``.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import select

from liber_features.errors import ConfigError
from liber_features.features.memory import latest_versions
from liber_features.ledger.store import Ledger
from liber_features.ledger.store import interests as int_t
from liber_features.ledger.store import partitions as parts_t
from liber_features.ledger.store import vectors as vec_t
from liber_features.training.samples import SampleConfig, train_period_ends
from liber_features.uil.projection import Projection

__all__ = ["RULE", "fit_projection"]

RULE = "partitions sealed strictly before their user's first validation or test sample"


def fit_projection(ledger: Ledger, dim: int, *, cfg: SampleConfig | None = None,
                   versions: tuple[str, str, str] | None = None) -> Projection:
    """PCA of the training-period vectors of ``versions`` (default: the newest encode) to ``dim``."""
    cfg = cfg or SampleConfig()
    pv, llm_id, enc_id = versions or latest_versions(ledger)
    ends = train_period_ends(ledger, cfg)
    q = (select(parts_t.c.user_id, parts_t.c.sealed_at_us, vec_t.c.dim, vec_t.c.summary_vec,
                vec_t.c.shift_vec)
         .select_from(parts_t.join(int_t, int_t.c.partition_id == parts_t.c.id)
                      .join(vec_t, vec_t.c.interest_id == int_t.c.id))
         .where(int_t.c.status == "done", int_t.c.prompt_version == pv, int_t.c.llm_id == llm_id,
                vec_t.c.encoder_id == enc_id)
         .order_by(parts_t.c.user_id, parts_t.c.seq))
    with ledger.engine.connect() as conn:
        rows = [r for r in conn.execute(q) if r.sealed_at_us < ends.get(r.user_id, -1)]
    if not rows:
        raise ConfigError(f"no encoded partition of {enc_id} lies in a training period ({RULE}): "
                          "nothing to fit a projection on without seeing test data")
    in_dim = rows[0].dim
    if not 0 < dim < in_dim:
        raise ConfigError(f"D′ must be between 1 and the text vectors' D - 1 = {in_dim - 1}, not {dim}")
    x = np.stack([np.frombuffer(r.summary_vec, dtype="<f4") for r in rows]
                 + [np.frombuffer(r.shift_vec, dtype="<f4") for r in rows]).astype(np.float64)
    if len(x) <= dim:
        raise ConfigError(f"{len(rows)} training-period partitions ({len(x)} vectors) cannot fit D′ = {dim}: "
                          "encode more, or choose a smaller D′")
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[:dim].T  # (D, D′)
    # SVD signs are arbitrary: fix them (largest entry positive) so a refit on the same vectors is
    # the same projection, with the same id, instead of a new version.
    comps *= np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(dim)])
    explained = float((s[:dim] ** 2).sum() / (s ** 2).sum())
    fitted_on = {"rule": RULE, "train_frac": cfg.train_frac, "validation_frac": cfg.validation_frac,
                 "partitions": len(rows), "users": len({r.user_id for r in rows}),
                 "versions": [pv, llm_id, enc_id], "explained_variance": round(explained, 6)}
    return Projection(enc_id, mean.astype(np.float32), comps.astype(np.float32), fitted_on)
