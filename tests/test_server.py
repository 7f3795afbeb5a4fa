"""Tests for stratum1/server.py: build_reply field by field, request routing, and a real
loopback server driven by the EventLoop (versions, timestamps, junk, mode 7, a bounded flood)."""

import hashlib
import random
import select
import socket
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stratum1 import netio
from stratum1.clock import FrozenDisciplineClock, SystemClock
from stratum1.eventloop import EventLoop
from stratum1.ntptime import ns_to_ntp64, ntp64_to_ns, seconds_to_short
from stratum1.packet import CRYPTO_NAK, Mac, NtpPacket, PacketError
from stratum1.server import NTP_MINPOLL, NtpServer, ReplyTemplate, build_kod, build_reply
from stratum1.snapshot import UNSYNCHRONIZED, SystemSnapshot

NOW_NS = 1_767_225_600_123_456_789
SYNCED = SystemSnapshot(
    leap=0,
    stratum=1,
    precision=-22,
    poll=4,
    root_delay=0.0,
    root_dispersion=0.000_5,
    refid=b"GPS\0",
    reference_ns=NOW_NS - 3_000_000_000,
)


def request(version=4, mode=3, poll=6, transmit=0xEC5B7F2A12345678, trailer=b"") -> bytes:
    return NtpPacket(version=version, mode=mode, poll=poll, transmit=transmit).pack() + trailer


class StepClock:
    """A fake clock that advances 1 µs per read, so every reading is predictable."""

    can_adjust = False

    def __init__(self, start_ns=NOW_NS):
        self.t = start_ns
        self.mono = 0

    def now_ns(self):
        self.t += 1000
        return self.t

    def monotonic_ns(self):
        self.mono += 1000
        return self.mono


def _truncated_ntp64(unix_ns):
    return ((unix_ns + 2_208_988_800 * 10**9) << 32) // 10**9


# -- build_reply ------------------------------------------------------------------------------


def test_build_reply_every_field_synchronised():
    rx, tx = NOW_NS, NOW_NS + 25_000
    data = build_reply(request(version=4, poll=6), rx, SYNCED, tx)
    assert len(data) == 48
    r = NtpPacket.unpack(data)
    assert (r.leap, r.version, r.mode) == (0, 4, 4)
    assert r.stratum == 1
    assert r.poll == 6
    assert r.precision == -22
    assert r.root_delay == 0
    assert r.root_dispersion == seconds_to_short(0.0005)
    assert r.refid == b"GPS\0"
    assert r.reference == ns_to_ntp64(SYNCED.reference_ns)
    assert r.origin == 0xEC5B7F2A12345678
    assert r.receive == ns_to_ntp64(rx)
    assert r.transmit == ns_to_ntp64(tx)
    assert abs(ntp64_to_ns(r.receive) - rx) <= 1
    assert r.extensions == () and r.mac is None


def test_build_reply_unsynchronised_says_so():
    r = NtpPacket.unpack(build_reply(request(), NOW_NS, UNSYNCHRONIZED, NOW_NS))
    assert r.leap == 3
    # Stratum 16 travels as 0 ("unspecified"), as ntpd's STRATUM_TO_PKT does.
    assert r.stratum == 0
    assert r.refid == b"INIT"
    assert r.reference == 0  # never synchronised: zero, not 1970


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_build_reply_echoes_version(version):
    r = NtpPacket.unpack(build_reply(request(version=version), NOW_NS, SYNCED, NOW_NS))
    assert r.version == version and r.mode == 4


def test_version_1_mode_0_is_a_client_request():
    r = NtpPacket.unpack(build_reply(request(version=1, mode=0), NOW_NS, SYNCED, NOW_NS))
    assert (r.version, r.mode) == (1, 4)
    with pytest.raises(PacketError):
        build_reply(request(version=2, mode=0), NOW_NS, SYNCED, NOW_NS)


@pytest.mark.parametrize("mode", [1, 2, 4, 5])
def test_build_reply_refuses_other_modes(mode):
    with pytest.raises(PacketError, match="not a client request"):
        build_reply(request(mode=mode), NOW_NS, SYNCED, NOW_NS)


@pytest.mark.parametrize("req_poll, expected", [(0, NTP_MINPOLL), (-3, NTP_MINPOLL), (10, 10)])
def test_poll_is_max_of_request_and_minpoll(req_poll, expected):
    r = NtpPacket.unpack(build_reply(request(poll=req_poll), NOW_NS, SYNCED, NOW_NS))
    assert r.poll == expected
    r = NtpPacket.unpack(build_reply(request(poll=req_poll), NOW_NS, SYNCED, NOW_NS, min_poll=6))
    assert r.poll == max(req_poll, 6)


def test_root_delay_and_dispersion_short_format():
    snap = SystemSnapshot(leap=0, stratum=2, root_delay=0.25, root_dispersion=1.5)
    r = NtpPacket.unpack(build_reply(request(), NOW_NS, snap, NOW_NS))
    assert r.root_delay == 0x4000 and r.root_dispersion == 0x18000
    negative = SystemSnapshot(leap=0, stratum=2, root_delay=-0.5)
    r = NtpPacket.unpack(build_reply(request(), NOW_NS, negative, NOW_NS))
    assert r.root_delay_s == -0.5
    huge = SystemSnapshot(leap=0, stratum=2, root_delay=1e9, root_dispersion=1e9)
    r = NtpPacket.unpack(build_reply(request(), NOW_NS, huge, NOW_NS))
    assert r.root_delay == 0x7FFFFFFF and r.root_dispersion == 0xFFFFFFFF


def test_build_reply_accepts_packet_or_template_and_ignores_extensions():
    from stratum1.packet import ExtensionField

    req = NtpPacket(extensions=(ExtensionField.padded(0x0104, b"x" * 32),), transmit=77)
    a = build_reply(req, NOW_NS, SYNCED, NOW_NS)
    b = build_reply(req.pack(), NOW_NS, ReplyTemplate(SYNCED), NOW_NS)
    assert a == b and len(a) == 48 and NtpPacket.unpack(a).origin == 77


def test_build_reply_leap_warning_passes_through():
    snap = SystemSnapshot(leap=1, stratum=1, refid=b"PPS\0", reference_ns=NOW_NS)
    assert NtpPacket.unpack(build_reply(request(), NOW_NS, snap, NOW_NS)).leap == 1


# -- process(): routing without a socket ------------------------------------------------------


def make_server(**kwargs):
    return NtpServer(("127.0.0.1", 0), lambda: SYNCED, StepClock(), **kwargs)


def test_process_client_request_reads_transmit_time_from_clock():
    server = make_server()
    reply = server.process(request(), ("192.0.2.1", 123), NOW_NS)
    r = NtpPacket.unpack(reply)
    assert r.receive == ns_to_ntp64(NOW_NS)
    # The first read dates the reply template (root dispersion); the next is the transmit time.
    assert r.transmit == ns_to_ntp64(NOW_NS + 2000)
    assert server.stats.new_version == 1


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "malformed"),
        (b"\x23" * 47, "malformed"),
        (request() + b"\0\0", "malformed"),
        (request(version=4)[:1].replace(b"\x23", b"\x03") + bytes(47), "bad_version"),
        (b"\x2b" + bytes(47), "bad_version"),  # version 5
        (b"\x17" + bytes(47), "mode7"),
        (b"\x27" + bytes(7), "mode7"),
        (request(mode=4), "not_a_request"),
        (request(mode=1), "not_a_request"),
        (request(mode=5), "not_a_request"),
        (request(version=3, mode=0), "not_a_request"),
        (request(trailer=struct.pack("!I", 5)), "bad_auth"),
    ],
)
def test_process_drops_and_counts(data, reason):
    server = make_server()
    assert server.process(data, ("192.0.2.1", 123), NOW_NS) is None
    assert getattr(server.stats, reason) == 1
    assert server.stats.dropped == 1
    assert server.stats.replied == 0


def test_mac_with_no_keys_gets_crypto_nak():
    server = make_server()
    data = request(trailer=struct.pack("!I", 1) + bytes(16))
    reply = server.process(data, ("192.0.2.1", 123), NOW_NS)
    assert len(reply) == 52 and reply.endswith(CRYPTO_NAK)
    r = NtpPacket.unpack(reply)
    assert r.mac is not None and r.mac.is_crypto_nak and r.mode == 4
    assert server.stats.crypto_naks == 1


def test_authenticator_hook_signs_replies():
    key = b"secret"

    def md5_auth(covered, mac, host):
        if mac.keyid != 9 or hashlib.md5(key + covered).digest() != mac.digest:
            return None
        return lambda reply: struct.pack("!I", 9) + hashlib.md5(key + reply).digest()

    server = make_server(authenticate=md5_auth)
    body = request()
    good = body + struct.pack("!I", 9) + hashlib.md5(key + body).digest()
    reply = server.process(good, ("192.0.2.1", 123), NOW_NS)
    r = NtpPacket.unpack(reply)
    assert r.mac == Mac(9, hashlib.md5(key + reply[:48]).digest())
    bad = body + struct.pack("!I", 9) + bytes(16)
    assert server.process(bad, ("192.0.2.1", 123), NOW_NS).endswith(CRYPTO_NAK)
    assert server.stats.crypto_naks == 1


def test_signer_that_would_amplify_is_refused():
    server = make_server(authenticate=lambda covered, mac, host: lambda reply: bytes(4 + 20))
    data = request(trailer=struct.pack("!I", 1) + bytes(16))  # 68 bytes in, 72 would go out
    assert server.process(data, ("192.0.2.1", 123), NOW_NS) is None
    assert server.stats.oversize == 1


def test_control_and_peer_handlers():
    seen = []

    def control(data, addr):
        seen.append(("control", data, addr))
        return b"\x16\x82" + bytes(10)

    def peer(data, addr, rx_ns):
        seen.append(("peer", data, rx_ns))
        return None

    server = make_server(control_handler=control, peer_handler=peer)
    mode6 = b"\x16\x01\x00\x01" + bytes(8)
    assert server.process(mode6, ("127.0.0.1", 4000), NOW_NS) == b"\x16\x82" + bytes(10)
    assert server.process(request(mode=4), ("127.0.0.1", 123), NOW_NS) is None
    assert [s[0] for s in seen] == ["control", "peer"]
    assert seen[1][2] == NOW_NS
    assert (server.stats.control, server.stats.control_replied, server.stats.peer) == (1, 1, 1)
    # Without a control handler mode 6 is silently counted.
    plain = make_server()
    assert plain.process(mode6, ("127.0.0.1", 4000), NOW_NS) is None
    assert plain.stats.control == 1


def test_snapshot_read_once_per_batch_and_template_cached():
    calls = []
    snaps = [SYNCED]

    def get():
        calls.append(1)
        return snaps[0]

    server = NtpServer(("127.0.0.1", 0), get, StepClock())
    t1 = server._current_template()
    assert server._current_template() is t1
    snaps[0] = UNSYNCHRONIZED
    assert server._current_template() is not t1
    assert len(calls) == 3


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=160))
def test_process_never_raises_never_amplifies(data):
    server = make_server()
    reply = server.process(data, ("192.0.2.1", 123), NOW_NS)
    assert reply is None or len(reply) <= len(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), st.binary(min_size=47, max_size=47), st.binary(max_size=64))
def test_process_plausible_headers(first, rest, trailer):
    server = make_server()
    data = bytes([first]) + rest + trailer
    reply = server.process(data, ("192.0.2.1", 123), NOW_NS)
    assert reply is None or len(reply) <= len(data)
    if reply is not None:
        assert reply[0] & 7 == 4 and (reply[0] >> 3) & 7 == (first >> 3) & 7


# -- loopback: a real socket and a real EventLoop ---------------------------------------------


class Loopback:
    def __init__(self, server, host="127.0.0.1"):
        self.loop = EventLoop()
        self.server = server
        server.attach(self.loop)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.client = socket.socket(family, socket.SOCK_DGRAM)
        self.client.settimeout(0)
        self.addr = server.address

    def exchange(self, data: bytes):
        """Send ``data``, let the server run, return (reply or None, t_send_ns, t_recv_ns)."""
        stats = self.server.stats
        received, sent = stats.received, stats.sent
        t1 = time.clock_gettime_ns(time.CLOCK_REALTIME)
        self.client.sendto(data, self.addr)
        self.serve_until(lambda: stats.received > received)
        reply = None
        if stats.sent > sent:
            # Loopback delivery is usually immediate, but a busy machine defers it to softirq.
            ready, _, _ = select.select([self.client], [], [], 2.0)
            reply = self.client.recv(4096) if ready else None
        t4 = time.clock_gettime_ns(time.CLOCK_REALTIME)
        return reply, t1, t4

    def serve_until(self, done, timeout_s=2.0):
        deadline = self.loop.now_ns() + int(timeout_s * 1e9)
        while not done() and self.loop.now_ns() < deadline:
            self.loop.run_once(until_ns=deadline)
        assert done(), "the server did not get the datagram in time"

    def close(self):
        self.client.close()
        self.server.close()
        self.loop.close()


@pytest.fixture
def synced_loopback():
    lb = Loopback(NtpServer(("127.0.0.1", 0), lambda: SYNCED, FrozenDisciplineClock(SystemClock())))
    yield lb
    lb.close()


@pytest.fixture
def unsynced_loopback():
    lb = Loopback(
        NtpServer(("127.0.0.1", 0), lambda: UNSYNCHRONIZED, FrozenDisciplineClock(SystemClock()))
    )
    yield lb
    lb.close()


def test_loopback_uses_kernel_timestamps(synced_loopback):
    assert synced_loopback.server.timestamp_mode == "SO_TIMESTAMPING"
    assert synced_loopback.addr[1] != 0


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_loopback_reply_echoes_origin_and_version_and_brackets(synced_loopback, version):
    xmt = 0x0123456789ABCDEF + version
    reply, t1, t4 = synced_loopback.exchange(request(version=version, transmit=xmt))
    assert reply is not None
    r = NtpPacket.unpack(reply)
    assert (r.version, r.mode, r.origin) == (version, 4, xmt)
    assert (r.leap, r.stratum, r.refid, r.precision) == (0, 1, b"GPS\0", -22)
    assert r.reference == ns_to_ntp64(SYNCED.reference_ns)
    rx, tx = ntp64_to_ns(r.receive, t1), ntp64_to_ns(r.transmit, t1)
    # Same clock on both ends: t1 <= rx <= tx <= t4 (1 ns slack for 64-bit rounding).
    assert t1 - 1 <= rx <= tx + 1
    assert tx <= t4 + 1
    assert synced_loopback.server.stats.replied == 1


def test_ntpv1_packets_are_counted_by_mode(synced_loopback):
    for mode in (0, 3, 1):
        synced_loopback.exchange(request(version=1, mode=mode))
    synced_loopback.exchange(request(version=2))
    s = synced_loopback.server.stats
    assert (s.ver1, s.ver1_zero, s.ver1_client, s.ver1_symm) == (3, 1, 1, 1)


def test_loopback_unsynchronised(unsynced_loopback):
    reply, _, _ = unsynced_loopback.exchange(request())
    r = NtpPacket.unpack(reply)
    assert r.leap == 3 and r.stratum == 0 and r.refid == b"INIT" and r.reference == 0


def test_loopback_garbage_and_mode7_get_no_reply(synced_loopback):
    for junk in (b"", b"hello", bytes(47), b"\x17" + bytes(47), b"\x27\x00\x2a\x00" + bytes(4)):
        reply, _, _ = synced_loopback.exchange(junk)
        assert reply is None
    s = synced_loopback.server.stats
    assert s.received == 5 and s.replied == 0 and s.mode7 == 2
    assert s.malformed + s.bad_version == 3 and s.dropped == 5
    # Still serving afterwards.
    reply, _, _ = synced_loopback.exchange(request())
    assert reply is not None and len(reply) == 48


def test_loopback_clock_fallback_without_kernel_stamps():
    clock = StepClock()
    server = NtpServer(("127.0.0.1", 0), lambda: SYNCED, clock, kernel_timestamps=False)
    lb = Loopback(server)
    try:
        assert server.timestamp_mode == "clock"
        reply, _, _ = lb.exchange(request())
        r = NtpPacket.unpack(reply)
        # Reads: the template's date (root dispersion), the receive time, the transmit time
        # for process(), and the transmit time again just before the send (truncated).
        assert r.receive == ns_to_ntp64(NOW_NS + 2000)
        assert r.transmit == _truncated_ntp64(NOW_NS + 4000)
    finally:
        lb.close()


def test_loopback_ipv6():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    server = NtpServer(("::1", 0), lambda: SYNCED, FrozenDisciplineClock(SystemClock()))
    try:
        lb = Loopback(server, host="::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        reply, _, _ = lb.exchange(request(transmit=99))
        assert NtpPacket.unpack(reply).origin == 99
    finally:
        lb.close()


def test_loopback_bounded_random_flood_never_crashes_or_amplifies(synced_loopback):
    rng = random.Random(20240601)
    lb = synced_loopback
    lb.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sent = []
    for i in range(2000):
        kind = rng.random()
        if kind < 0.3:  # well-formed headers of every version and mode, some with trailers
            version = rng.randint(1, 4) if kind < 0.2 else rng.randint(0, 7)
            mode = 3 if kind < 0.2 else rng.randint(0, 7)
            first = (rng.randint(0, 3) << 6) | (version << 3) | mode
            data = bytes([first]) + rng.randbytes(39) + struct.pack("!Q", i)
            data += rng.choice([b"", b"", bytes(4), bytes(20), bytes(24), rng.randbytes(28)])
        elif kind < 0.5:
            data = bytes([rng.randint(0, 255)]) + rng.randbytes(rng.randint(47, 120))
        else:
            data = rng.randbytes(rng.randint(0, 200))
        sent.append(data)
    deadline = time.monotonic() + 20
    never_larger = True
    replies = 0
    # Send in bursts of 50, then let the server drain; each reply is matched to its request
    # by origin (= the request's transmit field) to check it is no larger than the request.
    by_xmt = {}
    stats = lb.server.stats
    for start in range(0, len(sent), 50):
        burst = sent[start : start + 50]
        for data in burst:
            lb.client.sendto(data, lb.addr)
            if len(data) >= 48:
                by_xmt.setdefault(data[40:48], []).append(len(data))
        expected = start + len(burst)
        lb.serve_until(lambda n=expected: stats.received == n, timeout_s=10)
        while replies < stats.sent and time.monotonic() < deadline:
            ready, _, _ = select.select([lb.client], [], [], 1.0)
            if not ready:
                continue
            reply = lb.client.recv(4096)
            replies += 1
            sizes = by_xmt.get(reply[24:32], [])
            never_larger &= bool(sizes) and len(reply) <= max(sizes)
    assert time.monotonic() < deadline
    s = lb.server.stats
    assert s.received == 2000
    assert never_larger
    assert replies == s.replied
    assert s.replied + s.dropped + s.control + s.peer == s.received
    assert s.replied > 200 and s.dropped > 1000
    # The server still answers properly after the flood.
    reply, _, _ = lb.exchange(request(transmit=1234))
    assert NtpPacket.unpack(reply).origin == 1234


# -- access checks and kiss-o'-death ----------------------------------------------------------


def test_build_kod_reveals_no_time():
    req = NtpPacket(version=3, poll=2, precision=-18, root_delay=7, root_dispersion=9,
                    reference=11, transmit=0xABCDEF).pack()  # fmt: skip
    r = NtpPacket.unpack(build_kod(req))
    assert (r.leap, r.version, r.mode, r.stratum) == (3, 3, 4, 0)
    assert r.refid == b"RATE" and r.poll == NTP_MINPOLL
    assert (r.precision, r.root_delay, r.root_dispersion, r.reference) == (-18, 7, 9, 11)
    assert r.origin == r.receive == r.transmit == 0xABCDEF
    assert NtpPacket.unpack(build_kod(req, b"DENY")).refid == b"DENY"
    with pytest.raises(PacketError):
        build_kod(request(mode=4))
    with pytest.raises(PacketError):
        build_kod(b"\x23" * 20)


def test_access_check_drop_and_kod():
    verdicts = {"192.0.2.1": "drop", "192.0.2.2": "kod"}
    seen = []

    def access(addr, mode, version, rx_ns, has_mac):
        seen.append((addr[0], mode))
        return verdicts.get(addr[0], "serve")

    server = make_server(access=access, control_handler=lambda d, a: b"\x16\x81" + bytes(10))
    assert server.process(request(), ("192.0.2.1", 123), NOW_NS) is None
    assert server.process(b"\x16\x01" + bytes(10), ("192.0.2.1", 123), NOW_NS) is None
    assert server.stats.restricted == 2 and server.stats.control == 0
    kod = NtpPacket.unpack(server.process(request(transmit=5), ("192.0.2.2", 123), NOW_NS))
    assert kod.refid == b"RATE" and kod.stratum == 0 and kod.transmit == 5
    assert server.stats.kod_sent == 1
    # A malformed request from a rate-limited host is still just malformed.
    assert server.process(request(trailer=b"\0\0"), ("192.0.2.2", 123), NOW_NS) is None
    assert server.stats.malformed == 1
    served = NtpPacket.unpack(server.process(request(), ("192.0.2.3", 123), NOW_NS))
    assert served.refid == b"GPS\0"
    # Mode 7 is dropped before anyone is asked.
    assert server.process(b"\x17" + bytes(47), ("192.0.2.3", 123), NOW_NS) is None
    assert ("192.0.2.3", 7) not in seen


def test_wildcard_bind_answers_from_the_address_asked():
    # Linux routes all of 127/8 to loopback: ask 127.0.0.2 and the reply must come from it,
    # or a client that checks the source address would drop it.
    server = NtpServer(("0.0.0.0", 0), lambda: SYNCED, FrozenDisciplineClock(SystemClock()))
    lb = Loopback(server)
    try:
        port = server.address[1]
        for dest in ("127.0.0.2", "127.0.0.1"):
            lb.addr = (dest, port)
            before = server.stats.received
            lb.client.sendto(request(transmit=42), lb.addr)
            lb.serve_until(lambda before=before: server.stats.received > before)
            select.select([lb.client], [], [], 2.0)
            reply, source = lb.client.recvfrom(4096)
            assert source == (dest, port)
            assert NtpPacket.unpack(reply).origin == 42
    finally:
        lb.close()


def test_loopback_follows_new_snapshots_and_counts_truncation():
    current = [UNSYNCHRONIZED]
    server = NtpServer(("127.0.0.1", 0), lambda: current[0], FrozenDisciplineClock(SystemClock()))
    lb = Loopback(server)
    try:
        reply, _, _ = lb.exchange(request())
        assert NtpPacket.unpack(reply).leap == 3
        current[0] = SYNCED  # the core publishes a new snapshot
        reply, _, _ = lb.exchange(request())
        r = NtpPacket.unpack(reply)
        assert (r.leap, r.stratum, r.refid) == (0, 1, b"GPS\0")
        reply, _, _ = lb.exchange(request() + bytes(4000))
        assert reply is None and server.stats.malformed == 1
        assert server.stats.received == 3 and server.stats.replied == 2
    finally:
        lb.close()


def test_handle_readable_drains_a_bounded_batch():
    server = NtpServer(("127.0.0.1", 0), lambda: SYNCED, StepClock(), max_batch=4)
    server.open()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(10):
            client.sendto(request(transmit=i), server.address)
        select.select([server], [], [], 2.0)
        server.handle_readable()
        assert 1 <= server.stats.received <= 4
        deadline = time.monotonic() + 5
        while server.stats.received < 10 and time.monotonic() < deadline:
            select.select([server], [], [], 0.5)
            before = server.stats.received
            server.handle_readable()
            assert server.stats.received - before <= 4
        server.handle_readable()  # drained: returns at once
        assert server.stats.received == 10 and server.stats.replied == 10
        client.settimeout(1.0)
        origins = sorted(NtpPacket.unpack(client.recv(100)).origin for _ in range(10))
        assert origins == list(range(10))
    finally:
        client.close()
        server.close()
    server.close()  # closing twice is harmless
    with pytest.raises(RuntimeError):
        server.fileno()


# -- the recvmmsg/sendmmsg batch path ---------------------------------------------------------


@pytest.fixture(params=["compiled", "numpy"])
def batch_kind(request):
    """The batch path in C (``stratum1/_hotpath.c``, when built) and in numpy: the same
    replies, counters and decisions."""
    if request.param == "compiled" and not netio.compiled_send():
        pytest.skip("the compiled hot path was not built")
    return request.param


def _burst_server(kind, host="127.0.0.1", **kwargs):
    pytest.importorskip("numpy")
    if not netio.batch_supported():
        pytest.skip("no recvmmsg/sendmmsg here")
    server = NtpServer((host, 0), lambda: SYNCED, FrozenDisciplineClock(SystemClock()),
                       batch=True, **kwargs)  # fmt: skip
    assert server._compiled == netio.compiled_send()  # the real clock: C where built
    server._compiled = kind == "compiled"
    server.open()
    assert server.batched
    server._busy = True  # as after a backlog: the next read takes the array path
    return server


def _send_burst(server, datagrams):
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    before = time.time_ns()
    for data in datagrams:
        client.sendto(data, server.address)
    select.select([server], [], [], 2.0)
    time.sleep(0.05)  # let every datagram of the burst reach the socket
    return client, before


def _collect(client, expected):
    client.settimeout(1.0)
    replies = []
    for _ in range(expected):
        replies.append(client.recv(2048))
    client.settimeout(0.05)
    with pytest.raises(TimeoutError):
        client.recv(2048)
    return replies


def test_batch_path_answers_a_burst_field_by_field(batch_kind):
    server = _burst_server(batch_kind)
    polls = [-5, 0, 3, 6, 10, 17]
    reqs = [request(version=1 + i % 4, poll=polls[i % len(polls)], transmit=(1 << 60) + i)
            for i in range(24)]  # fmt: skip
    client, before = _send_burst(server, reqs)
    try:
        server.handle_readable()
        after = time.time_ns()
        assert server.stats.received == 24 and server.stats.replied == 24
        assert server.stats.new_version == 6 and server.stats.old_version == 18
        assert server.stats.ver1 == server.stats.ver1_client == 6
        replies = _collect(client, 24)
    finally:
        client.close()
        server.close()
    by_origin = {NtpPacket.unpack(r).origin: r for r in replies}
    for i, req in enumerate(reqs):
        sent = NtpPacket.unpack(req)
        raw = by_origin[(1 << 60) + i]
        r = NtpPacket.unpack(raw)
        assert len(raw) == 48
        assert (r.leap, r.version, r.mode, r.stratum) == (0, sent.version, 4, 1)
        assert r.poll == max(sent.poll, NTP_MINPOLL)
        assert (r.precision, r.refid, r.root_delay) == (-22, b"GPS\0", 0)
        assert r.reference == ns_to_ntp64(SYNCED.reference_ns)
        # Root dispersion has grown since the reference time (15 PPM over ~3 s and more).
        assert r.root_dispersion >= seconds_to_short(0.0005)
        rx, tx = ntp64_to_ns(r.receive), ntp64_to_ns(r.transmit)
        assert before <= rx <= tx <= after  # read before the send, never predicted past it


def test_batch_path_mixed_burst_routes_the_odd_ones(batch_kind):
    answered = []

    def control(data, address):
        answered.append(address)
        return b"\x16\x82" + bytes(10)

    server = _burst_server(batch_kind, control_handler=control)
    reqs = [request(transmit=100 + i) for i in range(8)]
    junk = [b"\x16\x01" + bytes(10),  # mode 6: the control handler
            b"\x17" + bytes(47),  # mode 7: never answered
            request()[:20],  # too short
            b"\x2b" + request()[1:],  # version 5
            request(transmit=7, trailer=bytes(20))]  # a MAC that is not a bare key id: NAK
    client, _ = _send_burst(server, reqs[:4] + junk + reqs[4:])
    try:
        server.handle_readable()
        replies = _collect(client, 8 + 2)
    finally:
        client.close()
        server.close()
    stats = server.stats
    assert stats.received == 13
    assert (stats.control, stats.mode7, stats.malformed, stats.bad_version) == (1, 1, 1, 1)
    assert stats.crypto_naks == 1 and stats.replied == 9
    assert len(answered) == 1 and answered[0][0] == "127.0.0.1"
    origins = sorted(NtpPacket.unpack(r).origin for r in replies if r[0] & 7 == 4)
    assert origins == sorted([7, *range(100, 108)])


def test_batch_path_asks_the_access_check_once_per_datagram(batch_kind):
    seen = []

    def access(address, mode, version, rx_ns, has_mac):
        seen.append((address[0], mode, version, has_mac))
        assert rx_ns > NOW_NS  # the kernel's stamp, in Unix ns
        return {0: "serve", 1: "kod", 2: "drop"}[len(seen) % 3]

    server = _burst_server(batch_kind, access=access)
    client, _ = _send_burst(server, [request(version=3, transmit=i + 1) for i in range(9)])
    try:
        server.handle_readable()
        replies = _collect(client, 6)
    finally:
        client.close()
        server.close()
    assert seen == [("127.0.0.1", 3, 3, False)] * 9
    assert server.stats.kod_sent == 3 and server.stats.restricted == 3
    kods = [r for r in map(NtpPacket.unpack, replies) if r.stratum == 0]
    assert len(kods) == 3 and all(k.refid == b"RATE" for k in kods)


def _clients_from(*hosts):
    out = []
    for host in hosts:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                             socket.SOCK_DGRAM)  # fmt: skip
        sock.bind((host, 0))
        out.append(sock)
    return out


def test_batch_path_decides_a_whole_batch_in_one_call(batch_kind):
    calls = []

    def per_datagram(*_args):
        raise AssertionError("the batch has its own check")

    def clients(addresses, starts, versions, times):
        calls.append((addresses, starts, versions, times))
        return {1: "kod", 2: "drop"}

    server = _burst_server(batch_kind, access=per_datagram, access_batch=clients)
    a, b = _clients_from("127.0.0.1", "127.0.0.2")
    try:
        # Runs by sender: a a b b b a.
        for sock, i in [(a, 0), (a, 1), (b, 2), (b, 3), (b, 4), (a, 5)]:
            sock.sendto(request(version=3 + i % 2, transmit=i + 1), server.address)
        select.select([server], [], [], 2.0)
        time.sleep(0.05)
        server.handle_readable()
        replies = _collect(a, 3) + _collect(b, 2)
    finally:
        for sock in (a, b):
            sock.close()
        server.close()
    ((addresses, starts, versions, times),) = calls
    assert [x[0] for x in addresses] == ["127.0.0.1", "127.0.0.2", "127.0.0.1"]
    assert starts == [0, 2, 5] and versions == [3, 4, 3, 4, 3, 4]
    assert all(t > NOW_NS for t in times) and times == sorted(times)
    assert server.stats.kod_sent == 1 and server.stats.restricted == 1
    kinds = sorted((NtpPacket.unpack(r).origin, r[12:16] == b"RATE") for r in replies)
    assert kinds == [(1, False), (2, True), (4, False), (5, False), (6, False)]


def test_batch_path_uses_access_controls_batched_check(batch_kind):
    from stratum1.config.parser import parse_text
    from stratum1.restrict import AccessControl

    config, _ = parse_text("restrict default limited kod\n", "ntp.conf")
    access = AccessControl.from_config(config)
    calls = []
    check_clients = access.check_clients

    def spy(*args):
        calls.append(len(args[3]))
        return check_clients(*args)

    access.check_clients = spy
    server = _burst_server(batch_kind, access=access.server_hook)
    a, b = _clients_from("127.0.0.1", "127.0.0.3")
    try:
        for i in range(20):
            a.sendto(request(transmit=i + 1), server.address)
            if i % 4 == 0:
                b.sendto(request(transmit=100 + i), server.address)
        select.select([server], [], [], 2.0)
        time.sleep(0.05)
        server.handle_readable()
    finally:
        for sock in (a, b):
            sock.close()
        server.close()
    assert calls == [25]
    stats = server.stats
    assert access.stats.checked == 25 and access.stats.limited > 0
    # Both clients get their first request served, then break the 2 s minimum headway.
    assert stats.kod_sent == access.stats.kod >= 2
    assert stats.restricted == access.stats.limited - access.stats.kod
    assert stats.replied == 25 - stats.restricted
    counts = {e.address: e.count for e in access.mru_entries()}
    assert counts == {"127.0.0.1": 20, "127.0.0.3": 5}


def test_batch_path_falls_back_to_plain_reads_when_quiet(batch_kind):
    server = _burst_server(batch_kind)
    client, _ = _send_burst(server, [request(transmit=1)])
    try:
        # One datagram: numpy hands back to plain reads (arrays cost more than they save);
        # the compiled path answers it too (its transmit stamp read in C, just before the send).
        server.handle_readable()
        assert server._busy is False and server.stats.replied == 1
        assert server.stats.unstamped == 0
        _collect(client, 1)
        client.sendto(request(transmit=2), server.address)
        select.select([server], [], [], 2.0)
        server.handle_readable()
        assert NtpPacket.unpack(_collect(client, 1)[0]).origin == 2
    finally:
        client.close()
        server.close()


class CountingClock:
    """The system clock, strictly increasing, counting its reads."""

    can_adjust = False

    def __init__(self):
        self.reads = 0
        self.last = 0

    def now_ns(self):
        self.reads += 1
        self.last = max(time.time_ns(), self.last + 1)
        return self.last

    def monotonic_ns(self):
        return time.monotonic_ns()


@pytest.mark.parametrize("chunk", [1, 4, 5, 64])
def test_batch_path_stamps_each_send_group_with_a_fresh_read(chunk):
    pytest.importorskip("numpy")
    if not netio.batch_supported():
        pytest.skip("no recvmmsg/sendmmsg here")
    clock = CountingClock()
    server = NtpServer(("127.0.0.1", 0), lambda: SYNCED, clock, batch=True, tx_chunk=chunk)
    server.open()
    server._busy = True
    count = 22
    client, _ = _send_burst(server, [request(transmit=(1 << 62) + i) for i in range(count)])
    client.setsockopt(socket.SOL_SOCKET, netio.SO_TIMESTAMPNS, 1)
    try:
        server.handle_readable()
        assert server.stats.replied == count
        client.settimeout(1.0)
        got = []
        for _ in range(count):
            data, anc, _flags, _addr = client.recvmsg(2048, 256)
            got.append((NtpPacket.unpack(data), netio.rx_timestamp(anc)))
    finally:
        client.close()
        server.close()
    # sendmmsg keeps the order: replies arrive as the requests were sent.
    assert [r.origin for r, _ in got] == [(1 << 62) + i for i in range(count)]
    transmits = [r.transmit for r, _ in got]
    groups = [transmits[i : i + chunk] for i in range(0, count, chunk)]
    assert all(len(set(group)) == 1 for group in groups)  # one clock read per sendmmsg
    firsts = [group[0] for group in groups]
    assert firsts == sorted(set(firsts))  # a fresh, later read for every group
    for r, rx_stamp in got:
        # Never later than the send: the client's kernel saw each reply after its stamp.
        assert ntp64_to_ns(r.receive) <= ntp64_to_ns(r.transmit) <= rx_stamp


def test_plain_path_reads_the_transmit_time_just_before_sending():
    clock = CountingClock()
    server = NtpServer(("127.0.0.1", 0), lambda: SYNCED, clock, batch=False)
    lb = Loopback(server)
    try:
        reply, _, _ = lb.exchange(request())
        r = NtpPacket.unpack(reply)
        # The last read of the clock is the transmit timestamp, truncated.
        assert r.transmit == _truncated_ntp64(clock.last)
    finally:
        lb.close()


def test_transmit_clock_reads_the_system_clock_directly_or_asks_the_clock():
    import functools

    from stratum1.server import _clock_reader

    for clock in (SystemClock(), FrozenDisciplineClock(SystemClock())):
        reader = _clock_reader(clock)
        assert isinstance(reader, functools.partial)  # CLOCK_REALTIME, no Python frames
        before = time.clock_gettime_ns(time.CLOCK_REALTIME)
        assert before <= reader() <= time.clock_gettime_ns(time.CLOCK_REALTIME)

    class Shifted(SystemClock):
        def now_ns(self) -> int:
            return 42

    assert _clock_reader(Shifted())() == 42
    assert _clock_reader(FrozenDisciplineClock(Shifted()))() == 42
    step = StepClock()
    assert _clock_reader(step)() == NOW_NS + 1000


def _known_sender_bursts(kind, conf="restrict default limited kod\n",
                         hosts=("127.0.0.1", "127.0.0.3", "127.0.0.5")):  # fmt: skip
    """Two bursts at a server restricted by ``conf``: the first from new senders (a, b), the
    second from both again (now in the MRU list: flooding, so limited where ``limited``) and
    from a new one (c), each on its host of ``hosts``. What came back to each, and the
    counters and MRU list afterwards."""
    from stratum1.config.parser import parse_text
    from stratum1.restrict import AccessControl

    config, _ = parse_text(conf, "ntp.conf")
    access = AccessControl.from_config(config)
    record_known = access.record_known
    decided_in_c = []

    def spy(checked, *rest):
        decided_in_c.append(checked)
        return record_known(checked, *rest)

    access.record_known = spy
    server = _burst_server(kind, "::1" if ":" in hosts[0] else "127.0.0.1",
                           access=access.server_hook)  # fmt: skip
    a, b, c = _clients_from(*hosts)
    got = {}
    try:
        for burst in ([a, b], [a, b, b, a, c, c, a]):
            for i, sock in enumerate(burst):
                sock.sendto(request(transmit=i + 1), server.address)
            select.select([server], [], [], 2.0)
            time.sleep(0.05)
            for _ in range(10):  # plain reads take a few at a time: drain the burst
                server.handle_readable()
                if not select.select([server], [], [], 0)[0]:
                    break
        for name, sock in (("a", a), ("b", b), ("c", c)):
            sock.settimeout(0.2)
            kinds = []
            try:
                while True:
                    kinds.append("kod" if sock.recv(2048)[12:16] == b"RATE" else "time")
            except TimeoutError:
                pass
            got[name] = kinds
    finally:
        for sock in (a, b, c):
            sock.close()
        server.close()
    mru = sorted((e.address, e.count, e.flags, e.leak, e.version) for e in access.mru_entries())
    stats = server.stats.as_dict()
    # The compiled server decided the second burst's known senders in C; numpy never does.
    assert (sum(decided_in_c) > 0) == (kind == "compiled" and conf.count("ignore") == 0)
    return got, stats, access.stats, access.limiter.stats, mru


def test_known_senders_decided_in_c_as_in_numpy():
    if not netio.compiled_send():
        pytest.skip("the compiled hot path was not built")
    compiled = _known_sender_bursts("compiled")
    assert compiled == _known_sender_bursts("numpy")
    got, stats, access, _limiter, mru = compiled
    # New senders served; known ones flooding: a KoD once, then dropped; c new: served, then
    # over the minimum headway itself.
    assert got == {"a": ["time", "kod"], "b": ["time", "kod"], "c": ["time", "kod"]}
    assert access.checked == 9 and stats["restricted"] == 3 and stats["kod_sent"] == 3
    assert [entry[:2] for entry in mru] == [("127.0.0.1", 4), ("127.0.0.3", 3),
                                             ("127.0.0.5", 2)]  # fmt: skip


@pytest.mark.parametrize("conf", [
    "restrict default\n",  # monitoring only: nobody limited
    "restrict default limited kod\nrestrict 127.0.0.3 limited kod version\n",  # per request
    "restrict default limited\nrestrict 127.0.0.5 ntpport noserve\n",  # ntpport entries
    "restrict default limited kod\nrestrict 127.0.0.1 ignore\n",  # refused outright
], ids=["monitor", "version", "ntpport", "ignore"])
def test_known_senders_decided_in_c_as_in_numpy_whatever_the_table(conf):
    if not netio.compiled_send():
        pytest.skip("the compiled hot path was not built")
    assert _known_sender_bursts("compiled", conf) == _known_sender_bursts("numpy", conf)


@pytest.mark.parametrize("hosts", [("127.0.0.1", "127.0.0.1", "127.0.0.5"), ("::1",) * 3],
                         ids=["one-host-two-ports", "ipv6"])  # fmt: skip
def test_known_senders_decided_in_c_as_in_numpy_whatever_the_senders(hosts):
    if not netio.compiled_send():
        pytest.skip("the compiled hot path was not built")
    if ":" in hosts[0]:
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
                probe.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
    conf = "restrict default limited kod\n"
    compiled = _known_sender_bursts("compiled", conf, hosts)
    assert compiled == _known_sender_bursts("numpy", conf, hosts)
    assert sum(entry[1] for entry in compiled[4]) == 9  # every request recorded


def test_pending_runs_keeps_each_run_one_senders_consecutive_requests():
    from stratum1.server import pending_runs

    a, b = ("192.0.2.1", 1), ("192.0.2.2", 2)
    # Slots 0-6; scan's runs: a a | b b b | a a. Left undecided (2): slots 1, 2, 4, 5, 6.
    mask = bytearray([1, 2, 2, 0, 2, 2, 2])
    rows, versions, rx, starts, senders = pending_runs(
        mask, [0, 1, 2, 3, 4, 5, 6], [4, 3, 4, 2, 4, 1, 4], [10, 11, 12, 13, 14, 15, 16],
        [0, 2, 5], [a, b, a])  # fmt: skip
    assert rows == [1, 2, 4, 5, 6] and versions == [3, 4, 4, 1, 4]
    assert rx == [11, 12, 14, 15, 16]
    # a's slot 1 | b's slot 2 | b's slot 4 (slot 3 left out between) | a's slots 5 and 6.
    assert starts == [0, 1, 2, 3] and senders == [a, b, b, a]
    assert pending_runs(bytearray([1, 1]), [0, 1], [4, 4], [1, 2], [0], [a]) == (
        [], [], [], [], [])
