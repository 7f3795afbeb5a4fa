"""``stratum1 query``: a minimal NTP client to check a server on any port (ntpdig needs 123)."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from .ntptime import NS_PER_S
from .packet import MODE_CLIENT, MODE_SERVER, NtpPacket, PacketError, timestamp_from_ns


@dataclass(frozen=True, slots=True)
class QueryResult:
    """One client/server exchange, as RFC 5905 computes offset and delay."""

    server: str
    leap: int
    version: int
    stratum: int
    refid: str
    offset: float  # s, server minus client
    delay: float  # s, round trip
    root_delay: float
    root_dispersion: float
    precision: int
    poll: int

    def describe(self) -> str:
        sync = "unsynchronised" if self.leap == 3 else "synchronised"
        return (
            f"{self.server}: {sync}, stratum {self.stratum}, refid {self.refid}, "
            f"offset {self.offset * 1e3:+.6f} ms, delay {self.delay * 1e3:.6f} ms, "
            f"root delay {self.root_delay * 1e3:.3f} ms, root dispersion "
            f"{self.root_dispersion * 1e3:.3f} ms, leap {self.leap}"
        )


def split_hostport(spec: str, default_port: int = 123) -> tuple[str, int]:
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if spec.count(":") == 1:
        host, port = spec.split(":")
        return host, int(port)
    return spec, default_port


def query(host: str, port: int = 123, timeout: float = 2.0, version: int = 4) -> QueryResult:
    """Send one mode-3 request and decode the reply; raise TimeoutError or PacketError."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(info[0], socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        t1 = time.clock_gettime_ns(time.CLOCK_REALTIME)
        xmt = timestamp_from_ns(t1)
        request = NtpPacket(version=version, mode=MODE_CLIENT, transmit=xmt).pack()
        sock.sendto(request, info[4])
        deadline = time.monotonic() + timeout
        while True:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                data, _ = sock.recvfrom(2048)
            except TimeoutError:
                raise TimeoutError(f"no reply from {host}:{port} within {timeout} s") from None
            t4 = time.clock_gettime_ns(time.CLOCK_REALTIME)
            reply = NtpPacket.unpack(data)
            if reply.mode != MODE_SERVER or reply.origin != xmt:
                continue  # not the answer to our request
            break
    t2 = reply.receive_ns(t1)
    t3 = reply.transmit_ns(t1)
    offset = ((t2 - t1) + (t3 - t4)) / 2 / NS_PER_S
    delay = ((t4 - t1) - (t3 - t2)) / NS_PER_S
    return QueryResult(
        server=f"{host}:{port}",
        leap=reply.leap,
        version=reply.version,
        stratum=reply.stratum,
        refid=reply.refid_text,
        offset=offset,
        delay=delay,
        root_delay=reply.root_delay_s,
        root_dispersion=reply.root_dispersion_s,
        precision=reply.precision,
        poll=reply.poll,
    )


def main(spec: str, count: int = 1, timeout: float = 2.0) -> int:
    host, port = split_hostport(spec)
    status = 0
    for i in range(count):
        if i:
            time.sleep(1.0)
        try:
            print(query(host, port, timeout).describe())
        except (OSError, PacketError) as exc:
            print(f"{host}:{port}: {exc}")
            status = 1
    return status
