"""Tests of the NMEA driver (drivers/nmea.py): declaration, a real pseudo-terminal fed with real
receiver captures (fast and at their real pace), bad input, faults, PPS pairing, and PPS on the
port's DCD line through the kernel's PPS line discipline (faked at TIOCSETD and in sysfs)."""

from __future__ import annotations

import calendar
import errno
import fcntl
import os
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pps_fakes
import pytest
from stratum1.drivers.nmea import NmeaDriver
from stratum1.drivers.nmea_decode import checksum, read_capture
from stratum1.hw import pps as hwpps
from stratum1.hw.serial import N_PPS, N_TTY, TIOCSETD, Chunk

from stratum1.clock import FrozenDisciplineClock, SystemClock
from stratum1.eventloop import EventLoop
from stratum1.refclock.registry import lookup
from stratum1.refclock.testing import RecordingContext, unit_config

NS = 1_000_000_000
MS = 1_000_000
CAPTURES = Path(os.environ.get("STRATUM1_NMEA_CAPTURES", "/work/shared/captures/nmea"))
PIVOT_2014 = calendar.timegm((2014, 1, 1, 0, 0, 0)) * NS


def test_declaration() -> None:
    assert lookup(20) is NmeaDriver and lookup("nmea") is NmeaDriver
    d = NmeaDriver.describe()
    assert (d["type"], d["name"], d["ntpq_name"], d["refid"], d["precision"]) == (
        20, "nmea", "GPS_NMEA", "GPS", -9,
    )
    assert {"time1", "time2", "flag1", "flag2", "flag3", "flag4"} <= set(d["fudge"])
    assert set(d["options"]) == {"path", "ppspath", "baud", "mode"}
    assert NmeaDriver.device_paths(1) == ("/dev/gps1", "/dev/gpspps1")
    assert NmeaDriver.sample_fudge == "time2"
    assert NmeaDriver.accepts_fudge("time2") and not NmeaDriver.accepts_fudge("nonsense")


def test_baud_and_path_from_config() -> None:
    ctx = RecordingContext()
    drv = NmeaDriver(unit_config(type=20, unit=2, mode=0x51), ctx)
    assert (drv.path, drv.baud, drv.ppspath) == ("/dev/gps2", 115200, None)
    drv = NmeaDriver(unit_config(type=20, path="/dev/ttyAMA0", baud=38400, flag1=True), ctx)
    assert (drv.path, drv.baud, drv.ppspath) == ("/dev/ttyAMA0", 38400, "/dev/gpspps0")


# -- through a real pseudo-terminal -------------------------------------------------------------
class ReplayClock(FrozenDisciplineClock):
    """The system clock shifted to the capture's time, as the receiver's host clock was."""

    def __init__(self, start_ns: int) -> None:
        super().__init__(SystemClock())
        self.shift = start_ns - SystemClock().now_ns()

    def now_ns(self) -> int:
        return super().now_ns() + self.shift


NEO_M8N_START = calendar.timegm((2015, 3, 18, 17, 19, 25)) * NS + 300 * MS


@pytest.fixture
def pty_unit():
    master, slave = os.openpty()
    loop = EventLoop()
    clock = ReplayClock(NEO_M8N_START)
    ctx = RecordingContext(clock=clock, loop=loop)
    cfg = unit_config(type=20, path=os.ttyname(slave), baud=9600)
    drv = NmeaDriver(cfg, ctx, pivot_ns=PIVOT_2014, char_ns=0)
    drv.open()
    yield master, loop, ctx, drv
    drv.close()
    drv.close()
    loop.close()
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


def pump(loop: EventLoop, cond, timeout_s: float = 3.0) -> None:
    end = time.monotonic_ns() + int(timeout_s * NS)
    while not cond() and time.monotonic_ns() < end:
        loop.run_once(end)


def write_all(master: int, loop: EventLoop, data: bytes) -> None:
    """Write to the pty master in pieces, letting the loop drain the slave in between."""
    view = memoryview(data)
    while view:
        n = os.write(master, view[:512])
        view = view[n:]
        loop.run_once(time.monotonic_ns() + 2 * MS)


def golden_accepted(name: str) -> list[str]:
    text = (Path(__file__).parent / "golden" / f"{name}.chk").read_text()
    return re.findall(r"^@\d+ accepted \S+ (\S+)", text, re.M)


def _iso(ns: int) -> str:
    sec, frac = divmod(ns, NS)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac // MS:03d}Z"


needs_captures = pytest.mark.skipif(not CAPTURES.is_dir(), reason=f"no captures in {CAPTURES}")


@needs_captures
def test_capture_replayed_fast_through_a_pty(pty_unit) -> None:
    master, loop, ctx, drv = pty_unit
    before = ctx.clock.now_ns()
    write_all(master, loop, read_capture((CAPTURES / "neo-m8n.log").read_bytes()))
    # the capture opens with the GLL of the second before; the golden replay has no receive
    # clock to date it, the driver has (the replay clock reads the capture's time)
    expected = ["2015-03-18T17:19:25.000Z", *golden_accepted("neo-m8n.log")]
    pump(loop, lambda: len(ctx.samples) >= len(expected))
    after = ctx.clock.now_ns()
    assert [_iso(s.reference_ns) for s in ctx.samples] == expected
    assert all(before <= s.local_ns <= after for s in ctx.samples)
    assert not ctx.faults
    assert ctx.counts["accepted"] == len(expected) and ctx.counts.get("malformed", 0) == 0
    assert len(ctx.timecodes) == len(expected) and ctx.timecodes[1].startswith("$GNRMC")
    st = drv.status()
    assert st["gps"]["fix_type"] == 3 and st["last_timecode"] == ctx.timecodes[-1]


def _bursts(data: bytes) -> list[bytes]:
    """Split a capture into the receiver's once-a-second bursts (a burst starts at an RMC)."""
    bursts: list[bytes] = [b""]
    for line in data.splitlines(keepends=True):
        if b"RMC," in line[:7] and bursts[-1]:
            bursts.append(b"")
        bursts[-1] += line
    return bursts


@needs_captures
def test_capture_replayed_at_its_real_pace(pty_unit) -> None:
    """Three bursts one second apart: one sample each, stamped one second apart."""
    master, loop, ctx, drv = pty_unit
    bursts = _bursts(read_capture((CAPTURES / "neo-m8n.log").read_bytes()))[1:4]
    start = time.monotonic_ns()
    for i, burst in enumerate(bursts):
        pump(loop, lambda: False, timeout_s=max(0.0, (start + i * NS - time.monotonic_ns()) / NS))
        write_all(master, loop, burst)
    pump(loop, lambda: len(ctx.samples) >= 3)
    assert len(ctx.samples) == 3
    refs = [s.reference_ns for s in ctx.samples]
    assert [b - a for a, b in zip(refs, refs[1:], strict=False)] == [NS, NS]
    gaps = [b.local_ns - a.local_ns for a, b in zip(ctx.samples, ctx.samples[1:], strict=False)]
    assert all(abs(g - NS) < 200 * MS for g in gaps), gaps  # loose: CI machines are noisy


def test_garbage_and_baud_mismatch_noise_give_no_sample(pty_unit) -> None:
    master, loop, ctx, drv = pty_unit
    rng = random.Random(20)
    good = b"$GPRMC,235959.00,A,5231.12345,N,01324.54321,E,0.012,,311216,,,A*75"
    noise = bytes(rng.randrange(256) for _ in range(3000))  # wrong baud looks like this
    bad = [
        good[:-2] + b"00",  # bad checksum
        good[:30],  # truncated
        good.replace(b",A,", b",V,", 1)[:-3],  # no checksum on RMC
        b"$GPRMC,246000.00,A,5231.1,N,01324.5,E,0.0,,311216,,,A",
        b"$" + b"9" * 600,
    ]
    payload = noise + b"\r\n".join(bad) + b"\r\n" + noise
    write_all(master, loop, payload)
    pump(loop, lambda: drv.port.bytes_read >= len(payload))
    assert drv.port.bytes_read == len(payload)
    assert ctx.samples == [] and ctx.faults == []
    assert ctx.counts.get("malformed", 0) >= 4 and ctx.counts.get("badformat", 0) >= 3
    assert drv.status()["line_error"] is True
    # and the line recovers as soon as good data comes
    write_all(master, loop, good + b"\r\n")
    pump(loop, lambda: bool(ctx.samples))
    assert len(ctx.samples) == 1


def test_device_gone_is_a_fault(pty_unit) -> None:
    master, loop, ctx, drv = pty_unit
    os.close(master)
    pump(loop, lambda: bool(ctx.faults))
    assert len(ctx.faults) == 1


def test_open_missing_device_raises() -> None:
    loop = EventLoop()
    ctx = RecordingContext(clock=SystemClock(), loop=loop)
    drv = NmeaDriver(unit_config(type=20, path="/dev/no-such-gps"), ctx)
    with pytest.raises(OSError, match="no-such-gps"):
        drv.open()
    drv.close()
    loop.close()


# -- pairing with PPS, without hardware ---------------------------------------------------------
class FakeLoop:
    def __init__(self) -> None:
        self.t = 0

    def now_ns(self) -> int:
        return self.t

    def call_every(self, interval_s, cb, first_s=None):
        return type("T", (), {"cancel": lambda self: None})()


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_718_452_800 * NS  # 2024-06-15T12:00:00Z

    def now_ns(self) -> int:
        return self.t


@dataclass
class FakeEdge:
    sequence: int
    timestamp_ns: int


class FakePps:
    def __init__(self) -> None:
        self.edge: FakeEdge | None = None
        self.opened = self.closed = False

    def open(self) -> None:
        self.opened = True

    def close(self) -> None:
        self.closed = True

    def fetch(self) -> list[FakeEdge]:
        return [self.edge] if self.edge else []


class FakePort:
    def __init__(self, path, baud, loop, clock, on_data, on_error, char_ns=None) -> None:
        self.on_data, self.on_error = on_data, on_error

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass


def rmc(sec: int) -> bytes:
    body = f"GPRMC,1200{sec:02d}.00,A,4807.03812,N,01131.00054,E,0.021,,150624,,,A"
    return f"${body}*{checksum(body.encode()):02X}\r\n".encode()


def test_pps_edges_are_handed_over_and_time2_is_measured() -> None:
    loop, clock, pps = FakeLoop(), FakeClock(), FakePps()
    ctx = RecordingContext(clock=clock, loop=loop)
    ports: list[FakePort] = []

    def port_factory(*a, **kw):
        ports.append(FakePort(*a, **kw))
        return ports[-1]

    cfg = unit_config(type=20, flag1=True, time1=0.0)
    drv = NmeaDriver(
        cfg, ctx, port_factory=port_factory, pps_factory=lambda p, clear, c: pps,
        pivot_ns=PIVOT_2014,
    )
    drv.open()
    assert pps.opened and drv.ppspath == "/dev/gpspps0"
    base = clock.t  # the true top of second 12:00:00, local clock exact
    latency = 137 * MS
    for k in range(5):
        edge = base + k * NS + 40_000  # the PPS edge, 40 us late
        pps.edge = FakeEdge(k + 1, edge)
        clock.t = edge + latency + 5 * MS
        line = rmc(k)
        # the line's end arrived `latency` after the edge; its burst began 60 ms after the edge
        chunk = Chunk(drv.framer.position, len(line), edge + latency, 0, edge + 60 * MS, clock.t)
        ports[0].on_data(line, chunk)
    assert ctx.pulses == [base + k * NS + 40_000 for k in range(5)]
    assert [s.reference_ns - base for s in ctx.samples] == [k * NS for k in range(5)]
    st = drv.status()
    assert st["pps"]["used"] == 5 and st["pps"]["open"]
    assert st["time2_suggested"] == pytest.approx(0.137, abs=1e-6)
    assert st["burst_latency_ms"] == pytest.approx(60.0)
    drv.close()
    assert pps.closed


def test_missing_pps_device_keeps_nmea_running() -> None:
    loop, clock = FakeLoop(), FakeClock()
    ctx = RecordingContext(clock=clock, loop=loop)

    def no_pps(path, clear, c):
        raise OSError(f"{path}: no such PPS device")

    drv = NmeaDriver(
        unit_config(type=20, ppspath="/dev/pps7"), ctx,
        port_factory=FakePort, pps_factory=no_pps, pivot_ns=PIVOT_2014,
    )
    drv.open()
    assert drv.status()["pps"]["error"] == "/dev/pps7: no such PPS device"
    drv.close()


def test_flag4_obscures_position_in_timecodes() -> None:
    loop, clock = FakeLoop(), FakeClock()
    ctx = RecordingContext(clock=clock, loop=loop)
    ports: list[FakePort] = []
    drv = NmeaDriver(
        unit_config(type=20, flag4=True, mode=0x10000), ctx,
        port_factory=lambda *a, **k: ports.append(FakePort(*a, **k)) or ports[-1],
        pivot_ns=PIVOT_2014,
    )
    drv.open()
    line = rmc(0)
    ports[0].on_data(line, Chunk(0, len(line), clock.t, 0, clock.t, clock.t))
    assert len(ctx.samples) == 1
    assert "4807" not in ctx.timecodes[0] and "01131" not in ctx.timecodes[0]
    assert ctx.timecodes[0].endswith(" 1 1 0 0 0 0")  # extended stats (mode 0x10000)


# -- flag1: PPS on the serial port's DCD line (kernel PPS line discipline) ----------------------




_PPS_IOCTLS = {hwpps.PPS_GETCAP, hwpps.PPS_GETPARAMS, hwpps.PPS_SETPARAMS, hwpps.PPS_FETCH,
               hwpps.PPS_KC_BIND}


class FakeLdiscKernel:
    """TIOCSETD on one tty as the kernel answers it: N_PPS registers /dev/ppsN in a fake sysfs
    (its ``path`` naming the tty) and the PPS ioctls go to a FakePpsKernel; N_TTY removes it.
    ``refuse`` makes TIOCSETD fail with that errno (no pps_ldisc, a pty)."""

    def __init__(self, root: Path, tty: str, refuse: int | None = None,
                 names: str | None = None) -> None:
        self.sysfs = root / "sys" / "class" / "pps"
        self.dev = root / "dev"
        self.sysfs.mkdir(parents=True)
        self.dev.mkdir()
        (self.sysfs / "pps0").mkdir()  # some other PPS source (a GPIO)
        (self.sysfs / "pps0" / "path").write_text("\n")
        self.tty = tty
        self.names = names or tty  # what the new ppsN's sysfs ``path`` says
        self.refuse = refuse
        self.ldiscs: list[int] = []
        self.pps = pps_fakes.FakePpsKernel()

    def install(self, monkeypatch) -> None:
        real = fcntl.ioctl

        def ioctl(fd, request, arg=0, mutate=True):
            if request == TIOCSETD and os.ttyname(fd) == self.tty:
                return self.setd(int.from_bytes(arg, sys.byteorder, signed=True))
            if request in _PPS_IOCTLS:
                return self.pps.ioctl(fd, request, arg, mutate)
            return real(fd, request, arg, mutate)

        monkeypatch.setattr(fcntl, "ioctl", ioctl)

    def setd(self, ldisc: int) -> int:
        if self.refuse is not None:
            raise OSError(self.refuse, os.strerror(self.refuse))
        self.ldiscs.append(ldisc)
        node = self.sysfs / "pps3"
        if ldisc == N_PPS:
            node.mkdir(exist_ok=True)
            (node / "path").write_text(self.names + "\n")
            (self.dev / "pps3").touch()
        elif node.exists():
            (node / "path").unlink()
            node.rmdir()
            (self.dev / "pps3").unlink()
        return 0


@pytest.fixture
def dcd_pty(tmp_path, monkeypatch):
    master, slave = os.openpty()
    loop = EventLoop()
    made: list[NmeaDriver] = []

    def make(refuse: int | None = None, install: bool = True, names: str | None = None, **cfg):
        kernel = FakeLdiscKernel(tmp_path / f"k{len(made)}", os.ttyname(slave), refuse, names)
        if install:
            kernel.install(monkeypatch)
        ctx = RecordingContext(clock=FakeClock(), loop=loop)

        def no_gpspps(path, clear, clock):
            raise hwpps.PpsError(errno.ENOENT, f"{path}: no such PPS device")

        def dcd(port, clear):
            return hwpps.SerialDcdPps(port, hwpps.EDGE_CLEAR if clear else hwpps.EDGE_ASSERT,
                                      sysfs_root=str(kernel.sysfs), dev_root=str(kernel.dev))

        drv = NmeaDriver(unit_config(type=20, path=os.ttyname(slave), baud=9600, flag1=True,
                                     **cfg), ctx, pps_factory=no_gpspps, dcd_factory=dcd,
                         pivot_ns=PIVOT_2014, char_ns=0)
        made.append(drv)
        return drv, ctx, kernel

    yield master, loop, make
    for drv in made:
        drv.close()
    loop.close()
    for fd in (master, slave):
        os.close(fd)


def test_flag1_takes_pps_from_dcd_through_the_line_discipline(dcd_pty) -> None:
    master, loop, make = dcd_pty
    drv, ctx, kernel = make()
    drv.open()
    assert kernel.ldiscs == [N_PPS]
    st = drv.status()["pps"]
    assert st["open"] and st["error"] is None
    assert st["path"] == f"{os.ttyname(drv.port.fileno())} DCD ({kernel.dev}/pps3)"
    assert kernel.pps.mode & hwpps.PPS_CAPTUREASSERT  # the DCD device now captures our edge
    edges = []
    for k in range(3):
        edge = ctx.clock.t + k * NS
        kernel.pps.pulse(edge)
        edges.append(edge)
        ctx.clock.t = edge + 150 * MS
        os.write(master, rmc(k))
        pump(loop, lambda k=k: len(ctx.samples) > k)
    assert ctx.pulses == edges and len(ctx.samples) == 3
    drv.close()
    assert kernel.ldiscs == [N_PPS, N_TTY]  # our discipline is taken off again
    assert not (kernel.sysfs / "pps3").exists()


def test_flag1_and_flag2_capture_the_clear_edge_on_dcd(dcd_pty) -> None:
    _master, _loop, make = dcd_pty
    drv, _ctx, kernel = make(flag2=True)
    kernel.pps.capabilities |= hwpps.PPS_CAPTURECLEAR
    drv.open()
    assert drv.pps is not None and drv.pps.edge == hwpps.EDGE_CLEAR
    assert kernel.pps.mode & hwpps.PPS_CAPTURECLEAR


@pytest.mark.parametrize("refuse, why", [
    (errno.EINVAL, "pps_ldisc"), (errno.EPERM, "CAP_SYS_ADMIN"), (errno.ENOTTY, "not a serial"),
])
def test_no_line_discipline_keeps_serial_time_and_says_why(dcd_pty, refuse, why) -> None:
    master, loop, make = dcd_pty
    drv, ctx, _kernel = make(refuse=refuse)
    drv.open()
    assert drv.pps is None and drv.port is not None
    error = drv.status()["pps"]["error"]
    assert error.startswith("PPS on DCD unavailable: ") and why in error
    assert "/dev/gpspps0" in error
    os.write(master, rmc(0))
    pump(loop, lambda: ctx.samples)
    assert len(ctx.samples) == 1 and not ctx.faults and not ctx.pulses


def test_no_pps_device_for_the_port_is_reported(dcd_pty) -> None:
    _master, _loop, make = dcd_pty
    drv, _ctx, kernel = make(names="/dev/ttyS9")  # the new ppsN names another port
    drv.open()
    assert drv.pps is None
    error = drv.status()["pps"]["error"]
    assert error.startswith("PPS on DCD unavailable: ") and "ppsN names it" in error
    assert kernel.ldiscs == [N_PPS, N_TTY]  # the useless discipline is taken off again


def test_a_real_pty_refuses_or_gives_a_pps_device(dcd_pty) -> None:
    master, loop, make = dcd_pty
    drv, ctx, _kernel = make(install=False)  # the real TIOCSETD of this kernel
    drv.open()
    pps = drv.status()["pps"]
    assert pps["open"] or pps["error"].startswith("PPS on DCD unavailable: ")
    os.write(master, rmc(0))
    pump(loop, lambda: ctx.samples)
    assert len(ctx.samples) == 1  # serial time either way


def test_explicit_ppspath_never_falls_back_to_dcd() -> None:
    loop, clock = FakeLoop(), FakeClock()
    ctx = RecordingContext(clock=clock, loop=loop)
    tried: list[object] = []

    def missing(path, clear, c):
        raise hwpps.PpsError(errno.ENOENT, f"{path}: no such PPS device")

    drv = NmeaDriver(unit_config(type=20, flag1=True, ppspath="/dev/pps7"), ctx,
                     port_factory=FakePort, pps_factory=missing,
                     dcd_factory=lambda port, clear: tried.append(port), pivot_ns=PIVOT_2014)
    drv.open()
    assert tried == [] and drv.status()["pps"]["error"] == "/dev/pps7: no such PPS device"
