import pytest

from stratum1.refclock.registry import lookup
from stratum1.refclock.testing import VirtualClock, VirtualLoop, unit_config
from stratum1.refclock.unit import RefclockUnit


def make(**cfg):
    loop = VirtualLoop()
    clock = VirtualClock(loop)
    unit = RefclockUnit(unit_config(type=1, driver="local", **cfg), loop, clock)
    unit.start()
    return unit, loop, clock


def test_registered_as_type_1_and_local():
    assert lookup(1) is lookup("LOCAL") is not None
    assert lookup(1).refid == "LOCL"


def test_defaults_stratum_5_zero_offset_and_10ms_rootdisp():
    unit, loop, clock = make()
    loop.advance(64)
    m = unit.poll(clock.now_ns())
    assert m.offset == 0.0 and m.delay == 0.0
    assert (unit.stratum, unit.refid, unit.rootdisp, unit.precision) == (5, "LOCL", 0.01, -7)
    assert unit.reach == 1


def test_fudge_stratum_time1_and_time2():
    unit, loop, clock = make(stratum=10, refid="LCL", time1=0.002, time2=100.0)
    loop.advance(64)
    m = unit.poll(clock.now_ns())
    # 100 PPM over 64 s is 6.4 ms, plus time1
    assert m.offset == pytest.approx(0.002 + 0.0064)
    assert (unit.stratum, unit.refid) == (10, "LCL")
