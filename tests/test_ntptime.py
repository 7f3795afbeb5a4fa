"""Tests for stratum1/ntptime.py: ns <-> NTP fixed point, era handling, short format."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stratum1.ntptime import (
    NS_PER_S,
    NTP_UNIX_OFFSET_S,
    log2_to_seconds,
    ns_to_ntp64,
    ntp64_diff_seconds,
    ntp64_to_ns,
    seconds_to_short,
    short_to_seconds,
)


def test_unix_epoch_is_ntp_2208988800():
    assert ns_to_ntp64(0) == NTP_UNIX_OFFSET_S << 32


def test_half_second_fraction():
    assert ns_to_ntp64(500_000_000) & 0xFFFFFFFF == 1 << 31


def test_era_rollover_2036():
    # 2036-02-07T06:28:16Z is NTP second 2**32: era 1 starts, the 64-bit value wraps to 0.
    rollover_ns = ((1 << 32) - NTP_UNIX_OFFSET_S) * NS_PER_S
    assert ns_to_ntp64(rollover_ns) == 0
    assert ntp64_to_ns(0, pivot_ns=rollover_ns) == rollover_ns
    just_before = ns_to_ntp64(rollover_ns - NS_PER_S)
    assert just_before >> 32 == 0xFFFFFFFF
    # With a pivot after the rollover, a small timestamp is era 1, not 1900.
    assert ntp64_to_ns(5 << 32, pivot_ns=rollover_ns) == rollover_ns + 5 * NS_PER_S
    # With a pivot in 1950, the same value is 1900 + 5 s (era 0).
    assert ntp64_to_ns(5 << 32, pivot_ns=-631_152_000 * NS_PER_S) == (5 - NTP_UNIX_OFFSET_S) * NS_PER_S


@given(st.integers(min_value=-(2**31) * NS_PER_S, max_value=2**32 * NS_PER_S))
def test_round_trip_within_one_ns(unix_ns):
    back = ntp64_to_ns(ns_to_ntp64(unix_ns), pivot_ns=unix_ns)
    assert abs(back - unix_ns) <= 1


@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=2**64 - 1))
def test_diff_is_antisymmetric(a, b):
    d = ntp64_diff_seconds(a, b)
    assert -(2.0**31) <= d <= 2.0**31
    if (a - b) % (1 << 64) != 1 << 63:
        assert ntp64_diff_seconds(b, a) == pytest.approx(-d)


def test_diff_across_era_boundary():
    assert ntp64_diff_seconds(1 << 32, (0xFFFFFFFF << 32)) == pytest.approx(2.0)


def test_short_format():
    assert seconds_to_short(1.0) == 0x00010000
    assert seconds_to_short(-3.0) == 0
    assert seconds_to_short(1e9) == 0xFFFFFFFF
    assert short_to_seconds(0x00008000) == 0.5
    assert log2_to_seconds(-20) == pytest.approx(9.5367e-7, rel=1e-4)
