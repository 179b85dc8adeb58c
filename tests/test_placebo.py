"""Placebo memories: LIBER's table shape with the information taken out (encoders/ctr/placebo.py)."""

from __future__ import annotations

import numpy as np

from encoders.ctr.placebo import donors, random_tables, shuffled_tables

# Table rows 1.. belong to users a (2 partitions), b (2), c (1), d (3), e (1), f (4): consecutive.
OWNERS = ["", "a", "a", "b", "b", "c", "d", "d", "d", "e", "f", "f", "f", "f"]


def _tables():
    summ = np.arange(len(OWNERS) * 2, dtype=np.float32).reshape(-1, 2)
    summ[0] = 0
    return summ, -summ


def test_each_user_gets_another_users_vectors_with_the_same_count_where_one_exists():
    # Same count: a <-> b, c <-> e (rotations of their groups). d and f are alone in their
    # counts: d takes the next user with more partitions (f), f the previous one (d).
    assert donors(OWNERS) == {"a": "b", "b": "a", "c": "e", "e": "c", "d": "f", "f": "d"}
    summ, shift = _tables()
    s2, h2 = shuffled_tables((summ, shift), OWNERS)
    src = [0, 3, 4, 1, 2, 9, 10, 11, 12, 5, 6, 7, 8, 6]  # f's 4th slot cycles back to d's first
    assert np.array_equal(s2, summ[src]) and np.array_equal(h2, shift[src])
    assert np.array_equal(s2[0], [0, 0])  # the empty slot stays empty
    for r in range(1, len(OWNERS)):  # nobody keeps a vector of their own
        assert OWNERS[src[r]] != OWNERS[r]


def test_random_vectors_are_unit_fixed_by_the_seed_and_leave_row_0_empty():
    a, b = random_tables((6, 5), seed=3)
    again, _ = random_tables((6, 5), seed=3)
    assert np.array_equal(a, again) and not np.array_equal(a, random_tables((6, 5), seed=4)[0])
    assert a.dtype == np.float32 and np.allclose(np.linalg.norm(a[1:], axis=1), 1, atol=1e-6)
    assert not a[0].any() and not b[0].any() and not np.array_equal(a, b)
