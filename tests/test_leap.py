"""Tests for stratum1/leap.py: warning bits, kernel arming, the held clock, votes."""

from __future__ import annotations

import pytest

from stratum1.leap import LeapScheduler, end_of_month_ns
from stratum1.leapfile import format_leapfile, parse_leapfile
from stratum1.sample import LEAP_DELETE, LEAP_INSERT, LEAP_NONE

NS = 1_000_000_000
DAY = 86_400 * NS
LEAP = 1_483_228_800 * NS  # 2017-01-01 00:00:00 UTC: 2016-12-31 23:59:60 came just before
TABLE = parse_leapfile(
    format_leapfile(
        [(2272060800, 10), (3644697600, 36), (3692217600, 37)],
        updated=3676924800,
        expires=3707596800,  # 2017-06-28
    )
)


def test_warning_28_days_ahead_and_cleared_after() -> None:
    s = LeapScheduler(kernel=True, table=TABLE)
    assert s.update(LEAP - 29 * DAY).indicator == LEAP_NONE
    d = s.update(LEAP - 27 * DAY)
    assert d.indicator == LEAP_INSERT and d.kernel == LEAP_NONE and d.source == "file"
    assert d.tai_offset == 36
    assert s.update(LEAP + 3 * NS).indicator == LEAP_NONE
    assert s.update(LEAP + 3 * NS).tai_offset == 37


def test_kernel_armed_in_last_23_hours() -> None:
    s = LeapScheduler(kernel=True, table=TABLE)
    assert s.update(LEAP - 24 * 3600 * NS).kernel == LEAP_NONE
    d = s.update(LEAP - 22 * 3600 * NS)
    assert d.kernel == LEAP_INSERT and d.hold_step_ns == 0


def test_hold_without_kernel_steps_back_once_and_keeps_bits_during_the_second() -> None:
    s = LeapScheduler(kernel=False, table=TABLE)
    assert s.update(LEAP - NS // 2).indicator == LEAP_INSERT
    d = s.update(LEAP)
    assert d.hold_step_ns == -NS and d.indicator == LEAP_INSERT
    # The clock now reads the repeated second 23:59:59 (which is 23:59:60 UTC).
    again = s.update(LEAP - NS + NS // 10)
    assert again.hold_step_ns == 0 and again.indicator == LEAP_INSERT
    after = s.update(LEAP + NS // 10)
    assert after.hold_step_ns == 0 and after.indicator == LEAP_NONE


def test_deleted_second_steps_forward() -> None:
    table = parse_leapfile(
        format_leapfile(
            [(2272060800, 10), (3692217600, 37), (3723753600, 36)],  # a delete on 2017-12-31
            updated=3692217600,
            expires=3740000000,
        )
    )
    leap = (3723753600 - 2_208_988_800) * NS
    s = LeapScheduler(kernel=False, table=table)
    assert s.update(leap - 2 * DAY).indicator == LEAP_DELETE
    d = s.update(leap - NS)
    assert d.hold_step_ns == NS
    assert s.update(leap + 1).indicator == LEAP_NONE


def test_vote_schedules_end_of_month_without_file() -> None:
    now = LEAP - 10 * DAY
    assert end_of_month_ns(now) == LEAP
    s = LeapScheduler(kernel=True)
    s.vote([LEAP_INSERT, LEAP_NONE, LEAP_INSERT], now)
    d = s.update(now)
    assert d.indicator == LEAP_INSERT and d.leap_ns == LEAP and d.source == "vote"
    s.vote([LEAP_INSERT, LEAP_NONE, LEAP_NONE], now + DAY)  # no majority any more
    assert s.update(now + DAY).indicator == LEAP_NONE


def test_valid_file_outvotes_sources() -> None:
    s = LeapScheduler(kernel=True, table=TABLE)
    now = LEAP + 100 * DAY  # mid-April 2017: the file covers it and says nothing
    s.vote([LEAP_INSERT, LEAP_INSERT], now)
    assert s.update(now).indicator == LEAP_NONE


@pytest.mark.parametrize("month_start", [0, 15])
def test_end_of_month(month_start: int) -> None:
    assert end_of_month_ns(LEAP - (31 - month_start) * DAY) == LEAP
