from stratum1.ntptime import NS_PER_S
from stratum1.refclock.pulse import nearest_second

T = 1_767_225_600 * NS_PER_S


def test_nearest_second_rounds_both_ways():
    assert nearest_second(T + 300_000_000) == T
    assert nearest_second(T - 300_000_000) == T
    assert nearest_second(T + 700_000_000) == T + NS_PER_S


def test_within_exactly_0_4_s_is_numbered_beyond_is_ambiguous():
    assert nearest_second(T + 400_000_000) == T
    assert nearest_second(T + 400_000_001) is None
    assert nearest_second(T - 450_000_000) is None
    assert nearest_second(T + 500_000_000) is None
