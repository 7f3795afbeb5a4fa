"""Tests for stratum1/system.py: the system process end to end (associations in, snapshot out)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from stratum1.association import Association
from stratum1.orphan import ORPHAN_REFID
from stratum1.sample import LEAP_INSERT, LEAP_NONE, LEAP_NOTINSYNC, Measurement
from stratum1.select import Tos
from stratum1.snapshot import SystemSnapshot
from stratum1.system import STEP_REFID, SystemProcess, measure_precision

S = 1_000_000_000
T0 = 1_767_225_600 * S


@dataclass
class Result:
    action: str
    poll: int
    frequency_ppm: float = 0.0


@dataclass
class FakeDiscipline:
    actions: list[str] = field(default_factory=list)
    poll: int = 6
    calls: list[tuple[float, float, int]] = field(default_factory=list)
    kwargs: list[dict] = field(default_factory=list)

    def update(self, offset, jitter, now_ns, *, poll, **kw):
        self.calls.append((offset, jitter, now_ns))
        self.kwargs.append(kw)
        action = self.actions.pop(0) if self.actions else "slew"
        return Result(action, self.poll)

    def frequency_ppm(self):
        return 0.0


def refclock(assoc_id, name="GPS_NMEA(0)", refid="GPS", **kw):
    kw.setdefault("minpoll", 4)
    kw.setdefault("maxpoll", 4)
    return Association(
        assoc_id,
        name,
        refclock=True,
        stratum=kw.pop("stratum", 0),
        refid=refid,
        precision=kw.pop("precision", -20),
        **kw,
    )


def server(assoc_id, address, **kw):
    return Association(
        assoc_id,
        address,
        refclock=False,
        stratum=16,
        refid=b"INIT",
        precision=-20,
        minpoll=6,
        maxpoll=10,
        address=address,
        **kw,
    )


def tick_refclock(a, now, offset, jitter=1e-4, leap=LEAP_NONE):
    a.receive(Measurement(offset, 0.0, 0.0, now, jitter, leap), now)


def settle(a, now, offset, jitter=1e-4, leap=LEAP_NONE):
    """Four polls 2 s apart ending at ``now``: a new refclock's filter holds enough samples
    for its root distance to pass maxdist (one sample alone is ~8 s from the truth)."""
    for k in (3, 2, 1, 0):
        tick_refclock(a, now - k * 2 * S, offset, jitter, leap)


def burst_server(
    a,
    now,
    offset,
    *,
    delay=0.020,
    stratum=1,
    refid=b"GPS",
    root_delay=0.0,
    root_dispersion=0.0005,
    leap=LEAP_NONE,
    n=8,
):
    for i in range(n):
        t = now + 2 * i * S
        a.receive(
            Measurement(offset, delay, 1e-5, t),
            t,
            stratum=stratum,
            refid=refid,
            root_delay=root_delay,
            root_dispersion=root_dispersion,
            leap=leap,
            reference_ns=t - S,
            burst=i > 0,
        )
    return now + 2 * n * S


def test_precision_from_clock_readings():
    assert measure_precision([0, 50, 100, 151]) == -24  # 50 ns -> 2^-24 s (59.6 ns)
    assert measure_precision([0, 1000, 1000, 2000]) == -19  # equal readings ignored
    assert measure_precision([0, 10_000_000]) == -6  # 10 ms tick
    with pytest.raises(ValueError):
        measure_precision([5, 5, 5])


def test_precision_from_a_clock_reading_function():
    t = iter(range(0, 10**9, 100))  # a clock that advances 100 ns per read
    assert measure_precision(lambda: next(t)) == -23  # 100 ns -> 2^-23 s (119 ns)
    assert measure_precision(lambda: T0) == -20  # virtual time that never moves
    import time

    p = measure_precision(time.time_ns)  # this machine: somewhere between 1 ns and 1 ms
    assert -30 <= p <= -10


def test_unsynchronized_before_any_sample():
    sp = SystemProcess(precision=-22, discipline=FakeDiscipline())
    sp.add(refclock(1))
    snap = sp.update(T0)
    assert not snap.synchronized and snap.precision == -22 and snap.refid == b"INIT"
    assert sp.system_peer is None and sp.get(1).tally == " "


@pytest.mark.parametrize("early, fed", [(3, 6), (None, 5)])
def test_gps_refclock_system_snapshot(early, fed):
    disc = FakeDiscipline()
    sp = SystemProcess(precision=-22, discipline=disc, early_samples=early)
    gps = refclock(1, prefer=True)
    sp.add(gps)
    now = T0
    for _ in range(8):
        tick_refclock(gps, now, 0.0012)
        snap = sp.update(now)
        now += 16 * S
    assert snap.synchronized
    assert (snap.leap, snap.stratum, snap.refid) == (LEAP_NONE, 1, b"GPS\0")
    assert snap.root_delay == 0.0
    assert 0.001 <= snap.root_dispersion < 0.01
    assert snap.offset == pytest.approx(0.0012) and snap.system_peer_id == 1
    assert snap.reference_ns == gps.update_ns
    assert sp.system_peer is gps and gps.tally == "*"
    # ntpd's rule: polls 1-3 leave the filter too empty (root distance > maxdist), 4-8
    # discipline; with the early rule the third sample is enough.
    assert len(disc.calls) == fed and disc.calls[-1][0] == pytest.approx(0.0012)


def test_refclock_fudged_stratum_adds_one():
    sp = SystemProcess(precision=-20, discipline=None)
    a = refclock(1, name="LOCAL(0)", refid="LOCL", stratum=10, prefer=True)
    sp.add(a)
    settle(a, T0, 0.0)
    snap = sp.update(T0)
    assert (snap.stratum, snap.refid) == (11, b"LOCL")


def test_network_client_system_snapshot():
    sp = SystemProcess(precision=-20, discipline=FakeDiscipline())
    servers = [server(1, "192.0.2.1"), server(2, "192.0.2.2"), server(3, "198.51.100.7")]
    for s in servers:
        sp.add(s)
    burst_server(servers[0], T0, 0.0010, delay=0.010, stratum=1, root_dispersion=0.0002)
    burst_server(
        servers[1],
        T0,
        0.0012,
        delay=0.040,
        stratum=2,
        refid=b"\x0a\0\0\x01",
        root_delay=0.030,
        root_dispersion=0.010,
    )
    end = burst_server(
        servers[2],
        T0,
        0.0008,
        delay=0.030,
        stratum=2,
        refid=b"\x0a\0\0\x02",
        root_delay=0.020,
        root_dispersion=0.008,
    )
    snap = sp.update(end)
    peer = sp.system_peer
    assert peer is servers[0]
    assert snap.stratum == 2
    assert snap.refid == bytes([192, 0, 2, 1])
    assert snap.root_delay == pytest.approx(peer.delay + peer.root_delay)
    assert snap.root_dispersion >= 0.001
    assert {s.tally for s in servers} == {"*", "+"}
    assert 0.0008 < snap.offset < 0.0012  # combined


@pytest.mark.parametrize("early", [3, None])
def test_falseticker_marked_x_and_never_selected(early):
    sp = SystemProcess(precision=-20, discipline=FakeDiscipline(), early_samples=early)
    good = [server(i, f"192.0.2.{i}") for i in (1, 2, 3)]
    bad = server(4, "203.0.113.9")
    for s in [*good, bad]:
        sp.add(s)
    now = T0
    for rnd in range(5):
        for k, s in enumerate(good):
            burst_server(s, now, 0.0005 * k, delay=0.010 + 0.001 * k, n=2)
        burst_server(bad, now, 0.700, delay=0.001, n=2)  # the shortest delay, but wrong
        sp.update(now + 10 * S)
        now += 64 * S
        assert sp.system_peer is not bad
        if rnd == 0:
            continue  # two samples each: distances still above maxdist, nobody is fit
        assert sp.system_peer is not None
        if rnd == 1 and early is None:
            # Root distances near 0.94 s still cover the 0.7 s error: clustering casts it out.
            assert bad.tally == "-"
        else:
            assert bad.tally == "x"
    assert abs(sp.snapshot.offset) < 0.002


def test_noselect_and_unreachable_are_not_candidates():
    sp = SystemProcess(precision=-20, discipline=None)
    a = server(1, "192.0.2.1", noselect=True)
    b = server(2, "192.0.2.2")
    sp.add(a)
    sp.add(b)
    end = burst_server(a, T0, 0.0)
    sp.update(end)
    assert a.tally == " " and a.unfit_reason == "noselect"
    assert b.unfit_reason == "unreachable" and sp.system_peer is None


def test_network_source_needs_distance_below_maxdist():
    # ntpd's rule (early_samples=None): four samples before the empty stages' 16 s each
    # let the root distance below maxdist.
    sp = SystemProcess(precision=-20, discipline=None, early_samples=None)
    a = server(1, "192.0.2.1")
    sp.add(a)
    burst_server(a, T0, 0.0, n=3)
    sp.update(T0 + 10 * S)
    assert a.unfit_reason == "distance" and sp.system_peer is None
    burst_server(a, T0 + 10 * S, 0.0, n=1)
    sp.update(T0 + 20 * S)
    assert sp.system_peer is a


def test_early_rule_selects_at_the_third_sample_never_before():
    sp = SystemProcess(precision=-20, discipline=FakeDiscipline())
    a = server(1, "192.0.2.1")
    sp.add(a)
    for n, fit in ((1, False), (2, False), (3, True)):
        burst_server(a, T0 + n * 10 * S, 0.0, n=1)
        snap = sp.update(T0 + n * 10 * S + S)
        assert (sp.system_peer is a) == fit, n
        assert (a.unfit_reason == "distance") != fit
    # ntpq still shows ntpd's dispersion; the served root distance is the selection's, so
    # clients (maxdist 1.5 s) accept the first synchronised answer.
    assert a.dispersion > 1.5 > snap.root_dispersion + snap.root_delay / 2
    assert snap.synchronized


def test_early_rule_still_counts_missed_polls_and_respects_a_small_maxdist():
    sp = SystemProcess(precision=-20, discipline=FakeDiscipline())
    a = server(1, "192.0.2.1")
    sp.add(a)
    now = T0
    for _ in range(3):
        burst_server(a, now, 0.0, n=1)
        now += 16 * S
    sp.update(now)
    assert sp.system_peer is a
    for _ in range(4):  # silent polls push 16 s dummies, which still count in full
        a.poll_missed(now)
        now += 16 * S
    sp.update(now)
    assert a.unfit_reason == "distance"
    strict = SystemProcess(precision=-20, discipline=FakeDiscipline(), tos=Tos(maxdist=0.01))
    b = server(2, "192.0.2.2")
    strict.add(b)
    for k in range(3):
        burst_server(b, T0 + k * 16 * S, 0.0, delay=0.030, n=1)  # delay/2 beyond maxdist
    strict.update(T0 + 40 * S)
    assert b.unfit_reason == "distance"


def test_loop_detection():
    sp = SystemProcess(precision=-20, discipline=None, local_refids=[bytes([10, 0, 0, 5])])
    a = server(1, "192.0.2.1")
    sp.add(a)
    burst_server(a, T0, 0.0, stratum=3, refid=bytes([10, 0, 0, 5]))
    sp.update(T0 + 20 * S)
    assert a.unfit_reason == "loop"


def nmea_and_pps(sp):
    nmea = refclock(1, prefer=True)
    pps = refclock(2, name="PPS(0)", refid="PPS", pps=True)
    sp.add(nmea)
    sp.add(pps)
    return nmea, pps


def test_pps_peer_o_only_while_prefer_within_128ms_and_clean_fallback():
    sp = SystemProcess(precision=-20, discipline=FakeDiscipline())
    nmea, pps = nmea_and_pps(sp)
    now = T0
    for _ in range(8):
        tick_refclock(nmea, now, 0.020, jitter=0.030)
        tick_refclock(pps, now, 0.000002, jitter=2e-6)
        snap = sp.update(now)
        now += 16 * S
    assert pps.tally == "o" and nmea.tally == "*"
    assert sp.system_peer is pps and sp.pps_peer is pps
    assert (snap.stratum, snap.refid) == (1, b"PPS\0")
    assert snap.offset == pytest.approx(0.000002)

    # The PPS signal goes away: at the first silent poll NMEA alone disciplines the clock.
    calls = len(sp.discipline.calls)
    tick_refclock(nmea, now, 0.020, jitter=0.030)
    pps.poll_missed(now)
    snap = sp.update(now)
    assert pps.tally == " " and pps.unfit_reason == "no pulses"
    assert sp.system_peer is nmea and sp.pps_peer is None and nmea.tally == "*"
    assert snap.refid == b"GPS\0" and snap.offset == pytest.approx(0.020)
    assert len(sp.discipline.calls) == calls + 1

    # Pulses come back: PPS takes over again.
    now += 16 * S
    tick_refclock(nmea, now, 0.020, jitter=0.030)
    tick_refclock(pps, now, 0.000001, jitter=2e-6)
    snap = sp.update(now)
    assert pps.tally == "o" and snap.refid == b"PPS\0"


def test_no_pps_peer_when_prefer_beyond_128ms():
    sp = SystemProcess(precision=-20, discipline=FakeDiscipline())
    nmea, pps = nmea_and_pps(sp)
    now = T0
    for _ in range(8):
        tick_refclock(nmea, now, 0.200, jitter=0.300)
        tick_refclock(pps, now, 0.0, jitter=2e-6)
        snap = sp.update(now)
        now += 16 * S
    assert pps.tally != "o" and nmea.tally == "*"
    assert sp.system_peer is nmea and snap.refid == b"GPS\0"
    assert snap.offset == pytest.approx(0.200)


def test_leap_announced_by_majority_of_survivors():
    sp = SystemProcess(precision=-20, discipline=None)
    servers = [server(i, f"192.0.2.{i}") for i in (1, 2, 3)]
    for s in servers:
        sp.add(s)
    for k, s in enumerate(servers):
        burst_server(s, T0, 0.0001 * k, leap=LEAP_INSERT if k < 2 else LEAP_NONE)
    snap = sp.update(T0 + 20 * S)
    assert snap.leap == LEAP_INSERT and sp.leap_vote == LEAP_INSERT


def test_refclock_leap_warning_wins():
    sp = SystemProcess(precision=-20, discipline=None)
    gps = refclock(1)
    sp.add(gps)
    settle(gps, T0, 0.0, leap=LEAP_INSERT)
    assert sp.update(T0).leap == LEAP_INSERT


def test_discipline_actions():
    disc = FakeDiscipline(actions=["ignore", "step"], poll=7)
    sp = SystemProcess(precision=-20, discipline=disc)
    gps = refclock(1, prefer=True, maxpoll=8)
    sp.add(gps)
    settle(gps, T0, 0.5)
    snap = sp.update(T0)
    assert sp.last_action == "ignore" and not snap.synchronized
    assert gps.sys_poll == 7 and sp.sys_poll == 7
    tick_refclock(gps, T0 + 16 * S, 0.5)
    snap = sp.update(T0 + 16 * S)
    assert sp.last_action == "step" and snap.refid == STEP_REFID and not snap.synchronized
    assert gps.epoch_ns == 0 and sp.system_peer is None  # filters start afresh
    settle(gps, T0 + 32 * S, 0.0)
    snap = sp.update(T0 + 32 * S)
    assert snap.synchronized and snap.poll == 7


def test_discipline_is_fed_only_new_samples():
    disc = FakeDiscipline()
    sp = SystemProcess(precision=-20, discipline=disc)
    gps = refclock(1)
    sp.add(gps)
    settle(gps, T0, 0.0)
    sp.update(T0)
    sp.update(T0 + S)
    sp.update(T0 + 2 * S)
    assert len(disc.calls) == 1


def test_panic_is_reported_not_applied():
    sp = SystemProcess(precision=-20, discipline=FakeDiscipline(actions=["panic"]))
    gps = refclock(1)
    sp.add(gps)
    settle(gps, T0, 5000.0)
    snap = sp.update(T0)
    assert sp.panic and not snap.synchronized


def test_losing_all_sources_keeps_last_values_and_dispersion_ages():
    sp = SystemProcess(precision=-20, discipline=None)
    gps = refclock(1)
    sp.add(gps)
    settle(gps, T0, 0.0)
    snap = sp.update(T0)
    now = T0
    for _ in range(8):
        now += 16 * S
        gps.poll_missed(now)
        assert sp.update(now) is snap
    assert sp.system_peer is None and gps.tally == " "
    assert snap.root_dispersion_at(now + 1000 * S) == pytest.approx(
        snap.root_dispersion + 15e-6 * (now + 1000 * S - snap.reference_ns) / S
    )


def test_local_clock_is_a_fallback_after_orphanwait():
    sp = SystemProcess(precision=-20, discipline=None, tos=Tos(orphanwait=100))
    local = refclock(1, name="LOCAL(0)", refid="LOCL", stratum=10, local_clock=True)
    gps = refclock(2)  # configured but silent: LOCAL must not win while it may still come up
    sp.add(local)
    sp.add(gps)
    now = T0
    tick_refclock(local, now, 0.0)
    gps.poll_missed(now)
    assert not sp.update(now).synchronized
    now += 200 * S
    settle(local, now, 0.0)
    gps.poll_missed(now)
    snap = sp.update(now)
    assert snap.stratum == 11 and sp.system_peer is local


def test_local_clock_alone_is_used_without_waiting():
    sp = SystemProcess(precision=-20, discipline=None, tos=Tos(orphanwait=100))
    local = refclock(1, name="LOCAL(0)", refid="LOCL", stratum=10, local_clock=True)
    sp.add(local)
    snap = None
    for i in range(8):
        tick_refclock(local, T0 + i * 2 * S, 0.0)
        snap = sp.update(T0 + i * 2 * S)
        if snap.synchronized:
            break
    assert snap.synchronized and snap.stratum == 11 and sp.system_peer is local


def test_local_clock_yields_to_a_real_source():
    sp = SystemProcess(precision=-20, discipline=None, tos=Tos(orphanwait=0))
    local = refclock(1, name="LOCAL(0)", refid="LOCL", stratum=10, local_clock=True)
    gps = refclock(2)
    sp.add(local)
    sp.add(gps)
    settle(local, T0, 0.0)
    settle(gps, T0, 0.3, jitter=0.001)
    sp.update(T0)
    assert sp.system_peer is gps and local.tally == " "


def test_orphan_parent_when_no_source_left():
    tos = Tos(orphan=5, orphanwait=60)
    sp = SystemProcess(precision=-20, discipline=None, tos=tos, start_ns=T0)
    assert not sp.update(T0 + 30 * S).synchronized
    snap = sp.update(T0 + 61 * S)
    assert sp.orphan_parent
    assert (snap.stratum, snap.refid, snap.root_delay, snap.offset) == (5, ORPHAN_REFID, 0.0, 0.0)
    assert snap.leap == LEAP_NONE and snap.synchronized


def test_orphan_child_follows_lower_metric_parent():
    tos = Tos(orphan=5, orphanwait=0)
    sp = SystemProcess(precision=-20, discipline=None, tos=tos, local_address="192.0.2.50")
    lower = server(1, "192.0.2.10")
    higher = server(2, "192.0.2.99")
    sp.add(lower)
    sp.add(higher)
    burst_server(lower, T0, 0.001, stratum=5, refid=ORPHAN_REFID)
    end = burst_server(higher, T0, 0.002, stratum=5, refid=ORPHAN_REFID)
    snap = sp.update(end)
    assert sp.system_peer is lower and not sp.orphan_parent
    assert (snap.stratum, snap.refid) == (6, bytes([192, 0, 2, 10]))


def test_orphan_parent_ignores_higher_metric_orphans_and_sources_above_orphan_stratum():
    tos = Tos(orphan=5, orphanwait=0)
    sp = SystemProcess(precision=-20, discipline=None, tos=tos, local_address="192.0.2.1")
    higher = server(1, "192.0.2.99")
    child = server(2, "192.0.2.98")
    sp.add(higher)
    sp.add(child)
    burst_server(higher, T0, 0.001, stratum=5, refid=ORPHAN_REFID)
    end = burst_server(child, T0, 0.001, stratum=6, refid=bytes([192, 0, 2, 1]))
    snap = sp.update(end)
    assert sp.orphan_parent and snap.stratum == 5 and snap.refid == ORPHAN_REFID
    assert child.unfit_reason == "orphan"


def test_orphan_mode_gives_way_to_a_real_source():
    tos = Tos(orphan=5, orphanwait=0)
    sp = SystemProcess(precision=-20, discipline=None, tos=tos)
    sp.update(T0)
    assert sp.orphan_parent
    gps = refclock(1)
    sp.add(gps)
    settle(gps, T0 + S, 0.0)
    snap = sp.update(T0 + S)
    assert not sp.orphan_parent and snap.stratum == 1


def test_add_remove():
    sp = SystemProcess(precision=-20, discipline=None)
    gps = refclock(1)
    sp.add(gps)
    with pytest.raises(ValueError):
        sp.add(refclock(1))
    tick_refclock(gps, T0, 0.0)
    sp.update(T0)
    sp.remove(1)
    assert sp.system_peer is None and sp.associations == []
    with pytest.raises(KeyError):
        sp.remove(1)


def test_accepts_config_model_tos():
    from stratum1.config.model import Tos as ConfigTos

    sp = SystemProcess(precision=-20, discipline=None, tos=ConfigTos(minclock=2))
    assert sp.tos.minclock == 2


def test_snapshot_defaults_unchanged():
    snap = SystemSnapshot()
    assert snap.system_peer_id == 0 and snap.leap == LEAP_NOTINSYNC
    assert snap.root_dispersion_at(T0) == 0.0


def test_long_run_gps_pps_and_network_with_noise():
    import random

    rng = random.Random(5905)
    sp = SystemProcess(precision=-20, discipline=FakeDiscipline())
    nmea, pps = nmea_and_pps(sp)
    nets = [server(10 + i, f"192.0.2.{10 + i}") for i in range(3)]
    liar = server(20, "203.0.113.20")
    for s in [*nets, liar]:
        sp.add(s)
    now = T0
    pps_peer_updates = 0
    for poll in range(300):
        tick_refclock(nmea, now, 0.004 + rng.gauss(0, 0.002), jitter=0.010)
        if poll % 50 == 49:
            pps.poll_missed(now)  # an occasional poll without pulses
        else:
            tick_refclock(pps, now, rng.gauss(0, 2e-6), jitter=3e-6)
        if poll % 4 == 0:  # network servers at 64 s
            for s in nets:
                d = 0.010 + abs(rng.gauss(0, 0.002))
                burst_server(s, now, rng.gauss(0, 0.0005), delay=d, n=1 if poll else 8)
            burst_server(liar, now, 0.300 + rng.gauss(0, 0.0005), delay=0.010, n=1 if poll else 8)
        snap = sp.update(now + S)
        assert sp.system_peer is not liar
        if sp.pps_peer is pps:
            pps_peer_updates += 1
            assert (snap.stratum, snap.refid) == (1, b"PPS\0")
            assert abs(snap.offset) < 1e-5
        if poll > 20:
            assert snap.synchronized and snap.stratum == 1
            assert liar.tally in "x-"
            assert nmea.tally == "*"
        now += 16 * S
    assert pps_peer_updates > 250


def test_lone_network_peer_feeds_every_new_sample_weighted_by_its_delay():
    # ntpd's pick would hold on to the low-delay first samples; the discipline gets each new
    # exchange, with an expected error that grows with its delay above the minimum.
    disc = FakeDiscipline()
    sp = SystemProcess(precision=-20, discipline=disc)
    a = server(1, "192.0.2.1")
    sp.add(a)
    now = burst_server(a, T0, 0.001, delay=0.010)
    sp.update(now)
    assert len(disc.calls) == 1
    low_sigma = disc.calls[-1][1]
    for i in range(3):
        t = now + (i + 1) * 64 * S
        a.receive(Measurement(0.002, 0.030, 1e-5, t), t, stratum=1, refid=b"GPS",
                  root_dispersion=0.0005, leap=LEAP_NONE, reference_ns=t - S)
        sp.update(t)
        assert a.offset == 0.001  # the clock filter still picks the low-delay sample
        assert len(disc.calls) == 2 + i
        offset, sigma, _ = disc.calls[-1]
        assert offset == pytest.approx(0.002)
        assert sigma >= 0.010 > low_sigma  # (30 ms - 10 ms) / 2
        assert disc.kwargs[-1]["delay"] == 0.030


def test_refclock_window_span_reaches_the_discipline():
    disc = FakeDiscipline()
    sp = SystemProcess(precision=-20, discipline=disc)
    gps = refclock(1)
    sp.add(gps)
    settle(gps, T0 - 2 * S, 0.001)
    gps.receive(Measurement(0.001, 0.0, 1e-4, T0 - S, 4e-4), T0, span_ns=15 * S)
    sp.update(T0)
    assert disc.kwargs[-1]["span_ns"] == 15 * S
    assert disc.kwargs[-1]["sample_ns"] == T0 - S
    # 16 samples of 0.4 ms spread: the mean is good to 0.1 ms.
    assert disc.calls[-1][1] == pytest.approx(1e-4)


def test_system_jitter_includes_the_peer_jitter_with_one_survivor():
    sp = SystemProcess(precision=-20, discipline=FakeDiscipline())
    a = server(1, "192.0.2.1")
    sp.add(a)
    t = T0
    for i in range(8):
        off = 0.001 + (1e-4 if i % 2 else -1e-4)
        a.receive(Measurement(off, 0.010 + i * 1e-6, 1e-5, t), t, stratum=1, refid=b"GPS",
                  root_dispersion=0.0005, leap=LEAP_NONE, reference_ns=t - S, burst=i > 0)
        t += 2 * S
    snap = sp.update(t)
    assert snap.synchronized
    assert a.jitter > 1e-5
    assert snap.jitter == pytest.approx(a.jitter)


@dataclass
class MovingDiscipline(FakeDiscipline):
    """Reports that the clock was moved by ``moved`` s between any sample and now."""

    moved: float = 0.0

    def offset_change(self, since_ns, now_ns):
        return self.moved


def test_candidate_offsets_are_net_of_corrections_made_since_the_sample():
    disc = MovingDiscipline()
    sp = SystemProcess(precision=-20, discipline=disc)
    a = server(1, "192.0.2.1")
    sp.add(a)
    now = burst_server(a, T0, 0.010, delay=0.010)
    sp.update(now)
    disc.moved = 0.009  # the loop has slewed 9 ms of the 10 since
    later = now + 64 * S
    assert sp.current_offset(a, later) == pytest.approx(0.001)
    a.receive(Measurement(0.001, 0.012, 1e-5, later), later, stratum=1, refid=b"GPS",
              root_dispersion=0.0005, leap=LEAP_NONE, reference_ns=later - S)
    snap = sp.update(later)
    # The lone survivor's newest sample is fed as it is: no stale 10 ms.
    assert disc.calls[-1][0] == pytest.approx(0.001)
    assert snap.offset == pytest.approx(0.001)


@dataclass
class HistoryDiscipline(FakeDiscipline):
    history: list[tuple[float, float, int]] = field(default_factory=list)

    def add_history(self, offset, jitter, sample_ns, *, span_ns=0):
        self.history.append((offset, jitter, sample_ns))
        return True


def test_first_update_hands_the_older_samples_over_oldest_first():
    disc = HistoryDiscipline()
    sp = SystemProcess(precision=-20, discipline=disc)
    a = server(1, "192.0.2.1")
    sp.add(a)
    for k in range(3):
        burst_server(a, T0 + k * 16 * S, 0.001 * (k + 1), n=1)
    sp.update(T0 + 40 * S)
    assert sp.system_peer is a
    assert [h[0] for h in disc.history] == pytest.approx([0.001, 0.002])
    assert [h[2] for h in disc.history] == [T0, T0 + 16 * S]
    assert disc.calls[-1][0] == pytest.approx(0.003)
    burst_server(a, T0 + 48 * S, 0.004, n=1)
    sp.update(T0 + 50 * S)
    assert len(disc.history) == 2 and len(disc.calls) == 2  # later updates: the new one only
