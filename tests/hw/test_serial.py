"""Tests of hw/serial.py: the arrival estimator (pure) and the pyserial transport on a real
pseudo-terminal driven by the real EventLoop."""

from __future__ import annotations

import os
import time

import pytest
from stratum1.hw.serial import ArrivalEstimator, SerialPort, char_time_ns

from stratum1.clock import FrozenDisciplineClock, SystemClock
from stratum1.eventloop import EventLoop

MS = 1_000_000


def test_char_time() -> None:
    assert char_time_ns(9600) == 1_041_666
    assert char_time_ns(115200) == 86_805
    assert char_time_ns(0) == 0


def test_late_read_is_dated_back_to_its_first_byte() -> None:
    est = ArrivalEstimator(char_ns=1 * MS, gap_ns=100 * MS)
    c = est.on_read(stamp_ns=1_000 * MS, nbytes=50)  # Python woke up 49 ms after byte 0
    assert c.first_ns == 951 * MS and c.burst_ns == c.first_ns
    assert c.arrival_ns(49) == 1_000 * MS
    assert c.arrival_ns(10) == 961 * MS


def test_chunks_within_a_burst_keep_the_burst_start() -> None:
    est = ArrivalEstimator(char_ns=1 * MS, gap_ns=100 * MS)
    a = est.on_read(1_000 * MS, 1)
    b = est.on_read(1_030 * MS, 10)  # continuous stream, read a bit late
    assert b.burst_ns == a.first_ns
    assert b.first_ns == 1_021 * MS
    # never earlier than the previous chunk's last byte plus one character
    c = est.on_read(1_031 * MS, 30)
    assert c.first_ns == b.first_ns + 10 * MS
    assert c.start == 11


def test_idle_gap_starts_a_new_burst() -> None:
    est = ArrivalEstimator(char_ns=1 * MS, gap_ns=100 * MS)
    est.on_read(1_000 * MS, 100)
    c = est.on_read(2_000 * MS, 5)
    assert c.burst_ns == c.first_ns == 1_996 * MS


def test_estimate_never_after_the_stamp() -> None:
    est = ArrivalEstimator(char_ns=10 * MS, gap_ns=100 * MS)
    est.on_read(1_000 * MS, 1)
    c = est.on_read(1_001 * MS, 1)  # faster than the nominal baud (a pty): clamp to stamp
    assert c.first_ns <= 1_001 * MS


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    path = os.ttyname(slave)
    yield master, path
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


def run_until(loop: EventLoop, cond, timeout_s: float = 2.0) -> None:
    end = time.monotonic_ns() + int(timeout_s * 1e9)
    while not cond() and time.monotonic_ns() < end:
        loop.run_once(end)


def test_serial_port_reads_a_pty_with_stamps(pty_pair) -> None:
    master, path = pty_pair
    loop = EventLoop()
    clock = FrozenDisciplineClock(SystemClock())
    got: list[tuple[bytes, object]] = []
    errors: list[str] = []
    port = SerialPort(path, 9600, loop, clock, lambda d, c: got.append((d, c)), errors.append)
    port.open()
    try:
        before = clock.now_ns()
        os.write(master, b"$GPTXT,01,01,02,hello*00\r\n")
        run_until(loop, lambda: sum(len(d) for d, _ in got) >= 26)
        after = clock.now_ns()
        data = b"".join(d for d, _ in got)
        assert data == b"$GPTXT,01,01,02,hello*00\r\n"
        chunk = got[0][1]
        assert chunk.stamp_ns <= after and chunk.first_ns <= chunk.stamp_ns
        # the estimate backs off at most the wire time of the bytes read
        assert chunk.first_ns >= before - 26 * char_time_ns(9600)
        assert not errors and port.reads >= 1
    finally:
        port.close()
        port.close()  # safe twice
        loop.close()
    assert not port.is_open


def test_serial_port_reports_hangup_once(pty_pair) -> None:
    master, path = pty_pair
    loop = EventLoop()
    errors: list[str] = []
    port = SerialPort(path, 4800, loop, SystemClock(), lambda d, c: None, errors.append)
    port.open()
    os.close(master)  # the "device" goes away: reads on the slave now fail (EIO) or hit EOF
    run_until(loop, lambda: bool(errors))
    loop.close()
    assert len(errors) == 1 and path in errors[0]
    assert not port.is_open


def test_missing_device_is_a_clear_oserror() -> None:
    loop = EventLoop()
    port = SerialPort("/dev/nonexistent-gps9", 9600, loop, SystemClock(), print, print)
    with pytest.raises(OSError, match="nonexistent-gps9"):
        port.open()
    loop.close()


# -- the line discipline (PPS on DCD) ------------------------------------------------------------
def test_set_line_discipline_is_tiocsetd_with_an_int(monkeypatch) -> None:
    import fcntl
    import struct

    from stratum1.hw import serial as hwserial

    calls = []
    monkeypatch.setattr(fcntl, "ioctl", lambda fd, req, arg=0, mutate=True: calls.append(
        (fd, req, arg)) or 0)
    hwserial.set_line_discipline(7, hwserial.N_PPS)
    assert calls == [(7, 0x5423, struct.pack("=i", 18))]
    assert (hwserial.N_PPS, hwserial.N_TTY, hwserial.TIOCSETD) == (18, 0, 0x5423)


def test_port_line_discipline_on_a_real_pty() -> None:
    from stratum1.hw.serial import N_PPS, N_TTY, get_line_discipline

    master, slave = os.openpty()
    loop = EventLoop()
    port = SerialPort(os.ttyname(slave), 9600, loop, SystemClock(), lambda d, c: None,
                      lambda m: None)
    try:
        with pytest.raises(OSError, match="not open"):
            port.set_line_discipline(N_PPS)
        assert port.fileno() is None
        port.open()
        assert get_line_discipline(port.fileno()) == N_TTY
        try:
            port.set_line_discipline(N_PPS)
        except OSError:
            pass  # a pty, or no pps_ldisc: the PPS source reports why
        else:
            assert get_line_discipline(port.fileno()) == N_PPS
            port.set_line_discipline(N_TTY)
        assert get_line_discipline(port.fileno()) == N_TTY
    finally:
        port.close()
        loop.close()
        os.close(master)
        os.close(slave)
