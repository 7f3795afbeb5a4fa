from stratum1.ntptime import NS_PER_S
from stratum1.refclock.clockstats import clockstats_line, stats_prefix


def test_prefix_is_mjd_and_seconds_with_three_decimals():
    # 2026-01-01T01:02:03.4567Z -> MJD 61041, 3723.457 s
    ns = (1_767_225_600 + 3723) * NS_PER_S + 456_700_000
    assert stats_prefix(ns) == "61041 3723.457"
    assert stats_prefix(0) == "40587 0.000"


def test_clockstats_line_format():
    ns = 1_767_225_600 * NS_PER_S + 5 * NS_PER_S
    line = clockstats_line(ns, "127.127.20.0", "$GPRMC,000005.00,A,*1F\r\n")
    assert line == "61041 5.000 127.127.20.0 $GPRMC,000005.00,A,*1F"
    assert len(line.split()) == 4
