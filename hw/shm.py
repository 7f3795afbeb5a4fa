"""The NTP shared-memory segment (System V shm, key 0x4E545030 + unit) that gpsd and others write.

Segment access goes through libc's shmget/shmat via ctypes; the count/valid read protocol is
ntpd's. Both the 64-bit time_t layout (96 bytes) and the old 32-bit one (80 bytes) are handled,
chosen by the size of an existing segment, else by this platform's time_t.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
import time
from dataclasses import dataclass

from stratum1.ntptime import NS_PER_S

#: "NTP0": the key of unit 0; unit u uses SHM_KEY_BASE + u.
SHM_KEY_BASE = 0x4E545030
IPC_CREAT = 0o1000
IPC_RMID = 0

#: Field layouts (native alignment written out): mode, count, clock sec/usec, receive sec/usec,
#: leap, precision, nsamples, valid, clock nsec, receive nsec, dummy[8].
LAYOUT64 = struct.Struct("=iiqi4xqiiiiiII8i4x")
LAYOUT32 = struct.Struct("=iiiiiiiiiiII8i")
_COUNT_OFFSET = 4
_VALID_OFFSET = {LAYOUT64.size: 48, LAYOUT32.size: 36}
_PRECISION_OFFSET = {LAYOUT64.size: 40, LAYOUT32.size: 28}
_NSAMPLES_OFFSET = {LAYOUT64.size: 44, LAYOUT32.size: 32}


def shm_key(unit: int) -> int:
    return SHM_KEY_BASE + unit


def _native_time64() -> bool:
    try:
        time.gmtime(2**31)  # overflows where time_t is 32 bits
    except (OverflowError, OSError, ValueError):
        return False
    return True


NATIVE_SIZE = LAYOUT64.size if _native_time64() else LAYOUT32.size


@dataclass(frozen=True, slots=True)
class ShmTime:
    """One copy of the segment's fields."""

    mode: int
    count: int
    clock_sec: int
    clock_usec: int
    receive_sec: int
    receive_usec: int
    leap: int
    precision: int
    nsamples: int
    valid: int
    clock_nsec: int
    receive_nsec: int

    def times_ns(self) -> tuple[int, int]:
        """(clock, receive) in Unix ns. The nanosecond fields count only when they agree with
        the microsecond ones (a writer that leaves them zero or stale falls back to µs)."""
        ns_ok = (
            0 <= self.clock_nsec - self.clock_usec * 1000 < 1000
            and 0 <= self.receive_nsec - self.receive_usec * 1000 < 1000
        )
        if ns_ok:
            return (
                self.clock_sec * NS_PER_S + self.clock_nsec,
                self.receive_sec * NS_PER_S + self.receive_nsec,
            )
        return (
            self.clock_sec * NS_PER_S + self.clock_usec * 1000,
            self.receive_sec * NS_PER_S + self.receive_usec * 1000,
        )


def decode(raw: bytes) -> ShmTime:
    layout = LAYOUT64 if len(raw) >= LAYOUT64.size else LAYOUT32
    return ShmTime(*layout.unpack_from(raw)[:12])


def encode(t: ShmTime, size: int = NATIVE_SIZE) -> bytes:
    layout = LAYOUT64 if size == LAYOUT64.size else LAYOUT32
    return layout.pack(
        t.mode, t.count, t.clock_sec, t.clock_usec, t.receive_sec, t.receive_usec,
        t.leap, t.precision, t.nsamples, t.valid, t.clock_nsec, t.receive_nsec, *([0] * 8),
    )


# -- libc --------------------------------------------------------------------------------------
_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        lib.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
        lib.shmget.restype = ctypes.c_int
        lib.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
        lib.shmat.restype = ctypes.c_void_p
        lib.shmdt.argtypes = [ctypes.c_void_p]
        lib.shmdt.restype = ctypes.c_int
        lib.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        lib.shmctl.restype = ctypes.c_int
        _libc = lib
    return _libc


def _oserror(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def segment_info(shmid: int) -> dict[str, int] | None:
    """The /proc/sysvipc/shm row of a segment (perms, size, nattch, ...), or None."""
    try:
        with open("/proc/sysvipc/shm") as f:
            header = f.readline().split()
            for line in f:
                row = dict(zip(header, line.split(), strict=False))
                if int(row.get("shmid", -1)) == shmid:
                    return {k: int(v, 8) if k == "perms" else int(v) for k, v in row.items() if v.lstrip("-").isdigit()}
    except OSError:
        return None
    return None


def remove_segment(key: int) -> bool:
    """Delete the segment with this key if it exists (ipcrm -M); True if there was one."""
    lib = _lib()
    shmid = lib.shmget(_to_int32(key), 0, 0)
    if shmid < 0:
        return False
    return lib.shmctl(shmid, IPC_RMID, None) == 0


def _to_int32(key: int) -> int:
    # key_t is a signed int: keys above 0x7fffffff are passed as negative numbers.
    return key - (1 << 32) if key >= 1 << 31 else key


class ShmSegment:
    """One attached segment. ``open()`` creates it (with ``perm``) or attaches an existing one."""

    def __init__(self, key: int, perm: int = 0o600, create: bool = True) -> None:
        self.key = key
        self.perm = perm
        self.create = create
        self.shmid: int | None = None
        self.addr: int | None = None
        self.size = NATIVE_SIZE

    def open(self) -> None:
        if self.addr is not None:
            return
        lib = _lib()
        flags = (IPC_CREAT | self.perm) if self.create else 0
        shmid = lib.shmget(_to_int32(self.key), NATIVE_SIZE, flags)
        if shmid < 0 and ctypes.get_errno() == errno.EINVAL:
            # It exists with another size (the other time_t layout): attach it as it is.
            shmid = lib.shmget(_to_int32(self.key), 0, 0)
        if shmid < 0:
            err = ctypes.get_errno()
            hint = " (created by another user with mode 0600?)" if err == errno.EACCES else ""
            raise OSError(err, f"shmget(0x{self.key:08x}): {os.strerror(err)}{hint}")
        info = segment_info(shmid)
        size = info["size"] if info and "size" in info else NATIVE_SIZE
        if size not in (LAYOUT64.size, LAYOUT32.size):
            raise OSError(
                errno.EINVAL,
                f"shm segment 0x{self.key:08x} is {size} bytes, not an NTP segment "
                f"({LAYOUT64.size} or {LAYOUT32.size})",
            )
        addr = lib.shmat(shmid, None, 0)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            raise _oserror(f"shmat(0x{self.key:08x})")
        self.shmid, self.addr, self.size = shmid, addr, size

    def close(self) -> None:
        addr, self.addr = self.addr, None
        if addr is not None:
            _lib().shmdt(addr)

    def remove(self) -> None:
        """Mark the segment for deletion (it goes when the last process detaches)."""
        if self.shmid is not None:
            _lib().shmctl(self.shmid, IPC_RMID, None)

    def _base(self) -> int:
        if self.addr is None:
            raise OSError(errno.EBADF, f"shm segment 0x{self.key:08x} is not attached")
        return self.addr

    def read_raw(self) -> bytes:
        return ctypes.string_at(self._base(), self.size)

    def copy(self) -> bytes:
        """The reader's copy of the whole segment (a seam where tests race a writer)."""
        return self.read_raw()

    def write_raw(self, data: bytes) -> None:
        if len(data) != self.size:
            raise ValueError(f"segment is {self.size} bytes, data {len(data)}")
        ctypes.memmove(self._base(), data, len(data))

    def get_int(self, offset: int) -> int:
        return ctypes.c_int.from_address(self._base() + offset).value

    def set_int(self, offset: int, value: int) -> None:
        ctypes.c_int.from_address(self._base() + offset).value = value

    # Named fields the reader and writer touch one at a time.
    @property
    def count(self) -> int:
        return self.get_int(_COUNT_OFFSET)

    @count.setter
    def count(self, value: int) -> None:
        self.set_int(_COUNT_OFFSET, value)

    @property
    def valid(self) -> int:
        return self.get_int(_VALID_OFFSET[self.size])

    @valid.setter
    def valid(self, value: int) -> None:
        self.set_int(_VALID_OFFSET[self.size], value)

    def init_reader(self, precision: int = -1, nsamples: int = 3) -> None:
        """What ntpd writes when it starts reading a segment."""
        self.set_int(_PRECISION_OFFSET[self.size], precision)
        self.set_int(_NSAMPLES_OFFSET[self.size], nsamples)
        self.valid = 0


# -- the protocol ------------------------------------------------------------------------------
OK = "ok"
NOT_READY = "notready"
CLASH = "clash"
BAD_MODE = "badmode"


@dataclass(frozen=True, slots=True)
class ReadResult:
    status: str  # OK, NOT_READY, CLASH or BAD_MODE
    data: ShmTime | None = None


def read_sample(seg: ShmSegment) -> ReadResult:
    """One reader pass of the count/valid protocol (ntpd's): copy, clear valid, check count."""
    if not seg.valid:
        return ReadResult(NOT_READY)
    before = seg.count
    data = decode(seg.copy())
    seg.valid = 0
    after = seg.count
    if data.mode == 1 and (after != before or data.count != before):
        return ReadResult(CLASH, data)  # the writer was busy while we copied
    if data.mode not in (0, 1):
        return ReadResult(BAD_MODE, data)
    return ReadResult(OK, data)


def write_sample(
    seg: ShmSegment, clock_ns: int, receive_ns: int, leap: int = 0, precision: int = -20,
    mode: int = 1, nsamples: int = 3,
) -> None:
    """Write one sample with the writer side of the protocol (what gpsd does)."""
    seg.valid = 0
    seg.count = seg.count + 1
    csec, cns = divmod(clock_ns, NS_PER_S)
    rsec, rns = divmod(receive_ns, NS_PER_S)
    raw = bytearray(seg.read_raw())
    t = ShmTime(mode, seg.count, csec, cns // 1000, rsec, rns // 1000, leap, precision, nsamples, 0, cns, rns)
    raw[: seg.size] = encode(t, seg.size)
    seg.write_raw(bytes(raw))
    seg.count = seg.count + 1
    seg.valid = 1
