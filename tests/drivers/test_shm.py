"""Tests for drivers/shm.py: the type 28 driver on real SysV segments, and fed by a real gpsd."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pps_fakes as pf  # noqa: E402
import pytest
from stratum1.drivers import shm as shmdrv
from stratum1.hw import shm as hwshm

from stratum1.clock import SystemClock
from stratum1.eventloop import EventLoop
from stratum1.refclock.testing import VirtualClock, VirtualLoop, unit_config
from stratum1.refclock.unit import RefclockUnit
from stratum1.sample import LEAP_INSERT, Sample

NS = pf.NS
TEST_BASE = 0x53320000 + (os.getpid() % 4096) * 512  # private keys, never a real NTP unit


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setattr(hwshm, "SHM_KEY_BASE", TEST_BASE)
    for u in range(8):
        hwshm.remove_segment(TEST_BASE + u)
    yield
    for u in range(8):
        hwshm.remove_segment(TEST_BASE + u)


def _driver(unit=2, **cfg):
    ctx = pf.RecordingContext()
    drv = shmdrv.ShmDriver(pf.stand_in_config(type=28, unit=unit, **cfg), ctx)
    return drv, ctx


def _writer(unit=2):
    seg = hwshm.ShmSegment(TEST_BASE + unit, create=False)
    seg.open()
    return seg


def test_declaration():
    d = shmdrv.ShmDriver.describe()
    assert (d["type"], d["name"], d["ntpq_name"], d["refid"], d["precision"]) == (28, "shm", "SHM", "SHM", -1)
    assert d["max_unit"] == 255 and d["mode_range"] == (0, 1)
    for f in ("time1", "time2", "flag1", "flag4"):
        assert shmdrv.ShmDriver.accepts_fudge(f)


@pytest.mark.parametrize("unit, mode, perm", [(0, None, 0o600), (1, 0, 0o600), (2, None, 0o666), (3, 1, 0o600), (7, 2, 0o666)])
def test_segment_permissions(keys, unit, mode, perm):
    assert shmdrv.segment_perm(unit, mode) == perm
    drv, _ctx = _driver(unit, mode=mode)
    drv.open()
    info = hwshm.segment_info(drv.segment.shmid)
    assert info["perms"] & 0o777 == perm
    assert drv.status()["perm"] == f"0{perm:o}"
    drv.close()


def test_time2_bounds():
    assert shmdrv.max_difference_s(None) == 14400
    assert shmdrv.max_difference_s(0.5) == 14400
    assert shmdrv.max_difference_s(90000) == 14400
    assert shmdrv.max_difference_s(30) == 30


def test_good_sample_is_handed_over(keys):
    drv, ctx = _driver()
    drv.open()
    w = _writer()
    assert w.get_int(40) == -1 and w.get_int(44) == 3 and w.valid == 0  # ntpd's start values
    ctx.tick()
    assert ctx.samples == [] and drv.totals["notready"] == 1
    recv = ctx.clock.real + NS - 300_000_000
    hwshm.write_sample(w, recv + 2_500_000, recv, leap=LEAP_INSERT, precision=-20)
    ctx.tick()
    assert ctx.samples == [Sample(recv, recv + 2_500_000, LEAP_INSERT)]
    assert ctx.precisions == [-20]
    ctx.tick()  # the same sample is not taken twice
    assert len(ctx.samples) == 1
    st = drv.status()
    assert st["good"] == 1 and st["ticks"] == 3 and st["notready"] == 2 and st["segment_precision"] == -20
    w.close()
    drv.close()
    drv.close()


def test_stale_sample_is_refused(keys):
    drv, ctx = _driver()
    drv.open()
    w = _writer()
    old = ctx.clock.real - 10 * NS
    hwshm.write_sample(w, old, old)
    ctx.tick()
    assert ctx.samples == [] and ctx.counts["stale"] == 1
    assert "stale" in drv.status()["last_reject"]
    hwshm.write_sample(w, ctx.clock.real + 5 * NS, ctx.clock.real + 5 * NS)  # from the future
    ctx.tick()
    assert ctx.samples == [] and ctx.counts["stale"] == 2
    w.close()
    drv.close()


def test_difference_limit_time2_and_flag1(keys):
    drv, ctx = _driver()
    drv.open()
    w = _writer()
    recv = ctx.clock.real + NS - 1000
    hwshm.write_sample(w, recv + 5 * 3600 * NS, recv)  # 5 h ahead: beyond the 4 h default
    ctx.tick()
    assert ctx.samples == [] and ctx.counts["baddata"] == 1 and drv.totals["bad"] == 1
    drv.close()

    drv, ctx = _driver(time2=1.0)
    drv.open()
    recv = ctx.clock.real + NS - 1000
    hwshm.write_sample(w, recv - 2 * NS, recv)
    ctx.tick()
    assert ctx.samples == [] and "time2" in drv.status()["last_reject"]
    drv.close()

    drv, ctx = _driver(flag1=True)
    drv.open()
    recv = ctx.clock.real + NS - 1000
    hwshm.write_sample(w, recv - 365 * 86400 * NS, recv)  # a year off: flag1 lets it through
    ctx.tick()
    assert len(ctx.samples) == 1 and ctx.samples[0].offset == -365 * 86400
    w.close()
    drv.close()


def test_torn_read_is_a_clash_and_loses_nothing_else(keys, monkeypatch):
    drv, ctx = _driver()
    drv.open()
    w = _writer()
    recv = ctx.clock.real + NS - 1000
    hwshm.write_sample(w, recv, recv)
    real_copy = drv.segment.copy

    def racing_copy():
        data = real_copy()
        w.count = w.count + 1  # gpsd began its next update during our copy
        return data

    monkeypatch.setattr(drv.segment, "copy", racing_copy)
    ctx.tick()
    assert ctx.samples == [] and drv.totals["clash"] == 1 and ctx.counts["clash"] == 1
    monkeypatch.undo()
    monkeypatch.setattr(hwshm, "SHM_KEY_BASE", TEST_BASE)
    recv = ctx.clock.real + NS - 1000
    hwshm.write_sample(w, recv + 7, recv)
    ctx.tick()
    assert ctx.samples == [Sample(recv, recv + 7)]
    w.close()
    drv.close()


def test_mode0_writer_and_bad_mode(keys):
    drv, ctx = _driver()
    drv.open()
    w = _writer()
    recv = ctx.clock.real + NS - 1000
    hwshm.write_sample(w, recv + 1, recv, mode=0)
    ctx.tick()
    assert len(ctx.samples) == 1
    hwshm.write_sample(w, recv + 1, recv, mode=3)
    ctx.tick()
    assert len(ctx.samples) == 1 and ctx.counts["badformat"] == 1
    w.close()
    drv.close()


def test_flag4_clockstats_counts_per_poll(keys):
    drv, ctx = _driver(flag4=True)
    drv.open()
    w = _writer()
    ctx.tick()
    hwshm.write_sample(w, ctx.clock.real + 500, ctx.clock.real + 500)
    ctx.tick()
    drv.on_poll()
    assert ctx.timecodes == ["2 1 1 0 0"]
    ctx.tick()
    drv.on_poll()
    assert ctx.timecodes[-1] == "1 0 1 0 0"
    w.close()
    drv.close()


def test_with_the_refclock_unit(keys):
    # Through the framework: time1 applies to SHM samples, the segment's precision shows.
    loop = VirtualLoop()
    clock = VirtualClock(loop)
    unit = RefclockUnit(unit_config(type=28, unit=4, time1=0.002), loop, clock)
    unit.start()
    assert unit.state == "open"
    w = _writer(4)
    for _ in range(5):
        loop.advance(0.5)
        now = clock.now_ns()
        hwshm.write_sample(w, now + 10_000_000, now, precision=-18)  # 10 ms ahead
        loop.advance(0.5)
    m = unit.poll(clock.now_ns())
    assert m is not None and m.offset == pytest.approx(0.012)
    assert unit.precision == -18
    w.close()
    unit.stop()


def test_gpsd_writes_shm_and_the_driver_reads_it():
    # A real gpsd, reading NMEA over TCP, writes SHM(0) when it runs as root; the driver reads it.
    gh = _load_harness()
    gh.require_gpsfake()
    if os.geteuid() != 0:
        pytest.skip("gpsd writes the NTP SHM(0) segment only when run as root")
    if _rerun_in_private_ipc_namespace():
        return
    if gh._segment_exists(hwshm.shm_key(0)):
        pytest.skip("an NTP SHM(0) segment already exists (a real gpsd/ntpd here); not touching it")
    loop = EventLoop()
    ctx = pf.RecordingContext(clock=SystemClock(), loop=loop)
    drv = shmdrv.ShmDriver(pf.stand_in_config(type=28, unit=0, flag1=True), ctx)
    try:
        with gh.GpsdTcp():
            drv.open()
            deadline = time.monotonic() + 20
            while len(ctx.samples) < 2 and time.monotonic() < deadline:
                loop.run(until_ns=time.monotonic_ns() + 500_000_000)
            drv.close()
    finally:
        drv.close()
        loop.close()
    assert len(ctx.samples) >= 2, f"no samples from gpsd via SHM (counters {drv.totals})"
    s = ctx.samples[0]
    # The capture is from 2017-01-10; the receive stamp is now.
    assert 1484006000 * NS < s.reference_ns < 1484010000 * NS
    assert s.reference_ns % NS == 0  # gpsd writes the whole second of the fix
    assert abs(s.local_ns - time.time_ns()) < 30 * NS
    assert ctx.samples[1].reference_ns > s.reference_ns
    assert drv.totals["bad"] == 0 and ctx.precisions


def _rerun_in_private_ipc_namespace() -> bool:
    """Run this test again in a new SysV IPC namespace (unshare --ipc), so the real SHM(0) key
    of this machine, or of a parallel run, is never touched. False: not possible here."""
    if os.environ.get(_IN_NS) == "1" or shutil.which("unshare") is None:
        return False
    node = f"{__file__}::test_gpsd_writes_shm_and_the_driver_reads_it"
    r = subprocess.run(
        ["unshare", "--ipc", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", node],
        env={**os.environ, _IN_NS: "1"}, capture_output=True, text=True, timeout=120,
    )
    out = r.stdout + r.stderr
    if "unshare failed" in out:
        return False  # no CAP_SYS_ADMIN (a container): use the shared namespace
    if " skipped" in out and " passed" not in out:
        pytest.skip(out.strip().splitlines()[-1])
    assert r.returncode == 0 and " passed" in out, out[-3000:]
    return True


_IN_NS = "STRATUM1_TEST_PRIVATE_IPC"


def _load_harness():
    if "gpsd_harness" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpsd_harness", Path(__file__).parent / "gpsd_harness.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["gpsd_harness"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["gpsd_harness"]
