"""Tests for stratum1/mitigation.py: the prefer peer and the PPS peer rules."""

from __future__ import annotations

from stratum1.mitigation import PPS_GATE, mitigate
from stratum1.select import Candidate, ClockHop, Tos, select_sources


def c(key, offset, distance, jitter=1e-6, stratum=1, **kw):
    return Candidate(key, offset, distance, jitter, stratum, **kw)


NET = [c(1, 0.0000, 0.010, 2e-4), c(2, 0.0004, 0.012, 2e-4), c(3, -0.0003, 0.011, 2e-4)]


DEFAULT_TOS = Tos()


def run(cands, *, was_synchronized=True, tos=DEFAULT_TOS):
    sel = select_sources(cands, tos)
    return mitigate(sel, minsane=tos.minsane, was_synchronized=was_synchronized)


def test_prefer_survivor_is_system_peer_with_its_own_offset():
    nmea = c(10, 0.0020, 0.050, 1e-3, stratum=0, prefer=True, refclock=True)
    out = run([*NET, nmea])
    assert out.system_peer_key == 10 and out.prefer_key == 10
    assert out.selection.offset == 0.0020 and out.selection.jitter == 1e-3
    assert out.selection.codes[10] == 6
    assert sum(1 for v in out.selection.codes.values() if v == 6) == 1


def test_prefer_falseticker_is_not_used():
    nmea = c(10, 0.9, 0.010, stratum=0, prefer=True, refclock=True)
    out = run([*NET, nmea])
    assert out.selection.codes[10] == 1  # 'x'
    assert out.system_peer_key != 10 and out.prefer_key is None


def test_pps_peer_while_prefer_within_gate():
    nmea = c(10, 0.050, 0.200, 1e-3, stratum=0, prefer=True, refclock=True)
    pps = c(11, 0.0000021, 0.001, 2e-6, stratum=0, pps=True, refclock=True)
    out = run([nmea, pps])
    assert out.pps_active and out.system_peer_key == 11
    assert out.selection.codes[11] == 7 and out.selection.codes[10] == 6  # 'o' and '*'
    assert out.selection.offset == 0.0000021 and out.selection.jitter == 2e-6


def test_no_pps_peer_when_prefer_outside_gate():
    nmea = c(10, 0.200, 0.300, 1e-3, stratum=0, prefer=True, refclock=True)
    pps = c(11, 0.0, 0.001, stratum=0, pps=True, refclock=True)
    out = run([nmea, pps])
    assert 0.200 > PPS_GATE
    assert not out.pps_active and out.system_peer_key == 10
    assert out.selection.codes[11] == 0 and out.selection.offset == 0.200


def test_pps_without_prefer_uses_the_combined_system_offset():
    pps = c(11, 0.00001, 0.001, stratum=0, pps=True, refclock=True)
    out = run([*NET, pps])
    assert out.pps_active and out.system_peer_key == 11
    far = [
        c(k, o + 0.2, d, j) for k, o, d, j in ((x.key, x.offset, x.distance, x.jitter) for x in NET)
    ]
    out = run([*far, c(11, 0.0, 0.3, stratum=0, pps=True, refclock=True)])
    assert not out.pps_active


def test_pps_alone_only_with_minsane_zero_and_a_set_clock():
    pps = c(11, 0.0, 0.001, stratum=0, pps=True, refclock=True)
    assert not run([pps]).pps_active
    tos = Tos(minsane=0)
    assert run([pps], tos=tos, was_synchronized=True).pps_active
    assert not run([pps], tos=tos, was_synchronized=False).pps_active


def test_pps_must_survive_intersection():
    nmea = c(10, 0.050, 0.001, stratum=0, prefer=True, refclock=True)
    pps = c(11, 0.0, 0.001, stratum=0, pps=True, refclock=True)
    out = run([nmea, pps])  # disjoint: both falsetickers
    assert not out.pps_active and out.system_peer_key is None


def test_prefer_resets_clockhop():
    hop = ClockHop(threshold=0.0005)
    sel = select_sources([*NET, c(10, 0.0, 0.05, stratum=0, prefer=True)], Tos())
    mitigate(sel, minsane=1, was_synchronized=True, clockhop=hop)
    assert hop.threshold == 0.0
