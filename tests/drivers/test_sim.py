import pytest
from stratum1.drivers.sim import SimParams, nmea_checksum, rmc_sentence

from stratum1.ntptime import NS_PER_S
from stratum1.refclock.registry import lookup
from stratum1.refclock.testing import VirtualClock, VirtualLoop, unit_config
from stratum1.refclock.unit import FAULT, OPEN, RefclockUnit
from stratum1.sample import LEAP_NONE


def make(path=None, **cfg):
    loop = VirtualLoop()
    clock = VirtualClock(loop)
    lines = []
    unit = RefclockUnit(
        unit_config(type=99, driver="sim", path=path, **cfg), loop, clock, clockstats=lines.append
    )
    unit.start()
    return unit, loop, clock, lines


def test_registered_outside_ntpds_numbers():
    cls = lookup("sim")
    assert cls is lookup(99) and cls.type == 99


def test_pps_reduced_offset_matches_configured_offset_within_jitter():
    unit, loop, clock, lines = make("offset=0.0123,jitter=50e-6", flag1=True)
    loop.advance(16)
    m = unit.poll(clock.now_ns())
    assert unit.pps_active and unit.precision == -20
    assert m.offset == pytest.approx(0.0123, abs=50e-6)
    assert 10e-6 < m.jitter < 100e-6
    assert m.leap == LEAP_NONE
    st = unit.status()
    assert st["pulses"] >= 15 and st["counters"].get("ambiguous_pulses", 0) == 0


def test_serial_only_offset_is_off_by_the_delay_unless_time2_fudges_it():
    unit, loop, clock, _ = make("offset=-0.3,delay=0.2,serial_jitter=0.001")
    loop.advance(16)
    m = unit.poll(clock.now_ns())
    assert not unit.pps_active and unit.precision == -9
    assert m.offset == pytest.approx(-0.5, abs=0.001)
    unit, loop, clock, _ = make("offset=-0.3,delay=0.2,serial_jitter=0.001", time2=0.2)
    loop.advance(16)
    assert unit.poll(clock.now_ns()).offset == pytest.approx(-0.3, abs=0.001)


def test_time1_shifts_pps_samples():
    unit, loop, clock, _ = make("offset=0.001,jitter=0", flag1=True, time1=0.0005)
    loop.advance(8)
    assert unit.poll(clock.now_ns()).offset == pytest.approx(0.0015, abs=1e-9)


def test_pps_only_uses_system_reference():
    loop = VirtualLoop()
    clock = VirtualClock(loop)
    unit = RefclockUnit(
        unit_config(type=99, path="offset=0.002,jitter=0", flag1=True, flag2=True),
        loop,
        clock,
        pulse_reference=lambda ns: ns,
    )
    unit.start()
    loop.advance(8)
    m = unit.poll(clock.now_ns())
    assert unit.status()["samples"] == 0
    assert m.offset == pytest.approx(0.002, abs=1e-9)


def test_clockstats_gets_a_valid_rmc_line():
    unit, loop, clock, lines = make()
    loop.advance(5)
    unit.poll(clock.now_ns())
    assert len(lines) == 1
    mjd, secs, addr, code = lines[0].split(" ")
    assert addr == "127.127.99.0" and code.startswith("$GPRMC,") and ",A," in code
    body, cs = code[1:].split("*")
    assert nmea_checksum(body) == cs


def test_no_fix_at_first_gives_no_measurement():
    unit, loop, clock, _ = make("fix_after=20")
    loop.advance(16)
    assert unit.poll(clock.now_ns()) is None and unit.reach == 0
    assert ",V," in unit.status()["timecode"]
    loop.advance(16)
    assert unit.poll(clock.now_ns()) is not None


def test_silent_outage_decays_reach_then_recovers():
    # the epoch is a multiple of 100 s, so the outage covers [0, 40) of every 100 s
    unit, loop, clock, _ = make("outage_every=100,outage_length=40")
    reaches = []
    for _ in range(12):
        loop.advance(16)
        unit.poll(clock.now_ns())
        reaches.append(unit.reach & 1)
    assert 0 in reaches and 1 in reaches
    assert unit.state == OPEN and unit.status()["noreply"] >= 2


def test_unplug_outage_faults_and_reopens_when_back():
    unit, loop, clock, _ = make("outage_every=100,outage_length=10,unplug=1")
    assert unit.state == FAULT  # starts inside the outage: open fails
    assert "unplugged" in unit.status()["last_fault"]
    loop.advance(30)
    assert unit.state == OPEN
    loop.advance(80)  # crosses the next outage: the device vanishes, then comes back
    assert unit.status()["faults"] >= 2
    loop.advance(30)
    assert unit.state == OPEN
    assert unit.poll(clock.now_ns()) is not None


def test_bad_parameters_are_a_clear_open_fault():
    unit, loop, clock, _ = make("offset=abc")
    assert unit.state == FAULT
    assert "sim parameter offset: bad value 'abc'" in unit.status()["last_fault"]
    with pytest.raises(ValueError, match="key one of"):
        SimParams.parse("bogus=1")
    with pytest.raises(ValueError, match="outage_length"):
        SimParams.parse("outage_every=10,outage_length=20")
    assert SimParams.parse("sim:offset=1e-3,unplug=yes,seed=7") == SimParams(
        offset=1e-3, unplug=True, seed=7
    )


def test_rmc_sentence_fields():
    s = rmc_sentence(1_767_225_600 * NS_PER_S + 3723 * NS_PER_S, True)
    assert s.startswith("$GPRMC,010203.00,A,") and ",010126,,,A*" in s
