"""Kernel PPS sources (/dev/ppsN) through the RFC 2783 ioctls, read without C or threads.

The kernel stamps each edge itself, so the driver fetches the latest edge with a zero timeout
from an event-loop timer (as chrony does) and never poll()s the device: before the 2025 kernel
fix "pps: fix poll support" the device reported itself readable all the time.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass
from typing import Protocol

from stratum1.ntptime import NS_PER_S

# Mode bits of include/uapi/linux/pps.h.
PPS_CAPTUREASSERT = 0x01
PPS_CAPTURECLEAR = 0x02
PPS_CAPTUREBOTH = 0x03
PPS_OFFSETASSERT = 0x10
PPS_OFFSETCLEAR = 0x20
PPS_ECHOASSERT = 0x40
PPS_ECHOCLEAR = 0x80
PPS_CANWAIT = 0x100
PPS_CANPOLL = 0x200
PPS_TSFMT_TSPEC = 0x1000
PPS_TSFMT_NTPFP = 0x2000
PPS_KC_HARDPPS = 0
PPS_API_VERS = 1
PPS_TIME_INVALID = 0x1

EDGE_ASSERT = "assert"
EDGE_CLEAR = "clear"

_IOC_WRITE = 1
_IOC_READ = 2


def _ioc(direction: int, nr: int) -> int:
    # The kernel header declares these with a pointer type, so the encoded size is
    # sizeof(void *), and the numbers differ between 32- and 64-bit userland.
    size = struct.calcsize("P")
    return (direction << 30) | (size << 16) | (ord("p") << 8) | nr


PPS_GETPARAMS = _ioc(_IOC_READ, 0xA1)
PPS_SETPARAMS = _ioc(_IOC_WRITE, 0xA2)
PPS_GETCAP = _ioc(_IOC_READ, 0xA3)
PPS_FETCH = _ioc(_IOC_READ | _IOC_WRITE, 0xA4)
PPS_KC_BIND = _ioc(_IOC_WRITE, 0xA5)

#: struct pps_fdata: pps_kinfo (assert/clear sequence, assert_tu, clear_tu, current_mode,
#: padding to 8) then the pps_ktime timeout. 64 bytes natively; a 32-bit process on a 64-bit
#: kernel gets the 60-byte compat layout, which agrees on every info field we read.
FDATA = struct.Struct("=IIqiIqiIi4xqiI")
#: struct pps_kparams: api_version, mode, assert_off_tu, clear_off_tu.
KPARAMS = struct.Struct("=iiqiIqiI")
#: struct pps_bind_args: tsformat, edge, consumer.
BIND_ARGS = struct.Struct("=iii")
_INT = struct.Struct("=i")


class PpsError(OSError):
    """A PPS device could not be opened or configured; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Edge:
    """One timestamped pulse edge: the source's sequence number and the local time in Unix ns."""

    sequence: int
    timestamp_ns: int


@dataclass(frozen=True, slots=True)
class PpsInfo:
    """What PPS_FETCH returns: both edges' sequence numbers and timestamps (Unix ns)."""

    assert_sequence: int
    assert_ns: int
    clear_sequence: int
    clear_ns: int
    current_mode: int


@dataclass(frozen=True, slots=True)
class PpsParams:
    api_version: int
    mode: int
    assert_off_ns: int
    clear_off_ns: int


class PulseSource(Protocol):
    """A source of timestamped edges the PPS driver polls from a timer."""

    #: Human-readable name of the device ("/dev/pps0", "gpio:GPIO18 on gpiochip0").
    description: str

    def open(self) -> None: ...

    def close(self) -> None: ...

    def fetch(self) -> list[Edge]:
        """Edges of the configured kind available now, oldest first, without waiting.

        A kernel PPS device keeps only the latest edge, so it returns that one again until the
        next pulse (the caller compares sequence numbers); a GPIO line returns every queued edge.
        """
        ...


def _ktime_ns(sec: int, nsec: int) -> int:
    return sec * NS_PER_S + nsec


def _split_ns(ns: int) -> tuple[int, int]:
    sec, nsec = divmod(ns, NS_PER_S)
    return sec, nsec


def decode_fdata(buf: bytes | bytearray) -> PpsInfo:
    """Decode a struct pps_fdata as filled by PPS_FETCH."""
    (aseq, cseq, asec, ansec, _af, csec, cnsec, _cf, mode, _ts, _tn, _tf) = FDATA.unpack_from(buf)
    return PpsInfo(aseq, _ktime_ns(asec, ansec), cseq, _ktime_ns(csec, cnsec), mode)


def decode_kparams(buf: bytes | bytearray) -> PpsParams:
    api, mode, aos, aons, _af, cos, cons, _cf = KPARAMS.unpack_from(buf)
    return PpsParams(api, mode, _ktime_ns(aos, aons), _ktime_ns(cos, cons))


def encode_kparams(params: PpsParams) -> bytearray:
    buf = bytearray(KPARAMS.size)
    KPARAMS.pack_into(
        buf, 0, params.api_version, params.mode,
        *_split_ns(params.assert_off_ns), 0, *_split_ns(params.clear_off_ns), 0,
    )
    return buf


class KernelPps:
    """One /dev/ppsN device: capabilities, parameters, zero-timeout fetch and hardpps binding."""

    def __init__(self, path: str, edge: str = EDGE_ASSERT) -> None:
        if edge not in (EDGE_ASSERT, EDGE_CLEAR):
            raise ValueError(f"PPS edge must be {EDGE_ASSERT!r} or {EDGE_CLEAR!r}, not {edge!r}")
        self.path = path
        self.edge = edge
        self.description = path
        self.fd: int | None = None
        self.capabilities = 0
        self.mode = 0
        self.bound = False
        #: Why SETPARAMS was skipped (no CAP_SYS_TIME but the kernel already captures our edge).
        self.note = ""

    @property
    def _capture_bit(self) -> int:
        return PPS_CAPTUREASSERT if self.edge == EDGE_ASSERT else PPS_CAPTURECLEAR

    # -- raw ioctls -------------------------------------------------------------------------
    def _fileno(self) -> int:
        if self.fd is None:
            raise PpsError(errno.EBADF, f"{self.path}: PPS device is not open")
        return self.fd

    def get_cap(self) -> int:
        buf = bytearray(_INT.size)
        fcntl.ioctl(self._fileno(), PPS_GETCAP, buf, True)
        return _INT.unpack_from(buf)[0]

    def get_params(self) -> PpsParams:
        buf = bytearray(KPARAMS.size)
        fcntl.ioctl(self._fileno(), PPS_GETPARAMS, buf, True)
        return decode_kparams(buf)

    def set_params(self, params: PpsParams) -> None:
        fcntl.ioctl(self._fileno(), PPS_SETPARAMS, encode_kparams(params), True)

    def fetch_info(self) -> PpsInfo:
        """PPS_FETCH with a zero timeout: the latest data at once, never waiting."""
        # A zeroed buffer is a zero timeout with flags 0, and makes the native and the 32-bit
        # compat layouts agree on every info field.
        buf = bytearray(FDATA.size)
        fcntl.ioctl(self._fileno(), PPS_FETCH, buf, True)
        return decode_fdata(buf)

    def kc_bind(self, enable: bool) -> None:
        """Bind (or unbind) the kernel hardpps consumer to our edge. Needs CAP_SYS_TIME."""
        edge = self._capture_bit if enable else 0
        args = bytearray(BIND_ARGS.size)
        BIND_ARGS.pack_into(args, 0, PPS_TSFMT_TSPEC, edge, PPS_KC_HARDPPS)
        fcntl.ioctl(self._fileno(), PPS_KC_BIND, args, True)
        self.bound = enable

    # -- life cycle -------------------------------------------------------------------------
    def open(self) -> None:
        """Open the device and make it capture our edge in timespec format."""
        if self.fd is not None:
            return
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY)
        except PermissionError:
            # Reading needs no write access; a read-only open still fetches.
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
        except FileNotFoundError as exc:
            raise PpsError(
                errno.ENOENT,
                f"{self.path}: no such PPS device (is the pps-gpio overlay or "
                "'ldattach 18' set up? a GPIO line can be used directly as gpio:GPIO18)",
            ) from exc
        try:
            self._configure()
        except OSError as exc:
            self.close()
            if isinstance(exc, PpsError):
                raise
            raise PpsError(exc.errno or errno.EIO, f"{self.path}: not a usable PPS device: {exc}") from exc

    def _configure(self) -> None:
        self.capabilities = self.get_cap()
        bit = self._capture_bit
        if not self.capabilities & bit:
            raise PpsError(
                errno.EOPNOTSUPP,
                f"{self.path}: the device cannot capture the {self.edge} edge "
                f"(capabilities 0x{self.capabilities:x}); change flag2",
            )
        current = self.get_params()
        wanted = (current.mode & ~PPS_TSFMT_NTPFP) | bit | PPS_TSFMT_TSPEC
        # Keep only what the device can do: the kernel refuses any bit outside GETCAP (and
        # picks TSPEC itself when no format is given).
        wanted &= self.capabilities
        if wanted == current.mode:
            self.mode = current.mode
            return
        try:
            self.set_params(PpsParams(PPS_API_VERS, wanted, current.assert_off_ns, current.clear_off_ns))
        except PermissionError:
            # SETPARAMS needs CAP_SYS_TIME; if the kernel already captures our edge, fetching works.
            if current.mode & bit:
                self.mode = current.mode
                self.note = "PPS_SETPARAMS refused (no CAP_SYS_TIME); using the device's mode"
                return
            raise PpsError(
                errno.EPERM,
                f"{self.path}: the device does not capture the {self.edge} edge and setting it "
                "needs CAP_SYS_TIME",
            ) from None
        self.mode = wanted

    def fetch(self) -> list[Edge]:
        info = self.fetch_info()
        if self.edge == EDGE_ASSERT:
            seq, ts = info.assert_sequence, info.assert_ns
        else:
            seq, ts = info.clear_sequence, info.clear_ns
        if seq == 0 and ts == 0:
            return []  # no edge captured since the source was registered
        return [Edge(seq, ts)]

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        if self.bound:
            self.bound = False
            try:
                args = bytearray(BIND_ARGS.size)
                BIND_ARGS.pack_into(args, 0, PPS_TSFMT_TSPEC, 0, PPS_KC_HARDPPS)
                fcntl.ioctl(fd, PPS_KC_BIND, args, True)
            except OSError:
                pass  # the device is going away anyway
        os.close(fd)


# -- PPS on a serial port's DCD line --------------------------------------------------------------

#: Where the kernel lists PPS sources; each ppsN directory has a ``path`` naming the port that
#: feeds it (pps-ldisc writes "/dev/<tty>").
SYSFS_PPS = "/sys/class/pps"


def find_pps_device(tty_path: str, sysfs_root: str = SYSFS_PPS, dev_root: str = "/dev") -> str | None:
    """The /dev/ppsN that the PPS line discipline registered for ``tty_path`` (a symlink such
    as /dev/gps0 is followed), or None when no PPS source names that port."""
    wanted = {tty_path, os.path.realpath(tty_path)}
    try:
        names = sorted(os.listdir(sysfs_root))
    except OSError:
        return None
    for name in names:
        if not name.startswith("pps"):
            continue
        try:
            with open(os.path.join(sysfs_root, name, "path"), encoding="utf-8",
                      errors="replace") as f:
                source = f.read().strip()
        except OSError:
            continue
        if source and (source in wanted or os.path.realpath(source) in wanted):
            return os.path.join(dev_root, name)
    return None


class LineDisciplinePort(Protocol):
    """What SerialDcdPps needs of the serial port (stratum1.hw.serial.SerialPort)."""

    path: str

    def set_line_discipline(self, ldisc: int) -> None: ...


def _ldisc_problem(tty: str, exc: OSError) -> str:
    if exc.errno == errno.EINVAL:
        return (f"the kernel refuses the PPS line discipline on {tty}: no pps_ldisc "
                "(CONFIG_PPS_CLIENT_LDISC; try 'modprobe pps_ldisc'), or the port is a "
                "pseudo-terminal")
    if exc.errno in (errno.EPERM, errno.EACCES):
        return (f"setting the PPS line discipline on {tty} needs CAP_SYS_ADMIN to load "
                "pps_ldisc: load it at boot ('modprobe pps_ldisc')")
    if exc.errno == errno.ENOTTY:
        return f"{tty} is not a serial port"
    return f"TIOCSETD N_PPS on {tty} failed: {exc.strerror or exc}"


class SerialDcdPps:
    """PPS wired to a serial port's DCD pin, as ntpd takes it from a tty: the kernel's PPS line
    discipline (N_PPS, what ``ldattach 18`` sets) stamps each DCD change and registers a
    /dev/ppsN whose sysfs ``path`` names the port; that device is then read as a KernelPps.

    The serial port stays readable under N_PPS; the kernel restores N_TTY when it is closed.
    """

    def __init__(
        self,
        port: LineDisciplinePort,
        edge: str = EDGE_ASSERT,
        *,
        sysfs_root: str = SYSFS_PPS,
        dev_root: str = "/dev",
    ) -> None:
        if edge not in (EDGE_ASSERT, EDGE_CLEAR):
            raise ValueError(f"PPS edge must be {EDGE_ASSERT!r} or {EDGE_CLEAR!r}, not {edge!r}")
        self.port = port
        self.edge = edge
        self.sysfs_root = sysfs_root
        self.dev_root = dev_root
        self.description = f"{port.path} DCD"
        self.device: str | None = None
        self.kernel: KernelPps | None = None

    def open(self) -> None:
        """Attach the line discipline and open its /dev/ppsN. Raises PpsError starting with
        "PPS on DCD unavailable:" and saying why."""
        if self.kernel is not None:
            return
        from stratum1.hw.serial import N_PPS

        tty = self.port.path
        try:
            self.port.set_line_discipline(N_PPS)
        except OSError as exc:
            raise PpsError(exc.errno or errno.EIO,
                           f"PPS on DCD unavailable: {_ldisc_problem(tty, exc)}") from exc
        device = find_pps_device(tty, self.sysfs_root, self.dev_root)
        if device is None:
            self._detach()
            raise PpsError(errno.ENODEV, f"PPS on DCD unavailable: the PPS line discipline is set"
                           f" on {tty} but no {self.sysfs_root}/ppsN names it")
        kernel = KernelPps(device, self.edge)
        try:
            kernel.open()
        except OSError as exc:
            self._detach()
            raise PpsError(exc.errno or errno.EIO, f"PPS on DCD unavailable: {exc}") from exc
        self.kernel, self.device = kernel, device
        self.description = f"{tty} DCD ({device})"

    def fetch(self) -> list[Edge]:
        if self.kernel is None:
            return []
        return self.kernel.fetch()

    def close(self) -> None:
        kernel, self.kernel = self.kernel, None
        if kernel is None:
            return
        kernel.close()
        self._detach()

    def _detach(self) -> None:
        from stratum1.hw.serial import N_TTY

        try:
            self.port.set_line_discipline(N_TTY)
        except OSError:
            pass  # the port is closed already: the kernel has dropped N_PPS itself
