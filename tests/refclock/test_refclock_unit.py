import math
import time

import pytest

from stratum1.clock import FrozenDisciplineClock, SystemClock
from stratum1.eventloop import EventLoop
from stratum1.ntptime import NS_PER_S
from stratum1.refclock.backoff import Backoff
from stratum1.refclock.driver import RefclockDriver
from stratum1.refclock.testing import VirtualClock, VirtualLoop, unit_config
from stratum1.refclock.unit import FAULT, OPEN, RefclockUnit
from stratum1.sample import LEAP_INSERT, LEAP_NOTINSYNC, Sample


class FakeDriver(RefclockDriver):
    """Records lifecycle calls; the test feeds samples through ``ctx``."""

    type = 200
    name = "fake"
    ntpq_name = "FAKE"
    refid = "FAKE"
    precision = -10
    pps_precision = -20
    fudge_meanings = {"time1": "offset", "flag1": "something"}
    instances: list["FakeDriver"] = []
    fail_opens = 0

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.opened = self.closed = 0
        FakeDriver.instances.append(self)

    def open(self):
        if FakeDriver.fail_opens > 0:
            FakeDriver.fail_opens -= 1
            raise FileNotFoundError(2, "No such file or directory", "/dev/fake0")
        self.opened += 1

    def close(self):
        self.closed += 1

    def status(self):
        return {"device": "/dev/fake0"}


class SerialFake(FakeDriver):
    sample_fudge = "time2"


@pytest.fixture(autouse=True)
def _reset_fake():
    FakeDriver.instances = []
    FakeDriver.fail_opens = 0


def make(cls=FakeDriver, **cfg):
    loop = VirtualLoop()
    clock = VirtualClock(loop)
    lines = []
    unit = RefclockUnit(
        unit_config(type=cls.type, **cfg), loop, clock, driver_cls=cls, clockstats=lines.append
    )
    unit.lines = lines
    return unit, loop, clock


def sample_at(clock, offset_s, leap=0):
    local = clock.now_ns()
    return Sample(local, local + round(offset_s * NS_PER_S), leap)


def test_poll_reduces_samples_and_applies_time1():
    unit, loop, clock = make(time1=0.5)
    unit.start()
    ctx = FakeDriver.instances[-1].ctx
    for off in (0.001, 0.002, 0.003, 0.004, 0.100):
        ctx.add_sample(sample_at(clock, off))
        loop.advance(1)
    m = unit.poll(clock.now_ns())
    assert m is not None
    # 100 ms is an outlier; the mean of the other four is 2.5 ms.
    assert m.offset == pytest.approx(0.5025)
    assert m.jitter == pytest.approx(math.sqrt(1.25) * 0.001)
    assert m.delay == 0.0
    assert m.dispersion == pytest.approx(max(m.jitter, 2.0**-10))
    assert unit.reach == 1
    assert unit.poll(clock.now_ns()) is None  # samples are consumed by each poll
    assert unit.reach == 2
    assert unit.status()["noreply"] == 1


def test_time2_applies_when_driver_says_so():
    unit, loop, clock = make(SerialFake, time1=0.5, time2=-0.25)
    unit.start()
    FakeDriver.instances[-1].ctx.add_sample(sample_at(clock, 0.3))
    assert unit.poll(clock.now_ns()).offset == pytest.approx(0.05)


def test_minjitter_floors_dispersion_not_jitter():
    unit, loop, clock = make(minjitter=0.01)
    unit.start()
    FakeDriver.instances[-1].ctx.add_sample(sample_at(clock, 0.0))
    m = unit.poll(clock.now_ns())
    assert m.jitter == 0.0 and m.dispersion == 0.01


def test_fudge_overrides_stratum_refid_flags():
    unit, _, _ = make()
    assert (unit.stratum, unit.refid, unit.precision) == (0, "FAKE", -10)
    unit, _, _ = make(stratum=3, refid="XYZ", flag1=True, prefer=True, minpoll=4)
    unit.start()
    assert (unit.stratum, unit.refid, unit.prefer, unit.minpoll, unit.maxpoll) == (
        3,
        "XYZ",
        True,
        4,
        4,
    )
    assert FakeDriver.instances[-1].flag(1) and not FakeDriver.instances[-1].flag(2)
    st = unit.status()
    assert st["flags"] == 1 and st["refid"] == "XYZ" and st["stratum"] == 3


def test_notinsync_gives_no_measurement_and_no_reach():
    unit, loop, clock = make()
    unit.start()
    FakeDriver.instances[-1].ctx.add_sample(sample_at(clock, 0.0, LEAP_NOTINSYNC))
    assert unit.poll(clock.now_ns()) is None
    assert unit.reach == 0


def test_leap_bits_are_carried():
    unit, loop, clock = make()
    unit.start()
    FakeDriver.instances[-1].ctx.add_sample(sample_at(clock, 0.0, LEAP_INSERT))
    assert unit.poll(clock.now_ns()).leap == LEAP_INSERT


def test_float_times_are_counted_and_dropped():
    unit, loop, clock = make()
    unit.start()
    ctx = FakeDriver.instances[-1].ctx
    ctx.add_sample(Sample(1.5, 2, 0))
    ctx.add_pulse(3.0)
    assert unit.poll(clock.now_ns()) is None
    assert unit.status()["counters"]["badsamples"] == 2


def test_open_failure_retries_with_backoff_then_resets():
    FakeDriver.fail_opens = 3
    unit, loop, clock = make()
    unit.backoff = Backoff(1.0, 8.0)
    unit.start()
    assert unit.state == FAULT
    st = unit.status()
    assert "open failed: FileNotFoundError" in st["last_fault"] and "/dev/fake0" in st["last_fault"]
    assert st["retry_in"] == pytest.approx(1.0)
    loop.advance(0.999)
    assert len(FakeDriver.instances) == 1
    loop.advance(0.001)  # t=1: second attempt fails, next in 2 s
    assert len(FakeDriver.instances) == 2 and unit.state == FAULT
    loop.advance(2)  # t=3: third attempt fails, next in 4 s
    assert len(FakeDriver.instances) == 3
    loop.advance(3.9)
    assert len(FakeDriver.instances) == 3
    loop.advance(0.1)  # t=7: opens
    assert len(FakeDriver.instances) == 4 and unit.state == OPEN
    assert unit.status()["faults"] == 3
    # a sample proves the device works: the next fault retries after the initial delay again
    FakeDriver.instances[-1].ctx.add_sample(sample_at(clock, 0.0))
    FakeDriver.instances[-1].ctx.report_fault("read error: EIO")
    assert unit.status()["retry_in"] == pytest.approx(1.0)


def test_fault_closes_driver_reach_decays_and_reopens_with_new_instance():
    unit, loop, clock = make()
    unit.start()
    first = FakeDriver.instances[-1]
    for _ in range(3):
        first.ctx.add_sample(sample_at(clock, 0.0))
        unit.poll(clock.now_ns())
    assert unit.reach == 0b111
    first.ctx.report_fault("device vanished")
    assert first.closed == 1 and unit.state == FAULT
    first.ctx.add_sample(sample_at(clock, 0.0))  # a late callback of the dead instance
    assert unit.poll(clock.now_ns()) is None
    assert unit.reach == 0b1110
    assert unit.status()["counters"]["stale_calls"] == 1
    assert unit.status()["event_text"] == "hardware or software fault"
    loop.advance(1)
    second = FakeDriver.instances[-1]
    assert second is not first and second.opened == 1 and unit.state == OPEN
    second.ctx.add_sample(sample_at(clock, 0.0))
    assert unit.poll(clock.now_ns()) is not None and unit.reach == 0b11101
    assert unit.status()["event_text"] == "nominal"


def test_retry_now_on_hotplug_and_stop_cancels_retry():
    FakeDriver.fail_opens = 1
    unit, loop, clock = make()
    unit.start()
    assert unit.state == FAULT
    unit.retry_now()
    assert unit.state == OPEN
    unit.stop()
    assert FakeDriver.instances[-1].closed == 1
    unit.stop()  # a second stop must not close the driver again
    assert FakeDriver.instances[-1].closed == 1
    assert loop.pending() == 0


def test_exception_in_driver_poll_is_a_fault():
    class Broken(FakeDriver):
        def on_poll(self):
            raise OSError(5, "Input/output error")

    unit, loop, clock = make(Broken)
    unit.start()
    assert unit.poll(clock.now_ns()) is None
    assert unit.state == FAULT and "poll failed" in unit.status()["last_fault"]


def test_unknown_driver_is_a_clear_error():
    loop = VirtualLoop()
    with pytest.raises(ValueError, match="no refclock driver for type 250"):
        RefclockUnit(unit_config(type=250, driver="nosuch"), loop, VirtualClock(loop))


# -- pulses ------------------------------------------------------------------------------------
def test_pulses_are_numbered_from_the_units_timecode():
    unit, loop, clock = make(time1=0.001)
    unit.start()
    ctx = FakeDriver.instances[-1].ctx
    # the local clock is 0.2 s behind true time; serial arrives 0.15 s after the edge
    t0 = (clock.now_ns() // NS_PER_S + 10) * NS_PER_S  # a true whole second
    for k in range(5):
        edge = t0 + k * NS_PER_S - 200_000_000
        ctx.add_pulse(edge)
        ctx.add_sample(Sample(edge + 150_000_000, t0 + k * NS_PER_S, LEAP_INSERT))
    m = unit.poll(clock.now_ns())
    # the first pulse had no time code yet and no reference: dropped, the others numbered
    assert unit.status()["counters"]["unnumbered_pulses"] == 1
    assert unit.status()["pulses"] == 5
    assert unit.pps_active and unit.precision == -20
    assert m.offset == pytest.approx(0.201, abs=1e-9)
    assert m.jitter == pytest.approx(0.0, abs=1e-9)
    assert m.leap == LEAP_INSERT


def test_pulse_far_from_any_second_is_ambiguous():
    unit, loop, clock = make()
    unit.start()
    ctx = FakeDriver.instances[-1].ctx
    t0 = (clock.now_ns() // NS_PER_S + 10) * NS_PER_S
    # a time code says true = local + 0.45 s; an edge at local t0 then falls at true t0 + .45
    ctx.add_sample(Sample(t0 - 100_000_000, t0 + 350_000_000))
    ctx.add_pulse(t0)
    assert unit.status()["counters"]["ambiguous_pulses"] == 1
    m = unit.poll(clock.now_ns())
    assert not unit.pps_active  # no numbered pulse: the time code itself is the sample
    assert m.offset == pytest.approx(0.45)


def test_pulse_lock_expires_and_falls_back_to_system_reference():
    loop = VirtualLoop()
    clock = VirtualClock(loop)
    synced = {"yes": False}
    unit = RefclockUnit(
        unit_config(type=200),
        loop,
        clock,
        driver_cls=FakeDriver,
        pulse_reference=lambda ns: ns if synced["yes"] else None,
    )
    unit.start()
    ctx = FakeDriver.instances[-1].ctx
    base = clock.now_ns()
    ctx.add_sample(Sample(base, base))
    ctx.add_pulse(base + 3 * NS_PER_S + 10_000_000)  # 3 s after the time code: lock too old
    assert unit.status()["counters"]["unnumbered_pulses"] == 1
    synced["yes"] = True
    ctx.add_pulse(base + 4 * NS_PER_S + 10_000_000)
    m = unit.poll(clock.now_ns())
    assert unit.pps_active and m.offset == pytest.approx(-0.010)


# -- clockstats --------------------------------------------------------------------------------
def test_clockstats_written_once_per_poll_with_the_last_timecode():
    unit, loop, clock = make()
    unit.start()
    ctx = FakeDriver.instances[-1].ctx
    ctx.log_timecode("first")
    ctx.log_timecode("$GPRMC,last")
    unit.poll(clock.now_ns())
    unit.poll(clock.now_ns())
    assert len(unit.lines) == 1
    assert unit.lines[0].endswith(" 127.127.200.0 $GPRMC,last")
    assert unit.status()["timecode"] == "$GPRMC,last"


def test_counters_set_ntpd_events():
    unit, loop, clock = make()
    unit.start()
    FakeDriver.instances[-1].ctx.count("badformat")
    st = unit.status()
    assert st["badformat"] == 1 and st["event"] == 2


# -- a dead unit never blocks the loop ---------------------------------------------------------
class TickDriver(FakeDriver):
    type = 201

    def open(self):
        super().open()
        self.timer = self.ctx.loop.call_every(0.01, self.tick)

    def tick(self):
        t = self.ctx.clock.now_ns()
        self.ctx.add_sample(Sample(t, t))

    def close(self):
        super().close()
        self.timer.cancel()


class DeadDriver(FakeDriver):
    type = 202

    def open(self):
        raise OSError(19, "No such device")


def test_dead_unit_does_not_block_others_on_a_real_loop():
    loop = EventLoop()
    clock = FrozenDisciplineClock(SystemClock())
    try:
        good = RefclockUnit(unit_config(type=201), loop, clock, driver_cls=TickDriver)
        dead = RefclockUnit(
            unit_config(type=202), loop, clock, driver_cls=DeadDriver, backoff=Backoff(0.01, 0.04)
        )
        dead.start()
        good.start()
        start = time.monotonic()
        loop.run(until_ns=loop.now_ns() + 300_000_000)
        assert time.monotonic() - start < 2.0
        assert good.status()["samples"] >= 5
        assert dead.state == FAULT and dead.status()["faults"] >= 3
        assert good.poll(clock.now_ns()) is not None
        assert dead.poll(clock.now_ns()) is None
        good.stop()
        dead.stop()
    finally:
        loop.close()
