"""Tests for stratum1/_hotpath.c (the compiled serving steps), called on a real recvmmsg batch."""

import socket
import struct
import time

import pytest

from stratum1 import netio
from stratum1.ntptime import ntp64_to_ns

pytestmark = pytest.mark.skipif(
    not netio.compiled_send() or not netio.batch_supported(),
    reason="the compiled hot path was not built, or no recvmmsg here",
)

#: Byte 0 that scan lets through: mode 3, versions 1-4, any leap bits.
OK_FIRST = bytes(int(b & 7 == 3 and 1 <= (b >> 3) & 7 <= 4) for b in range(256))


def _request(first: int, transmit: int, poll: int = 6) -> bytes:
    return struct.pack("!BBbb", first, 0, poll, 0) + bytes(36) + transmit.to_bytes(8, "big")


@pytest.fixture
def batch():
    """A timestamping server socket, client sockets on 127.0.0.1, 127.0.0.2 and 127.0.0.1
    again (another port), and a batch to receive into."""
    pytest.importorskip("numpy")
    server = netio.open_udp(("127.0.0.1", 0))
    assert netio.enable_rx_timestamps(server) == netio.TS_TIMESTAMPING
    clients = []
    for host in ("127.0.0.1", "127.0.0.2", "127.0.0.1"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        sock.settimeout(1.0)
        clients.append(sock)
    mm = netio.MmsgBatch(capacity=16, bufsize=64)
    yield server, clients, mm
    for sock in (server, *clients):
        sock.close()


def test_scan_names_ipv6_senders_as_the_socket_module_does():
    pytest.importorskip("numpy")
    try:
        server = netio.open_udp(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    client = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        assert netio.enable_rx_timestamps(server) == netio.TS_TIMESTAMPING
        client.bind(("::1", 0))
        mm = netio.MmsgBatch(capacity=4, bufsize=64)
        for _ in range(50):  # the kernel turns stamping on lazily: wait for stamped datagrams
            count = _receive(server, mm, [(client, _request(0x23, 1))] * 2)
            mask, _rows, _versions, _rx_ns, starts, senders = netio.hotpath.scan(
                mm.hdr_address, count, OK_FIRST, True)  # fmt: skip
            mm.reset(count)
            if mask.count(1) == 2:
                break
        assert starts == [0] and senders == [client.getsockname()]
    finally:
        client.close()
        server.close()


def _receive(server, mm, sends) -> int:
    for sock, data in sends:
        sock.sendto(data, server.getsockname())
    time.sleep(0.05)
    return mm.receive(server.fileno())


def test_scan_takes_plain_client_requests_and_marks_sender_runs(batch):
    server, (a, b, a2), mm = batch
    sends = [
        (a, _request(0x23, 1)),  # v4 client
        (a2, _request(0x1B, 2)),  # v3 client: the same host, another port, another sender
        (b, _request(0xE3, 3)),  # v4 client, leap bits set: still plain
        (b, _request(0x24, 4)),  # mode 4: not a request
        (b, _request(0x23, 5)[:47]),  # short
        (b, _request(0x2B, 6)),  # version 5
        (a, _request(0x0B, 7)),  # v1 client
        (a, _request(0x23, 8) + bytes(20)),  # a MAC follows: the per-datagram path
    ]
    for _ in range(50):  # the kernel turns stamping on lazily: wait for stamped datagrams
        count = _receive(server, mm, [(a, _request(0x23, 0))])
        stamped = mm.stamped(count).all()
        mm.reset(count)
        if stamped:
            break
    before = time.clock_gettime_ns(time.CLOCK_REALTIME)
    count = _receive(server, mm, sends)
    assert count == len(sends)
    mask, rows, versions, rx_ns, starts, senders = netio.hotpath.scan(
        mm.hdr_address, count, OK_FIRST, True)  # fmt: skip
    assert list(mask) == [1, 1, 1, 0, 0, 0, 1, 0]
    assert rows == [0, 1, 2, 6] and versions == [4, 3, 4, 1]
    assert starts == [0, 1, 2, 3]  # a | a2 | b | a (by sender, among the plain requests)
    assert senders == [a.getsockname(), a2.getsockname(), b.getsockname(), a.getsockname()]
    assert before <= rx_ns[0] and rx_ns == sorted(rx_ns) and rx_ns[-1] <= time.time_ns()
    assert rx_ns[0] == int(mm.rx_sec[0]) * 1_000_000_000 + int(mm.rx_nsec[0])
    again = netio.hotpath.scan(mm.hdr_address, count, OK_FIRST, False)
    assert again[0] == mask and again[1:] == (None, None, None, None, None)
    mm.reset(count)


def test_reply_each_builds_each_reply_and_skips_a_refusing_destination(batch):
    server, (a, b, _a2), mm = batch
    count = _receive(server, mm, [(a, _request(0x23, 11, poll=2)), (b, _request(0x1B, 12)),
                                  (a, _request(0x0B, 13, poll=9))])  # fmt: skip
    assert count == 3
    mask, *_ = netio.hotpath.scan(mm.hdr_address, count, OK_FIRST, False)
    assert list(mask) == [1, 1, 1]
    rx = [int(mm.rx_sec[i]) * 1_000_000_000 + int(mm.rx_nsec[i]) for i in range(3)]
    mm.names[1, :2] = 0xFF  # an address family no socket knows: that sendmsg fails
    by_first = [(0xC4 << 56) | ((b & 0x38) << 56) for b in range(256)]  # leap 3, mode 4
    by_poll = [max(b if b < 128 else b - 256, 4) % 256 << 40 for b in range(256)]
    pack = struct.Struct("=256Q").pack
    before = time.clock_gettime_ns(time.CLOCK_REALTIME)
    got = netio.hotpath.reply_each(server.fileno(), mm.hdr_address, count, mask,
                                   pack(*by_first), pack(*by_poll), 0x1111, 0x2222)  # fmt: skip
    after = time.clock_gettime_ns(time.CLOCK_REALTIME)
    assert got == (3, 2, 1, 1, 1)  # replied, sent, failed, version 4, version 1
    replies = sorted((a.recv(100) for _ in range(2)), key=lambda r: r[31])
    for reply, origin, version, poll, received in ((replies[0], 11, 4, 4, rx[0]),
                                                   (replies[1], 13, 1, 9, rx[2])):  # fmt: skip
        assert len(reply) == 48
        assert reply[0] == 0xC4 | version << 3 and reply[2] == poll
        assert reply[8:24] == (0x1111).to_bytes(8, "big") + (0x2222).to_bytes(8, "big")
        assert int.from_bytes(reply[24:32], "big") == origin
        assert abs(ntp64_to_ns(int.from_bytes(reply[32:40], "big")) - received) <= 1
        assert received <= ntp64_to_ns(int.from_bytes(reply[40:48], "big")) <= after
        assert before <= ntp64_to_ns(int.from_bytes(reply[40:48], "big")) + 1
    mm.reset(count)


def test_reply_each_refuses_short_tables():
    with pytest.raises(ValueError):
        netio.hotpath.reply_each(0, 0, 1, b"\x01", b"", b"", 0, 0)
    with pytest.raises(ValueError):
        netio.hotpath.scan(0, 1, b"short", False)
