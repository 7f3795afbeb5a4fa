"""The serial-port transport of the serial refclock drivers: open a tty with pyserial, read it from
the EventLoop, and estimate when each byte arrived (the first byte of a burst, not Python's wake-up).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import termios
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stratum1.clock import Clock
    from stratum1.eventloop import EventLoop

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000
#: An idle line for this long ends a burst: receivers send one burst per second.
DEFAULT_GAP_NS = 100_000_000
READ_SIZE = 4096


#: Line disciplines (include/uapi/linux/tty.h): the normal one, and the PPS one that stamps
#: each DCD change and registers a /dev/ppsN for the port (CONFIG_PPS_CLIENT_LDISC).
N_TTY = 0
N_PPS = 18
TIOCSETD = getattr(termios, "TIOCSETD", 0x5423)
TIOCGETD = getattr(termios, "TIOCGETD", 0x5424)
_INT = struct.Struct("=i")


def set_line_discipline(fd: int, ldisc: int) -> None:
    """TIOCSETD on a tty descriptor. Raises OSError: EINVAL when the kernel has no such
    discipline (module missing, or a pty), EPERM when loading its module needs privilege."""
    fcntl.ioctl(fd, TIOCSETD, _INT.pack(ldisc))


def get_line_discipline(fd: int) -> int:
    return int(_INT.unpack(fcntl.ioctl(fd, TIOCGETD, bytes(_INT.size)))[0])


def char_time_ns(baud: int, bits_per_char: int = 10) -> int:
    """Time one character takes on the wire (8N1: start + 8 data + stop = 10 bits)."""
    return (bits_per_char * NS_PER_S) // baud if baud > 0 else 0


@dataclass(frozen=True, slots=True)
class Chunk:
    """Arrival estimate of one read: byte ``k`` of it (stream index ``start + k``) arrived at
    ``first_ns + k * char_ns``; the burst it belongs to began at ``burst_ns``."""

    start: int
    length: int
    first_ns: int
    char_ns: int
    burst_ns: int
    stamp_ns: int  # the clock reading taken right after the read returned

    def arrival_ns(self, index: int) -> int:
        """Estimated arrival of stream byte ``index`` (clamped to this chunk)."""
        k = min(max(index - self.start, 0), max(self.length - 1, 0))
        return self.first_ns + k * self.char_ns


class ArrivalEstimator:
    """Pure: turns (read stamp, byte count) into arrival estimates.

    A read that returns n bytes stamped at t means the last byte arrived by t; while a burst
    streams, bytes arrive back to back, so the first arrived at t - (n-1)·char time, and never
    before the previous chunk's last byte plus one character. So a read that Python got round
    to late is dated back to when its first byte arrived; estimates are never earlier than the
    truth as long as ``char_ns`` is not longer than the real character time. A gap of
    ``gap_ns`` or more before a chunk starts a new burst.
    """

    def __init__(self, char_ns: int, gap_ns: int = DEFAULT_GAP_NS) -> None:
        self.char_ns = char_ns
        self.gap_ns = gap_ns
        self.position = 0
        self._last_ns: int | None = None  # estimated arrival of the last byte seen
        self._burst_ns: int | None = None

    def on_read(self, stamp_ns: int, nbytes: int) -> Chunk:
        first = stamp_ns - max(nbytes - 1, 0) * self.char_ns
        if self._last_ns is not None:
            first = min(max(first, self._last_ns + self.char_ns), stamp_ns)
        if self._last_ns is None or self._burst_ns is None or first - self._last_ns >= self.gap_ns:
            self._burst_ns = first
        chunk = Chunk(self.position, nbytes, first, self.char_ns, self._burst_ns, stamp_ns)
        self._last_ns = first + max(nbytes - 1, 0) * self.char_ns
        self.position += nbytes
        return chunk


DataCallback = Callable[[bytes, Chunk], None]
ErrorCallback = Callable[[str], None]


class SerialPort:
    """A tty opened with pyserial (raw, non-blocking) and read from the EventLoop.

    ``on_data(data, chunk)`` gets every read with its arrival estimate; ``on_error(message)``
    is called once when the device fails (unplugged, EOF) and the port is then closed.
    """

    def __init__(
        self,
        path: str,
        baud: int,
        loop: EventLoop,
        clock: Clock,
        on_data: DataCallback,
        on_error: ErrorCallback,
        *,
        gap_ns: int = DEFAULT_GAP_NS,
        char_ns: int | None = None,
        low_latency: bool = True,
    ) -> None:
        self.path = path
        self.baud = baud
        self.loop = loop
        self.clock = clock
        self.on_data = on_data
        self.on_error = on_error
        self.low_latency = low_latency
        self.estimator = ArrivalEstimator(
            char_time_ns(baud) if char_ns is None else char_ns, gap_ns
        )
        self.bytes_read = 0
        self.reads = 0
        self._serial: Any = None
        self._fd: int | None = None

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def open(self) -> None:
        """Open the device (raises OSError with the path when it cannot) and start reading."""
        import serial  # pyserial: imported here so that importing a driver stays cheap

        try:
            port = serial.Serial(
                self.path, self.baud, timeout=0, exclusive=True, rtscts=False, dsrdtr=False
            )
        except (serial.SerialException, ValueError) as exc:
            raise OSError(
                errno.ENODEV, f"cannot open {self.path} at {self.baud} baud: {exc}"
            ) from None
        if self.low_latency:
            try:
                port.set_low_latency_mode(True)
            except (ValueError, OSError, AttributeError):
                pass  # ptys and many USB adapters refuse it; it only shortens latency
        self._serial = port
        self._fd = port.fileno()
        os.set_blocking(self._fd, False)
        self.loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(f"read error on {self.path}: {exc.strerror or exc}")
            return
        stamp = self.clock.now_ns()
        if not data:
            self._fail(f"{self.path}: end of file (device gone)")
            return
        self.reads += 1
        self.bytes_read += len(data)
        self.on_data(data, self.estimator.on_read(stamp, len(data)))

    def _fail(self, message: str) -> None:
        self.close()
        self.on_error(message)

    def write(self, data: bytes) -> int:
        """Send bytes to the device (receiver configuration, polls); returns bytes written."""
        if self._fd is None:
            raise OSError(errno.EBADF, f"{self.path} is not open")
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0

    def fileno(self) -> int | None:
        """The open tty's descriptor (None when closed)."""
        return self._fd

    def set_line_discipline(self, ldisc: int) -> None:
        """Switch the open tty's line discipline (N_PPS: PPS on DCD; reading goes on as
        before). The kernel drops it back to N_TTY when the port is finally closed."""
        if self._fd is None:
            raise OSError(errno.EBADF, f"{self.path} is not open")
        set_line_discipline(self._fd, ldisc)

    def dcd(self) -> bool | None:
        """The DCD modem line (where PPS is wired on many GPS boards), None if unknown."""
        if self._serial is None:
            return None
        try:
            return bool(self._serial.cd)
        except (OSError, ValueError, AttributeError):
            return None

    def close(self) -> None:
        if self._fd is not None:
            self.loop.remove_reader(self._fd)
            self._fd = None
        if self._serial is not None:
            try:
                self._serial.close()
            except OSError:
                pass
            self._serial = None
