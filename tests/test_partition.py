"""UBSP: count and time rules, late events, and replay == streaming (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from liber_features.ingest.partition import CachedEvent, PartitionRule, UserState, advance

S = 1_000_000  # one second in µs


def ev(i: int, ts_s: float, item: str | None = None) -> CachedEvent:
    return CachedEvent(ts_us=int(ts_s * S), event_id=f"e{i:05d}", item_id=item or f"i{i}", rating=4.0)


def feed(batches, rule, user="u"):
    state, sealed, late = UserState(user_id=user), [], 0
    for batch in batches:
        out = advance(state, batch, rule)
        state, late = out.state, late + out.late
        sealed += out.sealed
    return state, sealed, late


def test_count_rule_seals_at_k_and_stamps_the_kth_event_time():
    events = [ev(i, 100 + i) for i in range(45)]
    state, sealed, _ = feed([events], PartitionRule(k=20))
    assert [len(p.events) for p in sealed] == [20, 20]
    assert [p.seq for p in sealed] == [0, 1]
    assert sealed[0].sealed_at_us == events[19].ts_us
    assert sealed[1].sealed_at_us == events[39].ts_us
    assert [e.event_id for e in state.cache] == [e.event_id for e in events[40:]]
    assert state.next_seq == 2 and state.last_seal_us == events[39].ts_us


def test_time_rule_seals_before_the_event_that_breaks_the_span():
    rule = PartitionRule(k=100, max_span_s=3600)
    events = [ev(0, 0), ev(1, 600), ev(2, 3000), ev(3, 7200), ev(4, 7300)]
    state, sealed, _ = feed([events], rule)
    assert len(sealed) == 1
    assert [e.event_id for e in sealed[0].events] == ["e00000", "e00001", "e00002"]
    assert sealed[0].rule == "time"
    assert sealed[0].sealed_at_us == 7200 * S  # the moment the rule became true
    assert [e.event_id for e in state.cache] == ["e00003", "e00004"]


def test_late_event_is_counted_and_kept_in_cache_never_rewriting_a_partition():
    rule = PartitionRule(k=3)
    state, sealed, _ = feed([[ev(0, 10), ev(1, 20), ev(2, 30), ev(3, 40)]], rule)
    frozen = sealed[0]
    out = advance(state, [ev(9, 5)], rule)  # older than the last seal (30 s)
    assert out.late == 1 and out.sealed == []
    assert [e.event_id for e in out.state.cache] == ["e00009", "e00003"]
    assert frozen.events == sealed[0].events
    out2 = advance(out.state, [ev(10, 50)], rule)
    assert out2.sealed[0].seq == 1
    # Seal times never go backwards, even though the partition holds an old event.
    assert out2.sealed[0].sealed_at_us >= frozen.sealed_at_us
    assert out2.state.late_total == 1


def test_advance_does_not_mutate_the_input_state():
    state = UserState(user_id="u", cache=[ev(0, 1)])
    advance(state, [ev(1, 2), ev(2, 3)], PartitionRule(k=2))
    assert [e.event_id for e in state.cache] == ["e00000"] and state.next_seq == 0


def test_content_hash_depends_on_content():
    _, a, _ = feed([[ev(0, 1), ev(1, 2)]], PartitionRule(k=2))
    _, b, _ = feed([[ev(0, 1), ev(1, 2, item="other")]], PartitionRule(k=2))
    assert a[0].content_hash != b[0].content_hash


log_strategy = st.lists(st.tuples(st.integers(0, 5_000), st.integers(0, 30)), min_size=0, max_size=120)


@settings(max_examples=200, deadline=None)
@given(log=log_strategy, cuts=st.lists(st.integers(0, 120), max_size=8),
       k=st.integers(1, 12), span=st.one_of(st.none(), st.integers(1, 2_000)))
def test_replay_in_any_consecutive_batches_equals_one_pass(log, cuts, k, span):
    """The log in time order, cut anywhere into batches, seals exactly what one pass seals."""
    events = sorted(ev(i, ts, item=f"i{item}") for i, (ts, item) in enumerate(log))
    rule = PartitionRule(k=k, max_span_s=span)
    bounds = sorted({0, len(events), *(c for c in cuts if c <= len(events))})
    batches = [events[a:b] for a, b in zip(bounds, bounds[1:])]
    one_state, one, one_late = feed([events], rule)
    many_state, many, many_late = feed(batches, rule)
    assert [(p.seq, p.events, p.sealed_at_us, p.rule) for p in many] == \
           [(p.seq, p.events, p.sealed_at_us, p.rule) for p in one]
    assert many_state.cache == one_state.cache and many_late == one_late == 0
    # Nothing lost, nothing duplicated.
    sealed_ids = [e.event_id for p in one for e in p.events] + [e.event_id for e in one_state.cache]
    assert sorted(sealed_ids) == sorted(e.event_id for e in events)


@settings(max_examples=100, deadline=None)
@given(log=log_strategy, k=st.integers(1, 10), seed=st.randoms())
def test_arbitrary_arrival_order_never_loses_or_duplicates_events(log, k, seed):
    events = [ev(i, ts) for i, (ts, _) in enumerate(log)]
    seed.shuffle(events)
    batches = [events[i:i + 7] for i in range(0, len(events), 7)]
    state, sealed, late = feed(batches, PartitionRule(k=k))
    ids = [e.event_id for p in sealed for e in p.events] + [e.event_id for e in state.cache]
    assert sorted(ids) == sorted(e.event_id for e in events)
    assert all(len(p.events) == k for p in sealed)
    stamps = [p.sealed_at_us for p in sealed]
    assert stamps == sorted(stamps)
    assert state.late_total == late
