"""Online scoring by ``user_id``: one feature read per request, one onnxruntime call over all candidates.

Torch-free (a test imports this module with torch blocked). ``LiberScorer.load`` opens the exported
``model.onnx`` + ``model_card.json`` and refuses a model whose card disagrees with the applied
feature repo (FeatureService, M and D from the view's tags, L from the repo's shape settings, and
the ``encoder_version`` of the long-term table that feeds the online store): the error names both
sides. ``score`` reads the user's features once (Redis fast path or Feast's ``get_online_features``,
see ``liber_features.serving.fetch``), builds the inputs with the training builder's own code
(``liber_features.model.inputs``), and scores every candidate in one call — the graph computes
the user side once and broadcasts it.

Failure policy (``on_store_error``): ``raise`` a typed :class:`OnlineStoreError` naming the store,
or ``degrade`` — score with no LIBER memory and no history (the masked model) and say so. With
``retry_ms`` > 0 (``liber serve`` sets it) a failed read opens a :class:`StoreBreaker`: for that
long the next requests fail (or degrade) at once with the same error instead of each waiting the
socket timeout, and one probe at a time reads again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from liber_features.errors import ConfigError, OnlineStoreError, VectorShapeError
from liber_features.features.repo import LONG_TERM_VIEW, TAG_MEMORY_SLOTS, TAG_VECTOR_DIM, LiberFeatureConfig
from liber_features.model.card import MODEL_FILE, ModelCard
from liber_features.model.inputs import user_inputs
from liber_features.model.vocab import OOV
from liber_features.serving.breaker import StoreBreaker

if TYPE_CHECKING:
    from feast import FeatureStore

    from liber_features.serving.ranker import RankerRows

__all__ = ["LiberScorer", "ScoreResult", "ScorerConfig", "check_card", "onnx_session"]


class ScorerConfig(BaseModel):
    """How the scorer reads features and runs the model."""

    model_config = ConfigDict(extra="forbid")

    fetch: Literal["auto", "redis", "feast"] = Field("auto", description="auto = Redis fast path on Redis")
    timeout_ms: float = Field(50.0, gt=0, description="online read timeout (Redis fast path)")
    on_store_error: Literal["raise", "degrade"] = "raise"
    threads: int = Field(1, ge=1, description="onnxruntime intra-op threads (1 had the best p99 here)")
    retry_ms: float = Field(0.0, ge=0, description="after a failed read, answer from the failure for this "
                                                   "long before one probe reads again (0: always read)")


@dataclass
class ScoreResult:
    """Scores for one request, in candidate order, and how they were made."""

    user_id: str
    scores: np.ndarray  # (N,) float32 probabilities
    unknown_items: list[int] = field(default_factory=list)  # candidate positions scored as OOV
    cold_start: bool = False  # the store had no features for this user
    degraded: bool = False  # scored without LIBER features because the store failed
    reason: str | None = None
    encoder_version: str | None = None  # of the LIBER vectors used (None: none used)
    fetch_ms: float = 0.0
    score_ms: float = 0.0


def onnx_session(path: Path, threads: int):
    """An onnxruntime session with the scorer's settings (the benchmarks time exactly these)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # With more than one thread onnxruntime's workers spin after each run, waiting for the next:
    # on a small box that spinning takes the core Redis and the HTTP server need. Measured by
    # bench_online (2 cores): interleaved with a 2-thread spinning session, the fast fetch's p99
    # went from 0.75 to 2.2 ms. Workers sleep instead; a request pays their wake-up.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The CUDA provider only where onnxruntime-gpu is installed (it lists the provider); CPU else.
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                 if p in ort.get_available_providers()]
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


def check_card(card: ModelCard, store: FeatureStore, shape: LiberFeatureConfig | None = None) -> None:
    """Refuse a model trained on another feature contract than the applied repo's.

    M and D are stamped into the long-term view's tags by the definitions. L is not a property of
    any Feast object (``recent_item_ids`` is a plain list): it is the repo's shape setting
    (``LIBER_HISTORY_LENGTH``, ``shape``), the one the long-term table's writer trims to, so a model
    trained on another L would read a history of a length it never saw.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        store.get_feature_service(card.feature_service)
        view = store.get_feature_view(LONG_TERM_VIEW)
    except Exception as exc:  # Feast raises its own not-found types
        raise ConfigError(f"model card wants FeatureService {card.feature_service!r}; the repo at "
                          f"{store.repo_path} has none: {exc}") from exc
    shape = shape or LiberFeatureConfig.from_env()
    repo_shape = {"M": int(view.tags.get(TAG_MEMORY_SLOTS, -1)), "D": int(view.tags.get(TAG_VECTOR_DIM, -1)),
                  "L": shape.history_length}
    card_shape = {"M": card.memory_slots, "D": card.vector_dim, "L": card.history_length}
    if repo_shape != card_shape:
        raise ConfigError(f"model card has {card_shape}, the applied repo's {LONG_TERM_VIEW} has {repo_shape} "
                          "(M, D: the view's tags; L: LIBER_HISTORY_LENGTH)")
    path = Path(getattr(view.batch_source, "path", "") or "")
    if path.is_file():
        versions = pc.unique(pq.read_table(path, columns=["encoder_version"])["encoder_version"]).to_pylist()
        if versions and card.encoder_version not in versions:
            raise ConfigError(f"model card encoder_version {card.encoder_version!r} (LLM {card.llm_id}, "
                              f"prompt {card.prompt_version}) is not what the long-term table {path} "
                              f"feeds online: {sorted(versions)}")


class LiberScorer:
    """``score(user_id, item_ids)`` → :class:`ScoreResult` (module docstring)."""

    def __init__(self, card: ModelCard, session, fetcher, config: ScorerConfig, ranker: RankerRows | None = None
                 ) -> None:
        self.card, self.session, self.fetcher, self.config = card, session, fetcher, config
        # Feature rows: a boosted ranker's (card backbone lgbm) or a neural graph's side row; None: neither.
        self.ranker = ranker
        self.providers = session.get_providers()
        # The exporter drops inputs a graph never reads (a liber="none" model's memory): feed only
        # what the graph takes.
        self.input_names = frozenset(i.name for i in session.get_inputs())
        self.items, self.users = card.item_vocabulary(), card.user_vocabulary()
        self.breaker = StoreBreaker(config.retry_ms)

    @classmethod
    def load(cls, model_dir: str | Path, repo: str | Path = "feature_repo", *,
             config: ScorerConfig | None = None, store: FeatureStore | None = None,
             shape: LiberFeatureConfig | None = None) -> LiberScorer:
        """``shape``: the repo's M × D, L (default: from the environment, as the definitions read it)."""
        from liber_features.features.repo import open_store
        from liber_features.serving.fetch import RANKER_FEATURES, make_fetcher
        from liber_features.serving.ranker import RankerRows

        config = config or ScorerConfig()
        model_dir = Path(model_dir)
        card = ModelCard.load(model_dir)
        if not (model_dir / MODEL_FILE).is_file():
            raise ConfigError(f"no {MODEL_FILE} in {model_dir}: run `liber export {model_dir}`")
        store = store or open_store(repo)
        check_card(card, store, shape)
        # A boosted ranker's rows, or a neural graph's side row (its card lists the columns).
        ranker = RankerRows.load(card, model_dir, store) if card.backbone == "lgbm" or card.features else None
        # A boosted ranker also reads the user's statistics: the same hash, one read still.
        fetcher = make_fetcher(store, config.fetch, config.timeout_ms, RANKER_FEATURES if ranker else None)
        return cls(card, onnx_session(model_dir / MODEL_FILE, config.threads), fetcher, config, ranker)

    # -- inputs ----------------------------------------------------------------------------
    def user_side(self, user_id: str, row: dict[str, Any] | None) -> dict[str, np.ndarray]:
        c = self.card
        row = row or {}
        return user_inputs(
            user_id=user_id, user_vocab=self.users, item_vocab=self.items, memory_slots=c.memory_slots,
            vector_dim=c.vector_dim, history_length=c.history_length,
            summary_vectors=row.get("summary_vectors"), shift_vectors=row.get("shift_vectors"),
            partition_count=row.get("partition_count"), recent_item_ids=row.get("recent_item_ids"),
            cache_item_ids=row.get("cache_item_ids"))

    def _result(self, user_id: str, row: dict[str, Any] | None, item_ids: Sequence[str],
                failure: str | None, fetch_ms: float, at_us: int | None = None) -> ScoreResult:
        t0 = time.perf_counter()
        degraded, reason = failure is not None, failure
        version = (row or {}).get("encoder_version")
        if row is not None and version not in (None, self.card.encoder_version):
            # Vectors from another encoder live in another space: never feed them to this model.
            failure = (f"online encoder_version {version!r} != model card {self.card.encoder_version!r}")
            if self.config.on_store_error == "raise":
                raise OnlineStoreError(f"{self.fetcher.where}: user {user_id!r}: {failure}")
            row, degraded, reason = None, True, failure
        try:
            feeds = self.user_side(user_id, row)
        except VectorShapeError as exc:
            if self.config.on_store_error == "raise":
                raise OnlineStoreError(f"{self.fetcher.where}: wrong-shaped value: {exc}") from exc
            feeds, degraded, reason = self.user_side(user_id, None), True, f"wrong-shaped value: {exc}"
        items = self.items.index(item_ids)
        used_memory = bool(feeds["partition_count"][0] > 0)
        rows = self.ranker.rows(feeds, row, items, item_ids, at_us) if self.ranker is not None else None
        if self.card.backbone == "lgbm":  # the booster takes rows built with the training code
            feeds = {"features": rows}
        else:
            feeds["item_idx"] = items
            if rows is not None:
                feeds["dense"] = rows
        scores = self.session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})[0]
        return ScoreResult(
            user_id=user_id, scores=scores, unknown_items=np.flatnonzero(items == OOV).tolist(),
            cold_start=row is None and not degraded, degraded=degraded, reason=reason,
            encoder_version=version if row is not None and used_memory else None,
            fetch_ms=fetch_ms, score_ms=(time.perf_counter() - t0) * 1000)

    def _fetch(self, user_ids: Sequence[str]) -> tuple[list[dict[str, Any] | None], str | None, float]:
        t0 = time.perf_counter()
        try:
            if (last := self.breaker.allow()) is not None:  # failed a moment ago: do not wait on it again
                raise OnlineStoreError(f"{last} (not read again for {self.config.retry_ms:g} ms)")
            try:
                rows, failure = self.fetcher.fetch(user_ids), None
            except OnlineStoreError as exc:
                self.breaker.failure(str(exc))
                raise
            self.breaker.success()
        except OnlineStoreError as exc:
            if self.config.on_store_error == "raise":
                raise
            rows, failure = [None] * len(user_ids), f"online store unavailable: {exc}"
        return rows, failure, (time.perf_counter() - t0) * 1000

    # -- scoring ---------------------------------------------------------------------------
    def score(self, user_id: str, item_ids: Sequence[str], at_us: int | None = None) -> ScoreResult:
        """One read of the user's features, one model call over every candidate.

        ``at_us``: the request's moment for time-dependent inputs (a boosted ranker's seconds since
        the user's previous event); default now.
        """
        rows, failure, ms = self._fetch([str(user_id)])
        return self._result(str(user_id), rows[0], item_ids, failure, ms, at_us)

    def score_many(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[ScoreResult]:
        """Several users: their features in one pipelined read, then one model call per user."""
        users = [str(u) for u, _ in requests]
        rows, failure, ms = self._fetch(users)
        return [self._result(u, r, items, failure, ms / max(len(users), 1))
                for u, r, (_, items) in zip(users, rows, requests)]

    def top(self, user_id: str, k: int = 10, candidates: Sequence[str] | None = None
            ) -> tuple[ScoreResult, list[tuple[str, float]]]:
        """Score ``candidates`` (default: the whole item vocabulary) and return the best k."""
        items = list(candidates) if candidates is not None else list(self.items)
        res = self.score(user_id, items)
        best = np.argsort(-res.scores, kind="stable")[:k]
        return res, [(items[i], float(res.scores[i])) for i in best]
