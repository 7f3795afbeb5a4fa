"""Tests for stratum1/netio.py: socket options, ancillary-data timestamps, truncation."""

import contextlib
import select
import socket
import struct
import sys
import time

import pytest

from stratum1 import netio


def test_rx_timestamp_from_scm_timestamping_64_and_32_bit_layouts():
    ts64 = struct.pack("=6q", 1_767_225_600, 123_456_789, 0, 0, 0, 0)
    ts32 = struct.pack("=6i", 1_767_225_600, 5, 0, 0, 0, 0)
    sol = socket.SOL_SOCKET
    assert netio.rx_timestamp([(sol, netio.SCM_TIMESTAMPING, ts64)]) == 1_767_225_600_123_456_789
    assert netio.rx_timestamp([(sol, netio.SCM_TIMESTAMPING, ts32)]) == 1_767_225_600_000_000_005
    assert netio.rx_timestamp([(sol, netio.SO_TIMESTAMPING_NEW, ts64)]) == 1_767_225_600_123_456_789


def test_rx_timestamp_from_scm_timestampns():
    sol = socket.SOL_SOCKET
    assert (
        netio.rx_timestamp([(sol, netio.SCM_TIMESTAMPNS, struct.pack("=2q", 7, 8))])
        == 7 * 10**9 + 8
    )
    assert (
        netio.rx_timestamp([(sol, netio.SCM_TIMESTAMPNS, struct.pack("=2i", 7, 8))])
        == 7 * 10**9 + 8
    )


def test_rx_timestamp_ignores_what_it_cannot_use():
    sol = socket.SOL_SOCKET
    assert netio.rx_timestamp([]) is None
    # Only a hardware stamp (ts[2]) present: no software time.
    hw_only = struct.pack("=6q", 0, 0, 0, 0, 5, 6)
    assert netio.rx_timestamp([(sol, netio.SCM_TIMESTAMPING, hw_only)]) is None
    assert netio.rx_timestamp([(sol, netio.SCM_TIMESTAMPING, b"\x01\x02")]) is None
    assert netio.rx_timestamp([(socket.IPPROTO_IP, netio.SCM_TIMESTAMPNS, bytes(16))]) is None


def test_family_for():
    assert netio.family_for("127.0.0.1") == socket.AF_INET
    assert netio.family_for("0.0.0.0") == socket.AF_INET
    assert netio.family_for("::1") == socket.AF_INET6
    assert netio.family_for("::") == socket.AF_INET6


class RefusingSocket:
    def __init__(self, refuse):
        self.refuse = refuse
        self.set = []

    def setsockopt(self, level, option, value):
        if option in self.refuse:
            raise OSError(92, "Protocol not available")
        self.set.append((level, option, value))


def test_enable_rx_timestamps_falls_back():
    flags = netio.SOF_TIMESTAMPING_RX_SOFTWARE | netio.SOF_TIMESTAMPING_SOFTWARE
    ok = RefusingSocket(refuse=())
    assert netio.enable_rx_timestamps(ok) == netio.TS_TIMESTAMPING
    assert ok.set == [(socket.SOL_SOCKET, netio.SO_TIMESTAMPING, flags)]
    fallback = RefusingSocket(refuse=(netio.SO_TIMESTAMPING,))
    assert netio.enable_rx_timestamps(fallback) == netio.TS_TIMESTAMPNS
    neither = RefusingSocket(refuse=(netio.SO_TIMESTAMPING, netio.SO_TIMESTAMPNS))
    assert netio.enable_rx_timestamps(neither) == netio.TS_CLOCK


@pytest.mark.parametrize("option", ["timestamping", "timestampns"])
def test_real_socket_kernel_stamp_precedes_the_read(option):
    sock = netio.open_udp(("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if option == "timestamping":
            assert netio.enable_rx_timestamps(sock) == netio.TS_TIMESTAMPING
        else:
            sock.setsockopt(socket.SOL_SOCKET, netio.SO_TIMESTAMPNS, 1)
        with pytest.raises(BlockingIOError):
            netio.receive(sock, 2048)
        # The kernel turns software stamping on lazily (from a work queue): the first few
        # datagrams may come without a stamp. One of the first 50 must have it.
        for _ in range(50):
            before = time.clock_gettime_ns(time.CLOCK_REALTIME)
            client.sendto(b"x" * 48, sock.getsockname())
            select.select([sock], [], [], 2.0)
            dgram = netio.receive(sock, 2048)
            after = time.clock_gettime_ns(time.CLOCK_REALTIME)
            assert dgram.data == b"x" * 48 and not dgram.truncated
            assert dgram.address[1] == client.getsockname()[1]
            if dgram.rx_ns is not None:
                break
            time.sleep(0.01)
        assert dgram.rx_ns is not None and before <= dgram.rx_ns <= after
    finally:
        sock.close()
        client.close()


def test_truncated_datagram_is_flagged_and_buffer_is_modest():
    sock = netio.open_udp(("127.0.0.1", 0), rcvbuf=256 * 1024)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        # Linux doubles the requested size for bookkeeping; it must stay in that order.
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) <= 2 * 256 * 1024
        client.sendto(bytes(3000), sock.getsockname())
        select.select([sock], [], [], 2.0)
        dgram = netio.receive(sock, 2048)
        assert dgram.truncated and len(dgram.data) == 2048
        assert dgram.rx_ns is None  # no timestamp option enabled
    finally:
        sock.close()
        client.close()


def test_ipv6_socket_is_v6_only():
    try:
        sock = netio.open_udp(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        sock.close()


def test_reply_cmsg_from_pktinfo():
    v4 = struct.pack("=i4s4s", 3, socket.inet_aton("10.0.0.1"), socket.inet_aton("192.0.2.7"))
    level, kind, payload = netio.reply_cmsg([(socket.IPPROTO_IP, netio.IP_PKTINFO, v4)])
    assert (level, kind) == (socket.IPPROTO_IP, netio.IP_PKTINFO)
    assert payload == struct.pack("=i4s4s", 0, socket.inet_aton("192.0.2.7"), bytes(4))
    addr6 = socket.inet_pton(socket.AF_INET6, "fe80::1")
    v6 = struct.pack("=16si", addr6, 2)
    assert netio.reply_cmsg([(socket.IPPROTO_IPV6, netio.IPV6_PKTINFO, v6)]) == (
        socket.IPPROTO_IPV6,
        netio.IPV6_PKTINFO,
        v6,
    )
    assert netio.reply_cmsg([(socket.IPPROTO_IP, netio.IP_PKTINFO, b"\0")]) is None
    assert netio.reply_cmsg([]) is None


def test_reuse_port_lets_workers_share_a_port():
    first = netio.open_udp(("127.0.0.1", 0), reuse_port=True)
    try:
        port = first.getsockname()[1]
        second = netio.open_udp(("127.0.0.1", port), reuse_port=True)
        second.close()
        with pytest.raises(OSError):
            netio.open_udp(("127.0.0.1", port))  # without the option the port is taken
    finally:
        first.close()


def test_sockaddr_to_tuple_v4_v6_and_junk():
    v4 = socket.AF_INET.to_bytes(2, sys.byteorder) + (4000).to_bytes(2, "big") + bytes([127, 0, 0, 9])
    assert netio.sockaddr_to_tuple(v4 + bytes(8)) == ("127.0.0.9", 4000)
    v6 = (socket.AF_INET6.to_bytes(2, sys.byteorder) + (123).to_bytes(2, "big") + bytes(4)
          + socket.inet_pton(socket.AF_INET6, "::1") + (3).to_bytes(4, sys.byteorder))  # fmt: skip
    assert netio.sockaddr_to_tuple(v6) == ("::1", 123, 0, 3)
    with pytest.raises(ValueError):
        netio.sockaddr_to_tuple(bytes(16))


def _wait_for_stamping(server, client):
    """The kernel turns software stamping on lazily (a static key flipped from a work queue):
    the first datagrams after enabling it may come unstamped. Wait until one is stamped."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        client.sendto(b"warm-up", server.getsockname())
        select.select([server], [], [], 0.5)
        if netio.receive(server, 64).rx_ns is not None:
            return
        time.sleep(0.01)
    pytest.fail("the kernel never stamped a datagram")


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "compiled"])
def test_mmsg_batch_round_trip_keeps_stamps_and_senders(compiled, monkeypatch):
    pytest.importorskip("numpy")
    if compiled and netio.hotpath is None:
        pytest.skip("the compiled hot path was not built")
    if not compiled:
        monkeypatch.setattr(netio, "hotpath", None)  # reset() in numpy
    if not netio.batch_supported():
        pytest.skip("no recvmmsg/sendmmsg here")
    server = netio.open_udp(("127.0.0.1", 0))
    assert netio.enable_rx_timestamps(server) == netio.TS_TIMESTAMPING
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    try:
        _wait_for_stamping(server, client)
        mm = netio.MmsgBatch(capacity=4, bufsize=64)
        before = time.time_ns()
        for i in range(6):
            client.sendto(bytes([i]) * (10 + i), server.getsockname())
        time.sleep(0.05)
        count = mm.receive(server.fileno())
        assert count == 4  # bounded by the capacity
        stamped = mm.stamped(count)
        assert stamped.all()
        for i in range(count):
            dgram = mm.datagram(i)
            assert dgram.data == bytes([i]) * (10 + i)
            assert dgram.address == client.getsockname()
            assert before <= dgram.rx_ns <= time.time_ns()
            assert dgram.rx_ns == int(mm.rx_sec[i]) * 1_000_000_000 + int(mm.rx_nsec[i])
        assert mm.send(server.fileno(), count, 8) == (count, 0)
        mm.reset(count)
        client.settimeout(1.0)
        assert sorted(client.recv(100) for _ in range(count)) == [bytes([i]) * 8 for i in range(4)]
        # reset() gave the slots their full buffers and name/control room back.
        assert mm.receive(server.fileno()) == 2
        for i in range(2):
            dgram = mm.datagram(i)
            assert dgram.data == bytes([4 + i]) * (14 + i) and not dgram.truncated
            assert dgram.address == client.getsockname() and dgram.rx_ns is not None
        mm.reset(2)
        assert mm.receive(server.fileno()) == 0  # drained
    finally:
        client.close()
        server.close()


@contextlib.contextmanager
def _numbered_requests(count: int, capacity: int):
    """A server socket, a client socket on 127.0.0.1 (1 s timeout) and an MmsgBatch that has
    received ``count`` 48-byte datagrams from it, datagram i being byte i repeated."""
    pytest.importorskip("numpy")
    if not netio.batch_supported():
        pytest.skip("no recvmmsg/sendmmsg here")
    server = netio.open_udp(("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(1.0)
    try:
        mm = netio.MmsgBatch(capacity=capacity, bufsize=64)
        _send_numbered(client, server, mm, count)
        yield server, client, mm
    finally:
        client.close()
        server.close()


def _send_numbered(client, server, mm, count: int) -> None:
    for i in range(count):
        client.sendto(bytes([i]) * 48, server.getsockname())
    time.sleep(0.05)
    assert mm.receive(server.fileno()) == count


def test_mmsg_batch_send_stamps_each_chunk_just_before_sending():
    import numpy as np

    calls = []

    def stamp():
        calls.append(len(calls) + 1)
        return (0xAB << 56) | calls[-1]

    with _numbered_requests(6, capacity=8) as (server, client, mm):
        assert mm.send(server.fileno(), 6, 48, chunk=4, stamp=stamp) == (6, 0)
        replies = [client.recv(100) for _ in range(6)]
        # Word 5 (bytes 40-47): one fresh stamp per sendmmsg of at most 4; the rest untouched.
        assert [int.from_bytes(r[40:48], "big") & 0xFF for r in replies] == [1, 1, 1, 1, 2, 2]
        assert all(r[:40] == bytes([i]) * 40 for i, r in enumerate(replies))
        mm.reset(6)
        _send_numbered(client, server, mm, 6)
        calls.clear()
        slots = np.array([0, 2, 3, 5])
        assert mm.send(server.fileno(), slots, 48, chunk=3, stamp=stamp, stamp_word=0) == (4, 0)
        replies = [client.recv(100) for _ in range(4)]
        assert [r[40] for r in replies] == [0, 2, 3, 5]
        assert [int.from_bytes(r[:8], "big") & 0xFF for r in replies] == [1, 1, 1, 2]
        mm.reset(6)


def _ntp64(ns: int) -> int:
    return (((ns + 2_208_988_800 * 1_000_000_000) << 32) // 1_000_000_000) & ((1 << 64) - 1)


@pytest.mark.parametrize("chunk", [1, 2, 10])  # one per call; struct; one numpy assignment
def test_mmsg_batch_send_writes_clock_reads_as_truncated_ntp_times(chunk):
    import numpy as np

    reads = iter(range(1_767_225_600_000_000_001, 1_767_225_600_000_000_001 + 7_777 * 99, 7_777))
    taken: list[int] = []

    def clock_ns():
        taken.append(next(reads))
        return taken[-1]

    with _numbered_requests(14, capacity=16) as (server, client, mm):
        slots = np.array([k for k in range(14) if k != 6])  # 13 replies, one left out
        assert mm.send(server.fileno(), slots, 48, chunk=chunk, clock_ns=clock_ns) == (13, 0)
        replies = sorted((client.recv(100) for _ in range(13)), key=lambda r: r[0])
        assert [r[0] for r in replies] == slots.tolist()
        groups = [k // chunk for k in range(13)]
        assert len(taken) == groups[-1] + 1
        for k, reply in enumerate(replies):
            assert reply[:40] == bytes([reply[0]]) * 40
            assert int.from_bytes(reply[40:48], "big") == _ntp64(taken[groups[k]])
        mm.reset(14)


@pytest.mark.parametrize("subset", [False, True])
def test_mmsg_batch_send_each_with_the_real_clock(subset):
    """One honest CLOCK_REALTIME stamp per reply, truncated, in sending order, between the
    clock reads around the send."""
    import numpy as np

    with _numbered_requests(12, capacity=16) as (server, client, mm):
        slots = np.array([k for k in range(12) if k % 3]) if subset else 12
        expected = slots.tolist() if subset else list(range(12))
        before = _ntp64(time.clock_gettime_ns(time.CLOCK_REALTIME))
        sent = mm.send(server.fileno(), slots, 48, chunk=1, clock_ns=netio.realtime_ns)
        after = _ntp64(time.clock_gettime_ns(time.CLOCK_REALTIME))
        assert sent == (len(expected), 0)
        replies = [client.recv(100) for _ in expected]
        assert [r[0] for r in replies] == expected
        stamps = [int.from_bytes(r[40:48], "big") for r in replies]
        assert all(r[:40] == bytes([r[0]]) * 40 and len(r) == 48 for r in replies)
        assert before <= stamps[0] and stamps == sorted(stamps) and stamps[-1] <= after
        mm.reset(12)


def test_mmsg_batch_run_starts_follow_the_senders():
    pytest.importorskip("numpy")
    if not netio.batch_supported():
        pytest.skip("no recvmmsg/sendmmsg here")
    import numpy as np

    server = netio.open_udp(("127.0.0.1", 0))
    a, a2, b = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3))
    a.bind(("127.0.0.1", 0))
    a2.bind(("127.0.0.1", 0))  # the same host from another port: another sender
    b.bind(("127.0.0.2", 0))
    try:
        mm = netio.MmsgBatch(capacity=8, bufsize=64)
        for sock in (a, a, b, a, a, a2, b, b):
            sock.sendto(b"x" * 48, server.getsockname())
        time.sleep(0.05)
        assert mm.receive(server.fileno()) == 8
        every = np.arange(8)
        assert mm.run_starts(every) == [0, 2, 3, 5, 6]
        assert mm.run_starts(np.array([0, 1, 3, 4])) == [0]  # the same sender throughout
        assert mm.run_starts(np.array([5])) == [0] and mm.run_starts(every[:0]) == []
        assert [mm.addresses(every[[0, 2]])[i] for i in (0, 1)] == [a.getsockname(),
                                                                    b.getsockname()]  # fmt: skip
        mm.reset(8)
    finally:
        for sock in (a, a2, b, server):
            sock.close()
