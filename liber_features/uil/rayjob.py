"""The UIL encoder as a Ray job: one driver, a pool of actors that each hold one LLM backend.

The same job as ``run_encode`` — same prompts, same ledger rows, same exactly-once — with the
generation on Ray actors. The driver keeps the ledger side (``interest.encode_loop``): it claims
ready batches with a lease (claims.py), sends each to an actor, and commits each returned batch
in one transaction, only for the claims it still holds; the ledger's unique keys are the final
guard. A second driver on the same ledger (another ``liber encode --ray``, or a plain ``liber
encode``) therefore never generates a partition this one has claimed.

The text encoder lives in the actors, next to the LLM, not on the driver: a batch's texts and
vectors come back together and commit in one transaction, as in one process; a GPU actor encodes
on its GPU; and the driver stays a thin ledger client (on a small machine it shares the CPUs with
the actors). The driver only encodes texts generated earlier but never encoded, through an actor.

An actor that dies mid-batch (killed, out of memory, node lost) surfaces as ``RayActorError``: its
batch was generated but not committed, so nothing of it is in the ledger. The batch goes to
another actor ``retry_lost`` times, the dead actor is replaced (``max_actor_restarts``), and a
batch lost again — a poison batch that kills every actor it meets — is released and left for the
next run, like a failed one. Lost LLM calls are the whole cost; nothing is written twice.

``ray`` is imported only when a job starts: ``liber_features`` stays importable without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from liber_features.errors import ConfigError, EncoderError, MissingDependency
from liber_features.ledger.store import Ledger
from liber_features.uil.batch import BatchJob, Finished, LostBatch, run_batch
from liber_features.uil.interest import OnProgress, encode_loop
from liber_features.uil.types import EncodeConfig, EncodeSummary, LLMLike, TextEncoderLike

__all__ = ["RayEncodeConfig", "RayEncodeSummary", "actor_gpus", "run_ray_encode"]

Backends = Callable[[], tuple[LLMLike, TextEncoderLike]]


class RayEncodeConfig(BaseModel):
    """Where the actors run and how many; the job itself is ``EncodeConfig``."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field("local", description="'local' starts a Ray instance in this process; "
                         "'auto' joins the one `ray start` made on this host; or host:6379 / "
                         "ray://host:10001. Ignored when Ray is already initialized.")
    actors: int = Field(2, ge=1, description="actors, each holding one LLM and one text encoder")
    actor_cpus: float = Field(1.0, gt=0, description="CPUs Ray reserves per actor; Ray also sets "
                              "the actor's OMP_NUM_THREADS (torch threads) to it")
    gpus_per_actor: float | None = Field(None, ge=0, description="None: 1 when the cluster has "
                                         "GPUs, else 0. Use 0 for openai: backends (the GPUs are "
                                         "the vLLM servers')")
    in_flight: int = Field(2, ge=1, description="batches queued per actor: the next waits in the "
                           "actor while the driver commits the last, so no actor idles on the ledger")
    retry_lost: int = Field(1, ge=0, description="times a batch whose actor died is sent to "
                            "another actor in this run; after that the next run redoes it")
    max_actor_restarts: int | None = Field(None, ge=0, description="dead actors replaced in "
                                           "this run (None: as many as --actors)")
    start_timeout_s: float = Field(600.0, gt=0, description="actors must have loaded their "
                                   "models by then (a cluster without room for them never does)")


@dataclass
class RayEncodeSummary(EncodeSummary):
    ray_address: str = ""
    actors: int = 0
    actor_cpus: float = 0.0
    gpus_per_actor: float = 0.0
    actor_deaths: int = 0
    batches_resent: int = 0  # batches lost with their actor and given to another one


class EncoderActor:
    """One actor's state: its backends, built in the actor from a picklable factory."""

    def __init__(self, make_backends: Backends) -> None:
        self.llm, self.enc = make_backends()

    def describe(self) -> dict[str, Any]:
        return {"llm_id": self.llm.llm_id, "decoding": self.llm.decoding,
                "encoder_id": self.enc.encoder_id, "dim": self.enc.dim, "pid": os.getpid()}

    def run(self, job: BatchJob, cfg: EncodeConfig) -> tuple[Any, EncodeSummary]:
        """``run_batch`` here; an error comes back as a value, with the counters it had made."""
        s = EncodeSummary()
        try:
            outcome = run_batch(job, self.llm, self.enc, cfg.prompts, s)
        except Exception as exc:  # judged on the driver (settle_batch), as in one process
            outcome = exc
        return outcome, s

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.enc.encode(texts), dtype=np.float32)


class _Backends:
    """The driver's view of the actors' backends: their ids, and an encoder that runs in one."""

    def __init__(self, info: dict[str, Any], actor: Any, ray: Any) -> None:
        self.llm_id, self.decoding = info["llm_id"], info["decoding"]
        self.encoder_id, self.dim = info["encoder_id"], info["dim"]
        self._actor, self._ray = actor, ray

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._ray.get(self._actor.encode.remote(texts))


@dataclass
class _Task:
    """A batch on an actor, and how many times it was sent after losing one."""

    actor: Any
    job: BatchJob
    tries: int


class _ActorPool:
    """``interest.BatchRunner`` over Ray actors: up to ``in_flight`` batches queued per actor."""

    def __init__(self, ray: Any, new_actor: Callable[[], Any], actors: list, rc: RayEncodeConfig,
                 cfg: EncodeConfig, summary: RayEncodeSummary) -> None:
        self.ray, self.new_actor, self.rc, self.cfg, self.s = ray, new_actor, rc, cfg, summary
        self.load = {a: 0 for a in actors}  # live actor → batches it holds
        self.every = list(actors)  # live and dead, to kill them all at the end
        self.restarts_left = rc.actors if rc.max_actor_restarts is None else rc.max_actor_restarts
        self.tasks: dict[Any, _Task] = {}  # ObjectRef → what it runs, where

    def free(self) -> bool:
        return len(self.tasks) < len(self.load) * self.rc.in_flight

    def pending(self) -> bool:
        return bool(self.tasks)

    def submit(self, job: BatchJob) -> None:
        # Ship only what the batch reads: its predecessors' summaries and its items' titles.
        self._send(job.trimmed(), 0)

    def _send(self, job: BatchJob, tries: int) -> None:
        actor = min(self.load, key=self.load.__getitem__)
        self.load[actor] += 1
        self.tasks[actor.run.remote(job, self.cfg)] = _Task(actor, job, tries)

    def wait(self, s: EncodeSummary) -> list[Finished]:
        """Finished batches (none when every finished one was lost and resent)."""
        ray = self.ray
        done, rest = ray.wait(list(self.tasks), num_returns=1)
        if rest:  # collect whatever else is finished too: fewer round trips through the loop
            done += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        out = []
        for ref in done:
            task = self.tasks.pop(ref)
            parts = task.job.parts
            try:
                outcome, counted = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                self._bury(task.actor)
                if task.tries < self.rc.retry_lost:
                    self.s.batches_resent += 1
                    self._send(task.job, task.tries + 1)
                else:
                    out.append(Finished(parts, LostBatch(
                        f"Ray actor died mid-batch ({type(exc).__name__}); "
                        f"partitions {[x.id for x in parts]} left for a rerun")))
                continue
            except ray.exceptions.RayTaskError as exc:  # e.g. an outcome that could not be pickled
                outcome, counted = EncoderError(f"Ray task failed: {exc}"), EncodeSummary()
            if task.actor in self.load:
                self.load[task.actor] -= 1
            s.llm_calls += counted.llm_calls
            s.seconds_llm += counted.seconds_llm
            s.seconds_encoder += counted.seconds_encoder
            out.append(Finished(parts, outcome))
        return out

    def _bury(self, actor: Any) -> None:
        """Forget a dead actor (once, however many of its batches report it) and replace it."""
        if actor not in self.load:
            return
        del self.load[actor]
        self.s.actor_deaths += 1
        if self.restarts_left > 0:
            self.restarts_left -= 1
            fresh = self.new_actor()
            self.load[fresh] = 0
            self.every.append(fresh)
        elif not self.load:
            raise EncoderError(f"every Ray actor died ({self.s.actor_deaths}) and none may be "
                               "restarted; committed batches are kept, a rerun continues")

    def close(self) -> None:
        for actor in self.every:
            self.ray.kill(actor)


def actor_gpus(rc: RayEncodeConfig, cluster: dict[str, float]) -> float:
    """GPUs per actor (1 when the cluster has any, unless set); refuse a pool that cannot fit,
    since its last actors would wait for resources forever."""
    gpus = rc.gpus_per_actor if rc.gpus_per_actor is not None else (1.0 if cluster.get("GPU") else 0.0)
    for name, per_actor in (("CPU", rc.actor_cpus), ("GPU", gpus)):
        if per_actor and rc.actors * per_actor > cluster.get(name, 0):
            raise ConfigError(f"{rc.actors} actors × {per_actor:g} {name} do not fit the Ray "
                              f"cluster ({cluster.get(name, 0):g} {name} in all)")
    return gpus


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingDependency("ray", "scale") from None
    return ray


def run_ray_encode(ledger: Ledger, make_backends: Backends, cfg: EncodeConfig | None = None,
                   rc: RayEncodeConfig | None = None, *,
                   progress: bool | None = None, on_progress: OnProgress | None = None) -> RayEncodeSummary:
    """Encode every ready partition on Ray actors; ``make_backends`` runs once in each actor.

    Uses the Ray instance already initialized in this process if there is one, else
    ``ray.init(rc.address)`` (shut down again at the end).
    """
    ray = _import_ray()
    cfg, rc = cfg or EncodeConfig(), rc or RayEncodeConfig()
    started_here = not ray.is_initialized()
    if started_here:
        # The dashboard is an option of a Ray we start, not of one we join.
        extra = {"include_dashboard": False} if rc.address == "local" else {}
        ray.init(address=rc.address, log_to_driver=False, **extra)
    pool = None
    try:
        gpus = actor_gpus(rc, ray.cluster_resources())
        actor_cls = ray.remote(EncoderActor).options(num_cpus=rc.actor_cpus, num_gpus=gpus,
                                                     max_restarts=0)
        new_actor = lambda: actor_cls.remote(make_backends)  # noqa: E731
        actors = [new_actor() for _ in range(rc.actors)]
        s = RayEncodeSummary(ray_address=rc.address if started_here else "(initialized)",
                             actors=rc.actors, actor_cpus=rc.actor_cpus, gpus_per_actor=gpus)
        pool = _ActorPool(ray, new_actor, actors, rc, cfg, s)
        try:
            infos = ray.get([a.describe.remote() for a in actors], timeout=rc.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise EncoderError(f"Ray actors not started within {rc.start_timeout_s:g} s") from None
        except ray.exceptions.RayActorError as exc:  # the factory raised in the actor (a bad spec)
            # Ray's message is the actor's whole traceback; its last line names the error.
            raise EncoderError("a Ray actor could not load its backends: "
                               + str(exc).strip().splitlines()[-1]) from None
        ids = {(i["llm_id"], i["encoder_id"], i["dim"]) for i in infos}
        if len(ids) != 1:  # e.g. nodes holding different checkpoints under one path
            raise ConfigError(f"the actors' backends differ: {sorted(ids)}")
        backends = _Backends(infos[0], actors[0], ray)
        return encode_loop(ledger, pool, backends, backends, cfg, progress=progress, summary=s,
                           on_progress=on_progress, params={"ray": rc.model_dump(), "gpus_per_actor": gpus})
    finally:
        if pool is not None:
            pool.close()
        if started_here:
            ray.shutdown()
