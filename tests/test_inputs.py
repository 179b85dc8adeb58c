"""The model-input builders the training set and the scorer share (``liber_features.model.inputs``),
and the vocabularies that own the reserved rows (``liber_features.model.vocab``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from liber_features.errors import ConfigError, VectorShapeError
from liber_features.model.inputs import history_items, pad_history, user_inputs
from liber_features.model.vocab import OOV, PAD, UNKNOWN_USER, ItemVocab, UserVocab

ITEMS = ItemVocab.build(["30", 10, "20", "10"])  # → {"10": 2, "20": 3, "30": 4}
USERS = UserVocab.build(["b", "a", "b"])  # → {"a": 1, "b": 2}


def test_vocabularies_reserve_pad_oov_and_the_unknown_user():
    assert (PAD, OOV, UNKNOWN_USER) == (0, 1, 0)
    assert ITEMS.to_json() == {"10": 2, "20": 3, "30": 4} and ITEMS.size == 5
    assert USERS.to_json() == {"a": 1, "b": 2} and USERS.size == 3
    assert ItemVocab.build([]).size == 2 and UserVocab.build([]).size == 1
    # A Mapping in row order, equal to the plain dict it is stored as.
    assert list(ITEMS) == ["10", "20", "30"] and len(ITEMS) == 3 and "20" in ITEMS and 20 not in ITEMS
    assert ITEMS == {"10": 2, "20": 3, "30": 4} and {"10": 2, "20": 3, "30": 4} == ITEMS
    assert ITEMS["30"] == 4 and ITEMS.get("99") is None


def test_index_maps_ids_as_strings_and_unknown_to_the_fallback_row():
    idx = ITEMS.index(["20", 10, "99", 30, "", "10"])
    assert idx.dtype == np.int64 and idx.tolist() == [3, 2, OOV, 4, OOV, 2]
    assert ITEMS.index(x for x in ("30",)).tolist() == [4]  # any iterable
    assert ITEMS.index(np.array(["10", "30"], dtype=object)).tolist() == [2, 4]
    assert ITEMS.index([]).shape == (0,)
    assert USERS.index(["b", "nobody", "a"]).tolist() == [2, UNKNOWN_USER, 1]
    assert USERS.row("a") == 1 and USERS.row("zz") == UNKNOWN_USER and ITEMS.row(30) == 4


def test_json_form_round_trips_and_a_broken_one_is_refused():
    back = ItemVocab.from_json(json.loads(json.dumps(ITEMS.to_json())))
    assert back == ITEMS and back.size == 5 and back.index(["30"]).tolist() == [4]
    with pytest.raises(ConfigError, match=r"item vocabulary of 2 ids must use rows 2\.\.3.*\[1, 3\]"):
        ItemVocab.from_json({"a": 1, "b": 2})  # row 1 is OOV
    with pytest.raises(ConfigError, match=r"user vocabulary of 2 ids must use rows 1\.\.2.*\[2\]"):
        UserVocab.from_json({"a": 1, "b": 1})  # two ids on one row
    with pytest.raises(ConfigError, match=r"rows 2\.\.3.*\[3, 9\]"):
        ItemVocab.from_json({"a": 2, "b": 9})  # a gap: the table would have unused rows


def test_history_is_recent_items_then_cache_last_l_left_padded():
    assert history_items(["10", "20"], ["30"], 2) == ["20", "30"]
    assert history_items(None, None, 3) == []
    assert pad_history(np.array([2, 3], np.int64), 4).tolist() == [PAD, PAD, 2, 3]
    assert pad_history(np.array([2, 3, 4], np.int64), 2).tolist() == [3, 4]


def test_user_inputs_shapes_and_wrong_shaped_vectors():
    feeds = user_inputs(user_id="b", user_vocab=USERS, item_vocab=ITEMS, memory_slots=2, vector_dim=3,
                        history_length=3, summary_vectors=np.arange(6, dtype=np.float32), shift_vectors=None,
                        partition_count=1, recent_item_ids=["10"], cache_item_ids=["30", "77"])
    assert feeds["user_idx"].tolist() == [2]
    assert feeds["summary"].tolist() == [[[0, 1, 2], [3, 4, 5]]]
    assert feeds["shift"].tolist() == [[[0, 0, 0], [0, 0, 0]]]
    assert feeds["partition_count"].tolist() == [1]
    assert feeds["hist_idx"].tolist() == [[2, 4, OOV]]
    stranger = user_inputs(user_id="c", user_vocab=USERS, item_vocab=ITEMS, memory_slots=2, vector_dim=3,
                           history_length=3, summary_vectors=None, shift_vectors=None, partition_count=None,
                           recent_item_ids=None, cache_item_ids=["20"])
    assert stranger["user_idx"].tolist() == [UNKNOWN_USER] and stranger["hist_idx"].tolist() == [[PAD, PAD, 3]]
    with pytest.raises(VectorShapeError, match="5 floats, expected"):
        user_inputs(user_id="u", user_vocab=USERS, item_vocab=ITEMS, memory_slots=2, vector_dim=3,
                    history_length=3, summary_vectors=[0.0] * 5, shift_vectors=None, partition_count=1,
                    recent_item_ids=None, cache_item_ids=None)


def test_model_card_refuses_other_reserved_rows_and_broken_vocabularies(tmp_path):
    from liber_features.model.card import CARD_FILE, ModelCard

    card = ModelCard(backbone="din", liber="both", inputs=[], outputs=[], opset=17, memory_slots=2, vector_dim=3,
                     history_length=3, item_vocab=ITEMS.to_json(), user_vocab=USERS.to_json(), item_vectors="-",
                     feature_service="liber_ranker_v1", prompt_version="p1", llm_id="l", text_encoder_id="t",
                     encoder_version="0123456789ab", metrics={}, train_time_range=[], train_config={},
                     created_at="2026-12-04T00:00:00+00:00")
    card.save(tmp_path)
    back = ModelCard.load(tmp_path)
    assert back.item_vocabulary() == ITEMS and back.item_vocabulary().size == 5
    assert back.user_vocabulary().index(["b", "x"]).tolist() == [2, UNKNOWN_USER]
    raw = json.loads((tmp_path / CARD_FILE).read_text())
    for change, error in (({"oov_item_index": 3}, r"reserved rows \{'oov_item_index': 3\}"),
                          ({"item_vocab": {"10": 1}}, r"item vocabulary of 1 ids must use rows 2\.\.2")):
        (tmp_path / CARD_FILE).write_text(json.dumps({**raw, **change}))
        with pytest.raises(ConfigError, match=error):
            ModelCard.load(tmp_path)


@pytest.mark.parametrize("count", [0, 1, 2, 5])  # none, one, M, more than M
def test_only_filled_slots_are_padded_to_m_at_read_and_equal_the_old_padded_layout(count):
    M, D = 2, 3
    k = min(count, M)
    filled = np.arange(1, k * D + 1, dtype=np.float32)
    padded = np.zeros(M * D, dtype=np.float32)
    padded[:k * D] = filled

    def feeds(vectors):
        return user_inputs(user_id="b", user_vocab=USERS, item_vocab=ITEMS, memory_slots=M, vector_dim=D,
                           history_length=3, summary_vectors=vectors, shift_vectors=vectors,
                           partition_count=count, recent_item_ids=None, cache_item_ids=None)

    new, old = feeds(filled), feeds(padded)
    assert new["summary"].tolist() == [padded.reshape(M, D).tolist()] == old["summary"].tolist()
    assert new["shift"].tolist() == old["shift"].tolist()
    assert new["partition_count"].tolist() == [count]
    # A float too many, and a whole slot too few (where that is not the padded length either).
    for wrong in [np.ones(k * D + 1, dtype=np.float32)] + ([np.ones(D, dtype=np.float32)] if k == M else []):
        with pytest.raises(VectorShapeError, match=rf"{wrong.size} floats, expected min\(partition_count, M\)"):
            feeds(wrong)


def test_one_users_values_read_without_pandas_equal_the_pandas_reading():
    """The scorer's one-value fast paths (``_column``, ``_micros``) give what the pandas reading does,
    for every shape Feast hands back: None, ints, floats, numpy scalars, naive and aware datetimes."""
    from datetime import UTC, datetime, timedelta, timezone

    import pandas as pd

    from liber_features.model.inputs import _column, _micros

    def pandas_column(v, missing):
        a = pd.to_numeric(pd.Series(np.asarray([v], dtype=object), dtype=object), errors="raise")
        return a.astype("float64").fillna(missing).to_numpy()

    for v in (None, 0, 7, 2.5, float("nan"), np.int64(4), np.float32(0.3)):
        got = _column([v], 3, -1.0)
        assert got.shape == (3,) and np.array_equal(got, np.repeat(pandas_column(v, -1.0), 3)), v
    assert _column([None], 1, 0.5).tolist() == [0.5] and _column(np.array([1, 2]), 2, 0).tolist() == [1.0, 2.0]
    for v in (None, datetime(2018, 9, 24, 3, 27, 30, 123456), datetime(2018, 9, 24, 3, 27, 30, 1, tzinfo=UTC),
              datetime(1996, 3, 29, 18, 36, 55, tzinfo=timezone(timedelta(hours=-5)))):
        t = pd.to_datetime(pd.Series(np.asarray([v], dtype=object)), utc=True)
        want = np.nan if v is None else float(t.dt.as_unit("us").astype("int64").iloc[0])
        got = _micros([v], 2)
        assert got.shape == (2,) and (np.isnan(got).all() if v is None else got.tolist() == [want, want]), v
