"""``liber report``: what the pipeline holds and did, gathered from its own records only.

Every number comes from the ledger (events, partitions, caches, quarantine, interests, vectors,
runs), the Feast online store (read through ``get_online_features``), the model card and the JSON
that ``liber evaluate`` and ``bench/`` write. Nothing is recomputed from raw data and nothing
reaches the network. A part that is missing (no model, no benchmark, no applied Feast repo) is
carried as a *note* and stated on the page; it never stops the report.

:func:`gather` collects a :class:`~liber_features.report.data.ReportData`; :mod:`.html` turns it
into ``index.html`` and :mod:`.plots` draws the PNGs beside it (:func:`write_report` calls both).
Neither imports this module: the shared type lives in :mod:`.data`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select

from liber_features.features.census import ONLINE_BATCH as census_batch
from liber_features.features.memory import latest_versions
from liber_features.ledger.runs import encode_domains
from liber_features.ledger.store import Ledger, now_us
from liber_features.ledger.store import events as events_t
from liber_features.ledger.store import interests as int_t
from liber_features.ledger.store import partitions as parts_t
from liber_features.ledger.store import quarantine as q_t
from liber_features.ledger.store import runs as runs_t
from liber_features.ledger.store import user_cache as cache_t
from liber_features.ledger.store import vectors as vec_t
from liber_features.report.data import ReportData, Timeline
from liber_features.uil.prompts import preset_prompt_versions

__all__ = ["ONLINE_BATCH", "default_timeline_users", "gather", "write_report"]

ONLINE_BATCH = census_batch  # users per get_online_features call (features/census.py)
TIMELINE_PARTITIONS = 8  # newest partitions shown per user: a page, not a dump


def _runs(conn, kind: str) -> list[dict[str, Any]]:
    rows = conn.execute(select(runs_t.c.status, runs_t.c.summary).where(runs_t.c.kind == kind)
                        .order_by(runs_t.c.id)).all()
    return [{"status": r.status, **json.loads(r.summary or "{}")} for r in rows]


def _intake_runs(conn) -> list[dict[str, Any]]:
    """One row per ingest or stream run, oldest first: what it read, accepted and skipped as a
    duplicate (an event id the ledger or the same input already held). A failed run wrote nothing,
    so its counts are empty (None), not zeros."""
    rows = conn.execute(select(runs_t.c.id, runs_t.c.kind, runs_t.c.status, runs_t.c.started_us,
                               runs_t.c.params, runs_t.c.summary)
                        .where(runs_t.c.kind.in_(("ingest", "stream"))).order_by(runs_t.c.id)).all()
    out = []
    for r in rows:
        params, summary = json.loads(r.params or "{}"), json.loads(r.summary or "{}")
        ok = r.status == "ok"
        out.append({"run_id": int(r.id), "kind": r.kind, "status": r.status, "started_us": int(r.started_us),
                    "source": str(params.get("source", "")),
                    # ingest counts rows read, stream counts messages fetched
                    "read": summary.get("read", summary.get("fetched")) if ok else None,
                    "accepted": summary.get("accepted") if ok else None,
                    "duplicates": summary.get("duplicates") if ok else None,
                    "quarantined": summary.get("quarantined") if ok else None})
    return out


def _data(conn) -> tuple[dict[str, int], list[tuple[str, str, int]]]:
    def one(stmt) -> int:
        return int(conn.execute(stmt).scalar() or 0)

    ingests = _runs(conn, "ingest")
    data = {
        "events_accepted": one(select(func.count()).select_from(events_t)),
        # Duplicates are not stored (that is the point of deduplication): the runs counted them.
        "duplicates": sum(int(r.get("duplicates", 0)) for r in ingests),
        "quarantined": one(select(func.count()).select_from(q_t)),
        "users": one(select(func.count()).select_from(cache_t)),
        "partitions_sealed": one(select(func.count()).select_from(parts_t)),
        "events_in_caches": one(select(func.coalesce(func.sum(cache_t.c.n_cached), 0))),
        "ingest_runs": len(ingests),
    }
    reasons = conn.execute(select(q_t.c.field, q_t.c.reason, func.count().label("n"))
                           .group_by(q_t.c.field, q_t.c.reason)
                           .order_by(func.count().desc(), q_t.c.field, q_t.c.reason).limit(5)).all()
    return data, [(r.field, r.reason, int(r.n)) for r in reasons]


def _cost(conn) -> dict[str, Any]:
    encodes = _runs(conn, "encode")
    done = (select(func.count()).select_from(int_t.join(parts_t, parts_t.c.id == int_t.c.partition_id))
            .where(int_t.c.status == "done"))
    summaries = int(conn.execute(done).scalar() or 0)
    # Partition 0 has no predecessor: its shift is a fixed text, not an LLM call (interest.py).
    shifts = int(conn.execute(done.where(parts_t.c.seq > 0)).scalar() or 0)
    still_failed = int(conn.execute(select(func.count()).select_from(int_t)
                                    .where(int_t.c.status == "failed")).scalar() or 0)
    failed_tries = sum(int(r.get("failed", 0)) for r in encodes)
    # The naive design re-summarises the user's whole history on every new event: one LLM call
    # per event. Counted over the same events LIBER encoded — those of the partitions with a done
    # summary (the rows ``summaries`` counts) — not over every event accepted, which would credit
    # LIBER with events still in caches or in partitions not encoded yet.
    naive = int(conn.execute(select(func.coalesce(func.sum(parts_t.c.n_events), 0)).select_from(
        int_t.join(parts_t, parts_t.c.id == int_t.c.partition_id)).where(int_t.c.status == "done")).scalar())
    tok = conn.execute(select(func.coalesce(func.sum(int_t.c.prompt_tokens), 0),
                              func.coalesce(func.sum(int_t.c.completion_tokens), 0))
                       .where(int_t.c.status == "done")).one()
    seconds_llm = sum(float(r.get("seconds_llm", 0.0)) for r in encodes)
    parts_done = sum(int(r.get("partitions_done", 0)) for r in encodes)
    return {
        "summaries": summaries, "shifts": shifts, "failed_tries": failed_tries,
        # Every failed try is retried by the next run, except the last try of a partition that
        # is still failed: that one waits for the next run.
        "retried": max(failed_tries - still_failed, 0), "still_failed": still_failed,
        "llm_calls": sum(int(r.get("llm_calls", 0)) for r in encodes),
        "naive_calls": naive,
        "prompt_tokens": int(tok[0]), "completion_tokens": int(tok[1]),
        "seconds_llm": round(seconds_llm, 1), "partitions_done": parts_done,
        "seconds_per_partition": round(seconds_llm / parts_done, 3) if parts_done else None,
        "encode_runs": len(encodes), "encode_runs_failed": sum(r["status"] == "failed" for r in encodes),
    }


def _newest_vectors(conn, versions) -> dict[str, list[int]]:
    """user -> created_us of each encoded partition's vector, by seq (the encoded prefix)."""
    if versions is None:
        return {}
    pv, llm_id, enc_id = versions
    q = (select(parts_t.c.user_id, parts_t.c.seq, vec_t.c.created_us)
         .select_from(parts_t.join(int_t, int_t.c.partition_id == parts_t.c.id)
                      .join(vec_t, vec_t.c.interest_id == int_t.c.id))
         .where(int_t.c.prompt_version == pv, int_t.c.llm_id == llm_id, int_t.c.status == "done",
                vec_t.c.encoder_id == enc_id).order_by(parts_t.c.user_id, parts_t.c.seq))
    out: dict[str, list[int]] = {}
    for r in conn.execute(q):
        out.setdefault(r.user_id, []).append(int(r.created_us))
    return out


def default_timeline_users(encoded: dict[str, list[int]], sealed: dict[str, int], n_users: int) -> list[str]:
    """The users section 3 shows when none are named: those with the most *encoded* partitions
    (a timeline of users whose partitions were never encoded is a column of "not encoded yet"),
    then the most sealed ones, ties by id so the choice is stable. Only when nobody is encoded
    yet, the users with the most sealed partitions."""
    pool = encoded or sealed
    return sorted(pool, key=lambda u: (-len(encoded.get(u, ())), -sealed.get(u, 0), u))[:n_users]


def _timelines(conn, users: list[str] | None, versions, n_users: int,
               encoded: dict[str, list[int]]) -> list[Timeline]:
    counts = dict(conn.execute(select(parts_t.c.user_id, func.count()).group_by(parts_t.c.user_id)).all())
    if not users:
        users = default_timeline_users(encoded, counts, n_users)
    out = []
    for user in users:
        j = int_t.c.partition_id == parts_t.c.id
        if versions is not None:
            j = j & (int_t.c.prompt_version == versions[0]) & (int_t.c.llm_id == versions[1])
        rows = conn.execute(
            select(parts_t.c.seq, parts_t.c.sealed_at_us, parts_t.c.n_events, int_t.c.status,
                   int_t.c.summary, int_t.c.shift)
            .select_from(parts_t.outerjoin(int_t, j)).where(parts_t.c.user_id == user)
            .order_by(parts_t.c.seq.desc()).limit(TIMELINE_PARTITIONS)).all()
        out.append(Timeline(user, int(counts.get(user, 0)), [r._asdict() for r in reversed(rows)]))
    return out


def _online(ledger: Ledger, repo: Path, users: list[str], versions, versions_by_user: dict[str, list[int]],
            now: int, rd: ReportData) -> None:
    """Partition counts and encoder versions served for *this* ledger, through Feast; rows another
    ledger (or another encoder version) wrote are named in a note, not counted
    (``features/census.py``); a note when the store is unreadable. A data directory holding another
    ledger's files is refused (LedgerMismatch), as every reader refuses it."""
    import os

    from liber_features.features.ownership import check
    from liber_features.features.repo import LONG_TERM_VIEW, data_file

    yaml_path = Path(os.environ.get("FEAST_FS_YAML_FILE_PATH") or repo / "feature_store.yaml")
    if not yaml_path.exists():  # checked first: importing Feast costs seconds
        rd.notes["online"] = f"no Feast repo at {repo} ({yaml_path} missing): online figures not shown"
        return
    check(Path(data_file(f"{LONG_TERM_VIEW}.parquet", repo_dir=repo)).parent, ledger)
    from liber_features.features.census import online_census
    from liber_features.features.repo import open_store

    try:
        census = online_census(open_store(repo), ledger, users, versions)
    except Exception as exc:  # ours or Feast's zoo of types: the page says which, the report goes on
        rd.notes["online"] = (f"the Feast online store of {repo} could not be read "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})")
        return
    rd.coverage["online"] = census.partitions_online
    rd.coverage["users_online"] = census.users_online
    rd.online_versions = dict(census.versions.most_common())
    if census.not_counted():
        rd.notes["online_not_counted"] = census.not_counted()
    ages = [now - versions_by_user[u][c - 1] for u, c in census.counts.items()
            if len(versions_by_user.get(u, [])) >= c]
    rd.online_age_s = np.asarray(ages, dtype=np.float64) / 1e6


def _json(path: Path | None, label: str, rd: ReportData, section: str) -> dict[str, Any] | None:
    if path is None:  # said in words: the page once read "... at None"
        rd.notes[section] = f"no {label}: no file given"
        return None
    if not path.exists():
        rd.notes[section] = f"no {label} at {path}"
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        rd.notes[section] = f"{label} at {path} is unreadable: {exc}"
        return None


def gather(ledger: Ledger, *, repo: Path | None, model_dir: Path | None, evaluation: Path | None,
           bench_dir: Path | None, users: list[str] | None = None, n_users: int = 3) -> ReportData:
    """Everything the page shows; parts that are missing become notes (see module docstring)."""
    now = now_us()
    with ledger.engine.connect() as conn:
        data, reasons = _data(conn)
        per_user = dict(conn.execute(select(cache_t.c.user_id, func.count(parts_t.c.id)).select_from(
            cache_t.outerjoin(parts_t, parts_t.c.user_id == cache_t.c.user_id))
            .group_by(cache_t.c.user_id)).all())
        seals = np.fromiter(conn.execute(select(parts_t.c.sealed_at_us)).scalars(), dtype=np.int64)
        versions = latest_versions(ledger, required=False)
        cost = _cost(conn)
        intake = _intake_runs(conn)
        vecs = _newest_vectors(conn, versions)
        timelines = _timelines(conn, users, versions, n_users, vecs)
    rd = ReportData(
        generated_us=now, ledger_url=ledger.safe_url(), data=data, top_reasons=reasons,
        partitions_per_user=np.asarray(sorted(per_user.values()), dtype=np.int64),
        seal_times_us=np.sort(seals), cost=cost,
        coverage={"sealed": data["partitions_sealed"], "encoded": sum(len(v) for v in vecs.values()),
                  "online": None, "users_online": None},
        encoded_age_s=np.asarray([now - v[-1] for v in vecs.values()], dtype=np.float64) / 1e6,
        online_age_s=None, timelines=timelines, versions=versions, intake_runs=intake)
    rd.cost["domains"] = ", ".join(encode_domains(ledger, preset_prompt_versions())) or "none"
    if versions is None:
        rd.notes["encode"] = "no successful encode run in this ledger: run `liber encode`"
    if repo is None:
        rd.notes["online"] = "no Feast repo given (--repo): online figures not shown"
    else:
        _online(ledger, Path(repo), sorted(per_user), versions, vecs, now, rd)
    rd.evaluation = _json(evaluation, "evaluation (liber evaluate)", rd, "evaluation")
    rd.bench_online = _json(bench_dir / "bench_online.json" if bench_dir else None,
                            "online benchmark (bench/bench_online.py)", rd, "bench")
    if model_dir is None:
        rd.notes["model"] = "no model card: no model folder given (liber train + liber export)"
    elif not (Path(model_dir) / "model_card.json").exists():
        rd.notes["model"] = f"no model card at {model_dir} (liber train + liber export)"
    else:
        from liber_features.errors import ConfigError
        from liber_features.model.card import ModelCard

        try:
            rd.card = ModelCard.load(model_dir)
        except ConfigError as exc:
            rd.notes["model"] = str(exc)
    return rd


def write_report(rd: ReportData, out: Path) -> dict[str, Any]:
    """``out/index.html`` and its PNGs; returns the paths and the time it took."""
    from liber_features.report.html import render
    from liber_features.report.plots import draw_all

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    images = draw_all(rd, out)
    page = out / "index.html"
    page.write_text(render(rd, images), encoding="utf-8")
    return {"report": str(page), "images": len(images), "seconds_draw": round(time.perf_counter() - t0, 2)}
