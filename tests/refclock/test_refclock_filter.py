import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stratum1.refclock.filter import reduce_offsets, retained, trim


def test_retained_is_about_sixty_percent():
    assert [retained(n) for n in (1, 2, 3, 4, 5, 10, 60, 64)] == [1, 2, 2, 3, 3, 6, 36, 39]


def test_trim_drops_far_outlier_first_then_the_low_end():
    # [1,2,3,4,100]: middle 3; 100 is farther -> dropped; then middle 3 again, 1 farther than 4.
    assert trim([100.0, 3.0, 1.0, 4.0, 2.0]) == [2.0, 3.0, 4.0]


def test_trim_tie_drops_high_end():
    assert trim([3.0, 1.0, 2.0]) == [1.0, 2.0]


def test_reduce_hand_computed():
    r = reduce_offsets([100.0, 3.0, 1.0, 4.0, 2.0])
    assert r.offset == pytest.approx(3.0)
    assert r.jitter == pytest.approx(math.sqrt(2 / 3))
    assert (r.kept, r.total) == (3, 5)


def test_reduce_single_sample_has_zero_jitter():
    r = reduce_offsets([0.25])
    assert (r.offset, r.jitter, r.kept) == (0.25, 0.0, 1)


def test_reduce_rejects_low_outliers_too():
    r = reduce_offsets([-5.0, 0.001, 0.002, 0.003, 0.002, 0.001, 0.002, 0.003, 0.002, 0.002])
    assert r.kept == 6
    assert 0.001 <= r.offset <= 0.003


def test_reduce_empty_is_an_error():
    with pytest.raises(ValueError):
        reduce_offsets([])


@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=64))
def test_reduce_properties(values):
    r = reduce_offsets(values)
    assert r.kept == retained(len(values))
    assert min(values) - 1e-9 <= r.offset <= max(values) + 1e-9
    assert r.jitter >= 0
    assert r.jitter <= (max(values) - min(values)) + 1e-9
