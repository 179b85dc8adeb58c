"""Training labels: the rule a user states for which events are samples and what their label is.

Rules (``LabelRule.kind``; ``liber train --label-rule``):

* ``rating`` (default, ``rating>=4``): every rated event is a sample, label ``rating >= threshold``
  — the MovieLens setting; unrated events are history only.
* ``events`` (``events:click,purchase/impression``): events of a *positive* type are positives;
  events of a *negative* type (impressions) are negatives unless the same user acted positively on
  the same item at or after that moment (a clicked impression is not a negative: the click is the
  positive sample). Other events are history only.
* ``sampled`` (``sampled:purchase:4``): for positive-only logs. Events of a positive type (every
  event when none is named) are positives; each gets ``ratio`` negatives at the same moment ``t``,
  drawn with a fixed seed from the items seen in the log (by anyone) strictly before ``t`` that
  this user had not interacted with before ``t`` and that are not the positive's item: an item no
  one had seen yet could not have been recommended then, and one the user already knew says
  nothing about a fresh choice. A pool too small gives fewer negatives (counted).
* ``label``: every event with an explicit ``label`` (0/1 column at ingest) is a sample with it.

Whatever the rule, a sample is (user, candidate item, t, label) and sees only what the shared
builder (``samples``) gives any sample: partitions sealed strictly before ``t`` and the events
before ``t`` — the same definitions the scorer uses, so the rules keep the no-leak guarantee and
the train/serve equality. A sampled negative shares its positive's user and ``t``, so it shares
its split too (``group``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from liber_features.errors import ConfigError, LedgerError

__all__ = ["LabelRule", "Labelled", "label_samples"]

_SPEC = re.compile(r"^(?P<kind>rating|events|sampled|label)"
                   r"(?:>=(?P<threshold>[-+0-9.eE]+))?"
                   r"(?::(?P<pos>[\w,-]*))?(?:/(?P<neg>[\w,-]*))?(?::(?P<ratio>\d+))?$")


class LabelRule(BaseModel):
    """Which events are samples and their labels (module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["rating", "events", "sampled", "label"] = "rating"
    threshold: float = Field(4.0, description="rating: label = rating >= this")
    positive: tuple[str, ...] = Field(("click", "cart", "purchase"),
                                      description="events, sampled: positive event types (sampled: () = every event)")
    negative: tuple[str, ...] = Field(("impression",), description="events: negative event types")
    ratio: int = Field(4, ge=1, le=100, description="sampled: negatives drawn per positive")
    seed: int = Field(0, description="sampled: the generator's seed (the draws are reproducible)")

    @classmethod
    def parse(cls, spec: str) -> LabelRule:
        """``rating[>=X]``, ``events[:POS,…[/NEG,…]]``, ``sampled[:POS,…][:RATIO]`` or ``label``."""
        m = _SPEC.match(spec.replace(" ", "").lower())
        if m is None:
            raise ConfigError(f"label rule {spec!r}: expected rating[>=X], events[:POS,...[/NEG,...]], "
                              "sampled[:POS,...][:RATIO] or label")
        kind = m["kind"]
        allowed = {"rating": {"threshold"}, "events": {"pos", "neg"}, "sampled": {"pos", "ratio"}, "label": set()}
        extra = [k for k in ("threshold", "pos", "neg", "ratio") if m[k] is not None and k not in allowed[kind]]
        if extra:
            raise ConfigError(f"label rule {spec!r}: '{kind}' takes no {', '.join(extra)}")
        values: dict[str, Any] = {"kind": kind}
        if m["threshold"] is not None:
            values["threshold"] = float(m["threshold"])
        if m["pos"] is not None:
            values["positive"] = tuple(t for t in m["pos"].split(",") if t)
        elif kind == "sampled":
            values["positive"] = ()
        if m["neg"] is not None:
            values["negative"] = tuple(t for t in m["neg"].split(",") if t)
        if m["ratio"] is not None:
            values["ratio"] = int(m["ratio"])
        return cls(**values)

    def describe(self) -> str:
        """The rule in words, as errors, summaries and the model card name it."""
        if self.kind == "rating":
            return f"rating >= {self.threshold:g}"
        if self.kind == "events":
            return (f"{'/'.join(self.positive)} positive, {'/'.join(self.negative)} without a later "
                    "positive negative")
        if self.kind == "sampled":
            return (f"{'/'.join(self.positive) or 'every event'} positive, {self.ratio} sampled "
                    f"negatives each (seed {self.seed})")
        return "the events' explicit label"


@dataclass
class Labelled:
    """The samples a rule makes from an events frame (N samples, in the frame's order)."""

    rows: np.ndarray  # (N,) position in the events frame of the event the sample stands at
    item_id: np.ndarray  # (N,) the candidate item (a sampled negative's differs from its event's)
    label: np.ndarray  # (N,) float32
    group: np.ndarray  # (N,) samples of one group share a split: a positive and its negatives
    counts: dict[str, int] = field(default_factory=dict)


def label_samples(ev: pd.DataFrame, rule: LabelRule) -> Labelled:
    """Apply ``rule`` to ``ev`` (every event, sorted by user, ts, event id; columns event_id,
    user_id, item_id, ts_us, rating, event_type, label). Raises ``LedgerError`` naming the rule
    when it labels nothing."""
    kind = ev.event_type.to_numpy(dtype=object)
    if rule.kind == "rating":
        rows = np.flatnonzero(ev.rating.notna().to_numpy())
        label = ev.rating.to_numpy()[rows] >= rule.threshold
    elif rule.kind == "label":
        rows = np.flatnonzero(ev.label.notna().to_numpy())
        label = ev.label.to_numpy()[rows] == 1.0
    elif rule.kind == "events":
        pos = np.isin(kind, rule.positive)
        neg = np.isin(kind, rule.negative) & ~pos
        last = ev[pos].groupby(["user_id", "item_id"]).ts_us.max().rename("last_positive")
        later = ev[["user_id", "item_id"]].merge(last, how="left", left_on=["user_id", "item_id"],
                                                 right_index=True)["last_positive"].to_numpy(dtype=float)
        neg &= ~(later >= ev.ts_us.to_numpy())  # a clicked impression is no negative (NaN: never clicked)
        rows = np.flatnonzero(pos | neg)
        label = pos[rows]
    else:
        return _sampled(ev, rule, kind)
    if len(rows) == 0:
        raise _no_labels(ev, rule)
    n = len(rows)
    return Labelled(rows, ev.item_id.to_numpy()[rows], label.astype(np.float32), np.arange(n),
                    {"unlabelled": len(ev) - n, "sampled_negatives": 0, "short_pools": 0})


def _no_labels(ev: pd.DataFrame, rule: LabelRule) -> LedgerError:
    if ev.empty:
        return LedgerError(f"no labels under the rule '{rule.describe()}': the ledger holds no events: "
                           "run `liber ingest` first")
    types = sorted({str(t) for t in ev.event_type.dropna()})
    return LedgerError(f"no labels under the rule '{rule.describe()}' in the ledger's {len(ev)} events "
                       f"({int(ev.rating.notna().sum())} rated, event types: {', '.join(types) or 'none'}, "
                       f"{int(ev.label.notna().sum())} with an explicit label): choose another --label-rule")


def _sampled(ev: pd.DataFrame, rule: LabelRule, kind: np.ndarray) -> Labelled:
    pos = np.isin(kind, rule.positive) if rule.positive else np.ones(len(ev), bool)
    positives = np.flatnonzero(pos)
    if len(positives) == 0:
        raise _no_labels(ev, rule)
    users, items, ts = ev.user_id.to_numpy(), ev.item_id.to_numpy(), ev.ts_us.to_numpy()
    # The items in order of first appearance: those seen strictly before t are a prefix.
    first = ev.groupby("item_id", sort=True).ts_us.min().sort_values(kind="stable")
    pool, pool_ts = first.index.to_numpy(), first.to_numpy()
    rng = np.random.default_rng(rule.seed)
    rows, cand, label, group = [], [], [], []
    short = 0
    seen: dict[str, set] = {}
    cursor: dict[str, int] = {}
    starts = ev.groupby("user_id", sort=False).indices
    for g, i in enumerate(positives):
        u, t = users[i], ts[i]
        # The user's items before t: events are in (user, ts) order, so a cursor walks them once.
        mine, at = seen.setdefault(u, set()), cursor.get(u, 0)
        idx = starts[u]
        while at < len(idx) and ts[idx[at]] < t:
            mine.add(items[idx[at]])
            at += 1
        cursor[u] = at
        rows.append(i)
        cand.append(items[i])
        label.append(1.0)
        group.append(g)
        n_pool = int(np.searchsorted(pool_ts, t, side="left"))
        picked: list[str] = []
        for _ in range(rule.ratio * 20):  # rejection sampling, bounded: a pool may be nearly all known
            if len(picked) == rule.ratio or n_pool == 0:
                break
            item = pool[rng.integers(n_pool)]
            if item != items[i] and item not in mine and item not in picked:
                picked.append(item)
        short += len(picked) < rule.ratio
        rows += [i] * len(picked)
        cand += picked
        label += [0.0] * len(picked)
        group += [g] * len(picked)
    n = len(rows)
    return Labelled(np.asarray(rows, np.int64), np.asarray(cand, dtype=object), np.asarray(label, np.float32),
                    np.asarray(group, np.int64), {"unlabelled": len(ev) - len(positives),
                                                  "sampled_negatives": n - len(positives), "short_pools": short})
