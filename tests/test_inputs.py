"""The model-input builders the training set and the scorer share (``liber_features.model.inputs``)."""

from __future__ import annotations

import numpy as np
import pytest

from liber_features.errors import VectorShapeError
from liber_features.model.inputs import (
    OOV,
    PAD,
    history_items,
    index_items,
    pad_history,
    user_inputs,
)

VOCAB = {"10": 2, "20": 3, "30": 4}


def test_index_items_maps_ids_as_strings_and_counts_unknown_as_oov():
    idx, unknown = index_items(["20", 10, "99", 30, "", "10"], VOCAB)
    assert idx.dtype == np.int64
    assert idx.tolist() == [3, 2, OOV, 4, OOV, 2]
    assert unknown == 2
    empty, none = index_items([], VOCAB)
    assert empty.shape == (0,) and none == 0


def test_history_is_recent_items_then_cache_last_l_left_padded():
    assert history_items(["10", "20"], ["30"], 2) == ["20", "30"]
    assert history_items(None, None, 3) == []
    assert pad_history(np.array([2, 3], np.int64), 4).tolist() == [PAD, PAD, 2, 3]
    assert pad_history(np.array([2, 3, 4], np.int64), 2).tolist() == [3, 4]


def test_user_inputs_shapes_and_wrong_shaped_vectors():
    feeds = user_inputs(user_id="u", user_vocab={"u": 5}, item_vocab=VOCAB, memory_slots=2, vector_dim=3,
                        history_length=3, summary_vectors=np.arange(6, dtype=np.float32), shift_vectors=None,
                        partition_count=1, recent_item_ids=["10"], cache_item_ids=["30", "77"])
    assert feeds["user_idx"].tolist() == [5]
    assert feeds["summary"].tolist() == [[[0, 1, 2], [3, 4, 5]]]
    assert feeds["shift"].tolist() == [[[0, 0, 0], [0, 0, 0]]]
    assert feeds["partition_count"].tolist() == [1]
    assert feeds["hist_idx"].tolist() == [[2, 4, OOV]]
    with pytest.raises(VectorShapeError, match="5 floats, expected"):
        user_inputs(user_id="u", user_vocab={}, item_vocab=VOCAB, memory_slots=2, vector_dim=3,
                    history_length=3, summary_vectors=[0.0] * 5, shift_vectors=None, partition_count=1,
                    recent_item_ids=None, cache_item_ids=None)
