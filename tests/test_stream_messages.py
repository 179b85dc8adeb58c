"""Messages → rows: the file ingest's field rules (one ``check_rows``), quarantine with position and
reason, ids derived from the broker position when a message brings none."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from liber_features.ingest.events import LoadConfig, load_events
from liber_features.stream.messages import parse_messages, position_event_id
from liber_features.stream.source import Delivery

NOW = LoadConfig(now=datetime(2026, 12, 5, tzinfo=UTC))


def deliveries(*bodies: bytes | str | dict | None) -> list[Delivery]:
    out = []
    for i, b in enumerate(bodies, start=1):
        data = json.dumps(b).encode() if isinstance(b, dict) else b.encode() if isinstance(b, str) else b
        out.append(Delivery(position=f"nats:EV:{100 + i}", offset=100 + i, data=data, broker_us=i))
    return out


def test_good_messages_become_rows_with_given_or_position_ids():
    got = parse_messages(deliveries(
        {"user_id": 7, "item_id": "m1", "timestamp": 964982703, "rating": 4.5, "event_id": "e1"},
        {"user_id": "7", "item_id": 2, "ts": "2001-01-01T00:00:00.250Z"},
        {"user_id": "8", "item_id": "m3", "timestamp": 964982703.5, "weight": "3", "extra": [1]},
    ), NOW)
    ev = got.events
    assert got.quarantine == []
    assert ev["event_id"].tolist() == ["e1", "nats:EV:102", "nats:EV:103"]
    assert ev["user_id"].tolist() == ["7", "7", "8"] and ev["item_id"].tolist() == ["m1", "2", "m3"]
    assert ev["ts"].tolist() == [pd.Timestamp("2000-07-30 18:45:03", tz="UTC"),
                                 pd.Timestamp("2001-01-01 00:00:00.250", tz="UTC"),
                                 pd.Timestamp("2000-07-30 18:45:03.5", tz="UTC")]
    assert ev["rating"].fillna(-1).tolist() == [4.5, -1, 3.0]
    assert ev["row"].tolist() == [0, 1, 2] and ev["broker_us"].tolist() == [1, 2, 3]


def test_bad_messages_are_quarantined_with_position_field_and_reason():
    got = parse_messages(deliveries(
        "not json", "[1, 2]", None,
        {"item_id": "m", "timestamp": 1},
        {"user_id": True, "item_id": "m", "timestamp": 1},
        {"user_id": 1.5, "item_id": "m", "timestamp": 1},
        {"user_id": "u", "item_id": "m", "timestamp": "yesterday"},
        {"user_id": "u", "item_id": "m", "timestamp": 1, "rating": 9},
        {"user_id": "u\x00", "item_id": "m", "timestamp": 1},
        {"user_id": "u", "item_id": "m", "timestamp": 1_700_000_000_000},
        {"user_id": "u", "item_id": "m", "timestamp": 1, "event_id": ""},
        {"user_id": "u", "item_id": "m", "timestamp": 1},
    ), NOW)
    assert len(got.events) == 1 and got.events["event_id"].tolist() == ["nats:EV:112"]
    assert [(q["source"], q["row"], q["field"], q["reason"]) for q in got.quarantine] == [
        ("nats:EV:101", 101, "row", "message is not JSON: Expecting value: line 1 column 1 (char 0)"),
        ("nats:EV:102", 102, "row", "message is a JSON list, not an object"),
        ("nats:EV:103", 103, "row", "message has no body (the broker lost it)"),
        ("nats:EV:104", 104, "user_id", "user_id is missing"),
        ("nats:EV:105", 105, "user_id", "user_id must be a string or a number, got JSON bool"),
        ("nats:EV:106", 106, "user_id", "user_id must be a string or an integer, got 1.5"),
        ("nats:EV:107", 107, "ts", "timestamp 'yesterday' is neither epoch seconds nor ISO-8601"),
        ("nats:EV:108", 108, "rating", "rating 9.0 outside [0.5, 5.0]"),
        ("nats:EV:109", 109, "user_id", "user_id 'u\\x00' contains a control character"),
        ("nats:EV:110", 110, "ts", "timestamp '1700000000000' is in the future (milliseconds? epoch seconds "
                                   "are expected)"),
        ("nats:EV:111", 111, "event_id", "event_id is empty"),
    ]
    assert got.quarantine[0]["raw"] == "not json" and len({q["key"] for q in got.quarantine}) == 11


def test_unknown_items_are_quarantined_against_the_catalog():
    got = parse_messages(deliveries({"user_id": "u", "item_id": "m9", "timestamp": 1},
                                    {"user_id": "u", "item_id": "m1", "timestamp": 1}), NOW,
                         pd.Series(["m1", "m2"]))
    assert got.events["item_id"].tolist() == ["m1"]
    assert [(q["field"], q["reason"]) for q in got.quarantine] == [("item_id", "item 'm9' not in catalog")]


def test_messages_and_a_csv_of_the_same_rows_pass_and_fail_alike(tmp_path):
    rows = [("u1", "m1", "964982703", "4"), ("", "m1", "1", "4"), ("u2", "m2", "soon", "3"),
            ("u3", "m3", "2001-01-01T00:00:00Z", "11"), ("u4", "m4", "-5", "2"), ("u5", "m5", "7", "nan")]
    path = tmp_path / "ev.csv"
    path.write_text("user_id,item_id,timestamp,rating\n" + "\n".join(",".join(r) for r in rows) + "\n")
    from_file = load_events(path, config=NOW)
    got = parse_messages(deliveries(*[{"user_id": u, "item_id": i, "timestamp": t, "rating": r}
                                      for u, i, t, r in rows]), NOW)
    assert [(q["field"], q["reason"]) for q in got.quarantine] == \
        list(zip(from_file.quarantine["field"], from_file.quarantine["reason"]))
    assert got.events["ts"].tolist() == from_file.events["ts"].tolist()


def test_long_positions_are_hashed_into_an_id():
    assert position_event_id("redis:ev:1-0") == "redis:ev:1-0"
    long = "redis:" + "k" * 80 + ":1-0"
    assert position_event_id(long).startswith("pos:") and len(position_event_id(long)) == 44


_ids = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF, whitelist_categories=("L", "N", "P", "S")),
               min_size=1, max_size=40).map(str.strip).filter(bool)


@settings(max_examples=60, deadline=None)
@given(user=st.one_of(_ids, st.integers(0, 10**12)), item=_ids, secs=st.integers(0, 1_700_000_000),
       rating=st.one_of(st.none(), st.sampled_from([0.5, 1, 2.5, 5])))
def test_any_valid_message_is_accepted_with_its_values(user, item, secs, rating):
    body = {"user_id": user, "item_id": item, "timestamp": secs}
    if rating is not None:
        body["rating"] = rating
    got = parse_messages(deliveries(body), NOW)
    assert got.quarantine == []
    row = got.events.iloc[0]
    assert (row["user_id"], row["item_id"]) == (str(user), item)
    assert row["ts"] == pd.Timestamp(secs, unit="s", tz="UTC")
    assert (pd.isna(row["rating"]) if rating is None else row["rating"] == float(rating))


def test_a_body_holding_several_values_is_named_alone_not_shifting_the_batch():
    # The batch is decoded as one JSON array when it can be; '1, 2' would add a value and shift every
    # later message onto its neighbour's position: the count check sends each body to its own decode.
    good = {"user_id": "u", "item_id": "m", "timestamp": 1}
    got = parse_messages(deliveries(good, "1, 2", {**good, "item_id": "n"}), NOW)
    assert got.events["item_id"].tolist() == ["m", "n"] and got.events["row"].tolist() == [0, 2]
    assert [(q["row"], q["reason"]) for q in got.quarantine] == [
        (102, "message is not JSON: Extra data: line 1 column 2 (char 1)")]


def test_event_type_and_label_follow_the_feedback_rules():
    got = parse_messages(deliveries(
        {"user_id": "u", "item_id": "m", "timestamp": 1, "event": "Purchase", "label": True},
        {"user_id": "u", "item_id": "m", "timestamp": 2, "event_type": "view", "label": 0},
        {"user_id": "u", "item_id": "m", "timestamp": 3, "event_type": "teleport"},
        {"user_id": "u", "item_id": "m", "timestamp": 4, "label": 2},
    ), NOW)
    assert got.events["event_type"].tolist() == ["purchase", "view"]
    assert got.events["label"].tolist() == [1.0, 0.0]
    assert [(q["row"], q["field"]) for q in got.quarantine] == [(103, "event_type"), (104, "label")]


def test_what_the_fast_batch_decode_refuses_reads_as_python_json_reads_it():
    # The batch goes through orjson, which refuses NaN, integers past 64 bits and non-UTF-8 text that
    # Python's json reads: such a batch is read one body at a time by json.loads, so the values are
    # exactly json's (a NaN rating quarantined by the rating rule, a 70-bit id kept digit for digit).
    good = {"user_id": "u", "item_id": "m", "timestamp": 1}
    got = parse_messages(deliveries(
        good, '{"user_id": "u", "item_id": "m", "timestamp": 2, "rating": NaN}',
        f'{{"user_id": {2**70}, "item_id": "m", "timestamp": 3}}',
        json.dumps({**good, "item_id": "é"}).encode("utf-16")), NOW)
    assert got.events["user_id"].tolist() == ["u", str(2**70), "u"]
    assert got.events["item_id"].tolist() == ["m", "m", "é"] and got.events["row"].tolist() == [0, 2, 3]
    assert [(q["row"], q["field"]) for q in got.quarantine] == [(102, "rating")]
