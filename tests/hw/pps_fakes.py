"""Test fakes at exactly the hardware boundary for the PPS, SHM and gpsd tests.

- FakePpsKernel: replaces ``fcntl.ioctl`` and answers the RFC 2783 ioctls the way
  drivers/pps/pps.c does (same struct layouts, same EINVAL/EPERM rules).
- FakeGpio: a ``gpiod.Chip`` stand-in with the libgpiod v2 API shape (get_info,
  line_offset_from_id, request_lines -> request with wait_edge_events/read_edge_events
  returning real ``gpiod.EdgeEvent`` objects).
- RecordingContext / stand_in_config / FakeClock: the DriverContext and RefclockConfig shapes.

Driver tests outside tests/hw load this file by path (the tests tree has no packages).
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gpiod
from gpiod import _ext
from stratum1.hw import pps as hwpps

from stratum1.config.model import Location, RefclockConfig
from stratum1.eventloop import EventLoop
from stratum1.refclock import testing
from stratum1.refclock.testing import unit_config

NS = 1_000_000_000
T0 = 1_700_000_000 * NS  # an arbitrary "now" for fake clocks


# -- clock, context, config -------------------------------------------------------------------
class FakeClock:
    """CLOCK_REALTIME and CLOCK_MONOTONIC that only move when the test says so."""

    can_adjust = False

    def __init__(self, real_ns: int = T0, mono_ns: int = 5_000 * NS) -> None:
        self.real = real_ns
        self.mono = mono_ns

    def now_ns(self) -> int:
        return self.real

    def monotonic_ns(self) -> int:
        return self.mono

    def advance(self, ns: int) -> None:
        self.real += ns
        self.mono += ns


class RecordingContext(testing.RecordingContext):
    """The recording DriverContext on a FakeClock and a real EventLoop (unless given)."""

    def __init__(self, clock: FakeClock | None = None, loop: EventLoop | None = None) -> None:
        clock = clock or FakeClock()
        super().__init__(clock, loop or EventLoop(monotonic_ns=clock.monotonic_ns))

    def tick(self, seconds: float = 1.0) -> None:
        """Advance the clock and fire due timers of the loop."""
        self.clock.advance(int(seconds * NS))
        self.loop._run_due_timers()


def stand_in_config(**fields: Any) -> RefclockConfig:
    """A RefclockConfig as the parser would give it, read from ``test.conf:1``."""
    fields.setdefault("location", Location("test.conf", 1))
    return unit_config(**fields)


# -- kernel PPS ---------------------------------------------------------------------------------
@dataclass
class FakePpsKernel:
    """One /dev/ppsN as the kernel answers its ioctls. Install with ``install(monkeypatch, fd)``."""

    capabilities: int = (
        hwpps.PPS_CAPTUREASSERT | hwpps.PPS_OFFSETASSERT | hwpps.PPS_ECHOASSERT
        | hwpps.PPS_CANWAIT | hwpps.PPS_TSFMT_TSPEC
    )
    mode: int = hwpps.PPS_CAPTUREASSERT | hwpps.PPS_TSFMT_TSPEC
    cap_sys_time: bool = True
    assert_seq: int = 0
    assert_ns: int = 0
    clear_seq: int = 0
    clear_ns: int = 0
    bound_edge: int = 0
    fail_fetch: int | None = None
    fds: set[int] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)
    fetch_timeouts: list[tuple[int, int, int]] = field(default_factory=list)

    def pulse(self, ns: int, edge: str = "assert") -> None:
        if edge == "assert":
            self.assert_seq = (self.assert_seq + 1) & 0xFFFFFFFF
            self.assert_ns = ns
        else:
            self.clear_seq = (self.clear_seq + 1) & 0xFFFFFFFF
            self.clear_ns = ns

    def install(self, monkeypatch: Any) -> None:
        import fcntl

        real = fcntl.ioctl

        def ioctl(fd: int, request: int, arg: Any = 0, mutate: bool = True) -> Any:
            if fd in self.fds or not self.fds:
                return self.ioctl(fd, request, arg, mutate)
            return real(fd, request, arg, mutate)

        monkeypatch.setattr(fcntl, "ioctl", ioctl)

    def ioctl(self, fd: int, request: int, buf: Any, mutate: bool) -> int:
        assert isinstance(buf, bytearray) and mutate, "PPS ioctls need a mutable buffer"
        if request == hwpps.PPS_GETCAP:
            self.calls.append("GETCAP")
            assert len(buf) >= 4
            struct.pack_into("=i", buf, 0, self.capabilities)
        elif request == hwpps.PPS_GETPARAMS:
            self.calls.append("GETPARAMS")
            assert len(buf) == 40
            struct.pack_into("=iiqiIqiI", buf, 0, hwpps.PPS_API_VERS, self.mode, 0, 0, 0, 0, 0, 0)
        elif request == hwpps.PPS_SETPARAMS:
            self.calls.append("SETPARAMS")
            assert len(buf) == 40
            if not self.cap_sys_time:
                raise PermissionError(errno.EPERM, "Operation not permitted")
            _api, mode = struct.unpack_from("=ii", buf)
            if not mode & hwpps.PPS_CAPTUREBOTH or mode & ~self.capabilities:
                raise OSError(errno.EINVAL, "Invalid argument")
            if not mode & (hwpps.PPS_TSFMT_TSPEC | hwpps.PPS_TSFMT_NTPFP):
                mode |= hwpps.PPS_TSFMT_TSPEC
            self.mode = mode
        elif request == hwpps.PPS_FETCH:
            self.calls.append("FETCH")
            assert len(buf) == 64
            tsec, tnsec, tflags = struct.unpack_from("=qiI", buf, 48)
            self.fetch_timeouts.append((tsec, tnsec, tflags))
            if self.fail_fetch is not None:
                raise OSError(self.fail_fetch, "fetch failed")
            if (tsec, tnsec) != (0, 0) or tflags & hwpps.PPS_TIME_INVALID:
                raise AssertionError("a non-zero FETCH timeout would block the event loop")
            asec, ansec = divmod(self.assert_ns, NS)
            csec, cnsec = divmod(self.clear_ns, NS)
            struct.pack_into(
                "=IIqiIqiIi", buf, 0, self.assert_seq, self.clear_seq,
                asec, ansec, 0, csec, cnsec, 0, self.mode,
            )
        elif request == hwpps.PPS_KC_BIND:
            self.calls.append("KC_BIND")
            if not self.cap_sys_time:
                raise PermissionError(errno.EPERM, "Operation not permitted")
            tsformat, edge, consumer = struct.unpack_from("=iii", buf)
            if tsformat != hwpps.PPS_TSFMT_TSPEC or consumer != hwpps.PPS_KC_HARDPPS:
                raise OSError(errno.EINVAL, "Invalid argument")
            self.bound_edge = edge
        else:
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
        return 0


# -- libgpiod v2 --------------------------------------------------------------------------------
RISING = _ext.EDGE_EVENT_TYPE_RISING
FALLING = _ext.EDGE_EVENT_TYPE_FALLING


class FakeLineRequest:
    """The parts of gpiod.LineRequest an edge reader uses, fed by ``push``."""

    def __init__(self, chip: FakeChipState, offset: int, settings: Any, consumer: str | None,
                 event_buffer_size: int | None) -> None:
        self.chip = chip
        self.offset = offset
        self.settings = settings
        self.consumer = consumer
        self.event_buffer_size = event_buffer_size or 16
        self.queue: list[gpiod.EdgeEvent] = []
        self.released = False
        self.line_seqno = 0
        self.dropped = 0

    def push(self, event_type: int, timestamp_ns: int) -> None:
        """The kernel saw an edge: stamp and queue it (dropping it when the FIFO is full)."""
        self.line_seqno += 1
        self.chip.global_seqno += 1
        if len(self.queue) >= self.event_buffer_size:
            self.dropped += 1
            return
        self.queue.append(
            gpiod.EdgeEvent(event_type, timestamp_ns, self.offset, self.chip.global_seqno, self.line_seqno)
        )

    def _check(self) -> None:
        if self.released:
            raise gpiod.RequestReleasedError()

    def wait_edge_events(self, timeout: Any = None) -> bool:
        self._check()
        assert timeout == 0, "the PPS reader must never wait"
        return bool(self.queue)

    def read_edge_events(self, max_events: int | None = None) -> list[gpiod.EdgeEvent]:
        self._check()
        n = len(self.queue) if max_events is None else max_events
        out, self.queue = self.queue[:n], self.queue[n:]
        return out

    def release(self) -> None:
        self.released = True

    def fileno(self) -> int:
        return 99


@dataclass
class FakeChipState:
    path: str
    label: str
    names: dict[int, str]
    num_lines: int = 54
    global_seqno: int = 0
    busy: set[int] = field(default_factory=set)
    realtime_supported: bool = True
    requests: list[FakeLineRequest] = field(default_factory=list)


class FakeGpio:
    """A set of fake chips; ``install`` makes ``gpiod.Chip`` and device discovery use them."""

    def __init__(self) -> None:
        self.chips: dict[str, FakeChipState] = {}
        self.open_chips = 0

    def add_chip(self, path: str, label: str, names: dict[int, str] | None = None, **kw: Any) -> FakeChipState:
        state = FakeChipState(path, label, names or {}, **kw)
        self.chips[path] = state
        return state

    def install(self, monkeypatch: Any, dev_dir: Path) -> None:
        for path in self.chips:
            (dev_dir / Path(path).name).touch()
        fake = self

        class Chip:
            def __init__(self, path: str) -> None:
                if path not in fake.chips:
                    raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
                self.state = fake.chips[path]
                self.closed = False
                fake.open_chips += 1

            def get_info(self) -> gpiod.ChipInfo:
                assert not self.closed
                return gpiod.ChipInfo(Path(self.state.path).name, self.state.label, self.state.num_lines)

            def line_offset_from_id(self, id: str | int) -> int:
                assert not self.closed
                if isinstance(id, int):
                    if id >= self.state.num_lines:
                        raise ValueError("line offset of out range")
                    return id
                for off, name in self.state.names.items():
                    if name == id:
                        return off
                try:
                    off = int(id)
                except ValueError:
                    raise OSError(errno.ENOENT, "No such file or directory") from None
                if off >= self.state.num_lines:
                    raise ValueError("line offset of out range")
                return off

            def request_lines(self, config: dict, consumer: str | None = None,
                              event_buffer_size: int | None = None, output_values: Any = None) -> FakeLineRequest:
                assert not self.closed
                ((offset, settings),) = config.items()
                if offset in self.state.busy:
                    raise OSError(errno.EBUSY, "Device or resource busy")
                if settings.event_clock == gpiod.line.Clock.REALTIME and not self.state.realtime_supported:
                    raise OSError(errno.EINVAL, "Invalid argument")
                req = FakeLineRequest(self.state, offset, settings, consumer, event_buffer_size)
                self.state.requests.append(req)
                return req

            def close(self) -> None:
                if not self.closed:
                    self.closed = True
                    fake.open_chips -= 1

        monkeypatch.setattr(gpiod, "Chip", Chip)
        monkeypatch.setattr(gpiod, "is_gpiochip_device", lambda p: str(p) in {
            str(dev_dir / Path(c).name) for c in fake.chips})
        # Chip paths as the module will see them: dev_dir/<name>.
        self.chips = {str(dev_dir / Path(p).name): s for p, s in self.chips.items()}
        for p, s in self.chips.items():
            s.path = p
