"""Tests for drivers/gpsd.py: target parsing, the JSON stream, report handling, a loopback fake
gpsd for the transport, and a real gpsd fed by gpsfake (with reconnect through the unit)."""

from __future__ import annotations

import json
import socket
import threading
import time

import gpsd_harness as gh  # noqa: E402
import pps_fakes as pf  # noqa: E402
import pytest
from stratum1.drivers import gpsd as gpsddrv

from stratum1.clock import SystemClock
from stratum1.eventloop import EventLoop
from stratum1.refclock.backoff import Backoff
from stratum1.refclock.testing import VirtualLoop, unit_config
from stratum1.refclock.unit import RefclockUnit
from stratum1.sample import Sample

NS = pf.NS


@pytest.mark.parametrize(
    "path, unit, host, port, device",
    [
        (None, 0, "127.0.0.1", 2947, "/dev/gps0"),
        (None, 129, "127.0.0.1", 2947, "/dev/gps1"),
        ("/dev/ttyACM0", 0, "127.0.0.1", 2947, "/dev/ttyACM0"),
        ("gpsd://127.0.0.1:3000", 0, "127.0.0.1", 3000, None),
        ("gpsd://localhost/dev/ttyS0", 0, "localhost", 2947, "/dev/ttyS0"),
        ("gpsd://[::1]:2948/dev/gps3", 0, "::1", 2948, "/dev/gps3"),
        ("gpsd://:2950", 0, "127.0.0.1", 2950, None),
    ],
)
def test_parse_target(path, unit, host, port, device):
    assert gpsddrv.parse_target(path, unit) == gpsddrv.GpsdTarget(host, port, device)


@pytest.mark.parametrize("path", ["gpsd://host:0", "gpsd://host:99999", "gpsd://host:x", "gpsd://[::1"])
def test_parse_target_errors(path):
    with pytest.raises(ValueError, match="gpsd"):
        gpsddrv.parse_target(path, 0)


def test_watch_command():
    assert gpsddrv.watch_command(None) == b'?WATCH={"enable":true,"json":true,"pps":true};\n'
    cmd = gpsddrv.watch_command("/dev/gps0")
    assert json.loads(cmd[len(b"?WATCH="):-2]) == {"enable": True, "json": True, "pps": True, "device": "/dev/gps0"}


def test_json_lines_split_bad_and_overlong():
    d = gpsddrv.JsonLines()
    assert d.feed(b'{"class":"VERSION","rele') == []
    assert d.feed(b'ase":"3.22"}\r\n{"class":"TPV","mode":3}\n') == [
        {"class": "VERSION", "release": "3.22"}, {"class": "TPV", "mode": 3}]
    assert d.feed(b'not json\n[1,2]\n{"noclass":1}\n\xff\xfe\n') == []
    assert d.bad == 4
    assert d.feed(b"x" * (gpsddrv.MAX_LINE + 10)) == [] and d.overlong == 1
    assert d.feed(b'\n{"class":"PPS"}\n') == [{"class": "PPS"}]


def _driver(**cfg):
    cfg.setdefault("path", "gpsd://127.0.0.1:1")
    ctx = pf.RecordingContext()
    return gpsddrv.GpsdDriver(pf.stand_in_config(type=46, **cfg), ctx), ctx


TOFF = {"class": "TOFF", "device": "/dev/ttyS0", "real_sec": 1484006982, "real_nsec": 0,
        "clock_sec": 1795323922, "clock_nsec": 474389170}
PPS = {"class": "PPS", "device": "/dev/ttyS0", "real_sec": 1795323923, "real_nsec": 0,
       "clock_sec": 1795323923, "clock_nsec": 120, "precision": -20}


def test_declaration():
    d = gpsddrv.GpsdDriver.describe()
    assert (d["type"], d["name"], d["ntpq_name"], d["refid"], d["precision"]) == (46, "gpsd", "GPSD_JSON", "GPSD", -9)
    assert gpsddrv.GpsdDriver.sample_fudge == "time2" and gpsddrv.GpsdDriver.pps_precision == -20
    assert d["mode_range"] == (0, 2) and d["max_unit"] == 255


def test_toff_becomes_a_sample_and_pps_is_ignored_in_mode_0():
    drv, ctx = _driver(flag4=True)
    drv.handle(TOFF)
    drv.handle(PPS)
    assert ctx.samples == [Sample(1795323922 * NS + 474389170, 1484006982 * NS)]
    assert ctx.pulses == []
    assert ctx.timecodes == ["TOFF 1484006982.000000000 1795323922.474389170"]
    assert drv.status()["role"] == "serial"


def _lock_driver(**cfg):
    cfg.setdefault("path", "gpsd://127.0.0.1:1")
    ctx = pf.RecordingContext()
    return gpsddrv.GpsdDriver(pf.stand_in_config(type=46, **cfg), ctx), ctx


@pytest.mark.parametrize("mode", [1, 2])
def test_pps_becomes_a_pulse_in_modes_1_and_2(mode):
    drv, ctx = _lock_driver(mode=mode)
    drv.handle(TOFF)
    drv.handle(PPS)
    assert ctx.pulses == [1795323923 * NS + 120]
    toff = Sample(1795323922 * NS + 474389170, 1484006982 * NS)
    if mode == 1:  # strict: the TOFF only numbers pulses
        assert ctx.samples == [] and ctx.locks == [toff]
        assert drv.status()["role"] == "pps+toff"
    else:
        assert ctx.samples == [toff] and ctx.locks == []
        assert drv.status()["role"] == "serial+pps"
    drv2, ctx2 = _driver(mode=mode, flag2=True)  # flag2: ignore PPS
    drv2.handle(PPS)
    assert ctx2.pulses == []


class _Unconnected(gpsddrv.GpsdDriver):
    """The gpsd driver without its socket: tests feed reports through ``handle``."""

    def open(self) -> None:
        pass


def _unit(mode):
    clock = pf.FakeClock()
    unit = RefclockUnit(unit_config(type=46, unit=0, mode=mode, time2=0.25), VirtualLoop(),
                        clock, driver_cls=_Unconnected)
    unit.start()
    assert unit.state == "open"
    return unit, clock


def _second(unit, clock, t, *, pps=True, toff=True):
    """One second of gpsd reports: TOFF for second t (sentence 0.3 s late), then t+1's PPS."""
    if toff:
        unit.driver.handle({"class": "TOFF", "real_sec": t, "real_nsec": 0,
                            "clock_sec": t, "clock_nsec": 300_000_000})
    clock.real = (t + 1) * NS + 2_000_000
    if pps:
        unit.driver.handle({"class": "PPS", "real_sec": t + 1, "real_nsec": 0,
                            "clock_sec": t + 1, "clock_nsec": 1_000_000})


T0 = 1_795_323_000


@pytest.mark.parametrize("mode", [1, 2])
def test_strict_mode_serves_pps_or_nothing(mode):
    unit, clock = _unit(mode)
    for t in range(T0, T0 + 8):
        _second(unit, clock, t)
    m = unit.poll(clock.now_ns())
    # Pulses 1 ms late on the local clock: -1 ms, whatever time2 says about serial time.
    assert m is not None and m.offset == pytest.approx(-0.001, abs=1e-9)
    assert unit.pps_active
    for t in range(T0 + 8, T0 + 16):  # PPS lost: only TOFF keeps coming
        _second(unit, clock, t, pps=False)
    m = unit.poll(clock.now_ns())
    st = unit.status()
    if mode == 1:
        assert m is None and st["samples"] == 0
        assert st["counters"]["lock_timecodes"] == 16 and st["reach"] == 0b10
    else:  # auto: serial time (0.3 s late, time2 = 0.25 s) carries on
        assert m is not None and m.offset == pytest.approx(-0.05, abs=1e-9)
        assert st["samples"] == 16 and st["reach"] == 0b11


def test_strict_mode_without_toff_cannot_number_pulses():
    unit, clock = _unit(1)
    for t in range(T0, T0 + 4):
        _second(unit, clock, t, toff=False)
    assert unit.poll(clock.now_ns()) is None
    assert unit.status()["counters"]["unnumbered_pulses"] == 4


def test_strict_mode_with_flag2_says_it_has_nothing():
    drv, _ctx = _lock_driver(mode=1, flag2=True)
    assert drv.status()["role"].startswith("none")


def test_secondary_unit_is_pps_only():
    drv, ctx = _driver(unit=128, path=None)
    assert drv.target.device == "/dev/gps0"
    drv.handle({**TOFF, "device": "/dev/gps0"})
    drv.handle({**PPS, "device": "/dev/gps0"})
    assert ctx.samples == [] and ctx.pulses == [1795323923 * NS + 120]
    assert drv.status()["role"] == "pps"


def test_other_devices_are_ignored():
    drv, ctx = _driver(path="gpsd://127.0.0.1:1/dev/gps1")
    drv.handle(TOFF)  # from /dev/ttyS0
    assert ctx.samples == [] and drv.tally["ignored"] == 1
    drv.handle({**TOFF, "device": "/dev/gps1"})
    assert len(ctx.samples) == 1


def test_no_fix_and_bad_stamps():
    drv, ctx = _driver()
    drv.handle({"class": "TPV", "mode": 1})
    drv.handle(TOFF)
    assert ctx.samples == [] and ctx.counts["no_fix"] == 1
    drv.handle({"class": "TPV", "mode": 3})
    for bad in ({**TOFF, "real_nsec": NS}, {**TOFF, "clock_sec": "x"}, {**TOFF, "real_sec": 1.5},
                {k: v for k, v in TOFF.items() if k != "clock_nsec"}):
        drv.handle(bad)
    assert ctx.samples == [] and ctx.counts["baddata"] == 4
    drv.handle(TOFF)
    assert len(ctx.samples) == 1


def test_version_devices_error_status():
    drv, ctx = _driver()
    drv.handle({"class": "VERSION", "release": "3.22", "proto_major": 3, "proto_minor": 14})
    drv.handle({"class": "DEVICES", "devices": [{"class": "DEVICE", "path": "/dev/pts/1"}, "junk"]})
    drv.handle({"class": "ERROR", "message": "Unrecognized request"})
    drv.handle({"class": "SKY", "satellites": []})
    st = drv.status()
    assert st["gpsd_version"] == "3.22" and st["gpsd_devices"] == ["/dev/pts/1"]
    assert st["gpsd_error"] == "Unrecognized request" and ctx.counts["gpsd_error"] == 1
    assert st["connected"] is False


class FakeGpsd:
    """A loopback TCP server that records what the client sends and sends scripted lines."""

    def __init__(self) -> None:
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(1)
        self.port = self.srv.getsockname()[1]
        self.conn: socket.socket | None = None

    def accept(self) -> bytes:
        self.srv.settimeout(5)
        self.conn, _ = self.srv.accept()
        self.conn.settimeout(5)
        return self.conn.recv(4096)

    def close(self) -> None:
        if self.conn:
            self.conn.close()
        self.srv.close()


def _run(loop, until, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not until() and time.monotonic() < deadline:
        loop.run_once(until_ns=time.monotonic_ns() + 50_000_000)


def test_transport_against_a_loopback_server():
    server = FakeGpsd()
    loop = EventLoop()
    ctx = pf.RecordingContext(clock=SystemClock(), loop=loop)
    drv = gpsddrv.GpsdDriver(pf.stand_in_config(type=46, path=f"gpsd://127.0.0.1:{server.port}/dev/gps0"), ctx)
    try:
        t = threading.Thread(target=lambda: setattr(server, "hello", server.accept()))
        t.start()
        drv.open()
        t.join(5)
        assert server.hello == gpsddrv.watch_command("/dev/gps0")
        toff = json.dumps({**TOFF, "device": "/dev/gps0"}).encode()
        # Split mid-line and mixed with garbage: the stream decoder reassembles and drops.
        server.conn.sendall(b'{"class":"VERSION","release":"3.25"}\n' + toff[:20])
        _run(loop, lambda: drv.version)
        server.conn.sendall(toff[20:] + b"\n{bad json\n")
        _run(loop, lambda: ctx.samples)
        assert len(ctx.samples) == 1 and ctx.counts["badformat"] == 1
        server.conn.close()  # gpsd goes away
        _run(loop, lambda: ctx.faults)
        assert ctx.faults and "closed the connection" in ctx.faults[0]
    finally:
        drv.close()
        drv.close()
        server.close()
        loop.close()


def test_connection_refused_is_a_clear_open_error():
    port = gh.free_port()
    drv, _ctx = _driver(path=f"gpsd://127.0.0.1:{port}")
    with pytest.raises(OSError, match=f"cannot reach gpsd 127.0.0.1:{port}"):
        drv.open()
    assert drv.sock is None


def test_silence_is_a_fault():
    server = FakeGpsd()
    clock = pf.FakeClock()
    ctx = pf.RecordingContext(clock=clock)
    drv = gpsddrv.GpsdDriver(pf.stand_in_config(type=46, path=f"gpsd://127.0.0.1:{server.port}"), ctx)
    try:
        t = threading.Thread(target=server.accept)
        t.start()
        drv.open()
        t.join(5)
        for _ in range(int(gpsddrv.SILENCE_FAULT_S / 15) + 2):
            ctx.tick(15)
        assert ctx.faults and "nothing from gpsd" in ctx.faults[0]
    finally:
        drv.close()
        server.close()
        ctx.loop.close()


# -- a real gpsd -------------------------------------------------------------------------------
def test_real_gpsd_via_gpsfake_gives_toff_samples():
    gh.require_gpsfake()
    loop = EventLoop()
    ctx = pf.RecordingContext(clock=SystemClock(), loop=loop)
    with gh.GpsFake() as fake:
        drv = gpsddrv.GpsdDriver(pf.stand_in_config(type=46, path=f"gpsd://127.0.0.1:{fake.port}", mode=2), ctx)
        try:
            drv.open()
            _run(loop, lambda: len(ctx.samples) >= 3, timeout_s=20)
            st = drv.status()
        finally:
            drv.close()
            loop.close()
    assert len(ctx.samples) >= 3, f"no TOFF samples from gpsd: {st} {fake.output()}"
    assert st["gpsd_version"] and st["tpv"] >= 1 and st["fix_mode"] == 3
    refs = [s.reference_ns for s in ctx.samples]
    # ublox-8.log was recorded on 2017-01-10; the local stamps are gpsd's "now".
    assert all(1484006000 * NS < r < 1484010000 * NS and r % NS == 0 for r in refs)
    assert refs == sorted(refs)
    assert all(abs(s.local_ns - time.time_ns()) < 60 * NS for s in ctx.samples)
    assert not ctx.faults and not ctx.counts.get("badformat")


def test_unit_reconnects_with_backoff_when_gpsd_comes_and_goes():
    gh.require_gpsfake()
    loop = EventLoop()
    port = gh.free_port()
    unit = RefclockUnit(
        unit_config(type=46, unit=0, path=f"gpsd://127.0.0.1:{port}"), loop, SystemClock(),
        backoff=Backoff(initial=0.2, maximum=0.5),
    )
    fake = gh.GpsFake()
    fake.port = port
    try:
        unit.start()
        assert unit.state == "fault"  # no gpsd yet: retried with back-off, nothing raised
        assert "cannot reach" in unit.status()["last_fault"]
        fake.start()
        _run(loop, lambda: unit.state == "open" and unit.status()["samples"] >= 1, timeout_s=20)
        assert unit.state == "open" and unit.status()["samples"] >= 1
        fake.stop()  # gpsd goes away
        _run(loop, lambda: unit.state == "fault", timeout_s=10)
        assert unit.state == "fault"
        fake.start()
        before = unit.status()["samples"]
        _run(loop, lambda: unit.state == "open" and unit.status()["samples"] > before, timeout_s=20)
        assert unit.status()["samples"] > before
        assert unit.status()["counters"]["opens"] >= 2
    finally:
        unit.stop()
        fake.stop()
        loop.close()
