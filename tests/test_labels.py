"""Training label rules (training/labels.py): which events are samples, their labels, the negatives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from liber_features.errors import ConfigError, LedgerError
from liber_features.training.labels import LabelRule, label_samples


def frame(rows: list[tuple]) -> pd.DataFrame:
    """(user, item, ts, rating, event_type, label) rows → the events frame, sorted like the ledger's."""
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "ts_us", "rating", "event_type", "label"])
    df.insert(0, "event_id", [f"e{i:02d}" for i in range(len(df))])
    df["rating"], df["label"] = df.rating.astype(float), df.label.astype(float)
    return df.sort_values(["user_id", "ts_us", "event_id"], kind="stable").reset_index(drop=True)


def test_rating_rule_is_the_old_label() -> None:
    ev = frame([("u", "a", 1, 5.0, None, None), ("u", "b", 2, None, "view", None), ("u", "c", 3, 3.5, None, None),
                ("v", "a", 1, 4.0, None, None)])
    got = label_samples(ev, LabelRule())
    assert got.rows.tolist() == [0, 2, 3] and got.item_id.tolist() == ["a", "c", "a"]
    assert got.label.tolist() == [1.0, 0.0, 1.0] and got.group.tolist() == [0, 1, 2]
    assert got.counts["unlabelled"] == 1
    assert label_samples(ev, LabelRule(threshold=3.5)).label.tolist() == [1.0, 1.0, 1.0]


def test_events_rule_clicked_impressions_are_not_negatives() -> None:
    ev = frame([
        ("u", "a", 1, None, "impression", None),  # clicked at 2: not a negative
        ("u", "a", 2, None, "click", None),       # positive
        ("u", "b", 3, None, "impression", None),  # never acted on: negative
        ("u", "c", 4, None, "purchase", None),    # positive
        ("u", "c", 5, None, "impression", None),  # shown again after the purchase, not clicked: negative
        ("u", "d", 6, None, "view", None),        # history only
        ("u", "e", 7, None, "impression", None),  # clicked in the same microsecond: not a negative
        ("u", "e", 7, None, "click", None),
    ])
    got = label_samples(ev, LabelRule.parse("events:click,purchase/impression"))
    assert list(zip(got.item_id, ev.event_type[got.rows], got.label)) == [
        ("a", "click", 1.0), ("b", "impression", 0.0), ("c", "purchase", 1.0), ("c", "impression", 0.0),
        ("e", "click", 1.0)]
    assert got.counts["unlabelled"] == 3


def test_sampled_negatives_are_point_in_time_reproducible_and_counted() -> None:
    ev = frame([
        ("x", "i1", 1, None, "view", None), ("x", "i2", 2, None, "view", None), ("x", "i3", 3, None, "view", None),
        ("x", "i4", 4, None, "view", None), ("x", "i5", 9, None, "view", None),  # i5: seen only from t=9
        ("u", "i1", 5, None, "view", None),       # u knows i1 before t=6
        ("u", "i2", 6, None, "purchase", None),   # positive at t=6
        ("u", "i3", 6, None, "view", None),       # same moment: not "before t", may be drawn
        ("u", "i4", 8, None, "purchase", None),
    ])
    rule = LabelRule.parse("sampled:purchase:2")
    got = label_samples(ev, rule)
    users, ts = ev.user_id.to_numpy()[got.rows], ev.ts_us.to_numpy()[got.rows]
    # t=6: pool {i1..i4} (first seen before 6) minus i1 (u's before 6) minus i2 (the positive).
    # t=8: pool {i1..i4} minus i1, i2, i3 (u's before 8) minus i4: empty → no negative, a short pool.
    assert list(zip(users, ts, got.item_id, got.label, got.group)) == [
        ("u", 6, "i2", 1.0, 0), ("u", 6, "i4", 0.0, 0), ("u", 6, "i3", 0.0, 0), ("u", 8, "i4", 1.0, 1)]
    assert got.counts == {"unlabelled": 7, "sampled_negatives": 2, "short_pools": 1}
    again = label_samples(ev, rule)
    assert again.item_id.tolist() == got.item_id.tolist()


def test_sampled_draws_follow_the_seed_and_never_leave_the_pool() -> None:
    rng = np.random.default_rng(3)
    rows = [(f"u{rng.integers(5)}", f"i{rng.integers(40)}", int(t), None, "purchase", None) for t in range(300)]
    ev = frame(rows)
    got = label_samples(ev, LabelRule(kind="sampled", positive=(), ratio=3, seed=1))
    first = ev.groupby("item_id").ts_us.min()
    for r, item, y in zip(got.rows, got.item_id, got.label):
        if y == 0:
            u, t = ev.user_id[r], ev.ts_us[r]
            assert first[item] < t
            assert item not in set(ev.item_id[(ev.user_id == u) & (ev.ts_us < t)]) and item != ev.item_id[r]
    assert got.counts["sampled_negatives"] == int((got.label == 0).sum()) > 600
    other = label_samples(ev, LabelRule(kind="sampled", positive=(), ratio=3, seed=2))
    assert other.item_id.tolist() != got.item_id.tolist()


def test_label_rule_reads_the_explicit_labels() -> None:
    ev = frame([("u", "a", 1, 2.0, "view", 1.0), ("u", "b", 2, None, "view", None), ("u", "c", 3, 5.0, None, 0.0)])
    got = label_samples(ev, LabelRule.parse("label"))
    assert got.item_id.tolist() == ["a", "c"] and got.label.tolist() == [1.0, 0.0]


def test_no_labels_under_a_rule_says_so_and_names_it() -> None:
    ev = frame([("u", "a", 1, None, "view", None), ("u", "b", 2, None, "purchase", None)])
    with pytest.raises(LedgerError, match=r"no labels under the rule 'rating >= 4' in the ledger's 2 events "
                                          r"\(0 rated, event types: purchase, view, 0 with an explicit label\)"):
        label_samples(ev, LabelRule())
    with pytest.raises(LedgerError, match="no labels under the rule 'click positive, impression without"):
        label_samples(ev, LabelRule.parse("events:click"))
    with pytest.raises(LedgerError, match="no labels under the rule 'the events' explicit label': the ledger "
                                          "holds no events"):
        label_samples(ev.iloc[:0], LabelRule(kind="label"))


@pytest.mark.parametrize(("spec", "expected"), [
    ("rating", LabelRule()),
    ("rating>=3.5", LabelRule(threshold=3.5)),
    ("events", LabelRule(kind="events")),
    ("events:purchase/impression,view", LabelRule(kind="events", positive=("purchase",),
                                                  negative=("impression", "view"))),
    ("sampled", LabelRule(kind="sampled", positive=())),
    ("sampled:purchase:4", LabelRule(kind="sampled", positive=("purchase",), ratio=4)),
    ("Sampled:Purchase, Cart", LabelRule(kind="sampled", positive=("purchase", "cart"))),
    ("label", LabelRule(kind="label")),
])
def test_parse(spec, expected) -> None:
    assert LabelRule.parse(spec) == expected


@pytest.mark.parametrize(("spec", "needle"), [
    ("stars>=4", "expected rating"), ("rating:purchase", "'rating' takes no pos"),
    ("label>=1", "'label' takes no threshold"), ("events:click:3", "'events' takes no ratio"),
])
def test_parse_refuses(spec, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        LabelRule.parse(spec)


def test_describe() -> None:
    assert LabelRule().describe() == "rating >= 4"
    assert LabelRule.parse("events").describe() == (
        "click/cart/purchase positive, impression without a later positive negative")
    assert LabelRule.parse("sampled:purchase:2").describe() == "purchase positive, 2 sampled negatives each (seed 0)"


def test_liber_train_refuses_a_malformed_rule_before_opening_the_ledger(tmp_path) -> None:
    from click.testing import CliRunner

    from liber_features.cli.main import cli

    res = CliRunner().invoke(cli, ["train", "--label-rule", "stars>=4", "--ledger", f"sqlite:///{tmp_path}/x.db"])
    assert res.exit_code == 2 and res.stderr.startswith("error: label rule 'stars>=4': expected rating[>=X]")
    assert not (tmp_path / "x.db").exists()
