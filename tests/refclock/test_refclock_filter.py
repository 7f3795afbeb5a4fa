import math
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stratum1.refclock.filter import reduce_offsets, survivors


def test_far_outlier_is_rejected_and_the_rest_kept():
    # median 3, MAD 1: bound 3.5 * 1.4826 = 5.2, so 100 goes and 1..4 stay.
    assert survivors([100.0, 3.0, 1.0, 4.0, 2.0]) == [1.0, 2.0, 3.0, 4.0]


def test_fewer_than_three_samples_are_all_kept():
    assert survivors([5.0, -5.0]) == [-5.0, 5.0]


def test_reduce_hand_computed():
    r = reduce_offsets([100.0, 3.0, 1.0, 4.0, 2.0])
    assert r.offset == pytest.approx(2.5)
    assert r.jitter == pytest.approx(math.sqrt(1.25))
    assert (r.kept, r.total) == (4, 5)


def test_reduce_single_sample_has_zero_jitter():
    r = reduce_offsets([0.25])
    assert (r.offset, r.jitter, r.kept) == (0.25, 0.0, 1)


def test_reduce_rejects_low_outliers_too():
    r = reduce_offsets([-5.0, 0.001, 0.002, 0.003, 0.002, 0.001, 0.002, 0.003, 0.002, 0.002])
    assert r.kept == 9
    assert r.offset == pytest.approx(0.002)


def test_quantised_samples_one_step_off_are_kept():
    # More than half equal: MAD 0; the mean absolute deviation keeps the 1 µs steps.
    values = [0.0] * 9 + [1e-6] * 7
    assert reduce_offsets(values).kept == 16
    assert reduce_offsets([*values, 5e-3]).kept == 16


def test_identical_samples():
    r = reduce_offsets([0.5] * 8)
    assert (r.offset, r.jitter, r.kept) == (0.5, 0.0, 8)


def test_one_sided_contamination_up_to_forty_percent_is_rejected():
    rng = random.Random(3)
    good = [rng.gauss(0.0, 1e-4) for _ in range(10)]
    late = [0.05 + rng.random() * 0.01 for _ in range(6)]  # serial sentences held up
    r = reduce_offsets(good + late)
    assert r.kept == 10
    assert abs(r.offset) < 1e-4


def test_gaussian_efficiency_is_close_to_the_mean():
    # ntpd's trim toward the middle gives 0.44 sigma for 16 samples; the mean 0.25.
    rng = random.Random(7)
    errors = [reduce_offsets([rng.gauss(0.0, 1.0) for _ in range(16)]).offset
              for _ in range(4000)]
    assert statistics.pstdev(errors) < 0.27


def test_reduce_empty_is_an_error():
    with pytest.raises(ValueError):
        reduce_offsets([])


@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=64))
def test_reduce_properties(values):
    r = reduce_offsets(values)
    # The median's side holds at least half the samples, so more than half survive.
    assert r.kept * 2 >= len(values)
    assert min(values) - 1e-9 <= r.offset <= max(values) + 1e-9
    assert r.jitter >= 0
    assert r.jitter <= (max(values) - min(values)) + 1e-9
