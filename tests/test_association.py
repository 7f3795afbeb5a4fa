"""Tests for stratum1/association.py: reach, poll, root distance, refids, bad input."""

from __future__ import annotations

import hashlib
import ipaddress
import math

import pytest

from stratum1.association import (
    NTP_UNREACH,
    SPREAD_POLLS,
    Association,
    address_refid,
    normalize_refid,
)
from stratum1.clockfilter import PHI
from stratum1.sample import LEAP_INSERT, LEAP_NONE, LEAP_NOTINSYNC, Measurement

S = 1_000_000_000
T0 = 1_767_225_600 * S


def m(offset=0.001, delay=0.0, disp=0.0, local_ns=T0, jitter=None, leap=LEAP_NONE):
    return Measurement(offset, delay, disp, local_ns, jitter, leap)


def gps(**kw):
    return Association(
        1,
        "GPS_NMEA(0)",
        refclock=True,
        stratum=0,
        refid="GPS",
        precision=-20,
        minpoll=4,
        maxpoll=4,
        **kw,
    )


def server(**kw):
    kw.setdefault("address", "192.0.2.1")
    return Association(
        2,
        "192.0.2.1",
        refclock=False,
        stratum=16,
        refid=b"INIT",
        precision=-20,
        minpoll=6,
        maxpoll=10,
        **kw,
    )


def test_reach_register_shifts_per_poll():
    a = gps()
    now = T0
    a.receive(m(local_ns=now), now)
    assert a.reach == 0b1
    a.poll_missed(now + 16 * S)
    assert a.reach == 0b10
    a.receive(m(local_ns=now + 32 * S), now + 32 * S)
    assert a.reach == 0b101
    for i in range(8):
        a.receive(m(local_ns=now + (3 + i) * 16 * S), now + (3 + i) * 16 * S)
    assert a.reach == 0xFF  # stays 8 bits


def test_burst_samples_set_reach_once_per_poll():
    a = server()
    for i in range(8):
        a.receive(
            m(delay=0.01, local_ns=T0 + 2 * i * S),
            T0 + 2 * i * S,
            stratum=1,
            refid=b"GPS",
            leap=LEAP_NONE,
            burst=i > 0,
        )
    assert a.reach == 1  # as after an iburst: one reach bit, eight filter samples
    assert a.received == 8
    assert a.dispersion < 0.01


def test_refclock_unsynchronized_sample_counts_as_missed_poll():
    a = gps()
    a.receive(m(), T0)
    assert a.reach == 1
    assert a.receive(m(leap=LEAP_NOTINSYNC), T0 + 16 * S) is None
    assert a.reach == 0b10
    assert a.leap == LEAP_NOTINSYNC


def test_header_values_recorded_for_network_peer():
    a = server()
    a.receive(
        m(offset=0.002, delay=0.030),
        T0,
        stratum=2,
        refid=b"\xc0\x00\x02\x63",
        root_delay=0.010,
        root_dispersion=0.005,
        leap=LEAP_INSERT,
        reference_ns=T0 - S,
        ppoll=8,
    )
    assert (a.stratum, a.refid, a.root_delay, a.root_dispersion) == (
        2,
        b"\xc0\x00\x02\x63",
        0.010,
        0.005,
    )
    assert a.leap == LEAP_INSERT and a.reference_ns == T0 - S and a.ppoll == 8
    assert a.offset == 0.002 and a.delay == 0.030


def test_poll_follows_system_poll_within_limits_and_backs_off_when_unreachable():
    a = server()
    assert a.poll == 6
    a.sys_poll = 8
    a.receive(m(delay=0.01), T0, stratum=1, refid=b"GPS")
    assert a.poll == 8
    a.sys_poll = 14
    a.receive(m(delay=0.01, local_ns=T0 + 256 * S), T0 + 256 * S, stratum=1)
    assert a.poll == 10  # clamped to maxpoll
    b = server()
    for i in range(NTP_UNREACH - 1):
        b.poll_missed(T0 + i * 64 * S)
    assert b.poll == 6  # still trying at minpoll
    for i in range(3):
        b.poll_missed(T0 + (NTP_UNREACH + i) * 64 * S)
    assert b.poll == 9
    for i in range(10):
        b.poll_missed(T0 + (20 + i) * 1024 * S)
    assert b.poll == 10


def test_refclock_polls_at_minpoll_unless_system_peer():
    a = Association(1, "NMEA", refclock=True, refid="GPS", minpoll=4, maxpoll=8)
    a.sys_poll = 7
    a.receive(m(), T0)
    assert a.poll == 4
    a.set_select_code(6)
    assert a.poll == 7 and a.is_system_peer and a.tally == "*"


def test_dummy_samples_after_four_silent_refclock_polls():
    a = gps()
    for i in range(8):
        a.receive(m(local_ns=T0 + i * 16 * S), T0 + i * 16 * S)
    settled = a.dispersion
    for i in range(3):
        a.poll_missed(T0 + (8 + i) * 16 * S)
    assert a.dispersion == pytest.approx(settled, abs=1e-3)  # only aged at PHI
    disps = []
    for i in range(8):
        a.poll_missed(T0 + (11 + i) * 16 * S)  # (reach & 0x0F) == 0: a dummy goes in
        disps.append(a.dispersion)
    assert disps[0] > settled + 0.06  # the first dummy sorts last: 16/256
    assert all(b > a for a, b in zip(disps, disps[1:], strict=False))
    assert disps[-1] > 15.0  # the register is all dummies now


def test_root_distance():
    a = server()
    for i in range(8):
        a.receive(
            m(offset=0.0, delay=0.020, local_ns=T0 + i * S),
            T0 + i * S,
            stratum=1,
            refid=b"GPS",
            root_delay=0.004,
            root_dispersion=0.002,
            leap=LEAP_NONE,
        )
    now = a.update_ns + 100 * S
    expect = (0.020 + 0.004) / 2 + 2**-20 + 2**-20 + a.dispersion + PHI * 100 + 0.002 + a.jitter
    assert a.root_distance(now) == pytest.approx(expect)
    g = gps()
    g.receive(m(offset=0.0), T0)
    assert g.root_distance(T0, mindist=20.0) == 20.0  # floored at mindist


def test_refclock_jitter_from_driver_enters_as_dispersion():
    a = gps()
    a.receive(m(jitter=0.004), T0)
    assert a.filter.stages()[0].dispersion == 0.004


@pytest.mark.parametrize(
    "bad",
    [
        m(offset=math.nan),
        m(offset=math.inf),
        m(disp=-1.0),
        Measurement(0.0, 0.0, 0.0, 1.5),  # type: ignore[arg-type]
    ],
)
def test_malformed_samples_are_counted_and_dropped(bad):
    a = gps()
    a.receive(m(), T0)
    state = (a.reach, a.offset, a.received)
    assert a.receive(bad, T0 + 16 * S) is None
    assert a.bad_samples == 1
    assert (a.reach, a.offset, a.received) == state


def test_bad_header_values_are_dropped():
    a = server()
    assert a.receive(m(), T0, stratum=99) is None
    assert a.receive(m(), T0, refid=b"TOOLONG") is None
    assert a.receive(m(), T0, leap=7) is None
    assert a.receive(m(), T0, root_delay=-1.0) is None
    assert a.bad_samples == 4 and a.reach == 0


def test_constructor_rejects_bad_configuration():
    with pytest.raises(ValueError, match="minpoll"):
        Association(1, "x", refclock=True, minpoll=10, maxpoll=6)
    with pytest.raises(ValueError, match="association id"):
        Association(0, "x", refclock=True)
    with pytest.raises(ValueError):
        Association(1, "x", refclock=False, address="not-an-address")
    with pytest.raises(ValueError, match="refid"):
        Association(1, "x", refclock=True, refid="TOOLONG")


def test_refids():
    assert normalize_refid("GPS") == b"GPS\0"
    assert address_refid("192.0.2.1") == bytes([192, 0, 2, 1])
    assert address_refid("::ffff:192.0.2.1") == bytes([192, 0, 2, 1])
    v6 = address_refid("2001:db8::1")
    assert v6 == hashlib.md5(ipaddress.ip_address("2001:db8::1").packed).digest()[:4]
    s = server()
    s.receive(m(delay=0.01), T0, stratum=2, refid=b"\x0a\0\0\x01")
    assert s.system_refid() == bytes([192, 0, 2, 1])
    g = gps()
    assert g.system_refid() == b"GPS\0"


def test_events_count_and_saturate():
    a = gps()
    a.receive(m(), T0)
    assert (a.last_event, a.event_count) == (0x4, 1)
    for i in range(8):
        a.poll_missed(T0 + (i + 1) * 16 * S)
    assert a.last_event == 0x3


def test_refclock_window_span_and_spread_are_kept_with_the_sample():
    a = gps()
    a.receive(m(offset=0.001, local_ns=T0 - S, jitter=3e-4), T0, span_ns=15 * S)
    assert a.sample_span_ns == 15 * S and a.sample_ns == T0 - S
    assert a.newest_jitter == 3e-4
    newest = a.newest_sample()
    assert newest is not None and newest.offset == 0.001 and newest.span_ns == 15 * S
    # Without an explicit span, none is assumed.
    a.receive(m(offset=0.002, local_ns=T0 + 15 * S), T0 + 16 * S)
    assert a.sample_span_ns == 0 and a.newest_jitter is None


def test_sample_spread_is_the_count_weighted_median_of_recent_polls():
    a = gps()
    # Start-up polls of 2 samples, one of them by chance far too tight.
    for k, spread in enumerate((6e-6, 9e-4, 1.2e-3)):
        a.receive(m(offset=0.001, local_ns=T0 + 2 * k * S, jitter=spread), T0 + 2 * k * S,
                  span_ns=S)
    assert a.sample_spread == 9e-4
    # Full polls of 16 samples outweigh them; one poll inflated by a slew does not count.
    t = T0 + 16 * S
    for spread in (1.0e-3, 1.1e-3, 40e-3):
        a.receive(m(offset=0.001, local_ns=t, jitter=spread), t, span_ns=15 * S)
        t += 16 * S
    assert a.sample_spread == 1.1e-3
    # Only the last SPREAD_POLLS polls count.
    for _ in range(SPREAD_POLLS):
        a.receive(m(offset=0.001, local_ns=t, jitter=2e-4), t, span_ns=15 * S)
        t += 16 * S
    assert a.sample_spread == 2e-4


def test_selection_distance_leaves_never_filled_stages_out_from_the_third_sample():
    a = server()
    now = T0
    for k in range(3):
        now = T0 + k * 64 * S
        a.receive(m(offset=0.0, delay=0.004, disp=1e-5, local_ns=now), now, stratum=1,
                  refid=b"GPS", root_dispersion=1e-4)
        full = a.root_distance(now)
        early = a.selection_distance(now, early_samples=3)
        assert a.selection_distance(now) == full  # None: ntpd's rule
        if k < 2:
            assert early == full  # one or two samples are never trusted early
        else:
            assert early < 0.01 < 1.5 < full
    assert a.selection_dispersion(3) == pytest.approx(early - (full - a.dispersion), abs=1e-12)
    assert a.dispersion > 1.5  # ntpq's view keeps ntpd's value
