"""What the online store holds *for this ledger*: ``liber report`` and ``liber status --online`` count it.

One Feast project's online store can hold rows another ledger wrote (a second dataset materialized
into the same repo: user 5 of one dataset overwrites user 5 of the other) and rows of an older
encoder version. Counting every row found for this ledger's user ids, as the report did, added
them to this ledger's totals. Here each long-term row read for one of the ledger's users is
attributed by its content, which the ledger can reproduce: a row is this ledger's when its
``encoder_version`` is one the ledger encoded with and its ``latest_summary`` is the ledger's
summary of partition ``partition_count - 1`` in that version. Everything else is named, not
counted: rows of users the ledger has no partitions for, rows that match none of the ledger's
versions or texts (another ledger's), and this ledger's rows of an encoder version other than the
one reported on.

Why content and not a ``ledger_id`` feature on the views: it needs no change to the feature
views' schema (nothing to re-apply, no new column in every writer and sample table), it also
recognises rows written before ledgers had an identity, and it costs one string feature more per
online read, which the report already batches. Two ledgers whose summaries of a user's partition
are identical wrote the same row; calling it this ledger's is then exact.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from liber_features.features.memory import encoder_version, latest_versions
from liber_features.features.repo import LONG_TERM_VIEW, LiberFeatureConfig
from liber_features.ledger.store import Ledger
from liber_features.ledger.store import interests as int_t
from liber_features.ledger.store import partitions as parts_t
from liber_features.ledger.store import user_cache as cache_t
from liber_features.ledger.store import vectors as vec_t

if TYPE_CHECKING:
    from feast import FeatureStore

__all__ = ["ONLINE_BATCH", "OnlineCensus", "census_of_ledger", "online_census"]

ONLINE_BATCH = 2000  # users per get_online_features call: bounded memory and request size
_FEATURES = ("partition_count", "encoder_version", "latest_summary")


@dataclass
class OnlineCensus:
    """Long-term rows online for a ledger's users, this ledger's counted, the rest named."""

    version: str | None  # the encoder_version counted (the newest successful encode's)
    counts: dict[str, int] = field(default_factory=dict)  # user -> partition_count, this ledger's rows
    versions: Counter[str] = field(default_factory=Counter)  # this ledger's rows by encoder_version
    other_version: int = 0  # this ledger's rows of another of its encoder versions
    other_ledger: int = 0  # rows no version or text of this ledger produced
    unknown_users: int = 0  # rows of users this ledger has no partitions for

    @property
    def partitions_online(self) -> int:
        return sum(self.counts.values())

    @property
    def users_online(self) -> int:
        return len(self.counts)

    def as_dict(self) -> dict[str, int]:
        return {"users_online": self.users_online, "partitions_online": self.partitions_online,
                "online_other_version": self.other_version, "online_other_ledger": self.other_ledger,
                "online_unknown_users": self.unknown_users}

    def summary(self) -> dict[str, int | str]:
        """The counts and the sentence naming what was not counted, as ``liber status`` prints them."""
        return {**self.as_dict(), "online_not_counted": self.not_counted() or "nothing"}

    def not_counted(self) -> str | None:
        """One sentence naming every row found but not counted; None when there is none."""
        parts = [f"{n} {what}" for n, what in (
            (self.other_ledger, "rows written from another ledger (versions or texts this ledger never made)"),
            (self.unknown_users, "rows of users this ledger has no partitions for"),
            (self.other_version, "rows of this ledger in another encoder version")) if n]
        return "online but not counted for this ledger: " + ", ".join(parts) if parts else None


def _ledger_texts(ledger: Ledger, users: list[str]) -> tuple[dict[str, int], dict[tuple[str, str, int], str]]:
    """Partitions per user, and (user, encoder_version, seq) -> summary of every done output."""
    q = (select(parts_t.c.user_id, parts_t.c.seq, int_t.c.prompt_version, int_t.c.llm_id,
                vec_t.c.encoder_id, int_t.c.summary)
         .select_from(parts_t.join(int_t, int_t.c.partition_id == parts_t.c.id)
                      .join(vec_t, vec_t.c.interest_id == int_t.c.id))
         .where(int_t.c.status == "done"))
    parts: dict[str, int] = {}
    texts: dict[tuple[str, str, int], str] = {}
    with ledger.engine.connect() as conn:
        for lo in range(0, len(users), 5000):  # bounded IN lists (SQLite's variable limit)
            chunk = users[lo:lo + 5000]
            parts.update(conn.execute(select(parts_t.c.user_id, func.count()).where(
                parts_t.c.user_id.in_(chunk)).group_by(parts_t.c.user_id)).all())
            for r in conn.execute(q.where(parts_t.c.user_id.in_(chunk))):
                key = (r.user_id, encoder_version(r.prompt_version, r.llm_id, r.encoder_id), int(r.seq))
                texts[key] = r.summary
    return parts, texts


def online_census(store: FeatureStore, ledger: Ledger, users: list[str],
                  versions: tuple[str, str, str] | None) -> OnlineCensus:
    """Read ``users``' long-term rows online and attribute each (module docstring).

    ``versions``: the (prompt, LLM, text encoder) reported on; None (nothing encoded) counts no row.
    """
    census = OnlineCensus(encoder_version(*versions) if versions else None)
    parts, texts = _ledger_texts(ledger, users)
    feats = [f"{LONG_TERM_VIEW}:{name}" for name in _FEATURES]
    for i in range(0, len(users), ONLINE_BATCH):
        batch = users[i:i + ONLINE_BATCH]
        got = store.get_online_features(features=feats, entity_rows=[{"user_id": u} for u in batch]).to_dict()
        for user, count, version, summary in zip(batch, got["partition_count"], got["encoder_version"],
                                                 got["latest_summary"]):
            count = int(count or 0)
            if count <= 0:
                continue
            if not parts.get(user):
                census.unknown_users += 1
            elif texts.get((user, version, count - 1)) != summary or count > parts[user]:
                census.other_ledger += 1
            elif version != census.version:
                census.other_version += 1
                census.versions[version] += 1
            else:
                census.counts[user] = count
                census.versions[version] += 1
    return census


def census_of_ledger(store: FeatureStore, ledger: Ledger) -> OnlineCensus:
    """:func:`online_census` of every user of the ledger, counting its newest encode's version
    (``liber status --online``)."""
    # None: nothing encoded, no row can be ours. At the views' D: a D′ table's rows are counted.
    versions = latest_versions(ledger, required=False, dim=LiberFeatureConfig.from_env().vector_dim)
    with ledger.engine.connect() as conn:
        users = sorted(conn.execute(select(cache_t.c.user_id)).scalars())
    return online_census(store, ledger, users, versions)
