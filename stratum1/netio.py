"""UDP sockets with kernel receive timestamps: opening, SO_TIMESTAMPING / SO_TIMESTAMPNS, recvmsg.

Python's ``socket`` module lacks these Linux constants, so their numeric values live here. The
kernel stamps a datagram when it arrives (CLOCK_REALTIME), long before this process reads it;
that stamp is the reply's receive timestamp.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

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
