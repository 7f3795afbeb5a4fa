"""UDP sockets with kernel receive timestamps: opening, SO_TIMESTAMPING / SO_TIMESTAMPNS, recvmsg.

Python's ``socket`` module lacks these Linux constants, so their numeric values live here. The
kernel stamps a datagram when it arrives (CLOCK_REALTIME), long before this process reads it;
that stamp is the reply's receive timestamp.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import importlib.util
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# <asm-generic/socket.h> (x86, arm, arm64, riscv: the architectures we run on).
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SO_TIMESTAMPING = getattr(socket, "SO_TIMESTAMPING", 37)
SO_TIMESTAMPNS_NEW = 64
SO_TIMESTAMPING_NEW = 65
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
SCM_TIMESTAMPING = SO_TIMESTAMPING
# <linux/net_tstamp.h>
SOF_TIMESTAMPING_RX_SOFTWARE = 1 << 3
SOF_TIMESTAMPING_SOFTWARE = 1 << 4

# <linux/in.h>, <linux/in6.h>: which local address a datagram reached, so that a socket bound to
# the wildcard address answers from that same address (clients drop replies from another).
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
_IN_PKTINFO = struct.Struct("=i4s4s")  # ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("=16si")  # addr, ifindex

#: How the receive timestamp of each datagram is obtained.
TS_TIMESTAMPING = "SO_TIMESTAMPING"
TS_TIMESTAMPNS = "SO_TIMESTAMPNS"
TS_CLOCK = "clock"

DEFAULT_RCVBUF = 256 * 1024
#: Room for one scm_timestamping (3 x 64-bit timespec) or timespec, with cmsg headers.
ANCBUFSIZE = socket.CMSG_SPACE(48) + socket.CMSG_SPACE(16) + socket.CMSG_SPACE(20)

# A timespec is two native longs with the old options; 64-bit fields with the *_NEW ones (and on
# 64-bit machines either way). The payload length tells which.
_TS3 = {48: struct.Struct("=6q"), 24: struct.Struct("=6i")}
_TS1 = {16: struct.Struct("=2q"), 8: struct.Struct("=2i")}
_NS = 1_000_000_000

#: CLOCK_REALTIME in ns. A server given this very object as its clock may stamp in C.
realtime_ns: Callable[[], int] = functools.partial(time.clock_gettime_ns, time.CLOCK_REALTIME)

try:  # the compiled hot path (setup.py); Python and numpy do the same without it
    from . import _hotpath as hotpath
except ImportError:  # pragma: no cover - depends on how the package was built
    hotpath = None


def compiled_send() -> bool:
    """True when replies are built, stamped and sent by the compiled hot path."""
    return hotpath is not None


Cmsg = tuple[int, int, bytes]


@dataclass(frozen=True, slots=True)
class Datagram:
    """One received datagram; ``rx_ns`` is the kernel's receive time (None if it gave none).

    ``reply_cmsg``, when packet info is enabled, is the ancillary data that makes a reply
    leave from the local address the datagram was sent to.
    """

    data: bytes
    address: tuple
    rx_ns: int | None
    truncated: bool
    reply_cmsg: Cmsg | None = None


def family_for(host: str) -> socket.AddressFamily:
    """AF_INET6 for an IPv6 literal, else AF_INET."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def open_udp(
    address: tuple[str, int], rcvbuf: int = DEFAULT_RCVBUF, reuse_port: bool = False
) -> socket.socket:
    """A bound, non-blocking UDP socket. ``reuse_port`` lets several workers share the port."""
    host, port = address[0], address[1]
    family = family_for(host)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            # IPv4 gets its own socket, as ntpd binds each address family separately.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # A modest buffer: under overload we would rather drop than serve stale receive stamps.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((host, port) if family == socket.AF_INET else (host, port, 0, 0))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def enable_rx_timestamps(sock: socket.socket) -> str:
    """Ask the kernel for software receive timestamps; return which mechanism is in effect."""
    try:
        sock.setsockopt(
            socket.SOL_SOCKET,
            SO_TIMESTAMPING,
            SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE,
        )
        return TS_TIMESTAMPING
    except OSError:
        pass
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        return TS_TIMESTAMPNS
    except OSError:
        return TS_CLOCK


def is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


def enable_pktinfo(sock: socket.socket) -> bool:
    """Ask for each datagram's local destination address; False if the kernel refuses."""
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    except OSError:
        return False
    return True


def reply_cmsg(ancdata: list[Cmsg]) -> Cmsg | None:
    """Ancillary data for ``sendmsg`` that sends from the address the request arrived at."""
    for level, kind, payload in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(payload) >= _IN_PKTINFO.size:
            _ifindex, _spec, dest = _IN_PKTINFO.unpack_from(payload)
            # ifindex 0 lets routing pick the interface; spec_dst sets the source address.
            return (socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, dest, bytes(4)))
        if (
            level == socket.IPPROTO_IPV6
            and kind == IPV6_PKTINFO
            and len(payload) >= _IN6_PKTINFO.size
        ):
            dest, ifindex = _IN6_PKTINFO.unpack_from(payload)
            # Keep the interface: a link-local address means nothing without it.
            return (socket.IPPROTO_IPV6, IPV6_PKTINFO, _IN6_PKTINFO.pack(dest, ifindex))
    return None


def rx_timestamp(ancdata: list[Cmsg]) -> int | None:
    """The kernel receive time (Unix ns) carried in recvmsg ancillary data, if any."""
    for level, kind, payload in ancdata:
        if level != socket.SOL_SOCKET:
            continue
        if kind in (SCM_TIMESTAMPING, SO_TIMESTAMPING_NEW):
            layout = _TS3.get(len(payload))
            if layout is not None:
                sec, nsec = layout.unpack(payload)[:2]  # ts[0] is the software stamp
                if sec or nsec:
                    return sec * _NS + nsec
        elif kind in (SCM_TIMESTAMPNS, SO_TIMESTAMPNS_NEW):
            layout = _TS1.get(len(payload))
            if layout is not None:
                sec, nsec = layout.unpack(payload)
                return sec * _NS + nsec
    return None


def receive(sock: socket.socket, bufsize: int) -> Datagram:
    """One ``recvmsg``; raises BlockingIOError when the socket is drained."""
    data, ancdata, flags, address = sock.recvmsg(bufsize, ANCBUFSIZE)
    return Datagram(
        data,
        address,
        rx_timestamp(ancdata),
        bool(flags & socket.MSG_TRUNC),
        reply_cmsg(ancdata) if ancdata else None,
    )


def send(sock: socket.socket, data: bytes, address: tuple, cmsg: Cmsg | None = None) -> None:
    """Send one datagram, from the local address named by ``cmsg`` when given."""
    if cmsg is None:
        sock.sendto(data, address)
    else:
        sock.sendmsg([data], [cmsg], 0, address)


# -- batches: recvmmsg/sendmmsg through ctypes, buffers viewed as numpy arrays ---------------------
class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


class _TimestampCmsg(ctypes.Structure):
    """A cmsghdr carrying scm_timestamping in the old (native long) layout we ask for."""

    _fields_ = [
        ("len", ctypes.c_size_t),
        ("level", ctypes.c_int),
        ("type", ctypes.c_int),
        ("ts", ctypes.c_long * 6),
    ]


_NAMESIZE = 32  # sockaddr_in6 (28) rounded up
_CTRLSIZE = 128  # a timestamping cmsg (64) and a packet-info one (32)
_TS_CMSG_LEN = socket.CMSG_LEN(6 * ctypes.sizeof(ctypes.c_long))
_ADDR_CACHE_MAX = 4096
_BE64 = struct.Struct(">Q")
_NTP_UNIX_NS = 2_208_988_800 * _NS
_NTP64_MASK = (1 << 64) - 1
#: Up to this many datagrams per send group get their transmit stamp by struct.pack_into
#: (~0.1 us each); bigger groups by one numpy assignment (~0.3 us, ~1.3 us with an index).
_PACK_MAX = 8
_EAGAIN_LIKE = frozenset((errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EINTR))


def _libc_mmsg() -> tuple[Any, Any] | None:
    """recvmmsg and sendmmsg from libc, called without ``argtypes``: ctypes' per-argument
    conversion costs more than the call (~0.6 us of ~1.2 us), so callers pass a C int for
    the descriptor and counts and a ``c_void_p`` (never a bare int) for every pointer."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg.restype = ctypes.c_int
    sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


def batch_supported() -> bool:
    """True where ``MmsgBatch`` works: Linux libc with recvmmsg/sendmmsg, and numpy."""
    return _libc_mmsg() is not None and importlib.util.find_spec("numpy") is not None


class MmsgBatch:
    """Preallocated recvmmsg/sendmmsg vectors for one socket, reused for every batch.

    Datagram ``i`` of a batch lives in ``data[i]`` (numpy uint8 rows, written in place to make
    its reply), its sender in ``names[i]`` and its ancillary data in ``ctrl[i]``; ``hdr`` is
    the numpy view of the ``struct mmsghdr`` vector (``hdr["len"]``: bytes received).
    """

    def __init__(self, capacity: int = 64, bufsize: int = 2048) -> None:
        import numpy as np

        calls = _libc_mmsg()
        if calls is None:
            raise OSError(errno.ENOSYS, "recvmmsg/sendmmsg are not available")
        self._recvmmsg, self._sendmmsg = calls
        self.capacity, self.bufsize = capacity, bufsize
        self.data = np.zeros((capacity, bufsize), np.uint8)
        self.names = np.zeros((capacity, _NAMESIZE), np.uint8)
        self.ctrl = np.zeros((capacity, _CTRLSIZE), np.uint8)
        self.iov = np.zeros(capacity, np.dtype(_Iovec))
        self.hdr = np.zeros(capacity, np.dtype(_Mmsghdr))
        self._out = np.zeros(capacity, np.dtype(_Mmsghdr))  # a compacted vector to send
        stamp = self.ctrl[:, : ctypes.sizeof(_TimestampCmsg)].view(np.dtype(_TimestampCmsg))[:, 0]
        self.iov["base"] = self.data.ctypes.data + bufsize * np.arange(capacity, dtype=np.uint64)
        msg = self.hdr["hdr"]
        msg["name"] = self.names.ctypes.data + _NAMESIZE * np.arange(capacity, dtype=np.uint64)
        msg["iov"] = self.iov.ctypes.data + self.iov.itemsize * np.arange(capacity, dtype=np.uint64)
        msg["iovlen"] = 1
        msg["control"] = self.ctrl.ctypes.data + _CTRLSIZE * np.arange(capacity, dtype=np.uint64)
        # Field views made once: numpy's structured-field lookup costs more than the work.
        self.msg_len = self.hdr["len"]
        self._namelen = msg["namelen"]
        self._controllen = msg["controllen"]
        self._flags = msg["flags"]
        self._iovlen = self.iov["len"]
        self._out_controllen = self._out["hdr"]["controllen"]
        self._cm_len, self._cm_level, self._cm_type = stamp["len"], stamp["level"], stamp["type"]
        #: Each datagram's bytes as big-endian 64-bit words (word 5 = bytes 40-47, and so on).
        self.be64 = self.data.view(">u8")
        #: The kernel's software receive stamp of each datagram: seconds and nanoseconds.
        self.rx_sec, self.rx_nsec = stamp["ts"][:, 0], stamp["ts"][:, 1]
        self._hdr_at, self._out_at = self.hdr.ctypes.data, self._out.ctypes.data
        # Pointer arguments made once (see _libc_mmsg): slot k of each vector.
        size = self.hdr.itemsize
        self._hdr_ptr = ctypes.c_void_p(self._hdr_at)
        self._hdr_ptrs = [ctypes.c_void_p(self._hdr_at + k * size) for k in range(capacity)]
        self._out_ptrs = [ctypes.c_void_p(self._out_at + k * size) for k in range(capacity)]
        #: The receive buffers as one flat byte view, for writing single words in place.
        self._flat = memoryview(self.data.reshape(-1))
        #: 64-bit word w -> the byte offset of that word in each slot (made when first used).
        self._word_offsets: dict[int, list[int]] = {}
        # The first 8 bytes of a sockaddr_in (family, port, address) name an IPv4 sender
        # exactly: a key for a cache of decoded addresses. (IPv6 senders are decoded each time.)
        self._name_key = self.names[:, :8].view(np.uint64)[:, 0]
        self._name_words = self.names.view(np.uint64)
        self._sender_family: int | None = None
        self._addr_cache: dict[int, tuple] = {}
        self.reset(capacity)

    @property
    def hdr_address(self) -> int:
        """Address of the ``struct mmsghdr`` vector (for the compiled hot path)."""
        return self._hdr_at

    def reset(self, count: int) -> None:
        """Make the first ``count`` slots ready to receive again."""
        if hotpath is not None:
            hotpath.reset(self._hdr_at, count, self.bufsize, _NAMESIZE, _CTRLSIZE)
            return
        self._iovlen[:count] = self.bufsize
        self._namelen[:count] = _NAMESIZE
        self._controllen[:count] = _CTRLSIZE

    def receive(self, fd: int) -> int:
        """One recvmmsg of up to ``capacity`` datagrams; 0 when the socket is drained."""
        got = self._recvmmsg(fd, self._hdr_ptr, self.capacity, socket.MSG_DONTWAIT, None)
        if got < 0:
            err = ctypes.get_errno()
            if err in _EAGAIN_LIKE:
                return 0
            raise OSError(err, os.strerror(err))
        return got

    def stamped(self, count: int) -> Any:
        """Which of the first ``count`` datagrams carry a software receive stamp first in the
        layout ``rx_sec``/``rx_nsec`` read (the others need the per-datagram parser)."""
        return (
            (self._cm_len[:count] == _TS_CMSG_LEN)
            & (self._cm_type[:count] == SO_TIMESTAMPING)
            & (self._cm_level[:count] == socket.SOL_SOCKET)
            & (self._controllen[:count] >= _TS_CMSG_LEN)
        )

    def datagram(self, i: int) -> Datagram:
        """Slot ``i`` as a plain Datagram (for the per-datagram path)."""
        length = self.msg_len.item(i)
        ancdata = _parse_cmsgs(self.ctrl[i, : self._controllen.item(i)].tobytes())
        return Datagram(
            self.data[i, : min(length, self.bufsize)].tobytes(),
            self.address(i),
            rx_timestamp(ancdata),
            bool(self._flags.item(i) & socket.MSG_TRUNC),
            reply_cmsg(ancdata) if ancdata else None,
        )

    def address(self, i: int) -> tuple:
        return sockaddr_to_tuple(self.names[i, : self._namelen.item(i)].tobytes())

    def addresses(self, rows: Any) -> list[tuple]:
        """The senders of the datagrams in slots ``rows`` (an index array), IPv4 ones from a
        bounded cache: decoding a sockaddr costs more than answering the request."""
        cache = self._addr_cache
        out = []
        for i, key in zip(rows.tolist(), self._name_key[rows].tolist(), strict=True):
            address = cache.get(key)
            if address is None:
                address = self.address(i)
                if len(address) == 2:
                    if len(cache) >= _ADDR_CACHE_MAX:
                        cache.clear()
                    cache[key] = address
            out.append(address)
        return out

    def run_starts(self, rows: Any) -> list[int]:
        """Where the senders change along the slots ``rows`` (an index array): the positions
        in ``rows`` that start a run of datagrams from one sender (address and port)."""
        n = len(rows)
        if n < 2:
            return [0] if n else []
        family = self._sender_family
        if family is None:
            # A socket receives from one address family only (IPv6 sockets are v6-only).
            family = self._sender_family = self._family(rows.item(0))
        if family == socket.AF_INET:
            # A sockaddr_in is all in its first 8 bytes; the socket has one family.
            keys = self._name_key[rows]
            change = keys[1:] != keys[:-1]
        else:
            names = self._name_words[rows]
            change = (names[1:] != names[:-1]).any(axis=1)
        starts = (change.nonzero()[0] + 1).tolist()
        starts.insert(0, 0)
        return starts

    def _family(self, i: int) -> int:
        return int.from_bytes(self.names[i, :2].tobytes(), sys.byteorder)

    def send(
        self,
        fd: int,
        slots: Any,
        length: int,
        *,
        chunk: int = 0,
        stamp: Callable[[], int] | None = None,
        stamp_word: int = 5,
        clock_ns: Callable[[], int] | None = None,
    ) -> tuple[int, int]:
        """sendmmsg the first ``length`` bytes of the given slots (``count`` for the first
        ``count``, or an index array) back to their senders; returns (sent, failed). Bounded:
        a failing datagram is skipped, never retried. Call ``reset`` before receiving again.

        ``chunk`` > 0 sends at most that many datagrams per sendmmsg. ``stamp``, if given, is
        called right before each sendmmsg and its value is written (big-endian) into 64-bit
        word ``stamp_word`` of every datagram that call sends: a time read as late as possible
        and never after the datagram leaves. ``clock_ns`` instead reads Unix ns, written as an
        NTP timestamp truncated (never later than the read), saving a call per group."""
        if isinstance(slots, int):
            count, ptrs, rows = slots, self._hdr_ptrs, None
            self._controllen[:count] = 0
        else:
            count, ptrs, rows = len(slots), self._out_ptrs, slots.tolist()
            self._out[:count] = self.hdr[slots]
            self._out_controllen[:count] = 0
        if count == 0:
            return 0, 0
        self._iovlen[:] = length
        step = chunk if chunk > 0 else count
        sendmmsg = self._sendmmsg
        flat, pack, words = self._flat, _BE64.pack_into, self.be64
        # Byte offset of the stamped word in each slot, in sending order.
        offsets = self._word_offsets.get(stamp_word)
        if offsets is None:
            if not 0 <= stamp_word < self.bufsize // 8:
                raise ValueError(f"word {stamp_word} is outside the buffer")
            offsets = [k * self.bufsize + 8 * stamp_word for k in range(self.capacity)]
            self._word_offsets[stamp_word] = offsets
        if rows is not None:
            offsets = [offsets[k] for k in rows]
        if step == 1 and clock_ns is not None:
            return self._send_each(fd, count, ptrs, offsets, clock_ns)
        stamped = stamp is not None or clock_ns is not None
        sent = failed = pos = 0
        while pos < count:
            end = pos + step
            if end > count:
                end = count
            if stamped:
                if clock_ns is not None:
                    value = (((clock_ns() + _NTP_UNIX_NS) << 32) // _NS) & _NTP64_MASK
                else:
                    value = stamp()  # type: ignore[misc]
                if end - pos <= _PACK_MAX:
                    for offset in offsets[pos:end]:
                        pack(flat, offset, value)
                elif rows is None:
                    words[pos:end, stamp_word] = value
                else:
                    words[rows[pos:end], stamp_word] = value
            done = sendmmsg(fd, ptrs[pos], end - pos, 0)
            if done <= 0:
                err = ctypes.get_errno() if done < 0 else errno.EAGAIN
                if err in _EAGAIN_LIKE:
                    failed += count - pos  # the send buffer is full: shed the rest
                    break
                failed += 1  # this destination refused: skip it, send the others
                pos += 1
            else:
                sent += done
                pos += done
        return sent, failed


    def _send_each(self, fd: int, count: int, ptrs: list, offsets: list[int],
                   clock_ns: Callable[[], int]) -> tuple[int, int]:
        """``send`` with one sendmmsg and one clock read per datagram (the tightest loop)."""
        sendmmsg, flat, pack = self._sendmmsg, self._flat, _BE64.pack_into
        sent = 0
        for k in range(count):
            pack(flat, offsets[k], (((clock_ns() + _NTP_UNIX_NS) << 32) // _NS) & _NTP64_MASK)
            if sendmmsg(fd, ptrs[k], 1, 0) == 1:
                sent += 1
            elif ctypes.get_errno() in _EAGAIN_LIKE:
                return sent, count - sent  # the send buffer is full: shed the rest
        return sent, count - sent


def _parse_cmsgs(raw: bytes) -> list[Cmsg]:
    """Split raw control bytes into (level, type, payload) as socket.recvmsg returns them."""
    out: list[Cmsg] = []
    header = struct.Struct("=" + ("Q" if ctypes.sizeof(ctypes.c_size_t) == 8 else "I") + "ii")
    align = ctypes.sizeof(ctypes.c_size_t)
    pos = 0
    while pos + header.size <= len(raw):
        length, level, kind = header.unpack_from(raw, pos)
        if length < header.size or pos + length > len(raw):
            break
        data_at = pos + ((header.size + align - 1) // align) * align
        out.append((level, kind, raw[data_at : pos + length]))
        pos += ((length + align - 1) // align) * align
    return out


def sockaddr_to_tuple(raw: bytes) -> tuple:
    """A sockaddr_in / sockaddr_in6 as the address tuple the socket module uses."""
    family = int.from_bytes(raw[:2], sys.byteorder) if len(raw) >= 2 else 0
    if family == socket.AF_INET and len(raw) >= 8:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET6 and len(raw) >= 24:
        flowinfo = int.from_bytes(raw[4:8], "big")
        scope = int.from_bytes(raw[24:28], sys.byteorder) if len(raw) >= 28 else 0
        return (socket.inet_ntop(socket.AF_INET6, raw[8:24]), int.from_bytes(raw[2:4], "big"),
                flowinfo, scope)  # fmt: skip
    raise ValueError(f"unsupported socket address family {family}")
